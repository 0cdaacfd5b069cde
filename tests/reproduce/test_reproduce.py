"""``saescale reproduce``: budgets, units as sweep specs, a clean stop and resume, a rerun elsewhere, the report."""

import dataclasses
import json
import shutil

import pytest

from saescale.errors import SaescaleError
from saescale.reproduce import runner
from saescale.reproduce.profiles import FULL, QUICK
from saescale.reproduce.report import build_report
from saescale.reproduce.runner import parse_budget, reproduce
from saescale.reproduce.units import units
from saescale.sweep.spec import load_spec

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("text,seconds", [("2h", 7200), ("90m", 5400), ("1h30m", 5400), ("45s", 45), ("3600", 3600),
                                          ("0", 0), ("", 0), ("1.5h", 5400)])
def test_parse_budget(text, seconds):
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["2 hours", "h", "2x", "-1h", "1h-5m"])
def test_bad_budget_is_one_line(text):
    with pytest.raises(SaescaleError, match="give a duration such as 2h"):
        parse_budget(text)


def test_every_unit_is_a_valid_sweep_spec_and_the_full_grid_is_the_issues(tmp_path):
    for p in (QUICK, FULL):
        for u in units(p):
            path = tmp_path / f"{p.name}-{u.name}.toml"
            path.write_text(u.spec_toml(p, str(tmp_path / u.name)))
            spec = load_spec(path)
            assert spec.activations.corpus == p.corpus and spec.activations.n_tokens == p.cache_tokens[u.model]
            if u.name == "scaling-default" and p is FULL:
                assert sorted({m.sae.n for m in spec.members}) == [1024, 2048, 4096, 8192, 16384, 32768]
                assert sorted({m.sae.k for m in spec.members}) == [8, 16, 32, 64]
                budgets = {m.sae.n: m.train.tokens for m in spec.members}
                for n, t in budgets.items():  # tokens to convergence ∝ n^0.6 (whole batches)
                    assert t == pytest.approx(budgets[1024] * (n / 1024) ** 0.6, abs=p.batch_size)
            if u.name == "dead-latents" and p is FULL:
                assert {(m.train.tied_init, m.train.aux_coef > 0) for m in spec.members} == {
                    (a, b) for a in (True, False) for b in (True, False)} and {m.sae.n for m in spec.members} == {16384}


TINY = dataclasses.replace(QUICK, name="tiny", cache_tokens={"default": 2048, "gemma3-270m": 2048}, batch_size=256,
                           heldout_tokens=512, prog_n=128, prog_k=4, prog_tokens=2560, dead_n=128, dead_k=4,
                           dead_tokens=2560, notes=[])


