"""``saescale train`` as one rank of a distributed run.

    torchrun --nproc-per-node 4 -m saescale train --latent-shards 2 --out runs/big ...

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address; the same command without
torchrun is a single process. The distributed path is taken when WORLD_SIZE > 1, when
--latent-shards > 1 (which then asks for torchrun), or when --out holds a distributed checkpoint
(a single process can resume it). Only rank 0 prints to stdout, logs and writes the final files;
errors are printed by every rank, prefixed with its rank.
"""

from __future__ import annotations

import os
import signal
import sys
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any, Iterator

import torch

from saescale.distributed.checkpoint import is_dist_checkpoint
from saescale.distributed.config import DistConfig
from saescale.distributed.mesh import RankLost, env_ranks
from saescale.train.checkpoint import latest_checkpoint


def wants_distributed(dist_cfg: DistConfig, out: Path) -> bool:
    """Whether ``saescale train`` must take the distributed path (see the module docstring)."""
    if env_ranks()[1] > 1 or dist_cfg.latent_shards > 1:
        return True
    folder = latest_checkpoint(out) if (out / "run.json").exists() else None
    return folder is not None and is_dist_checkpoint(folder)


def train_device(device: str, local_rank: int, world: int) -> torch.device:
    """The device of this rank: ``cuda`` becomes cuda:LOCAL_RANK (one GPU per process); others as given."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None and world > 1:
        dev = torch.device("cuda", local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev


@contextmanager
def rank_output(rank: int) -> Iterator[None]:
    """stdout of ranks other than 0 goes nowhere (their errors still reach stderr)."""
    if rank == 0:
        yield
        return
    with open(os.devnull, "w") as null, redirect_stdout(null):
        yield


@contextmanager
def stop_on_sigterm(rank: int, world: int) -> Iterator[None]:
    """Turn SIGTERM (torchrun stopping the survivors after a rank failed) into a one-line error."""
    if world == 1:
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise RankLost(f"rank {rank} of {world}: stopped by the launcher (SIGTERM), most likely because another "
                       "rank failed; rerun the same command to resume from the last checkpoint")

    old = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def run_train_distributed(cmd: Any, out: Path) -> dict[str, Any]:
    """Train as this rank (a :class:`~saescale.commands.train.TrainCommand`); rank 0 reports held-out figures."""
    import dataclasses

    from saescale.commands.train import heldout_report, train_sources
    from saescale.distributed.data import built_cache
    from saescale.distributed.mesh import check_layout, close_mesh, init_mesh
    from saescale.distributed.run import train_sae_distributed
    from saescale.errors import SaescaleError

    rank, world, local_rank = env_ranks()
    try:
        layout = check_layout(world, cmd.dist.latent_shards, cmd.sae.n, cmd.train.batch_size, cmd.sae.arch)
        device = train_device(cmd.train.device, local_rank, world)
        cfg = dataclasses.replace(cmd.train, device=str(device))
        if world > 1 and cmd.run.acts == "cache":  # open the built cache; never harvest in several processes
            cmd = dataclasses.replace(cmd, run=dataclasses.replace(cmd.run, acts=str(built_cache(cmd.activations))))
        with rank_output(rank), stop_on_sigterm(rank, world):
            src, held, extra = train_sources(cmd)
            mesh = init_mesh(layout, rank, cmd.dist, device)
            try:
                result = train_sae_distributed(cmd.sae, cfg, src, mesh, out, extra)
                return heldout_report(cmd, result.sae, src, held, out) if rank == 0 else {}
            finally:
                close_mesh(mesh)
    except SaescaleError as e:
        if world > 1 and not str(e).startswith("rank "):
            raise type(e)(f"rank {rank} of {world}: {e}") from None
        raise
    finally:
        sys.stdout.flush()
