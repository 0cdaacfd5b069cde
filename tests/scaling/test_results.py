"""Reading results lines: one definition of compute (12·d·n per token) for old and new files; both dead-latent namings."""

import json
from pathlib import Path

import pytest

from saescale.scaling.analysis import fit_all
from saescale.scaling.results import read_results
from saescale.sweep.runner import flops_per_token
from tests.scaling.test_groups import line, members
from tests.scaling.test_scaling import D

DOCS = Path(__file__).resolve().parents[2] / "docs" / "scaling"


def test_compute_is_12_d_n_per_token_where_defined():
    """6 FLOPs per weight per token over the 2·d·n weights, as the docstring's own arithmetic says."""
    assert flops_per_token(576, 1024) == 12 * 576 * 1024
    doc = " ".join(flops_per_token.__doc__.split())
    assert "12 d n" in doc and "forward 2 d n (encoder) + 2 d n (decoder) = 4 d n" in doc and "8 d n" in doc


def test_older_lines_recorded_6_d_n_and_are_read_at_12_d_n():
    old = line(n=2048, flops_per_token=6 * D * 2048)
    (m,) = members([old])
    assert m.flops_per_token == 12 * D * 2048 and m.recorded_flops_per_token == 6 * D * 2048
    assert m.curve_compute[-1] == 12 * D * 2048 * m.tokens
    no_d = {k: v for k, v in line(n=2048, flops_per_token=777.0).items() if k != "d"}
    assert members([no_d])[0].flops_per_token == 777.0  # without d only the recorded value is known


@pytest.mark.parametrize("name,window,members_", [("sweep-nk", 200_000, 16), ("sweep-lr", 40_960, 28)])
def test_committed_results_read_with_todays_names_and_compute(name, window, members_):
    """docs/scaling/*-results.jsonl (retrained 2026-12-01): one group, today's names and W, C = 12·d·n·tokens."""
    ms = read_results(DOCS / f"{name}-results.jsonl")
    raw = [json.loads(x) for x in (DOCS / f"{name}-results.jsonl").read_text().splitlines()]
    assert len(ms) == members_ and len({m.group for m in ms}) == 1
    for m, r in zip(ms, raw):
        assert m.flops_per_token == 12 * r["d"] * r["n"] == r["flops_per_token"]
        assert (m.dead_frac, m.never_fired_frac) == (r["dead_frac"], r["never_fired_frac"])
        assert m.dead_window_tokens == window == r["dead_window_tokens"] and m.heldout_tokens == 10_000
    fit = json.loads((DOCS / f"{name}-fit.json").read_text())  # the committed fit is on the same scale
    assert fit["groups"][fit["primary"]]["compute"]["flops_per_n"] == 12 * 576
    assert fit_all(ms, bootstrap=0).primary == fit["primary"] == "default/topk"