@pytest.mark.slow
def test_stop_resume_and_rerun_elsewhere_on_the_real_model(tmp_path, monkeypatch):
    """Two units on SmolLM2: stopped part-way by the budget, resumed, then rerun with no work folder (a fresh machine):
    nothing retrained, the same results, and a report whose findings follow from them."""
    out, work = tmp_path / "out", tmp_path / "work"
    calls = {"n": 0}
    real_passed = runner.Deadline.passed

    def passed(self):  # the budget "runs out" a few batches into the first unit (asked between harvest shards too)
        calls["n"] += 1
        return calls["n"] > 6 or real_passed(self)

    monkeypatch.setattr(runner.Deadline, "passed", passed)
    logs: list[str] = []
    first = reproduce(TINY, out, work, 60.0, None, logs.append, only=["progressive", "dead-latents"])
    assert first["pending"] == ["dead-latents", "progressive"] and first["finished"] == []
    assert any("stopped at stream step" in x for x in logs), logs
    started = [m for m in (work / "dead-latents").iterdir() if m.is_dir()]
    assert len(started) == 4 and all(any((m / "checkpoints").iterdir()) for m in started)  # each saved its state
    assert not (work / "progressive").exists()  # units run in order: the next one waits for the next run
    monkeypatch.setattr(runner.Deadline, "passed", real_passed)

    evals: list[tuple[list[str], str]] = []

    def evaluate(names, sae_dir):
        evals.append((names, sae_dir.parent.name))
        return {"metrics": {"progressive": {"k": [1, 2, 4, 8, 16], "nmse": [0.9, 0.8, 0.7, 0.6, 0.5], "l0": [1, 2, 4, 8, 16],
                                            "train_k": 4, "threshold": {"l0": [1, 4, 16], "nmse": [0.9, 0.7, 0.5]}}}}

    logs.clear()
    second = reproduce(TINY, out, work, 0.0, evaluate, logs.append, only=["progressive", "dead-latents"])
    assert second["finished"] == ["dead-latents", "progressive"] and second["pending"] == []
    assert any("resuming" in x for x in logs), logs  # the stopped members resumed from their checkpoints
    assert [e[0] for e in evals] == [["progressive"], ["progressive"]]  # the unit's extra metric, its members only
    stored = {f.name: f.read_text() for u in ("progressive", "dead-latents") for f in (out / u / "members").glob("*.json")}
    assert len(stored) == 6 and all(json.loads(t)["tokens"] == 2560 for t in stored.values())

    shutil.rmtree(work)  # a fresh machine: only the committed OUT
    logs.clear()
    third = reproduce(TINY, out, work, 0.0, None, logs.append, only=["progressive", "dead-latents"])
    assert third["finished"] == ["dead-latents", "progressive"]
    assert any("6 finished member(s) restored" in x or "restored" in x for x in logs)
    assert not any("resuming" in x or "harvest" in x.lower() for x in logs), logs  # nothing trained, no model run
    assert {f.name: f.read_text() for u in ("progressive", "dead-latents") for f in (out / u / "members").glob("*.json")} == stored
    chunks = [json.loads(x) for x in (out / "chunks.jsonl").read_text().splitlines()]
    assert len(chunks) == 3 and chunks[0]["pending"] and not chunks[2]["pending"]

    doc = build_report(TINY, out, bootstrap=0)
    f = {x["id"]: x for x in doc["findings"]}
    dead = f["dead"]
    assert dead["verdict"] in ("reproduced", "partly", "not") and len(dead["numbers"]["table"]) == 4
    by = {(r["tied_init"], r["auxk"]): r["dead_frac"] for r in dead["numbers"]["table"]}
    assert dead["criteria"][1]["holds"] == (by[(False, False)] > by[(True, True)])  # the verdict follows the numbers
    assert f["progressive"]["numbers"]["nmse_drop_k_to_4k"]["topk"] == pytest.approx(0.7 - 0.5)  # nMSE at k=4 minus at 16
    assert f["scaling"]["verdict"] == "pending" and f["frontier"]["verdict"] == "pending"
    html = (out / "report.html").read_text()
    assert "dead.png" in html and (out / "figures" / "dead.png").stat().st_size > 1000
    assert "scaling_loss_vs_n.png" not in html  # a pending finding draws nothing


def test_damaged_report_inputs_are_one_line_errors(tmp_path):
    """A cut-short chunks.jsonl line or a damaged member file names the file and the fix (it was a JSON traceback)."""
    out = tmp_path / "out"
    (out / "progressive" / "members").mkdir(parents=True)
    (out / "chunks.jsonl").write_text('{"seconds": 3.0}\n{"seconds": 4')
    with pytest.raises(SaescaleError, match=r"chunks.jsonl:2.*delete that line"):
        build_report(TINY, out, bootstrap=0)
    (out / "chunks.jsonl").write_text('{"seconds": 3.0}\n')
    (out / "progressive" / "members" / "multi_topk_true.json").write_text("{not json")
    with pytest.raises(SaescaleError, match=r"multi_topk_true.json is damaged.*delete it"):
        build_report(TINY, out, bootstrap=0)


