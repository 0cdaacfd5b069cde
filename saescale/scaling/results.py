"""Load the members of finished sweeps (``results.jsonl``: one JSON object per trained SAE).

Each line names one member: its shape (``n`` latents, ``k`` active), its training
(``lr``, ``tokens``, ``flops_per_token`` = 6·d·n, so compute C = flops_per_token · tokens),
the subject model (``model``, ``model_params`` or null), the final held-out normalised MSE
``loss`` and ``curve``, the held-out nMSE at increasing token counts. Unknown keys are ignored.
Every problem is a one-line :class:`SaescaleError` naming the file and line.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from saescale.errors import SaescaleError

REQUIRED = ("id", "arch", "n", "k", "lr", "tokens", "model", "loss", "flops_per_token", "curve")


@dataclass(frozen=True)
class Member:
    """One finished SAE of a sweep."""

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
    curve_tokens: tuple[float, ...]
    curve_loss: tuple[float, ...]
    d: int | None = None
    seed: int = 0
    model_params: int | None = None
    hook: str = ""
    source: str = ""
    """``path:line`` the member was read from."""
    uid: str = field(default="", compare=False)
    """A name unique among the loaded members: ``id``, or ``model/id`` (then ``#i``) where ids repeat."""

    @property
    def group(self) -> str:
        """Members comparable on one scaling law: same subject model and architecture."""
        return f"{self.model}/{self.arch}"

    @property
    def curve_compute(self) -> np.ndarray:
        """(P,) training compute C = flops_per_token · tokens at each curve point."""
        return self.flops_per_token * np.asarray(self.curve_tokens, dtype=np.float64)

    def to_dict(self) -> dict:
        return {"uid": self.uid, "id": self.id, "arch": self.arch, "n": self.n, "k": self.k, "lr": self.lr,
                "tokens": self.tokens, "model": self.model, "model_params": self.model_params, "loss": self.loss,
                "flops_per_token": self.flops_per_token, "d": self.d, "seed": self.seed, "hook": self.hook,
                "source": self.source}


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


def parse_member(obj: object, where: str) -> Member:
    """One results line (already JSON-decoded) -> :class:`Member`; ``where`` is ``path:line`` for errors."""
    if not isinstance(obj, dict):
        raise SaescaleError(f"{where}: expected a JSON object, got {type(obj).__name__}; fix or delete that line")
    missing = [key for key in REQUIRED if key not in obj]
    if missing:
        raise SaescaleError(f"{where}: missing key(s) {', '.join(missing)}; rerun the sweep's member or delete that line")
    params = obj.get("model_params")
    tokens, losses = _curve(obj, where)
    return Member(
        id=str(obj["id"]), arch=str(obj["arch"]), model=str(obj["model"]), hook=str(obj.get("hook", "")),
        n=int(_positive(obj, "n", where, integer=True)), k=int(_positive(obj, "k", where, integer=True)),
        lr=_positive(obj, "lr", where), tokens=int(_positive(obj, "tokens", where, integer=True)),
        loss=_positive(obj, "loss", where), flops_per_token=_positive(obj, "flops_per_token", where),
        curve_tokens=tokens, curve_loss=losses,
        d=int(_positive(obj, "d", where, integer=True)) if obj.get("d") is not None else None,
        seed=int(obj.get("seed") or 0),
        model_params=None if params is None else int(_positive(obj, "model_params", where, integer=True)),
        source=where,
    )


def read_results(path: str | Path) -> list[Member]:
    """Every member of one sweep folder or ``.jsonl`` file (blank lines skipped)."""
    p = results_file(path)
    members = []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise SaescaleError(f"{p}:{i}: not valid JSON ({e.msg}); fix or delete that line") from None
        members.append(parse_member(obj, f"{p}:{i}"))
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
