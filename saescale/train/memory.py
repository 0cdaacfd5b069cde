"""How much memory a training run needs at least, checked before anything is allocated.

A run of an SAE with n latents on width d, global batch B, on a latent shard of n / L latents and a
data replica of B / D rows, holds in fp32 (4 bytes each) at least

    weights      W_enc, W_dec (n/L, d) each, b_enc (n/L), b_pre (d)    ~ 2 (n/L) d
    Adam         two moments of each                                    ~ 4 (n/L) d
    EMA          one more copy of the weights with --ema > 0           ~ 2 (n/L) d
    batch        x, its normalised copy, reconstruction, error (B/D, d) ~ 4 (B/D) d

The step also holds gradients and blocked pre-activations, so this is a lower bound: a run refused
here could never fit, and a run let through may still need more (benchmarks/README.md: n = 2^20,
d = 576 peaked at 17.9 GB, above this bound's 14.5 GB).
"""

from __future__ import annotations

import os

import torch

from saescale.errors import SaescaleError


def min_train_bytes(n: int, d: int, batch: int, ema: bool = False, latent_shards: int = 1, replicas: int = 1) -> int:
    """The lower bound above, in bytes, for one process."""
    rows = -(-n // latent_shards)
    weights = 2 * rows * d + rows + d
    return 4 * (weights * (3 + (1 if ema else 0)) + 4 * -(-batch // replicas) * d)


def device_memory(device: torch.device) -> int | None:
    """Total memory of ``device`` in bytes (physical RAM for the CPU); None when unknown."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(n: int, d: int | None, batch: int, device: torch.device, ema: bool = False, latent_shards: int = 1,
               replicas: int = 1) -> None:
    """Refuse, before allocating, a run whose weights, Adam state and batch alone exceed the device's memory
    (``d`` None: not known yet, checked for the smallest width, 1)."""
    need, have = min_train_bytes(n, d or 1, batch, ema, latent_shards, replicas), device_memory(device)
    if have is not None and need > have:
        raise SaescaleError(
            f"--n {n:,} and --batch-size {batch:,} on {f'width d = {d}' if d else 'any width'} need at least {need / 2**30:,.1f} GiB for the "
            f"weights, Adam state and batch per process, and {device} has {have / 2**30:,.1f} GiB: use a smaller "
            "--n or --batch-size, or split the latents over more processes (--latent-shards under torchrun)")