def test_members_pick_units_and_an_unpicked_rest_does_not_hold_back_later_units(tmp_path, monkeypatch):
    """--members: only the units a pattern reaches run, with a selector on UNIT/MEMBER; a unit left with
    unpicked members does not stop the next one (only a budget stop does), and chunks.jsonl records the patterns."""
    calls: list[tuple[str, list[str]]] = []
    ids = {u.name: runner.member_ids(u) for u in units(FULL)}
    assert "n8192-k16" in ids["scaling-default"] and ids["dead-latents"][0] == "tied_init_true-aux_coef_0"

    def fake_run_unit(unit, p, out, work, deadline, evaluate, log, progress, select):
        calls.append((unit.name, [i for i in ids[unit.name] if select(f"{unit.name}/{i}")]))
        return "unselected" if unit.name == "scaling-default" else "done"

    monkeypatch.setattr(runner, "run_unit", fake_run_unit)
    s = reproduce(FULL, tmp_path, tmp_path / "work", 0.0, None, print,
                  members=["scaling-default/n8192-*", "scaling-default/n16384-k32", "progressive/*"])
    assert calls == [("scaling-default", ["n8192-k8", "n8192-k16", "n8192-k32", "n8192-k64", "n16384-k32"]),
                     ("progressive", ["multi_topk_false", "multi_topk_true"])]
    assert s["finished"] == ["progressive"] and s["pending"] == ["scaling-default"] and not s["stopped"]
    said = runner.summary_line("full", s)  # not 'budget reached': the budget (none) did not stop anything
    assert "budget reached" not in said and "wait for a run that picks them (scaling-default)" in said
    assert "budget reached: rerun" in runner.summary_line("full", {**s, "stopped": True})
    line = json.loads((tmp_path / "chunks.jsonl").read_text().splitlines()[-1])
    assert line["selected"] == ["scaling-default/n8192-*", "scaling-default/n16384-k32", "progressive/*"]


def test_unknown_member_pattern_is_one_line(capsys):
    from saescale.cli import main

    assert main(["reproduce", "--members", "scaling-default/n999-*", "--report-only"]) == 2
    err = capsys.readouterr().err
    assert "--members: scaling-default/n999-* matches no member of the full profile" in err and "Traceback" not in err


@pytest.mark.parametrize("finished", [False, True], ids=["unit-unfinished", "unit-finished"])
def test_committed_members_resume_on_any_cpu_and_a_mismatch_is_refused_before_the_harvest(tmp_path, monkeypatch,
                                                                                          finished):
    """The units fix the harvest's model dtype: on a CPU where 'auto' means bfloat16, the committed float32
    members still match the spec (they were refused, after a 14-minute harvest, before it was fixed); a member
    recorded with other activations is refused in one line before anything is harvested, whether members are
    left to train or the unit is finished (its results would otherwise be reported beside a spec they do not match)."""
    from saescale.activations import precision
    from saescale.sweep.records import check_rerun

    monkeypatch.setenv("SAESCALE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(precision, "fast_bf16", lambda device="cpu": True)
    unit, out, work = units(FULL)[0], tmp_path / "out", tmp_path / "work"
    shutil.copytree("docs/reproduce/scaling-default/members", out / unit.name / "members")
    if not finished:
        for f in (out / unit.name / "members").glob("n32768-*.json"):
            f.unlink()
    text = unit.spec_toml(FULL, str(work / unit.name))
    (work / unit.name).mkdir(parents=True)
    (work / "spec.toml").write_text(text)
    committed = len(list((out / unit.name / "members").glob("*.json")))
    assert committed >= 12 and runner.restore_members(out / unit.name, work / unit.name, text) == committed
    check_rerun(load_spec(work / "spec.toml"))  # no refusal
    f = work / unit.name / "n1024-k8" / "result.json"
    r = json.loads(f.read_text())
    r["settings"]["data"]["activations"]["model_dtype"] = "bfloat16"
    f.write_text(json.dumps(r))
    with pytest.raises(SaescaleError, match="n1024-k8 was trained with data.activations.model_dtype = 'bfloat16'"):
        runner.run_unit(unit, FULL, out, work, runner.Deadline(0), None, print)
    assert not (tmp_path / "home" / "acts").exists()  # nothing harvested
