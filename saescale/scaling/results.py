"""Load the members of finished sweeps (``results.jsonl``: one JSON object per trained SAE).

Each line names one member: its shape (``n`` latents, ``k`` active, width ``d``), its training
(``lr``, ``tokens``, ``seed``), the subject model (``model``, ``model_params`` or null, ``hook``),
the final held-out normalised MSE ``loss``, ``curve`` (the held-out nMSE at increasing token
counts), and ``settings`` = {"sae": ..., "train": ...}, every setting as recorded.

Compute: C = flops_per_token · tokens with flops_per_token = 12·d·n
(:func:`saescale.sweep.runner.flops_per_token`). When a line gives ``d`` it is recomputed from d
and n, so older files (which recorded 6·d·n) read on the same scale; a line without ``d`` is
taken at its recorded ``flops_per_token``.

Dead latents, two figures: ``dead_frac`` = the paper's dead fraction, latents that did not
fire in the last W = ``dead_window_tokens`` training tokens; ``never_fired_frac`` = latents that
never fired on the M = ``heldout_tokens`` held-out tokens. Older files (no ``never_fired_frac``
nor ``dead_window_tokens``) called these ``train_dead_frac`` and ``dead_frac``; both namings are
read (W of an older record: its dead_tokens, or the default of the time max(1, min(10M, tokens / 10))).

Comparability (:attr:`Member.group`): every recorded setting except the fitted axes
(:data:`FITTED`) and the settings that cannot change the trained weights (:data:`RUNTIME`; values that
train the same SAE, :data:`~saescale.train.config.SAME_RESULT`, read as one),
with the model, the hook and the dead window W as trained; older records are first read as
today's (:func:`~saescale.train.config.upgrade_train_record`,
:func:`~saescale.sae.config.upgrade_sae_record`). A setting a record lacks counts as its own
value, so a setting added later is never pooled with one it may differ from. A line without
``settings`` is compared on model, hook, arch, multi_topk and W only (those it records).
Unknown top-level keys are ignored. Every problem is a one-line :class:`SaescaleError` naming
the file and line.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from saescale.configs import read_jsonl
from saescale.errors import SaescaleError
from saescale.sae.config import upgrade_sae_record
from saescale.train.config import read_as_same, upgrade_train_record

REQUIRED = ("id", "arch", "n", "k", "lr", "tokens", "model", "loss", "curve")

FITTED = ("sae.n", "sae.k", "train.tokens", "train.lr", "train.seed")
"""Settings the laws run over, not grouped on: n, k and tokens (every law), lr (the lr rule fits it; the
joint law and L(C) take the best lr), seed (averaged: :func:`saescale.scaling.groups.mean_over_seeds`)."""

RUNTIME = ("train.device", "train.progress", "train.log_every", "train.checkpoint_every", "train.keep_checkpoints")
"""Recorded settings that do not change what is trained (where it runs, what it logs and keeps)."""

UPGRADES = {"sae": upgrade_sae_record, "train": upgrade_train_record}
"""How an older record of each settings section reads as today's (legacy 'auto' sentinels -> None)."""

Settings = tuple[tuple[str, str], ...]
"""Sorted (dotted name, JSON-encoded value) pairs: hashable, comparable."""


