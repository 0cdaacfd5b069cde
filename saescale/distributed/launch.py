"""What a process launched by torchrun needs besides the mesh: its device, quiet ranks, SIGTERM.

    torchrun --nproc-per-node 4 -m saescale train --latent-shards 2 --out runs/big ...

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address; the same command without
torchrun is a single process (a one-rank mesh). Only rank 0 prints to stdout, logs and writes the
final files; errors are printed by every rank, prefixed with its rank.
"""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager, redirect_stdout
from typing import Any, Iterator

import torch

from saescale.distributed.mesh import RankLost
from saescale.errors import SaescaleError


def check_device(device: str) -> torch.device:
    """``--device`` as a torch device that exists here; one line naming the fix otherwise."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise SaescaleError(f"--device {device!r} is not a torch device: use 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SaescaleError(f"--device {device}: this machine has no usable CUDA device (torch "
                                f"{torch.__version__}, cuda {torch.version.cuda}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SaescaleError(f"--device {device}: there are only {torch.cuda.device_count()} CUDA devices "
                                f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise SaescaleError(f"--device {device}: MPS is not available here; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise SaescaleError(f"--device {device}: saescale trains on 'cpu', 'cuda' or 'mps' only")
    return dev


def train_device(device: str, local_rank: int, world: int) -> torch.device:
    """The device of this rank (checked to exist): ``cuda`` becomes cuda:LOCAL_RANK (one GPU per process);
    others as given."""
    dev = check_device(device)
    if dev.type == "cuda" and dev.index is None and world > 1:
        dev = torch.device("cuda", local_rank)
    if dev.type == "cuda" and dev.index is not None:
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
