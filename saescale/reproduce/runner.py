"""Run a reproduction unit by unit, within a time budget, resumable on this machine and on another.

Folders::

    OUT/<unit>/spec.toml            the unit's sweep spec (what its members were trained with)
    OUT/<unit>/members/<id>.json    each finished member's result (result.json of the sweep, with the
                                    extra metrics under 'extra'): small files, meant to be committed
    OUT/chunks.jsonl                one line per run of the command: start, seconds, budget, members finished
    WORK/<unit>/                    the unit's sweep folder (SAEs, checkpoints): local, not committed

A rerun first copies OUT's member files into WORK (a fresh machine has none), so the sweep skips those
members and resumes the others from WORK's checkpoints, if any. The time budget is checked after every
training batch and between the harvest's shards: at the budget, training members save a checkpoint,
the harvest keeps its finished shards, and the run returns.
"""

from __future__ import annotations

import fnmatch
import itertools
import json
import re
import time
from pathlib import Path
from typing import Any, Callable

from saescale.atomic import atomic_write_text
from saescale.errors import SaescaleError
from saescale.reproduce.profiles import Profile
from saescale.reproduce.units import Unit, units

Log = Callable[[str], None]
Evaluate = Callable[[list[str], Path], dict[str, Any]]


class BudgetReached(Exception):
    """Raised inside the harvest's progress callback when the budget is spent (its finished shards are kept)."""


def parse_budget(text: str) -> float:
    """Seconds in a budget such as '2h', '90m', '1h30m', '45s' or '3600'; 0 or '' = no budget."""
    t = text.strip().lower().replace(" ", "")
    if t in ("", "0"):
        return 0.0
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t)
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", t)
    if not parts or "".join(a + b for a, b in parts) != t:
        raise SaescaleError(f"--budget {text!r}: give a duration such as 2h, 90m, 1h30m or 45s (0 = no limit)")
    return sum(float(a) * {"h": 3600, "m": 60, "s": 1}[b] for a, b in parts)


class Deadline:
    """``passed()`` once ``seconds`` have gone by since construction (never with 0)."""

    def __init__(self, seconds: float):
        self.seconds, self.start = seconds, time.monotonic()

    def passed(self) -> bool:
        return self.seconds > 0 and time.monotonic() - self.start >= self.seconds

    def elapsed(self) -> float:
        return time.monotonic() - self.start


def restore_members(unit_out: Path, sweep_dir: Path, spec_text: str) -> int:
    """Copy OUT/<unit>/members/*.json into the sweep folder as <id>/result.json where missing; how many."""
    members = unit_out / "members"
    if not members.is_dir():
        return 0
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if not (sweep_dir / "spec.toml").exists():
        atomic_write_text(sweep_dir / "spec.toml", spec_text)
    copied = 0
    for f in sorted(members.glob("*.json")):
        target = sweep_dir / f.stem / "result.json"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(target, f.read_text())
            copied += 1
    return copied


def save_members(spec, unit_out: Path) -> int:
    """Copy every finished member's result.json to OUT/<unit>/members/<id>.json (and the spec); how many finished."""
    atomic_write_text(unit_out / "spec.toml", spec.path.read_text())
    done = 0
    for m in spec.members:
        f = spec.out / m.id / "result.json"
        if f.exists():
            target = unit_out / "members" / f"{m.id}.json"
            if not target.exists() or target.read_text() != f.read_text():
                atomic_write_text(target, f.read_text())
            done += 1
    return done