@dataclass(frozen=True)
class Member:
    """One finished SAE of a sweep (or, from :func:`~saescale.scaling.groups.mean_over_seeds`, the mean of several seeds)."""

    id: str
    arch: str
    n: int
    k: int
    lr: float
    tokens: int
    model: str
    loss: float
    """Final held-out normalised MSE (the L of the scaling laws)."""
    flops_per_token: float
    """12·d·n (recomputed from d and n when d is given), so C = flops_per_token · tokens."""
    curve_tokens: tuple[float, ...]
    curve_loss: tuple[float, ...]
    d: int | None = None
    seed: int = 0
    model_params: int | None = None
    hook: str = ""
    source: str = ""
    """``path:line`` the member was read from."""
    settings: Settings = ()
    """What must be equal for two members to share a law: see the module docstring."""
    settings_recorded: bool = True
    """False for a line without ``settings``: only model, hook, arch, multi_topk and W compared."""
    dead_frac: float | None = None
    """The paper's dead fraction: no fire in the last ``dead_window_tokens`` training tokens."""
    dead_window_tokens: int | None = None
    """W of ``dead_frac``."""
    never_fired_frac: float | None = None
    """Latents that never fired on ``heldout_tokens`` held-out tokens."""
    heldout_tokens: int | None = None
    """M of ``never_fired_frac``."""
    recorded_flops_per_token: float | None = None
    """The line's own ``flops_per_token`` (older files: 6·d·n)."""
    seeds: tuple[int, ...] = ()
    """Mean of several seeds: their seeds (empty: one SAE)."""
    seed_losses: tuple[float, ...] = ()
    """Mean of several seeds: their final losses, in the order of ``seeds``."""
    uid: str = field(default="", compare=False)
    """A name unique among the loaded members: ``id``, or ``model/id`` (then ``#i``) where ids repeat."""

    @property
    def group(self) -> Settings:
        """Members comparable on one scaling law have equal ``group``: their :attr:`settings`."""
        return self.settings

    @property
    def point(self) -> tuple[int, int, float, int]:
        """(n, k, lr, tokens): what tells apart the members of one group but for their seed."""
        return self.n, self.k, self.lr, self.tokens

    @property
    def loss_sd(self) -> float | None:
        """Mean of several seeds: the sample standard deviation of their final losses; None for one SAE."""
        return float(np.std(self.seed_losses, ddof=1)) if len(self.seed_losses) > 1 else None

    @property
    def curve_compute(self) -> np.ndarray:
        """(P,) training compute C = flops_per_token · tokens at each curve point."""
        return self.flops_per_token * np.asarray(self.curve_tokens, dtype=np.float64)

    def to_dict(self) -> dict:
        return {"uid": self.uid, "id": self.id, "arch": self.arch, "n": self.n, "k": self.k, "lr": self.lr,
                "tokens": self.tokens, "model": self.model, "model_params": self.model_params, "loss": self.loss,
                "flops_per_token": self.flops_per_token, "recorded_flops_per_token": self.recorded_flops_per_token,
                "d": self.d, "seed": self.seed, "hook": self.hook, "dead_frac": self.dead_frac,
                "dead_window_tokens": self.dead_window_tokens, "never_fired_frac": self.never_fired_frac,
                "heldout_tokens": self.heldout_tokens, "settings_recorded": self.settings_recorded,
                "source": self.source}


def settings_dict(settings: Settings) -> dict[str, Any]:
    """The decoded {dotted name: value} of a :data:`Settings` key."""
    return {name: json.loads(v) for name, v in settings}


