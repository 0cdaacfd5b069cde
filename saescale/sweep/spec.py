"""Sweep spec files (TOML): a grid of SAE and training settings over one activation source.

A spec has these tables, all optional except ``[grid]``::

    [sweep]        SweepSettings: output folder, held-out tokens, curve points, data source
    [grid]         lists; every combination is one member. Keys: any SAEConfig or TrainConfig field
    [sae]          SAEConfig fields shared by all members (a grid key overrides)
    [train]        TrainConfig fields shared by all members (a grid key overrides)
    [activations]  ActivationConfig: model, hook, corpus, cache size (when source = "cache")
    [synthetic]    SyntheticConfig: the planted-dictionary source (when source = "synthetic"); the keys are its
                   fields (d, features, k, ...; older specs' synth_d, synth_k, ... are read the same)

Members share the data stream (its order comes from [train].seed and the batch size) and the
dead-latent window W ([train] dead_tokens, default: the default window of the shortest budget), so
their dead fractions count the same W tokens; each keeps its own initialisation seed, optimiser,
schedule and token budget.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saescale.activations.config import ActivationConfig
from saescale.configs import config_from_dict, config_to_dict
from saescale.data.synthetic import SyntheticConfig
from saescale.errors import SaescaleError
from saescale.sae.config import SAEConfig
from saescale.train.config import TrainConfig, default_dead_tokens

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


@dataclass
class SweepSettings:
    """Where a sweep's data comes from and what it records."""

    source: str = "cache"
    """Activation source, as 'saescale train --acts': 'cache' (build or reuse the on-disk cache of [activations]), 'stream' (run the model live), 'synthetic' (see [synthetic]), the path of an existing cache folder, or the path of your own (N, d) activations: a .npy / .safetensors / .pt file or a folder of them (the last 5% of the rows held out; no [activations] table)."""

    out: str = ""
    """Output folder (one sub-folder per member, results.jsonl). Empty: runs/sweep-<spec file name>."""

    heldout_tokens: int = 65_536
    """Held-out tokens (validation split) for every curve point and the final loss (fewer if the split is smaller)."""

    curve_points: int = 8
    """Points per loss-versus-tokens curve, log-spaced in tokens (the last one at the member's budget), plus one at half the budget for the convergence test (the loss change over the last doubling of tokens)."""

    tokens_rule: str = "fixed"
    """Per-member token budget: 'fixed' = [train] tokens for every member; 'n^P' (e.g. 'n^0.6', the paper's tokens to convergence) = [train] tokens x (n / tokens_base_n)^P, rounded to whole batches."""

    tokens_base_n: int = 0
    """The n at which a 'n^P' rule gives [train] tokens; 0 = the smallest n of the grid."""

    def __post_init__(self) -> None:
        if self.heldout_tokens <= 0 or self.curve_points < 1:
            raise SaescaleError("[sweep] heldout_tokens and curve_points must be positive")
        if self.tokens_base_n < 0:
            raise SaescaleError("[sweep] tokens_base_n must be >= 0 (0 = the smallest n of the grid)")
        tokens_exponent(self.tokens_rule)


def tokens_exponent(rule: str) -> float:
    """The exponent P of a tokens rule 'n^P' (0.0 for 'fixed'); one-line error for anything else."""
    text = rule.replace(" ", "")
    if text == "fixed":
        return 0.0
    m = re.fullmatch(r"n\^(-?[0-9]*\.?[0-9]+)", text)
    if not m:
        raise SaescaleError(f"[sweep] tokens_rule {rule!r}: use 'fixed' or 'n^P' with a number P, e.g. 'n^0.6'")
    return float(m.group(1))


def rule_tokens(base: int, n: int, base_n: int, exponent: float, batch: int) -> int:
    """Token budget base * (n / base_n)^exponent, rounded to a whole number of batches (at least one)."""
    return max(1, round(base * (n / base_n) ** exponent / batch)) * batch


@dataclass
class Member:
    """One SAE of the sweep."""

    id: str  # folder name, e.g. n1024-k8 (the grid keys that vary, in spec order)
    sae: SAEConfig
    train: TrainConfig
    grid: dict[str, Any] = field(default_factory=dict)  # this member's grid values


@dataclass
class SweepSpec:
    path: Path
    settings: SweepSettings
    members: list[Member]
    activations: ActivationConfig
    synthetic: SyntheticConfig
    train: TrainConfig  # the shared [train] table (data order seed, batch size)

    @property
    def out(self) -> Path:
        return Path(self.settings.out) if self.settings.out else Path("runs") / f"sweep-{self.path.stem}"


TABLES = ("sweep", "grid", "sae", "train", "activations", "synthetic")


