"""A kill after the last checkpoint but before the final files (found by benchmarks/kill_trials.py --at-end):
the rerun writes the same final files as the uninterrupted run. Before: train crashed in its report on the
empty final metrics (and kept crashing on every rerun); a sweep member lost its dead fraction and its last
curve point."""

from __future__ import annotations

import json
import shutil

import pytest

from saescale.cli import main
from tests.commands.cli_helpers import TRAIN, sweep_spec

pytestmark = pytest.mark.usefixtures("one_thread")


def test_train_killed_after_its_last_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TRAIN, "--out", str(out)]) == 0
    summary, report = (json.loads((out / f).read_text()) for f in ("summary.json", "eval.json"))
    for f in ("summary.json", "eval.json"):
        (out / f).unlink()
    shutil.rmtree(out / "sae")  # what a kill right after the final checkpoint leaves
    capsys.readouterr()
    assert main(["train", *TRAIN, "--out", str(out)]) == 0, capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text())["final_train_metrics"] == summary["final_train_metrics"]
    assert summary["final_train_metrics"]["dead_frac"] is not None
    assert json.loads((out / "eval.json").read_text()) == report


SPEC = sweep_spec(curve_points=3, checkpoint_every=4)


def test_sweep_member_killed_after_its_last_checkpoint(tmp_path, capsys, monkeypatch):
    import saescale.sweep.runner as runner

    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    argv = lambda out: ["sweep", str(spec), "--out", str(out), "--no-progress", "--no-fit"]  # noqa: E731
    assert main(argv(tmp_path / "ref")) == 0
    finish = runner._finish

    def killed(r, shared):  # the kill: after the last checkpoint and curve point, before the member's files
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "_finish", killed)
    out = tmp_path / "sweep"
    assert main(argv(out)) == 130
    monkeypatch.setattr(runner, "_finish", finish)
    member = sorted(p for p in out.iterdir() if p.is_dir())[0]
    assert (member / "checkpoints" / "latest.json").is_file() and not (member / "result.json").exists()
    curve = (member / "curve.jsonl").read_text().splitlines()
    (member / "curve.jsonl").write_text("".join(line + "\n" for line in curve[:-1]))  # killed before its last point
    capsys.readouterr()
    assert main(argv(out)) == 0, capsys.readouterr().err
    for m in sorted(p.name for p in (tmp_path / "ref").iterdir() if p.is_dir()):
        ref, again = (json.loads((root / m / "result.json").read_text()) for root in (tmp_path / "ref", out))
        assert again == ref and again["dead_frac"] is not None and len(again["curve"]) == len(curve)
