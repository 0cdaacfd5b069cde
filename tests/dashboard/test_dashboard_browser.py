"""The dashboard in headless Chromium, opened as file:// (no server): search the index for an explanation,
sort it, open a latent page, and check that every shaded token's value and tooltip equal the stored
activation (the page's JSON) and a direct re-encode of that context with the SAE. Screenshots are kept
($SAESCALE_TEST_ARTIFACTS/dashboard, else the test's tmp folder; the path is printed). Without chromium,
chromedriver or selenium the tests skip, saying what is missing and how to install it."""

from __future__ import annotations

import json

import pytest
import torch

from saescale.activations.cache_read import CacheReader
from saescale.cliargs import parse_config
from saescale.commands.dashboard import DashboardCommand, run_dashboard
from saescale.sae.io import load_sae
from tests.dashboard.dash_helpers import artifacts_dir, chrome_driver, tiny_setup

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def site(tiny_lm_dir, tiny_lm, tmp_path_factory):
    root = tmp_path_factory.mktemp("dash_browser")
    sae_dir, cache = tiny_setup(root, tiny_lm_dir, tiny_lm)
    out = root / "dash"
    cfg = parse_config(DashboardCommand, [str(sae_dir), "--out", str(out), "--top", "6", "--n2g-latents", "6",
                                          "--n2g-build", "4", "--n2g-test", "4", "--n2g-max-len", "4", "--no-progress"],
                       prog="saescale dashboard")
    run_dashboard(cfg, lm=tiny_lm)
    return sae_dir, cache, out


@pytest.fixture(scope="module")
def browser():
    driver = chrome_driver()
    yield driver
    driver.quit()


def wait_for(driver, condition):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, 30).until(lambda d: condition(d))


def rows_shown(driver) -> list[list[str]]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#latents tbody tr')).map("
        "function (tr) { return Array.from(tr.cells).map(function (c) { return c.textContent; }); });")


def test_search_sort_and_open_a_latent(site, browser, tmp_path):
    _, _, out = site
    index = json.loads((out / "data" / "index.json").read_text())
    col = {f: j for j, f in enumerate(index["fields"])}
    browser.get((out / "index.html").as_uri())
    wait_for(browser, lambda d: len(rows_shown(d)) == 64)
    assert browser.find_element("css selector", "#density svg rect") is not None  # the density histogram
    explained = [r for r in index["rows"] if r[col["explanation"]]]
    target = explained[0]
    query = target[col["explanation"]].split(" | ")[0][:12]
    box = browser.find_element("id", "search")
    box.send_keys(query)
    wait_for(browser, lambda d: len(rows_shown(d)) < 64 or all(query.lower() in " ".join(r).lower() for r in rows_shown(d)))
    shown = rows_shown(browser)
    want = [r[0] for r in index["rows"] if query.lower() in (r[col["explanation"]] + " " + r[col["top_token"]] + " "
                                                              + " ".join(r[col["promoted"]])).lower()]
    assert sorted(int(r[0]) for r in shown) == sorted(want) and target[0] in want
    assert browser.find_element("id", "count").text.startswith(f"{len(want)} of 64")
    box.clear()
    box.send_keys(" ")  # an 'input' event with an empty query: every row again
    wait_for(browser, lambda d: len(rows_shown(d)) == 64)
    browser.find_element("css selector", "th[data-key=density]").click()  # sort by density, densest first
    dens = [float(r[1]) for r in rows_shown(browser)]
    assert dens == sorted(dens, reverse=True)
    browser.save_screenshot(str(artifacts_dir(tmp_path) / "index.png"))
    browser.find_element("id", "search").send_keys(query)
    wait_for(browser, lambda d: len(rows_shown(d)) == len(want))
    browser.find_element("link text", str(target[0])).click()
    wait_for(browser, lambda d: d.find_element("tag name", "body").get_attribute("data-loaded") == str(target[0]))
    assert browser.find_element("id", "explanation").text == target[col["explanation"]]


def test_latent_page_tokens_equal_stored_and_reencoded(site, browser, tmp_path):
    sae_dir, cache, out = site
    index = json.loads((out / "data" / "index.json").read_text())
    latent = max(index["rows"], key=lambda r: r[3])[0]  # the densest: many shaded tokens
    doc = json.loads((out / "latents" / f"{latent}.json").read_text())
    browser.get((out / "latent.html").as_uri() + f"#{latent}")
    wait_for(browser, lambda d: d.find_element("tag name", "body").get_attribute("data-loaded") == str(latent))
    spans = browser.execute_script(
        "return ['top', 'quantiles'].map(function (id) { return Array.from(document.querySelectorAll('#' + id + ' .ctx'))"
        ".map(function (c) { return Array.from(c.querySelectorAll('.tok')).map(function (s) { return "
        "[s.getAttribute('data-z'), s.getAttribute('title'), s.style.backgroundColor]; }); }); });")
    shown = spans[0] + spans[1]
    contexts = doc["top"] + doc["quantiles"]
    assert len(spans[0]) == len(doc["top"]) > 0 and len(spans[1]) == len(doc["quantiles"]) > 0
    sae = load_sae(sae_dir).eval()
    rows = CacheReader(cache).read_all()
    shaded = 0
    for c, toks in zip(contexts, shown):
        assert len(toks) == len(c["acts"])
        sel = rows["ctx"] == c["ctx"]
        with torch.no_grad():
            code = sae.encode(rows["acts"][sel])
        z = (code.values * (code.indices == latent)).sum(-1).clamp_min(0)
        again = torch.zeros(len(c["acts"]))
        again[rows["pos"][sel] - doc["first_position"]] = z
        for j, (value, title, background) in enumerate(toks):
            assert float(value) == c["acts"][j]  # the page holds exactly the stored value
            assert title.endswith(f"z = {value}")  # ... and shows it in the tooltip
            assert abs(float(value) - float(again[j])) <= 1e-5 * max(1.0, abs(float(again[j])))  # = a re-encode
            assert bool(background) == (c["acts"][j] > 0)  # shaded exactly where the latent fires
            shaded += c["acts"][j] > 0
    assert shaded >= len(contexts)
    path = artifacts_dir(tmp_path) / "latent.png"
    browser.set_window_size(1280, 1600)
    browser.save_screenshot(str(path))
    print(f"dashboard screenshots: {path.parent}")
    link = browser.find_element("css selector", "#neighbours a")
    target = link.get_attribute("href").rsplit("#", 1)[1]
    link.click()
    wait_for(browser, lambda d: d.find_element("tag name", "body").get_attribute("data-loaded") == target)
    assert browser.find_element("tag name", "h1").text == f"Latent {target}"


def test_no_browser_skips_naming_what_is_missing(monkeypatch):
    import shutil

    from tests.dashboard import dash_helpers

    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(dash_helpers.Path, "is_file", lambda self: False)
    with pytest.raises(pytest.skip.Exception, match="need chromium and chromedriver: install them with `apt-get install"):
        dash_helpers.chrome_driver()
