"""``saescale sweep SPEC``: train a grid of SAEs together on one pass over the activations."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from saescale.configs import check_valid, valid


@dataclass
class SweepConfig:
    """Train every member of a sweep spec (TOML) on one pass over the activations; rerun to resume."""

    spec: str = field(metadata={"positional": True})
    """Sweep spec file (TOML): [sweep], [grid], [sae], [train], [activations], [synthetic] tables; see examples/sweep-nk.toml."""

    out: str = ""
    """Output folder; overrides the spec's [sweep] out. Rerunning with the same folder trains only unfinished members (refused, with nothing written, if the spec now asks other settings than a finished or started member was trained with)."""

    threads: int = valid(0, "[0, 1024]")
    """Torch CPU threads; 0 = torch's default."""

    progress: bool = True
    """Show a progress bar with tokens/s and ETA."""

    fit: bool = True
    """Run 'saescale fit' on the results when every member is finished."""

    def __post_init__(self) -> None:
        check_valid(self)


def run_sweep_command(cfg: SweepConfig) -> None:
    from saescale.sweep.runner import run_sweep
    from saescale.sweep.spec import load_spec

    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    spec = load_spec(cfg.spec)
    if cfg.out:
        spec.settings.out = cfg.out
    from saescale.commands.progress import ProgressBar

    total = max(m.train.steps for m in spec.members) * spec.train.batch_size
    bar = ProgressBar(total, desc=f"sweep ({len(spec.members)} SAEs)", enabled=cfg.progress)
    try:
        results = run_sweep(spec, progress=bar, log=bar.write)
    finally:
        bar.close()
    print(f"{len(results)} members finished; results in {spec.out / 'results.jsonl'}")
    if cfg.fit and len(results) == len(spec.members):
        from saescale.commands.fit import FitConfig, NothingFitted, run_fit

        try:
            run_fit(FitConfig(results=str(spec.out)))
        except NothingFitted as e:  # too few members to fit is not a failed sweep (a full disk is)
            print(f"fit skipped: {e}")
