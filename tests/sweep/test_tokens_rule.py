"""Sweeps that converge: per-member budgets by a tokens rule, the convergence test, a clean stop, on_finish."""

import json
from pathlib import Path

import pytest

from saescale.errors import SaescaleError
from saescale.sweep.runner import last_doubling, run_sweep
from saescale.sweep.spec import load_spec

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = """
[sweep]
source = "synthetic"
heldout_tokens = 1024
curve_points = 3
{rule}
[grid]
n = [32, 128]
k = [4]
[train]
tokens = 5120
batch_size = 512
lr = 0.01
checkpoint_every = 100
[synthetic]
d = 16
features = 64
k = 4
"""


def spec_file(tmp_path: Path, rule: str) -> Path:
    p = tmp_path / "spec.toml"
    p.write_text(SPEC.format(rule=rule))
    return p


def test_tokens_rule_scales_budgets_with_n_and_records_them(tmp_path):
    spec = load_spec(spec_file(tmp_path, 'tokens_rule = "n^0.6"'))
    budgets = {m.sae.n: m.train.tokens for m in spec.members}
    assert budgets[32] == 5120  # the smallest n gets [train] tokens
    assert budgets[128] == round(5120 * 4 ** 0.6 / 512) * 512 == 11776  # x (128/32)^0.6, whole batches
    # the shared dead window is the shortest budget's default, as for fixed budgets
    assert {m.train.dead_tokens for m in spec.members} == {5120}
    results = run_sweep(spec)
    assert [r["tokens"] for r in results] == [5120, 11776]
    assert all(r["tokens_rule"] == "n^0.6" for r in results)
    for r in results:  # the convergence test comes from the half-budget curve point
        ld = r["last_doubling"]
        assert ld["tokens_to"] == r["tokens"] and ld["tokens_from"] == pytest.approx(r["tokens"] / 2, rel=0.1)
        half = next(c["loss"] for c in r["curve"] if c["tokens"] == ld["tokens_from"])
        assert ld["rel_change"] == pytest.approx((half - r["loss"]) / r["loss"], rel=1e-6)


def test_tokens_base_n_and_fixed(tmp_path):
    spec = load_spec(spec_file(tmp_path, 'tokens_rule = "n^0.5"\ntokens_base_n = 128'))
    assert {m.sae.n: m.train.tokens for m in spec.members} == {32: 2560, 128: 5120}
    assert {m.train.tokens for m in load_spec(spec_file(tmp_path, "")).members} == {5120}


@pytest.mark.parametrize("rule,needle", [('tokens_rule = "n**0.6"', "with a number P"),
                                         ('tokens_rule = "n^0.6"\ntokens_base_n = -1', "tokens_base_n")])
def test_bad_tokens_rule_is_one_line(tmp_path, rule, needle):
    with pytest.raises(SaescaleError, match=needle):
        load_spec(spec_file(tmp_path, rule))


def test_tokens_rule_and_a_tokens_grid_are_refused(tmp_path):
    p = tmp_path / "spec.toml"
    p.write_text(SPEC.format(rule='tokens_rule = "n^0.6"').replace("k = [4]", "k = [4]\ntokens = [1024, 2048]"))
    with pytest.raises(SaescaleError, match="drop one"):
        load_spec(p)


def test_last_doubling_takes_the_point_nearest_half():
    curve = [{"tokens": 100, "loss": 1.0}, {"tokens": 480, "loss": 0.6}, {"tokens": 1000, "loss": 0.5}]
    assert last_doubling(curve) == {"tokens_from": 480, "tokens_to": 1000, "rel_change": pytest.approx(0.2)}
    assert last_doubling(curve[:1]) is None


def test_stop_checkpoints_and_a_rerun_gives_the_uninterrupted_results(tmp_path):
    ref_spec = load_spec(spec_file(tmp_path, ""))
    ref_spec.settings.out = str(tmp_path / "a")
    ref = run_sweep(ref_spec)
    calls = []

    def stop():
        calls.append(1)
        return len(calls) >= 3  # after the third batch of the stream

    spec = load_spec(spec_file(tmp_path, ""))
    spec.settings.out = str(tmp_path / "b")
    assert run_sweep(spec, stop=stop) == []  # nobody finished: 3 of 10 batches
    for m in spec.members:  # each saved its state at the stop, not only every checkpoint_every steps
        assert (tmp_path / "b" / m.id / "checkpoints").is_dir()
        assert any((tmp_path / "b" / m.id / "checkpoints").iterdir())
    seen = []
    again = run_sweep(spec, on_finish=lambda m, sae: seen.append((m.id, sae.name)) or {"n_again": m.sae.n})
    strip = lambda r: {k: v for k, v in r.items() if k not in ("extra", "settings")}  # noqa: E731
    assert [strip(r) for r in again] == [strip(r) for r in ref]  # resumed bit-for-bit
    assert [r["extra"] for r in again] == [{"n_again": 32}, {"n_again": 128}]
    assert seen == [(m.id, "sae") for m in spec.members]
    assert json.loads((tmp_path / "b" / "n32-k4" / "result.json").read_text())["extra"] == {"n_again": 32}
