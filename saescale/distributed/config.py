"""Options of a distributed run (``saescale train`` under torchrun)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from saescale.errors import SaescaleError


@dataclass
class DistConfig:
    """Distributed training (launch with torchrun; a single process ignores these unless --latent-shards > 1)."""

    latent_shards: int = 1
    """Split the latents (rows of W_enc and W_dec, b_enc, their Adam moments and dead-latent counters) over this many processes; the world size divided by it is the number of data-parallel replicas. 1 = data parallel only."""

    dist_timeout: float = 300.0
    """Seconds a process waits for the others in a collective before it gives up with an error (a rank that died or hung)."""

    dist_backend: Literal["auto", "gloo", "nccl"] = "auto"
    """torch.distributed backend: 'auto' = nccl on CUDA, gloo on CPU."""

    def __post_init__(self) -> None:
        if self.latent_shards < 1:
            raise SaescaleError(f"--latent-shards must be at least 1, got {self.latent_shards}")
        if not self.dist_timeout > 0:
            raise SaescaleError(f"--dist-timeout must be positive, got {self.dist_timeout}")
