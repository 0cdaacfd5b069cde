"""Which members one scaling law may pool, how each group is named, and the mean over seeds.

A group is the members with equal :attr:`~saescale.scaling.results.Member.group`: equal in every
recorded setting but the fitted axes n, k, tokens, lr and the seed (see
:mod:`saescale.scaling.results`). A group is named ``model/arch`` followed by ``name=value`` for
each setting whose value is not the same in every group (nothing more when there is one group).

Seeds: the members of one group with equal (n, k, lr, tokens) differ only in their seed; the
laws see one point per such set, with S seeds and final losses L_1 .. L_S,

    L̄ = (1/S) Σ_s L_s,   sd = sqrt(Σ_s (L_s − L̄)² / (S − 1)),

and as curve the pointwise mean at the curve tokens every seed has (the final point at least).
Two members equal in all of that and in the seed are the same SAE twice (the same results file
given twice, say) and are refused rather than counted as two observations.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import replace

import numpy as np

from saescale.errors import SaescaleError
from saescale.scaling.results import Member, Settings, settings_dict


def group_members(members: list[Member]) -> dict[Settings, list[Member]]:
    """Members by comparability key, in first-seen order; the same SAE twice is a :class:`SaescaleError`."""
    groups: dict[Settings, list[Member]] = defaultdict(list)
    seen: dict[tuple, Member] = {}
    for m in members:
        same = seen.setdefault((m.group, m.point, m.seed), m)
        if same is not m:
            raise SaescaleError(f"{same.source} and {m.source} are the same SAE (all settings and seed {m.seed} equal): "
                                "pass each results file once, or give the reruns different seeds")
        groups[m.group].append(m)
    return dict(groups)


ABSENT = "<absent>"
"""Stands for a setting a record does not have."""


def _value(text: str) -> str:
    """A JSON-encoded setting as shown in a label: strings bare, the rest as JSON; an absent one as '(not recorded)'."""
    if text == ABSENT:
        return "(not recorded)"
    v = json.loads(text)
    return v if isinstance(v, str) else json.dumps(v)


def differing(keys: list[Settings]) -> list[str]:
    """Dotted names of the settings whose value is not the same in every key (a missing one counts as a value)."""
    tables = [dict(k) for k in keys]
    names = sorted({name for t in tables for name in t})
    return [name for name in names if len({t.get(name, ABSENT) for t in tables}) > 1]


def group_labels(keys: list[Settings], base: tuple[str, ...] = ("model", "sae.arch")) -> dict[Settings, str]:
    """``model/arch name=value ...`` per key: the ``base`` settings, then each setting that differs between keys.

    A setting is shown by its last name (``multi_topk``) unless two differing settings share it.
    """
    names = [n for n in differing(keys) if n not in base]
    leaves = [n.rsplit(".", 1)[-1] for n in names]
    short = {n: leaf if leaves.count(leaf) == 1 else n for n, leaf in zip(names, leaves)}
    labels = {}
    for key in keys:
        table = dict(key)
        head = "/".join(_value(table[b]) if b in table else "?" for b in base)
        tail = [f"{short[n]}={_value(table.get(n, ABSENT))}" for n in names]
        labels[key] = " ".join([head, *tail])
    return labels  # unique: two keys differ in some setting, and every differing setting is shown


def shared_settings(key: Settings) -> dict:
    """The decoded settings of one group (what all its members share)."""
    return settings_dict(key)


def _mean_curve(ms: list[Member]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Pointwise mean loss at the curve tokens every member has (the final point when they share none)."""
    common = sorted(set.intersection(*(set(m.curve_tokens) for m in ms)))
    if not common:
        return (float(ms[0].tokens),), (float(np.mean([m.loss for m in ms])),)
    losses = [np.mean([dict(zip(m.curve_tokens, m.curve_loss))[t] for m in ms]) for t in common]
    return tuple(common), tuple(float(x) for x in losses)


def mean_over_seeds(members: list[Member]) -> list[Member]:
    """One point per (n, k, lr, tokens) of one group: a member alone, or the mean of its seeds (see the module docstring).

    A mean's ``uid`` joins its members' uids with '+'; ``seeds`` and ``seed_losses`` give the spread.
    """
    by_point: dict[tuple, list[Member]] = defaultdict(list)
    for m in members:
        by_point[m.point].append(m)
    out = []
    for ms in by_point.values():
        if len(ms) == 1:
            out.append(ms[0])
            continue
        ms = sorted(ms, key=lambda m: m.seed)
        losses = np.array([m.loss for m in ms])
        tokens, curve = _mean_curve(ms)
        out.append(replace(ms[0], loss=float(losses.mean()), curve_tokens=tokens, curve_loss=curve,
                           seeds=tuple(m.seed for m in ms), seed_losses=tuple(float(x) for x in losses),
                           uid="+".join(m.uid for m in ms), source=", ".join(m.source for m in ms)))
    return out


def seed_spread(points: list[Member]) -> list[dict]:
    """For each mean over seeds: its point, seeds, mean, sd, min and max of the final losses (for fit.json)."""
    return [{"uid": p.uid, "n": p.n, "k": p.k, "lr": p.lr, "tokens": p.tokens, "seeds": list(p.seeds),
             "loss_mean": p.loss, "loss_sd": p.loss_sd, "loss_min": min(p.seed_losses), "loss_max": max(p.seed_losses),
             "members": p.uid.split("+")} for p in points if p.seeds]
