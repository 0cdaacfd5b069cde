"""The committed quick report (docs/reproduce-quick) rebuilt from its member files alone, and rendered in headless
Chromium with every figure loaded."""

import json
import shutil
from pathlib import Path

import pytest

from saescale.reproduce.profiles import QUICK
from saescale.reproduce.report import build_report
from tests.dashboard.dash_helpers import chrome_driver

COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "reproduce-quick"


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory):
    """A copy of the committed quick reproduction with report.json, report.html and figures/ removed, rebuilt."""
    assert (COMMITTED / "report.json").is_file(), "docs/reproduce-quick is committed: run saescale reproduce --quick"
    out = tmp_path_factory.mktemp("reproduce") / "quick"
    shutil.copytree(COMMITTED, out, ignore=shutil.ignore_patterns("report.*", "figures"))
    committed = json.loads((COMMITTED / "report.json").read_text())
    doc = build_report(QUICK, out, bootstrap=committed["findings"][2]["numbers"].get("bootstrap", 200))
    return out, doc, committed


def test_the_report_follows_from_the_committed_member_files(rebuilt):
    _, doc, committed = rebuilt
    assert [f["id"] for f in doc["findings"]] == ["frontier", "dead", "scaling", "progressive", "quality", "refine"]
    assert [f["verdict"] for f in doc["findings"]] == [f["verdict"] for f in committed["findings"]]
    assert [f["lines"] for f in doc["findings"]] == [f["lines"] for f in committed["findings"]]
    assert all(f["verdict"] != "pending" for f in doc["findings"])  # the quick run finished every unit
    scaling = next(f for f in doc["findings"] if f["id"] == "scaling")
    assert any(line.startswith("joint fit: R2=") for line in scaling["lines"])


def test_quick_report_renders_with_every_figure(rebuilt):
    out, doc, _ = rebuilt
    figures = [name for f in doc["findings"] for name in f["figures"]]
    assert len(figures) >= 8 and all((out / "figures" / name).stat().st_size > 1000 for name in figures)
    driver = chrome_driver()
    try:
        driver.get((out / "report.html").as_uri())
        imgs = driver.execute_script(
            "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
        assert sorted(src for src, _, _ in imgs) == sorted(f"figures/{n}" for n in figures)
        assert all(done and width > 100 for _, done, width in imgs), imgs
        verdicts = driver.execute_script("return Array.from(document.querySelectorAll('section h2 .v')).map(e => e.textContent)")
        assert verdicts == [f["verdict"] for f in doc["findings"]]
        resources = driver.execute_script("return performance.getEntriesByType('resource').map(r => r.name)")
        assert all(r.startswith("file://") for r in resources), resources  # opens offline: nothing from the network
    finally:
        driver.quit()
