"""``saescale reproduce``: every finding of the paper on the embedded models, resumable, with a report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from saescale.configs import check_valid, valid
from saescale.errors import SaescaleError


@dataclass
class ReproduceCommand:
    """Run every finding of Gao et al. (2024) on SmolLM2-135M and Gemma-3-270M (TopK vs every architecture, dead latents, scaling laws, progressive codes, feature quality as n and k grow, refinement); writes OUT/report.html and OUT/report.json. Rerun the same command to continue after a stop or a budget."""

    quick: bool = False
    """The quick profile (the embedded corpus, tiny sweeps; <= 15 min on 2 CPU cores): a smoke test of every finding. Without it: the full profile (the large corpus, n up to 32768; about 5-6 h of 2 cores on one machine, run in chunks with --budget)."""

    out: str = ""
    """Report folder: every finished member's result, report.json, report.html, figures/ (meant to be committed). Empty: docs/reproduce (full) or docs/reproduce-quick (--quick)."""

    work: str = ""
    """Local folder for the sweeps' SAEs and checkpoints (not committed; a fresh machine starts without it and skips the members OUT already holds). Empty: runs/reproduce (full) or runs/reproduce-quick."""

    budget: str = "0"
    """Stop cleanly after this much time (e.g. 2h, 90m, 1h30m; 0 = no limit): training members save a checkpoint, the harvest keeps its finished shards, the report shows what is done. Rerun to continue."""

    units: str = ""
    """Run only these units (comma-separated names, e.g. scaling-default,dead-latents); empty = all, in order."""

    members: str = ""
    """Train only these members (comma-separated UNIT/MEMBER patterns with shell wildcards, e.g. 'scaling-default/n8192-*,dead-latents/*'), and only the units they reach; the others wait for a later run. For a machine whose work folder does not survive (a fresh machine each session): pick what finishes within --budget, since a checkpoint left there is lost. Empty = every member."""

    plan: bool = False
    """Do not train: print each unfinished member (of --units / --members) with its token budget and its estimated minutes on this machine, and each unit's harvest when its activation cache is not complete here, then exit."""

    report_only: bool = False
    """Do not train: rebuild report.json / report.html from the members OUT holds."""

    bootstrap: int = valid(200, ">= 0")
    """Bootstrap resamples of the scaling fits' 95% intervals."""

    scaling_doc: str = ""
    """Also write the scaling-law results (verdict, the fit lines, the n x k table of held-out nMSE, budgets and convergence) into this Markdown file, between its two 'saescale reproduce' marker lines (appended with them when absent; nothing else changes), e.g. docs/scaling.md. Empty: only OUT/report.*."""

    threads: int = valid(0, "[0, 1024]")
    """Torch CPU threads; 0 = torch's default."""

    progress: bool = True
    """Show progress bars with tokens/s and ETA."""

    def __post_init__(self) -> None:
        check_valid(self)
        from saescale.reproduce.runner import parse_budget

        parse_budget(self.budget)
        from saescale.reproduce.profiles import PROFILES
        from saescale.reproduce.units import units

        known = [u.name for u in units(PROFILES["quick"])]
        bad = [u for u in self.unit_names if u not in known]
        if bad:
            raise SaescaleError(f"--units: unknown unit(s) {', '.join(bad)}; choose from {', '.join(known)}")
        from saescale.reproduce.runner import member_ids, member_selector

        names = [f"{u.name}/{i}" for u in units(PROFILES[self.profile_name]) for i in member_ids(u)]
        dead = [pat for pat in self.member_patterns if not any(member_selector([pat])(x) for x in names)]
        if dead:
            raise SaescaleError(f"--members: {', '.join(dead)} matches no member of the {self.profile_name} profile; "
                                f"give UNIT/MEMBER patterns such as {names[0]} or {names[0].split('/')[0]}/n8192-*")

    @property
    def member_patterns(self) -> list[str]:
        return [x.strip() for x in self.members.split(",") if x.strip()]

    @property
    def unit_names(self) -> list[str]:
        return [u.strip() for u in self.units.split(",") if u.strip()]

    @property
    def profile_name(self) -> str:
        return "quick" if self.quick else "full"

    @property
    def out_dir(self) -> Path:
        return Path(self.out or ("docs/reproduce-quick" if self.quick else "docs/reproduce"))

    @property
    def work_dir(self) -> Path:
        return Path(self.work or ("runs/reproduce-quick" if self.quick else "runs/reproduce"))


def run_reproduce(cfg: ReproduceCommand) -> dict:
    from saescale.commands.progress import ProgressBar
    from saescale.reproduce.evals import Evaluator
    from saescale.reproduce.profiles import PROFILES
    from saescale.reproduce.report import build_report
    from saescale.reproduce.runner import parse_budget, reproduce, summary_line

    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    p = PROFILES[cfg.profile_name]
    if cfg.plan:
        from saescale.reproduce.plan import format_plan, plan
        from saescale.reproduce.runner import member_selector

        select = member_selector(cfg.member_patterns) if cfg.member_patterns else None
        rows = plan(p, cfg.out_dir, cfg.work_dir, cfg.unit_names, select)
        print("\n".join(format_plan(rows, p)))
        return {"plan": rows}
    if not cfg.report_only:
        if p.corpus == "large":
            from saescale.activations.corpus import large_documents

            large_documents("kjv")  # not built: one line naming `make corpus`, before anything runs
        summary = reproduce(p, cfg.out_dir, cfg.work_dir, parse_budget(cfg.budget), Evaluator(p), print,
                            progress=lambda name, total: ProgressBar(total, desc=name, enabled=cfg.progress),
                            only=cfg.unit_names, members=cfg.member_patterns)
        print(summary_line(p.name, summary))
    doc = build_report(p, cfg.out_dir, cfg.bootstrap)
    for f in doc["findings"]:
        print(f"{f['id']:12s} {f['verdict']:10s} {f['reason'][:150]}")
        for line in f["lines"]:
            print(line)
    print(f"wrote {cfg.out_dir / 'report.html'} and report.json")
    if cfg.scaling_doc:
        from saescale.reproduce.runner import stored_results
        from saescale.reproduce.scaling_doc import write_scaling_doc
        from saescale.reproduce.units import units

        unit = next(u for u in units(p) if u.name == "scaling-default")
        write_scaling_doc(Path(cfg.scaling_doc), doc, stored_results(cfg.out_dir, unit), str(cfg.out_dir))
        print(f"wrote the scaling results into {cfg.scaling_doc}")
    return doc
