"""``saescale reproduce --plan``: what is left, its budgets and its cost, and the harvest only where the cache is missing."""

import json

import pytest

from saescale.activations.manifest import default_cache_dir
from saescale.reproduce.plan import format_plan, plan
from saescale.reproduce.profiles import FULL
from saescale.reproduce.runner import member_selector
from saescale.reproduce.units import units
from saescale.sweep.spec import load_spec


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SAESCALE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_plan_lists_only_unfinished_members_with_their_budgets_and_cost(tmp_path, home):
    out, work = tmp_path / "out", tmp_path / "work"
    members = out / "scaling-default" / "members"
    members.mkdir(parents=True)
    for n in (1024, 2048, 4096):
        for k in (8, 16, 32, 64):
            (members / f"n{n}-k{k}.json").write_text("{}")
    (work / "scaling-default" / "n8192-k8").mkdir(parents=True)
    (work / "scaling-default" / "n8192-k8" / "result.json").write_text("{}")  # finished here, not yet copied to OUT
    rows = plan(FULL, out, work, only=["scaling-default", "progressive"])
    assert [r["unit"] for r in rows] == ["scaling-default", "progressive"]
    left = {m["id"]: m for m in rows[0]["members"]}
    assert sorted(left) == sorted(f"n{n}-k{k}" for n in (8192, 16384, 32768) for k in (8, 16, 32, 64)
                                  if (n, k) != (8192, 8))
    spec_path = tmp_path / "s.toml"
    spec_path.write_text(units(FULL)[0].spec_toml(FULL, str(work / "scaling-default")))
    budgets = {m.id: m.train.tokens for m in load_spec(spec_path).members}
    for i, m in left.items():  # the sweep's own n^0.6 budgets, n T latent-tokens at the profile's rate
        assert m["tokens"] == budgets[i] and m["latent_tokens"] == m["n"] * budgets[i]
        assert m["minutes"] == pytest.approx(m["n"] * budgets[i] / 3.5e7 / 60)
    assert left["n32768-k8"]["tokens"] > 1.9e6 and left["n32768-k8"]["minutes"] > 25
    assert rows[0]["harvest_tokens"] == 1_200_000 and rows[0]["harvest_minutes"] == pytest.approx(1.2e6 / 780 / 60)
    lines = format_plan(rows, FULL)
    assert sum("with ~" in x for x in lines) == 1  # both units read the SmolLM2 cache: one harvest
    assert lines[-1].startswith("total: ~")
    total = sum(m["minutes"] for r in rows for m in r["members"]) + rows[0]["harvest_minutes"]
    assert float(lines[-1].split("~")[1].split(" ")[0]) == pytest.approx(total / 60, abs=0.05)


def test_plan_skips_the_harvest_of_a_complete_cache_and_follows_members(tmp_path, home):
    spec_path = tmp_path / "s.toml"
    spec_path.write_text(units(FULL)[0].spec_toml(FULL, str(tmp_path / "w")))
    folder = default_cache_dir(load_spec(spec_path).activations)
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"complete": True}))
    rows = plan(FULL, tmp_path / "out", tmp_path / "work", select=member_selector(["scaling-default/n32768-k8",
                                                                                    "dead-latents/*"]))
    assert [(r["unit"], [m["id"] for m in r["members"]], r["harvest_tokens"]) for r in rows] == [
        ("scaling-default", ["n32768-k8"], 0),
        ("dead-latents", ["tied_init_true-aux_coef_0", "tied_init_true-aux_coef_0.03125",
                          "tied_init_false-aux_coef_0", "tied_init_false-aux_coef_0.03125"], 0)]
    (folder / "manifest.json").write_text(json.dumps({"complete": False}))  # a harvest cut short: still to do
    assert plan(FULL, tmp_path / "out", tmp_path / "work", only=["dead-latents"])[0]["harvest_tokens"] == 1_200_000
