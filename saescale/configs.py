"""Typed dataclass configs <-> JSON-ready dicts, with one-line errors for a damaged record (and for a
damaged JSON-lines file of them, :func:`read_jsonl`).

The lowest layer: cfg.json, run.json, checkpoints and sweep specs all go through these two
functions, and nothing here knows about the command line (:mod:`saescale.cliargs` builds the
options from the same dataclasses).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from saescale.errors import SaescaleError


def unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """(T, True) for ``T | None``, else (tp, False)."""
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0], True
    return tp, False


def field_default(f: dataclasses.Field) -> Any:
    """A field's default value (calling its factory), or ``dataclasses.MISSING``."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


INT64_MAX = 2**63 - 1
_RULE = re.compile(r"^\s*(?:(>=|>|<=|<)\s*(\S+)|([\[(])\s*(\S+)\s*,\s*(\S+)\s*([\])]))\s*$")


def valid(default: Any, rule: str) -> Any:
    """A config field whose value must satisfy ``rule`` ('> 0', '>= 1', '[0, 1)', '(0, 1]', ...).

    The rule is shown in the option's --help and checked by :func:`check_valid` (None, the "unset"
    value of an optional field, always passes)."""
    _bounds(rule)  # a typo in a rule fails at import
    return dataclasses.field(default=default, metadata={"valid": rule})


def _bounds(rule: str) -> tuple[float, bool, float, bool]:
    """(low, low inclusive, high, high inclusive) of a rule."""
    m = _RULE.match(rule)
    if not m:
        raise ValueError(f"bad range rule {rule!r}")
    op, x, lb, lo, hi, rb = m.groups()
    if op:
        v = float(x)
        return {">": (v, False, math.inf, False), ">=": (v, True, math.inf, False),
                "<": (-math.inf, False, v, False), "<=": (-math.inf, False, v, True)}[op]
    return float(lo), lb == "[", float(hi), rb == "]"


def in_range(value: float, rule: str) -> bool:
    """Whether a finite ``value`` satisfies ``rule`` (NaN never does)."""
    lo, lo_in, hi, hi_in = _bounds(rule)
    return (value >= lo if lo_in else value > lo) and (value <= hi if hi_in else value < hi)


def check_valid(cfg: Any, option_prefix: str = "") -> None:
    """Refuse (one line naming ``--<option_prefix><field>``) any numeric field of dataclass ``cfg`` that is
    NaN or infinite, an int beyond 64 bits, or outside its field's ``valid`` rule; lists element-wise."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if v is None or isinstance(v, (bool, str)) or not isinstance(v, (int, float)):
                continue
            opt = f"--{option_prefix}{f.name.replace('_', '-')}"
            rule = f.metadata.get("valid")
            said = f"in {rule}" if rule and rule.lstrip()[0] in "[(" else rule
            if isinstance(v, float) and not math.isfinite(v):
                raise SaescaleError(f"{opt} must be a finite number{f' {said}' if rule else ''}, got {v}")
            if isinstance(v, int) and abs(v) > INT64_MAX:
                raise SaescaleError(f"{opt} = {v} does not fit in 64 bits; give a value {said or 'below 2^63'}")
            if rule and not in_range(v, rule):
                unset = " (or leave it unset for the default)" if field_default(f) is None else ""
                raise SaescaleError(f"{opt} must be {said}{unset}, got {v}")


def non_default(cfg: Any) -> list[str]:
    """The names of the fields of dataclass ``cfg`` set to something other than their default."""
    default = type(cfg)()
    return [f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(default, f.name)]


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) dataclass config: tuples as lists, as JSON reads them back (so a
    record compares equal to the same record read from a file)."""
    return _lists(dataclasses.asdict(cfg))


def _lists(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _lists(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_lists(x) for x in v]
    return v


def config_from_dict(cls: type, data: dict[str, Any], what: str = "config", strict: bool = False) -> Any:
    """Rebuild a (nested) dataclass from a dict, with one-line errors for missing/unknown/wrong fields.

    ``strict``: every field must be present (a file we wrote has them all), defaults are not filled in.
    """
    if not isinstance(data, dict):
        raise SaescaleError(f"{what}: expected a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise SaescaleError(f"{what}: unknown field(s) {', '.join(unknown)}; remove them or upgrade saescale")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            if strict or field_default(f) is dataclasses.MISSING:
                raise SaescaleError(f"{what}: missing required field '{f.name}'")
            continue
        tp = hints[f.name]
        v = data[f.name]
        if dataclasses.is_dataclass(tp):
            v = config_from_dict(tp, v, f"{what}.{f.name}", strict)
        else:
            v = _check_type(v, tp, f"{what}.{f.name}")
        kwargs[f.name] = v
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise SaescaleError(f"{what}: {e}") from None


def _check_type(v: Any, tp: Any, where: str) -> Any:
    base, optional = unwrap_optional(tp)
    if v is None:
        if optional:
            return None
        raise SaescaleError(f"{where}: must not be null")
    origin = get_origin(base)
    if origin is Literal:
        if v not in get_args(base):
            raise SaescaleError(f"{where}: {v!r} is not one of {list(get_args(base))}")
        return v
    if origin in (tuple, list):
        if not isinstance(v, list):
            raise SaescaleError(f"{where}: expected a list, got {type(v).__name__}")
        return tuple(v) if origin is tuple else list(v)
    if base is float and isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    if base in (int, float, str, bool) and (type(v) is not base):
        raise SaescaleError(f"{where}: expected {base.__name__}, got {type(v).__name__} {v!r}")
    return v


def read_jsonl(path: Path, fix: str) -> list[tuple[int, Any]]:
    """(line number, decoded JSON) of every non-blank line of ``path``; a line that is not UTF-8 or not JSON
    (a last line cut short says so) is a one-line error naming ``path:line`` and ``fix``."""
    lines = path.read_bytes().split(b"\n")
    out = []
    for i, raw in enumerate(lines, start=1):
        where = f"{path}:{i}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SaescaleError(f"{where}: not UTF-8 text (byte {e.start + 1} of the line); {fix}") from None
        if not text.strip():
            continue
        try:
            out.append((i, json.loads(text)))
        except json.JSONDecodeError as e:
            cut = " (the file ends inside it: truncated)" if i == len(lines) else ""
            raise SaescaleError(f"{where}: not valid JSON ({e.msg}){cut}; {fix}") from None
    return out
