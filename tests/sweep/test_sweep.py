"""``saescale sweep``: spec parsing, members equal to separate runs, kill and member-by-member resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saescale.cli import main
from saescale.data.synthetic import SyntheticConfig, SyntheticSource
from saescale.errors import SaescaleError
from saescale.sweep.runner import curve_steps, run_sweep
from saescale.sweep.spec import load_spec
from saescale.train.run import train_sae

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = """
[sweep]
source = "synthetic"
heldout_tokens = 2048
curve_points = 4
[grid]
n = [64, 128]
k = [4, 8]
tokens = [{short}, {long}]
[train]
batch_size = 512
lr = 0.01
checkpoint_every = 10
log_every = 5
[synthetic]
d = 16
features = 64
k = 4
"""


def write_spec(tmp_path: Path, short: int = 10240, long: int = 30720, name: str = "spec.toml") -> Path:
    p = tmp_path / name
    p.write_text(SPEC.format(short=short, long=long))
    return p


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "sae" / "sae.safetensors")


def test_spec_expands_the_grid(tmp_path):
    spec = load_spec(write_spec(tmp_path))
    assert len(spec.members) == 8
    assert spec.members[0].id == "n64-k4-tokens_10240" and spec.members[-1].id == "n128-k8-tokens_30720"
    assert {(m.sae.n, m.sae.k, m.train.tokens) for m in spec.members} == {
        (n, k, t) for n in (64, 128) for k in (4, 8) for t in (10240, 30720)}
    assert all(m.train.lr == 0.01 and m.train.batch_size == 512 for m in spec.members)
    assert spec.out == Path("runs/sweep-spec")


def test_old_synth_prefixed_keys_still_load(tmp_path):
    new = load_spec(write_spec(tmp_path))
    old = tmp_path / "old.toml"
    old.write_text(write_spec(tmp_path).read_text().replace("\nd = 16\nfeatures = 64\nk = 4",
                                                            "\nsynth_d = 16\nsynth_features = 64\nsynth_k = 4"))
    assert "synth_d = 16" in old.read_text()
    assert load_spec(old).synthetic == new.synthetic == SyntheticConfig(d=16, features=64, k=4)


def test_curve_steps_are_log_spaced_and_end_at_the_budget():
    s = sorted(curve_steps(1000, 4))
    assert s == [1, 10, 100, 500, 1000]  # and the half-budget point of the convergence test
    assert curve_steps(5, 1) == {5}


@pytest.mark.parametrize("text,needle", [
    ("[grid]\nwidth = [1, 2]\n", "unknown key 'width'"),
    ("[grid]\nsynth_k = [4, 8]\n", "shared by all members"),
    ("[grid]\nn = 1024\n", "must be a non-empty list"),
    ("[grid]\nn = [1, 1]\n", "lists a value twice"),
    ("[grid]\nbatch_size = [512, 1024]\n", "share batch_size"),
    ("[grids]\nn = [64]\n", "unknown table(s) grids"),
    ("[grid]\nn = [64\n", "not valid TOML"),
    ("[sweep]\n[grid]\n", "[grid] is empty"),
    ("[grid]\nn = [64]\n[train]\nlr = 'fast'\n", "lr"),
])
def test_bad_specs_are_one_line_errors(tmp_path, capsys, text, needle):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    assert main(["sweep", str(p), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and needle in err and "Traceback" not in err and err.count("\n") == 1


def test_missing_spec_is_a_one_line_error(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "nope.toml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_members_equal_separate_runs_and_results_are_recorded(tmp_path):
    """Each member trained in the sweep has bit-for-bit the weights of its own ``train_sae`` run."""
    spec = load_spec(write_spec(tmp_path, short=5120, long=10240))
    spec.members = spec.members[::3]  # n64-k4-10240 ... : 3 members of different n, k, budgets
    spec.settings.out = str(tmp_path / "sweep")
    results = run_sweep(spec, progress=False)
    assert [r["id"] for r in results] == [m.id for m in spec.members]
    lines = (tmp_path / "sweep" / "results.jsonl").read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == [m.id for m in spec.members]
    for m, r in zip(spec.members, results):
        alone = train_sae(m.sae, m.train, SyntheticSource(spec.synthetic), tmp_path / "alone" / m.id)
        together = weights(tmp_path / "sweep" / m.id)
        for name, t in alone.sae.state_dict().items():
            assert torch.equal(together[name], t), (m.id, name)
        assert r["n"] == m.sae.n and r["k"] == m.sae.k and r["tokens"] == m.train.tokens
        assert r["flops_per_token"] == 12 * 16 * m.sae.n  # flops_per_token = 12 d n
        assert 0 < r["loss"] < 1 and r["curve"][-1]["tokens"] == m.train.tokens
        assert r["curve"][-1]["loss"] == pytest.approx(r["loss"])  # no EMA: the last curve point is the final SAE
        toks = [c["tokens"] for c in r["curve"]]
        assert toks == sorted(toks) and len(toks) in (4, 5)  # 4 log-spaced points, and the half-budget one unless it is one of them
        assert r["settings"]["train"]["seed"] == 0 and r["model"] == "synthetic"


def run_cli(spec: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "saescale", "sweep", str(spec), "--out", str(out), "--threads", "1",
                             "--no-progress", "--no-fit"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)


@pytest.mark.slow
def test_killed_sweep_finishes_only_the_unfinished_members(tmp_path):
    spec = write_spec(tmp_path, short=10240, long=204800)
    ref = run_cli(spec, tmp_path / "ref")
    assert ref.wait(timeout=300) == 0, ref.stdout.read()

    out = tmp_path / "killed"
    proc = run_cli(spec, out)
    short = [f"n{n}-k{k}-tokens_10240" for n in (64, 128) for k in (4, 8)]
    while not all((out / m / "result.json").exists() for m in short) and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(0.3)  # into the long members' training, between their checkpoints
    assert proc.poll() is None, "sweep finished before it could be killed; raise the long budget"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {m: (out / m / "result.json").stat().st_mtime_ns for m in short}
    unfinished = [p.name for p in out.iterdir() if p.is_dir() and not (p / "result.json").exists()]
    assert len(unfinished) == 4

    again = run_cli(spec, out)
    text = again.communicate(timeout=300)[0]
    assert again.returncode == 0, text
    assert "4 of 8 members finished, 4 to train" in text
    assert all(f"resuming {out / m}" in text for m in unfinished)
    assert {m: (out / m / "result.json").stat().st_mtime_ns for m in short} == done  # not retrained
    for m in short + unfinished:
        a, b = weights(out / m), weights(tmp_path / "ref" / m)
        assert all(torch.equal(a[key], b[key]) for key in b), m
    assert (out / "results.jsonl").read_text() == (tmp_path / "ref" / "results.jsonl").read_text().replace(
        str(tmp_path / "ref"), str(out))


def test_members_share_one_dead_window(tmp_path):
    """Before: each member's window was min(10M, its own tokens / 10), so dead fractions of different budgets
    counted different windows (and a short run's window could be under one batch)."""
    spec = load_spec(write_spec(tmp_path, short=10240, long=30720))
    assert {m.train.dead_tokens for m in spec.members} == {10 * 512}  # 10 batches: the floor over 10240 / 10
    p = tmp_path / "grid.toml"
    p.write_text(write_spec(tmp_path).read_text().replace("[train]", "[train]\ndead_tokens = 7000"))
    assert {m.train.dead_tokens for m in load_spec(p).members} == {7000}
    p.write_text(write_spec(tmp_path).read_text().replace("k = [4, 8]", "k = [4, 8]\ndead_tokens = [1000, 2000]"))
    with pytest.raises(SaescaleError, match="share dead_tokens"):
        load_spec(p)


def test_select_trains_only_the_picked_members_and_a_later_run_the_rest(tmp_path):
    """``select`` (reproduce --members) trains the members it picks and leaves the others untouched; a run
    without it then trains only those others, and each member has the weights it gets in a sweep of its own."""
    spec = load_spec(write_spec(tmp_path, short=2560, long=5120))
    spec.members = spec.members[:2]  # n64-k4-tokens_2560, n64-k4-tokens_5120
    spec.settings.out = str(tmp_path / "sweep")
    logs: list[str] = []
    first = run_sweep(spec, progress=False, log=logs.append, select=lambda i: i.endswith("2560"))
    assert [r["id"] for r in first] == ["n64-k4-tokens_2560"] and not (tmp_path / "sweep" / "n64-k4-tokens_5120").exists()
    assert any("1 to train (1 others not selected)" in x for x in logs), logs
    second = run_sweep(spec, progress=False)
    assert [r["id"] for r in second] == [m.id for m in spec.members]
    alone = load_spec(write_spec(tmp_path, short=2560, long=5120, name="alone.toml"))
    alone.members, alone.settings.out = alone.members[:2], str(tmp_path / "alone")
    run_sweep(alone, progress=False)
    for m in spec.members:
        a, b = weights(tmp_path / "sweep" / m.id), weights(tmp_path / "alone" / m.id)
        assert all(torch.equal(a[name], b[name]) for name in a), m.id
