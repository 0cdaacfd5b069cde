"""The process layout of a distributed run, a 2-D mesh (data × latent), and its collectives.

World size W = D × L processes, L = ``--latent-shards``, D = W / L data-parallel replicas:

    rank = data_rank * L + latent_rank
    latent group of a rank: the L ranks with its data_rank    (same batch rows, disjoint latents)
    data group of a rank:   the D ranks with its latent_rank  (same latents, disjoint batch rows)

The L ranks that split the latents are consecutive, so with torchrun they share a machine when
L divides the processes per machine: the latent group talks every step about (B/D, d) tensors,
the data group about (n/L, d) gradients.

Every collective goes through :class:`Mesh`, which skips it for a group of one process (so one
process runs the same code with no process group at all) and turns a failed collective (a rank
that died, one that hung past ``--dist-timeout``, a broken network) into a one-line
:class:`RankLost` error instead of a hang or a C++ traceback.
"""

from __future__ import annotations

import datetime
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Literal, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from saescale.configs import check_valid, valid
from saescale.errors import SaescaleError

Dim = Literal["data", "latent", "world"]


@dataclass
class DistConfig:
    """Distributed training (launch with torchrun; a single process ignores these unless --latent-shards > 1)."""

    latent_shards: int = valid(1, ">= 1")
    """Split the latents (rows of W_enc and W_dec, b_enc, their Adam moments and dead-latent counters) over this many processes; the world size divided by it is the number of data-parallel replicas. 1 = data parallel only."""

    dist_timeout: float = valid(300.0, "> 0")
    """Seconds a process waits for the others in a collective before it gives up with an error (a rank that died or hung)."""

    dist_backend: Literal["auto", "gloo", "nccl"] = "auto"
    """torch.distributed backend: 'auto' = nccl on CUDA, gloo on CPU."""

    def __post_init__(self) -> None:
        check_valid(self)


class LatentShard(NamedTuple):
    """Latents [lo, hi) of n, shard ``index`` of ``shards`` (n divisible by shards)."""

    n: int
    shards: int
    index: int

    @property
    def size(self) -> int:
        return self.n // self.shards

    @property
    def lo(self) -> int:
        return self.index * self.size

    @property
    def hi(self) -> int:
        return self.lo + self.size


class RankLost(SaescaleError):
    """A collective failed: another process died, hung past the timeout, or the network broke."""


@dataclass(frozen=True)
class Layout:
    """W = D × L processes: ``world`` W and ``latent_shards`` L (validated by :func:`check_layout`)."""

    world: int
    latent_shards: int

    @property
    def data_shards(self) -> int:
        return self.world // self.latent_shards

    def coords(self, rank: int) -> tuple[int, int]:
        """(data_rank, latent_rank) of global ``rank``."""
        return divmod(rank, self.latent_shards)


def check_layout(world: int, latent_shards: int, n: int, batch_size: int, arch: str) -> Layout:
    """The layout for W processes and L latent shards, or a one-line error saying what to change."""
    if world % latent_shards:
        raise SaescaleError(
            f"world size {world} is not divisible by --latent-shards {latent_shards}; launch a multiple of "
            f"{latent_shards} processes (torchrun --nproc-per-node {latent_shards} ...) or change --latent-shards"
        )
    if n % latent_shards:
        raise SaescaleError(f"--n {n} is not divisible by --latent-shards {latent_shards}; every shard holds n / shards latents")
    layout = Layout(world, latent_shards)
    if batch_size % layout.data_shards:
        raise SaescaleError(
            f"--batch-size {batch_size} is not divisible by the {layout.data_shards} data-parallel replicas "
            f"(world size {world} / --latent-shards {latent_shards}); each takes batch / replicas rows"
        )
    if arch != "topk" and latent_shards > 1:
        raise SaescaleError(f"latent sharding (--latent-shards {latent_shards}) supports --arch topk only, got {arch!r}: "
                            f"train {arch} data-parallel (--latent-shards 1) or in one process")
    if arch == "switch" and world > 1:
        raise SaescaleError(f"--arch switch trains in one process only (world size {world}): its expert load and balance "
                            "loss are not reduced over replicas; launch it without torchrun")
    return layout


def env_ranks() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) without it."""
    try:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))
    except ValueError:
        raise SaescaleError("RANK / WORLD_SIZE / LOCAL_RANK must be integers (set by torchrun)") from None


def error_reason(e: BaseException) -> str:
    """The first sentence of a backend error, without gloo's source path prefix, at most 160 characters."""
    line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    if line.startswith("[") and "] " in line:
        line = line.split("] ", 1)[1]
    return line.split(". ")[0].rstrip(".")[:160]


