"""The committed quick report (docs/reproduce-quick) rebuilt from its member files alone, and rendered in headless
Chromium with every figure loaded."""

import json
import re
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


def test_scaling_results_are_spliced_into_a_markdown_doc_between_markers(rebuilt, tmp_path):
    """The scaling section has the exact fit lines and every member's nMSE, budget and convergence; the splice
    replaces only what lies between the markers (twice: the same file), appends when there are none, and
    refuses a lone marker in one line."""
    from saescale.errors import SaescaleError
    from saescale.reproduce.runner import stored_results
    from saescale.reproduce.scaling_doc import BEGIN, END, splice, write_scaling_doc
    from saescale.reproduce.units import units

    out, doc, _ = rebuilt
    members = stored_results(out, next(u for u in units(QUICK) if u.name == "scaling-default"))
    page = tmp_path / "scaling.md"
    page.write_text(f"# Title\n\nbefore\n\n{BEGIN}\nold results\n{END}\n\n## After\n\nafter\n")
    write_scaling_doc(page, doc, members, "docs/reproduce-quick")
    text = page.read_text()
    scaling = next(f for f in doc["findings"] if f["id"] == "scaling")
    assert all(line in text.splitlines() for line in scaling["lines"])
    assert text.startswith("# Title\n\nbefore\n\n" + BEGIN) and text.endswith(END + "\n\n## After\n\nafter\n")
    assert "old results" not in text and text.count(BEGIN) == text.count(END) == 1
    assert f"**Verdict: {scaling['verdict']}.**" in text
    for m in members:  # one row per n, one cell per member: its loss to 4 places
        row = next(r for r in text.splitlines() if r.startswith(f"| {m['n']} | ") and "M, " not in r)
        assert f"{m['loss']:.4f}" in row
    assert len(members) == 12 and len(re.findall(r"\| \d+\.\d\dM, [+-]\d+\.\d%", text)) == 12
    write_scaling_doc(page, doc, members, "docs/reproduce-quick")
    assert page.read_text() == text
    assert splice("# Other\n", "S\n") == "# Other\n\nS\n"
    with pytest.raises(SaescaleError, match="one marker without the other") as e:
        splice(f"x\n{BEGIN}\n", "S\n")
    assert "\n" not in str(e.value)