def stored_results(out: Path, unit: Unit) -> list[dict[str, Any]]:
    """The finished members of ``unit`` recorded under OUT (its spec order is not needed: sorted by id)."""
    from saescale.sweep.records import read_json

    folder = out / unit.name / "members"
    fix = "delete it: the next run copies it again from the work folder or retrains that member"
    return [read_json(f, fix) for f in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def run_unit(unit: Unit, p: Profile, out: Path, work: Path, deadline: Deadline, evaluate: Evaluate | None,
             log: Log, progress: Callable[[str, int], Any] | None = None,
             select: Callable[[str], bool] | None = None) -> str:
    """Train (or skip) every member of ``unit`` that ``select`` picks (every one without it).

    Returns "done" (every member of the unit finished), "stopped" (the budget ran out) or "unselected"
    (every picked member finished, others are not picked this run)."""
    from saescale.activations.cache import build_cache
    from saescale.sweep.records import check_rerun
    from saescale.sweep.runner import run_sweep
    from saescale.sweep.spec import load_spec

    sweep_dir = work / unit.name
    text = unit.spec_toml(p, str(sweep_dir))
    spec_path = work / f"{unit.name}.toml"
    atomic_write_text(spec_path, text)
    spec = load_spec(spec_path)
    restored = restore_members(out / unit.name, sweep_dir, text)
    unfinished = [m for m in spec.members if not (sweep_dir / m.id / "result.json").exists()]
    pending = [m for m in unfinished if select is None or select(f"{unit.name}/{m.id}")]
    if restored:
        log(f"{unit.name}: {restored} finished member(s) restored from {out / unit.name / 'members'}")
    # a member recorded with other settings (data included) is refused now, not after the harvest, and also when
    # the unit is finished: its results would otherwise enter the report beside a spec they were not trained with
    check_rerun(spec)
    if not pending:
        save_members(spec, out / unit.name)
        return "unselected" if unfinished else "done"
    if deadline.passed():
        return "stopped"

    def harvest_progress(info: dict[str, Any]) -> None:
        if deadline.passed():
            raise BudgetReached

    try:
        build_cache(spec.activations, progress=harvest_progress, log=log)
    except BudgetReached:
        log(f"{unit.name}: budget reached while harvesting activations; the finished shards are kept")
        return "stopped"

    def on_finish(member, sae_dir: Path) -> dict[str, Any]:
        names = unit.evals(member.grid, p)
        return evaluate(names, sae_dir) if names and evaluate is not None else {}

    bar = progress(unit.name, max(m.train.steps for m in pending) * spec.train.batch_size) if progress else None
    try:
        run_sweep(spec, progress=bar, log=bar.write if bar else log, stop=deadline.passed, on_finish=on_finish,
                  select=None if select is None else lambda member_id: select(f"{unit.name}/{member_id}"))
    finally:
        if bar:
            bar.close()
    if save_members(spec, out / unit.name) == len(spec.members):
        return "done"
    return "stopped" if any(not (sweep_dir / m.id / "result.json").exists() for m in pending) else "unselected"


def reproduce(p: Profile, out: Path, work: Path, budget_s: float, evaluate: Evaluate | None, log: Log,
              progress: Callable[[str, int], Any] | None = None, only: list[str] | None = None,
              members: list[str] | None = None) -> dict[str, Any]:
    """Run the units of profile ``p`` in order until all are finished or the budget is spent.

    ``only``: unit names to run. ``members``: patterns ``UNIT/MEMBER`` (shell wildcards, e.g.
    ``scaling-default/n8192-*``): train only the members they match, and only the units they reach (a
    chunk on a machine whose work folder will not survive can pick what it can finish in its budget).
    Returns {"finished": units finished, "pending": the others, "stopped": whether the budget stopped a unit,
    "seconds": this run's time}; one line per
    run is appended to OUT/chunks.jsonl (so the total machine time of a reproduction is on record)."""
    deadline = Deadline(budget_s)
    out.mkdir(parents=True, exist_ok=True)
    select = member_selector(members) if members else None
    chosen = [u for u in units(p) if (not only or u.name in only)
              and (select is None or any(select(f"{u.name}/{i}") for i in member_ids(u)))]
    finished, pending, stopped = [], [], False
    for unit in chosen:
        if stopped:  # units run in order: after one stopped at the budget, the rest wait for the next run
            pending.append(unit.name)
            continue
        status = run_unit(unit, p, out, work, deadline, evaluate, log, progress, select)
        (finished if status == "done" else pending).append(unit.name)
        stopped = status == "stopped"
    summary = {"finished": finished, "pending": pending, "stopped": stopped, "seconds": round(deadline.elapsed(), 1),
               **({"selected": members} if members else {})}
    _append_chunk(out / "chunks.jsonl", {"profile": p.name, "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(
        time.time() - deadline.elapsed())), "budget_s": budget_s, "members": sum(len(stored_results(out, u)) for u in chosen),
        **summary})
    return summary


def summary_line(profile: str, summary: dict[str, Any]) -> str:
    """The one line a run ends with: what finished, and why the rest is pending (the budget, or members that
    ``--members`` did not pick)."""
    line = (f"reproduce ({profile}): {len(summary['finished'])} unit(s) finished, {len(summary['pending'])} pending, "
            f"{summary['seconds'] / 60:.1f} min this run")
    if summary.get("stopped"):
        return line + f"; budget reached: rerun the same command to continue ({', '.join(summary['pending'])})"
    if summary["pending"]:
        return line + f"; the selected members are done, the others wait for a run that picks them ({', '.join(summary['pending'])})"
    return line


def member_selector(patterns: list[str]) -> Callable[[str], bool]:
    """``UNIT/MEMBER`` -> whether any pattern (shell wildcards) matches it."""
    return lambda name: any(fnmatch.fnmatchcase(name, pat) for pat in patterns)


def member_ids(unit: Unit) -> list[str]:
    """The ids of ``unit``'s members (as its sweep names their folders: saescale.sweep.spec._expand)."""
    from saescale.sweep.spec import member_id

    return [member_id(dict(zip(unit.grid, combo))) for combo in itertools.product(*unit.grid.values())]


def _append_chunk(path: Path, line: dict[str, Any]) -> None:
    old = path.read_text() if path.exists() else ""
    atomic_write_text(path, old + json.dumps(line) + "\n")