class Mesh:
    """This process's place in the layout, its process groups, and guarded collectives.

    ``groups`` maps "data", "latent", "world" to a process group, or None where the group is this
    process alone. ``device_mesh`` is the matching DeviceMesh (dims "data", "latent") used to
    describe shards to torch.distributed.checkpoint; None for a single process.
    """

    def __init__(self, layout: Layout, rank: int, groups: dict[str, object | None], device_mesh: object | None,
                 timeout: float = 0.0):
        self.layout, self.rank, self.groups, self.device_mesh, self.timeout = layout, rank, groups, device_mesh, timeout
        self.data_rank, self.latent_rank = layout.coords(rank)

    @classmethod
    def single(cls) -> "Mesh":
        """One process, no process group: every collective is a no-op."""
        return cls(Layout(1, 1), 0, {"data": None, "latent": None, "world": None}, None)

    @property
    def world(self) -> int:
        return self.layout.world

    @property
    def latent_shards(self) -> int:
        return self.layout.latent_shards

    @property
    def data_shards(self) -> int:
        return self.layout.data_shards

    def size(self, dim: Dim) -> int:
        return {"data": self.data_shards, "latent": self.latent_shards, "world": self.world}[dim]

    def shard(self, n: int) -> LatentShard:
        """This rank's latents of an SAE with n latents (all of them in one process)."""
        return LatentShard(n, self.latent_shards, self.latent_rank)

    # ---- guarded collectives --------------------------------------------
    @contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Turn a failed collective into :class:`RankLost` with a one-line message."""
        try:
            yield
        except RankLost:
            raise
        except RuntimeError as e:  # gloo/NCCL errors and torch.distributed.DistError are RuntimeErrors
            raise RankLost(
                f"rank {self.rank} of {self.world}: {what} failed ({error_reason(e)}): another process died, hung for "
                f"more than --dist-timeout {self.timeout:g} s, or the network failed; rerun the same command to "
                "resume from the last checkpoint"
            ) from None

    def all_reduce(self, t: Tensor, dim: Dim) -> Tensor:
        """In place: t <- the sum of t over the ranks of group ``dim``; returns t."""
        if self.size(dim) > 1:
            with self.guard(f"all_reduce over the {dim} group"):
                dist.all_reduce(t, group=self.groups[dim])
        return t

    def all_gather(self, t: Tensor, dim: Dim) -> Tensor:
        """(size, *t.shape): every rank's t, in group-rank order (the latent rank for "latent")."""
        if self.size(dim) == 1:
            return t[None]
        parts = [torch.empty_like(t) for _ in range(self.size(dim))]
        with self.guard(f"all_gather over the {dim} group"):
            dist.all_gather(parts, t.contiguous(), group=self.groups[dim])
        return torch.stack(parts)

    def gather_rows(self, t: Tensor) -> Tensor | None:
        """Concatenate the latent group's shards t (n/L, ...) -> (n, ...) on its latent rank 0; None elsewhere."""
        if self.latent_shards == 1:
            return t
        parts = [torch.empty_like(t) for _ in range(self.latent_shards)] if self.latent_rank == 0 else None
        with self.guard("gathering the latent shards"):
            dist.gather(t.contiguous(), parts, group=self.groups["latent"], group_dst=0)
        return torch.cat(parts) if parts is not None else None

    def barrier(self, what: str = "barrier") -> None:
        if self.world > 1:
            with self.guard(what):
                dist.barrier(group=self.groups["world"])


def _subgroups(layout: Layout, timeout: datetime.timedelta, backend: str) -> tuple[object, object]:
    """(data group, latent group) of this rank; every rank creates all of them, in the same order."""
    D, L = layout.data_shards, layout.latent_shards
    data, _ = dist.new_subgroups_by_enumeration([[d * L + l for d in range(D)] for l in range(L)],
                                                timeout=timeout, backend=backend)
    latent, _ = dist.new_subgroups_by_enumeration([[d * L + l for l in range(L)] for d in range(D)],
                                                  timeout=timeout, backend=backend)
    return data, latent


def init_mesh(layout: Layout, rank: int, cfg: DistConfig, device: torch.device) -> Mesh:
    """Join the process group (env:// from torchrun) with ``cfg.dist_timeout`` and build the mesh.

    The timeout applies to every collective of every group, so a rank that hangs makes the others
    fail within it; a rank that dies closes its sockets and the others fail at once.
    """
    if layout.world == 1:
        return Mesh.single()
    from torch.distributed.device_mesh import DeviceMesh

    backend = cfg.dist_backend if cfg.dist_backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    timeout = datetime.timedelta(seconds=cfg.dist_timeout)
    m = Mesh(layout, rank, {}, None, cfg.dist_timeout)
    with m.guard("joining the process group"):
        if not dist.is_initialized():
            kw = {"device_id": device} if backend == "nccl" else {}
            dist.init_process_group(backend, timeout=timeout, **kw)
        backend = dist.get_backend()  # subgroups as the default group (already joined by a caller: its backend)
        if dist.get_world_size() != layout.world or dist.get_rank() != rank:
            raise SaescaleError(f"the process group has rank {dist.get_rank()} of {dist.get_world_size()}, but RANK / "
                                f"WORLD_SIZE say {rank} of {layout.world}; launch every process with the same torchrun")
        data, latent = _subgroups(layout, timeout, backend)
        grid = torch.arange(layout.world).view(layout.data_shards, layout.latent_shards)
        device_mesh = DeviceMesh.from_group([data, latent], device.type, mesh=grid, mesh_dim_names=("data", "latent"))
    groups = {"data": data, "latent": latent, "world": dist.group.WORLD}
    return Mesh(layout, rank, groups, device_mesh, cfg.dist_timeout)


def close_mesh(mesh: Mesh) -> None:
    """Leave the process group (no collective; safe after another rank has failed)."""
    if mesh.world > 1 and dist.is_initialized():
        dist.destroy_process_group()
