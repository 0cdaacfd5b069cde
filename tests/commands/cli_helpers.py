"""Shared by the CLI reliability tests: a tiny synthetic run, a run cut off part-way, file snapshots."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from saescale.data.synthetic import SyntheticConfig, SyntheticSource
from saescale.train.run import train_sae

TRAIN = ["--acts", "synthetic", "--synth-d", "16", "--synth-features", "64", "--synth-k", "4", "--n", "64",
         "--k", "4", "--normalize", "none", "--tokens", "10240", "--batch-size", "512", "--checkpoint-every", "5",
         "--keep-checkpoints", "2", "--eval-tokens", "1024", "--no-progress"]


def sweep_spec(grid: str = "n = [32, 64]", curve_points: int = 2, checkpoint_every: int | None = None) -> str:
    """A tiny synthetic sweep spec (d 16, 64 planted features, 4096 tokens per member); ``grid`` is the
    body of its [grid] table (with k in the grid, [sae] leaves k out)."""
    sae_k = "" if "k =" in grid else "k = 4\n"
    every = "" if checkpoint_every is None else f"checkpoint_every = {checkpoint_every}\n"
    return (f"[sweep]\nsource = \"synthetic\"\ncurve_points = {curve_points}\n[grid]\n{grid}\n[sae]\n{sae_k}"
            f"normalize = \"none\"\n[train]\ntokens = 4096\nbatch_size = 512\n{every}[synthetic]\nd = 16\n"
            "features = 64\nk = 4\n")


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (but a test's disk filler)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".filler"}


class Interrupted(Exception):
    pass


class StopAfter:
    """The synthetic source of ``saescale train --acts synthetic``, its training stream (the second read:
    the first is the init sample) cut off after ``steps`` batches, like a killed run."""

    def __init__(self, cfg: SyntheticConfig, steps: int):
        self.src, self.steps, self.d, self.reads = SyntheticSource(cfg), steps, cfg.d, 0

    def batches(self, batch_size: int, start: int = 0):
        self.reads += 1
        for i, x in enumerate(self.src.batches(batch_size, start), start):
            if self.reads > 1 and i >= self.steps:
                raise Interrupted
            yield x


def interrupted_run(out: Path, steps: int, argv: list[str] = TRAIN) -> None:
    """The run of TRAIN stopped after ``steps`` steps, with its checkpoints, as the CLI would have left it."""
    from saescale.cliargs import parse_config
    from saescale.commands.train import TrainCommand, train_sources

    cmd = parse_config(TrainCommand, argv + ["--out", str(out)], "t")
    _, _, extra = train_sources(cmd)
    with pytest.raises(Interrupted):
        train_sae(cmd.sae, cmd.train, StopAfter(cmd.synthetic, steps), out, extra)
