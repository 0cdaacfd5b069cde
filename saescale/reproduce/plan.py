"""What a reproduction has left and what it costs on this machine: ``saescale reproduce --plan``.

For each unit, its unfinished members (not in OUT, not finished in the work folder), each with its token
budget T and its cost in latent-tokens n T, and the unit's harvest when this machine's activation cache is
not complete. Minutes are the profile's measured rates (``Profile.train_rate`` latent-tokens/s summed over
a sweep's members, ``Profile.harvest_rate`` tokens/s): dense TopK's cost model, so a Switch SAE costs less
and the dense L1 architectures more than it says. Members of one sweep share each batch, so members with
equal budgets finish together, at the end: a chunk that will not survive (a fresh machine next session)
should pick, with ``--members``, the members that finish within its budget.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from saescale.reproduce.profiles import Profile
from saescale.reproduce.units import units


def plan(p: Profile, out: Path, work: Path, only: list[str] | None = None,
         select=None) -> list[dict[str, Any]]:
    """One row per unit with unfinished members: {"unit", "members": [{"id", "n", "tokens", "latent_tokens",
    "minutes"}], "harvest_tokens", "harvest_minutes", "minutes"} (harvest 0 when the cache is complete here)."""
    from saescale.activations.manifest import default_cache_dir
    from saescale.sweep.spec import load_spec

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for u in units(p):
            if only and u.name not in only:
                continue
            path = Path(tmp) / f"{u.name}.toml"
            path.write_text(u.spec_toml(p, str(work / u.name)))
            spec = load_spec(path)
            left = [m for m in spec.members if not (out / u.name / "members" / f"{m.id}.json").exists()
                    and not (work / u.name / m.id / "result.json").exists()
                    and (select is None or select(f"{u.name}/{m.id}"))]
            if not left:
                continue
            members = [{"id": m.id, "n": m.sae.n, "tokens": m.train.tokens, "latent_tokens": m.sae.n * m.train.tokens,
                        "minutes": m.sae.n * m.train.tokens / p.train_rate / 60} for m in left]
            harvest = 0 if _complete(default_cache_dir(spec.activations)) else spec.activations.n_tokens
            harvest_min = harvest / p.harvest_rate[u.model] / 60
            rows.append({"unit": u.name, "members": members, "harvest_tokens": harvest, "harvest_minutes": harvest_min,
                         "minutes": harvest_min + sum(m["minutes"] for m in members)})
    return rows


def _complete(folder: Path) -> bool:
    try:
        return bool(json.loads((folder / "manifest.json").read_text()).get("complete"))
    except (OSError, ValueError):
        return False


def format_plan(rows: list[dict[str, Any]], p: Profile) -> list[str]:
    """The plan as printed lines: one per member, one per unit, one total."""
    if not rows:
        return ["nothing left to train: every member is finished"]
    lines = [f"plan ({p.name}): {p.train_rate:.2g} latent-tokens/s (dense TopK cost model), harvest "
             + ", ".join(f"{m} {r:g} tokens/s" for m, r in p.harvest_rate.items())]
    harvested: set[str] = set()  # units of one model share its cache: one harvest
    total = 0.0
    for row in rows:
        model = next(u.model for u in units(p) if u.name == row["unit"])
        harvest = row["harvest_minutes"] if model not in harvested else 0.0
        if row["harvest_tokens"]:
            harvested.add(model)
        for m in row["members"]:
            lines.append(f"  {row['unit']}/{m['id']}: {m['tokens']:,} tokens x n {m['n']} = "
                         f"{m['latent_tokens']:.2e} latent-tokens, ~{m['minutes']:.0f} min")
        minutes = harvest + sum(m["minutes"] for m in row["members"])
        total += minutes
        lines.append(f"{row['unit']}: {len(row['members'])} member(s) left, ~{minutes:.0f} min"
                     + (f" (with ~{harvest:.0f} min of harvest)" if harvest else ""))
    lines.append(f"total: ~{total / 60:.1f} h on this machine, alone (any other job slows it 2-3x), from each member's "
                 "start (a checkpoint in the work folder is not counted), evals not counted")
    return lines