def load_spec(path: str | Path) -> SweepSpec:
    """Parse and check a spec file; every problem is a one-line :class:`SaescaleError`."""
    path = Path(path)
    if not path.is_file():
        raise SaescaleError(f"sweep spec {path} not found; see examples/sweep-nk.toml for the format")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SaescaleError(f"{path} is not valid TOML ({e}); fix the file") from None
    unknown = sorted(set(data) - set(TABLES))
    if unknown:
        raise SaescaleError(f"{path}: unknown table(s) {', '.join(unknown)}; use {', '.join(TABLES)}")
    where = lambda t: f"{path} [{t}]"  # noqa: E731
    settings = config_from_dict(SweepSettings, data.get("sweep", {}), where("sweep"))
    acts = config_from_dict(ActivationConfig, data.get("activations", {}), where("activations"))
    synth_table = {k.removeprefix("synth_"): v for k, v in data.get("synthetic", {}).items()}  # old specs: synth_d, ...
    synth = config_from_dict(SyntheticConfig, synth_table, where("synthetic"))
    sae_base, train_base = data.get("sae", {}), data.get("train", {})
    train = config_from_dict(TrainConfig, train_base, where("train"))
    members = _apply_tokens_rule(path, settings, _expand(path, data.get("grid", {}), sae_base, train_base))
    return SweepSpec(path, settings, _shared_dead_window(members), acts, synth, train)


def _apply_tokens_rule(path: Path, settings: SweepSettings, members: list[Member]) -> list[Member]:
    """Each member's token budget by [sweep] tokens_rule (unchanged for 'fixed'); the budget is recorded as
    the member's [train] tokens, so its run.json, result.json and results line carry it."""
    exponent = tokens_exponent(settings.tokens_rule)
    if settings.tokens_rule.replace(" ", "") == "fixed":
        return members
    if any("tokens" in m.grid for m in members):
        raise SaescaleError(f"{path}: [grid] lists tokens and [sweep] tokens_rule = {settings.tokens_rule!r} sets them; "
                            "drop one")
    base_n = settings.tokens_base_n or min(m.sae.n for m in members)
    return [dataclasses.replace(m, train=dataclasses.replace(
        m.train, tokens=rule_tokens(m.train.tokens, m.sae.n, base_n, exponent, m.train.batch_size))) for m in members]


def _expand(path: Path, grid: dict[str, Any], sae_base: dict[str, Any], train_base: dict[str, Any]) -> list[Member]:
    """One member per combination of the grid's lists (first key varies slowest)."""
    sae_fields = {f.name for f in dataclasses.fields(SAEConfig)}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    if not grid:
        raise SaescaleError(f"{path}: [grid] is empty; list values to sweep, e.g. n = [1024, 2048]")
    for key, values in grid.items():
        if key not in sae_fields | train_fields:
            raise SaescaleError(f"{path} [grid]: unknown key '{key}'; use fields of [sae] or [train] (e.g. n, k, arch, lr, tokens, seed); "
                                "the data ([activations], [synthetic]) is shared by all members")
        if not isinstance(values, list) or not values:
            raise SaescaleError(f"{path} [grid]: '{key}' must be a non-empty list, e.g. {key} = [{values!r}]")
        if len(set(map(repr, values))) != len(values):
            raise SaescaleError(f"{path} [grid]: '{key}' lists a value twice")
    for key in ("batch_size", "dead_tokens"):  # one data stream; one dead-latent window, so dead fractions compare
        if key in grid:
            raise SaescaleError(f"{path} [grid]: members trained together share {key}; set it in [train]")
    members = []
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo))
        sae = config_from_dict(SAEConfig, {**sae_base, **{k: v for k, v in values.items() if k in sae_fields}},
                               f"{path} [sae]+[grid] {values}")
        train = config_from_dict(TrainConfig, {**train_base, **{k: v for k, v in values.items() if k in train_fields}},
                                 f"{path} [train]+[grid] {values}")
        train = dataclasses.replace(train, progress=False)
        members.append(Member(member_id(values), sae, train, values))
    return members


def _shared_dead_window(members: list[Member]) -> list[Member]:
    """Every member gets the same dead-latent window W (unless [train] sets one): the default window
    of the shortest token budget, so each member's dead fraction counts the same W tokens."""
    if members[0].train.dead_tokens is not None:
        return members
    shortest = min(members, key=lambda m: m.train.tokens).train
    window = default_dead_tokens(shortest.tokens, shortest.batch_size)
    return [dataclasses.replace(m, train=dataclasses.replace(m.train, dead_tokens=window)) for m in members]


def member_id(values: dict[str, Any]) -> str:
    """Folder name from grid values: n1024-k8-lr0.001 (n and k without a separator, others with '_' when needed)."""
    parts = []
    for key, v in values.items():
        text = f"{v:g}" if isinstance(v, float) else str(v).lower()
        parts.append(f"{key}{text}" if key in ("n", "k") else f"{key}_{text}")
    return "-".join(parts).replace("/", "_")


def member_record(m: Member) -> dict[str, Any]:
    """The settings of a member as recorded next to its results."""
    return {"id": m.id, "grid": m.grid, "sae": config_to_dict(m.sae), "train": config_to_dict(m.train)}