def results_file(path: str | Path) -> Path:
    """The ``results.jsonl`` of a sweep folder, or ``path`` itself if it is a file."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.jsonl"
        if not p.is_file():
            raise SaescaleError(f"{path} has no results.jsonl: give a sweep folder once 'saescale sweep' has finished "
                                "members, or a .jsonl file")
    elif not p.is_file():
        raise SaescaleError(f"results path {path} not found: give a sweep folder containing results.jsonl, or a .jsonl file")
    return p


def _positive(obj: dict, key: str, where: str, integer: bool = False) -> float:
    v = obj[key]
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
    if not ok or (integer and v != int(v)):
        kind = "a positive integer" if integer else "a positive finite number"
        raise SaescaleError(f"{where}: '{key}' must be {kind}, got {v!r}; fix or delete that line")
    return int(v) if integer else float(v)


def _curve(obj: dict, where: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    curve = obj["curve"]
    if not isinstance(curve, list):
        raise SaescaleError(f"{where}: 'curve' must be a list of {{\"tokens\", \"loss\"}} objects; fix or delete that line")
    if not curve:  # no intermediate evaluations: the final point is the whole curve
        curve = [{"tokens": obj["tokens"], "loss": obj["loss"]}]
    tokens, losses = [], []
    for i, pt in enumerate(curve):
        if not isinstance(pt, dict) or "tokens" not in pt or "loss" not in pt:
            raise SaescaleError(f"{where}: curve point {i} must be an object with 'tokens' and 'loss'; fix or delete that line")
        tokens.append(_positive(pt, "tokens", f"{where} curve point {i}"))
        losses.append(_positive(pt, "loss", f"{where} curve point {i}"))
    if any(b <= a for a, b in zip(tokens, tokens[1:])):
        raise SaescaleError(f"{where}: curve tokens must increase strictly; fix or delete that line")
    return tuple(tokens), tuple(losses)


def _optional(obj: dict, key: str, where: str, kind: str) -> float | int | None:
    """``obj[key]`` as a fraction in [0, 1] (kind 'fraction') or a positive integer ('count'); None if absent/null."""
    v = obj.get(key)
    if v is None:
        return None
    number = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if kind == "fraction" and not (number and 0 <= v <= 1):
        raise SaescaleError(f"{where}: '{key}' must be a fraction in [0, 1] or null, got {v!r}; fix or delete that line")
    if kind == "count" and not (number and v > 0 and v == int(v)):
        raise SaescaleError(f"{where}: '{key}' must be a positive integer or null, got {v!r}; fix or delete that line")
    return float(v) if kind == "fraction" else int(v)


def legacy_dead_window(train: dict) -> int | None:
    """W of an older record whose dead_tokens was unset: the default of the time, max(1, min(10M, tokens / 10))."""
    if train.get("dead_tokens") is not None:
        return int(train["dead_tokens"])
    tokens = train.get("tokens")
    return max(1, min(10_000_000, int(tokens) // 10)) if isinstance(tokens, int) and tokens > 0 else None


def dead_latents(obj: dict, train: dict | None, where: str) -> tuple[float | None, int | None, float | None, int | None]:
    """(dead_frac, W, never_fired_frac, M) under today's names, from a line of either naming.

    Today's lines (with ``never_fired_frac`` or ``dead_window_tokens``): ``dead_frac`` is the dead
    fraction over the last W training tokens. Older lines: ``train_dead_frac`` was that, and
    ``dead_frac`` meant "never fired on the M held-out tokens".
    """
    m = _optional(obj, "heldout_tokens", where, "count")
    if "never_fired_frac" in obj or "dead_window_tokens" in obj:
        w = _optional(obj, "dead_window_tokens", where, "count")
        if w is None and train is not None:
            w = legacy_dead_window(train)
        return _optional(obj, "dead_frac", where, "fraction"), w, _optional(obj, "never_fired_frac", where, "fraction"), m
    w = legacy_dead_window(train) if train is not None else None
    return _optional(obj, "train_dead_frac", where, "fraction"), w, _optional(obj, "dead_frac", where, "fraction"), m


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    """Nested dicts -> {"a.b.c": leaf}."""
    if isinstance(value, dict):
        for key, v in value.items():
            _flatten(f"{prefix}.{key}", v, out)
    else:
        out[prefix] = value


def _sections(obj: dict, where: str) -> dict[str, Any] | None:
    """The line's ``settings`` sections but id and grid, each upgraded to today's names; None when absent."""
    settings = obj.get("settings")
    if settings is None:
        return None
    if not isinstance(settings, dict):
        raise SaescaleError(f"{where}: 'settings' must be an object of recorded settings; fix or delete that line")
    return {name: UPGRADES[name](rec) if name in UPGRADES and isinstance(rec, dict) else rec
            for name, rec in settings.items() if name not in ("id", "grid")}


def comparability(obj: dict, sections: dict[str, Any] | None, window: int | None) -> tuple[Settings, bool]:
    """(the :attr:`Member.settings` key, whether the line recorded its settings); see the module docstring."""
    flat: dict[str, Any] = {"model": str(obj["model"]), "hook": str(obj.get("hook") or "")}
    if sections is None:
        flat["sae.arch"] = str(obj["arch"])
        if "multi_topk" in obj:
            flat["train.multi_topk"] = obj["multi_topk"]
    else:
        for name, rec in sections.items():
            _flatten(name, rec, flat)
    read_as_same(flat)
    if window is not None or "train.dead_tokens" in flat:
        flat["train.dead_tokens"] = window  # W as trained, also where the record left it to the default
    for name in FITTED + RUNTIME:
        flat.pop(name, None)
    return tuple(sorted((name, json.dumps(v, sort_keys=True)) for name, v in flat.items())), sections is not None


def _flops(obj: dict, n: int, d: int | None, where: str) -> tuple[float, float | None]:
    """(12·d·n, or the recorded value when d is unknown; the recorded value or None)."""
    recorded = _positive(obj, "flops_per_token", where) if obj.get("flops_per_token") is not None else None
    if d is not None:
        from saescale.sweep.runner import flops_per_token

        return float(flops_per_token(d, n)), recorded
    if recorded is None:
        raise SaescaleError(f"{where}: give 'd' (compute is 12*d*n per token) or 'flops_per_token'; fix that line")
    return recorded, recorded


def parse_member(obj: object, where: str) -> Member:
    """One results line (already JSON-decoded) -> :class:`Member`; ``where`` is ``path:line`` for errors."""
    if not isinstance(obj, dict):
        raise SaescaleError(f"{where}: expected a JSON object, got {type(obj).__name__}; fix or delete that line")
    missing = [key for key in REQUIRED if key not in obj]
    if missing:
        raise SaescaleError(f"{where}: missing key(s) {', '.join(missing)}; rerun the sweep's member or delete that line")
    params = obj.get("model_params")
    tokens, losses = _curve(obj, where)
    n = int(_positive(obj, "n", where, integer=True))
    d = int(_positive(obj, "d", where, integer=True)) if obj.get("d") is not None else None
    sections = _sections(obj, where)
    train = sections.get("train") if sections is not None and isinstance(sections.get("train"), dict) else None
    dead, window, never, heldout = dead_latents(obj, train, where)
    key, recorded = comparability(obj, sections, window)
    flops, flops_recorded = _flops(obj, n, d, where)
    return Member(
        id=str(obj["id"]), arch=str(obj["arch"]), model=str(obj["model"]), hook=str(obj.get("hook") or ""),
        n=n, k=int(_positive(obj, "k", where, integer=True)),
        lr=_positive(obj, "lr", where), tokens=int(_positive(obj, "tokens", where, integer=True)),
        loss=_positive(obj, "loss", where), flops_per_token=flops, curve_tokens=tokens, curve_loss=losses, d=d,
        seed=int(obj.get("seed") or 0),
        model_params=None if params is None else int(_positive(obj, "model_params", where, integer=True)),
        source=where, settings=key, settings_recorded=recorded, dead_frac=dead, dead_window_tokens=window,
        never_fired_frac=never, heldout_tokens=heldout, recorded_flops_per_token=flops_recorded,
    )


def read_results(path: str | Path) -> list[Member]:
    """Every member of one sweep folder or ``.jsonl`` file (blank lines skipped); a line that is not
    UTF-8 or not JSON (a last line cut short says so) is a one-line error naming the file and line."""
    p = results_file(path)
    members = [parse_member(obj, f"{p}:{i}") for i, obj in read_jsonl(p, "fix or delete that line")]
    if not members:
        raise SaescaleError(f"{p} holds no results: wait until the sweep has finished some members, or check the path")
    return members


def assign_uids(members: list[Member]) -> list[Member]:
    ids = Counter(m.id for m in members)
    named = [m.id if ids[m.id] == 1 else f"{m.model}/{m.id}" for m in members]
    counts, seen = Counter(named), Counter()
    out = []
    for m, name in zip(members, named):
        if counts[name] > 1:
            seen[name] += 1
            name = f"{name}#{seen[name]}"
        out.append(replace(m, uid=name))
    return out


def load_members(paths: list[str]) -> list[Member]:
    """All members of the given sweep folders / ``.jsonl`` files, each with a unique ``uid``."""
    if not paths:
        raise SaescaleError("no results given: pass a sweep folder or a results.jsonl file")
    return assign_uids([m for p in paths for m in read_results(p)])
