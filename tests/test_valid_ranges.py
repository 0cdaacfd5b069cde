"""Every numeric option has a documented valid range, shown in --help, and values outside it (NaN, inf,
beyond 64 bits, out of range) are refused in one line naming the option (issue 14)."""

from __future__ import annotations

import math

import pytest

from saescale.cli import _commands
from saescale.cliargs import _leaf_fields, build_parser, parse_config
from saescale.configs import INT64_MAX, _bounds, check_valid, in_range, unwrap_optional
from saescale.errors import SaescaleError
from saescale.train.config import TrainConfig

OPTIONS = [(cmd, opt, unwrap_optional(tp)[0], f.metadata.get("valid"))
           for cmd, (_, cls, _) in _commands().items() for _, opt, f, tp, _ in _leaf_fields(cls)
           if unwrap_optional(tp)[0] in (int, float)]
POSITIONAL = {"eval": ["x/sae"], "sweep": ["x.toml"], "fit": ["x"]}


def test_every_numeric_option_has_a_rule_shown_in_help():
    assert len(OPTIONS) > 50
    missing = [f"{c} --{o}" for c, o, _, rule in OPTIONS if not rule]
    assert not missing, missing
    for cmd, (_, cls, _) in _commands().items():
        helps = {a.option_strings[0]: a.help for a in build_parser(cls, cmd)._actions if a.option_strings}
        for c, opt, _, rule in OPTIONS:
            if c == cmd:
                assert f"Valid: {rule}." in helps[f"--{opt}"], (cmd, opt)


def _outside(tp: type, rule: str) -> list[float]:
    lo, lo_in, hi, hi_in = _bounds(rule)
    out = []
    if math.isfinite(lo):
        out.append(lo - 1 if lo_in else lo)
    if math.isfinite(hi):
        out.append(hi + 1 if hi_in else hi)
    return [int(v) if tp is int else float(v) for v in out]


@pytest.mark.parametrize("cmd,opt,tp,rule", OPTIONS, ids=[f"{c}--{o}" for c, o, _, _ in OPTIONS])
def test_values_outside_the_rule_are_refused(cmd, opt, tp, rule):
    cls = _commands()[cmd][1]
    bad = _outside(tp, rule) + ([INT64_MAX + 1] if tp is int else [math.nan, math.inf, -math.inf])
    for v in bad:
        with pytest.raises(SaescaleError) as e:
            parse_config(cls, [*POSITIONAL.get(cmd, []), f"--{opt}={v}"], cmd)
        assert f"--{opt}" in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_rules():
    assert in_range(0.5, "[0, 1)") and not in_range(1.0, "[0, 1)") and in_range(0.0, "[0, 1)")
    assert in_range(1.0, "(0, 1]") and not in_range(0.0, "(0, 1]") and not in_range(math.nan, "> 0")
    assert in_range(2, ">= 2") and not in_range(2, "> 2")
    with pytest.raises(ValueError):
        _bounds("positive")


def test_spec_and_record_values_are_checked_too():
    """The rule lives in the config, so a sweep spec or a run.json with lr = NaN is refused like the option."""
    with pytest.raises(SaescaleError, match="--lr must be a finite number > 0"):
        TrainConfig(lr=math.nan)
    with pytest.raises(SaescaleError, match="--adam-beta2 must be in \\[0, 1\\), got 1.5"):
        TrainConfig(adam_beta2=1.5)
    check_valid(TrainConfig(lr=None, warmup_steps=0, grad_clip=0.0))  # unset and 0-means-off stay valid
