"""One rank's rows of an SAE, initialised or sliced exactly as the whole SAE's rows would be.

:func:`init_shard` reproduces :func:`saescale.train.init.init_sae` (tied init, b_enc = 0,
geometric-median b_pre, loss scale) and the untied-encoder draw of ``new_trainer`` for rows
[lo, hi) only, so no rank ever holds a whole (n, d) matrix: the random rows come from the same
generator stream, drawn block by block with the other blocks dropped (:func:`randn_rows`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from saescale.distributed.sharded_sae import SHARDED, LatentShard, ShardedTopK, row_sharded
from saescale.errors import SaescaleError
from saescale.sae.base import SparseAutoencoder
from saescale.sae.config import SAEConfig
from saescale.sae.normalize import normalize
from saescale.train.config import TrainConfig
from saescale.train.init import geometric_median, loss_scale, resolve_sae_config

RANDN_ROWS = 4096  # rows per block of the blocked normal draw; a multiple of 16


def randn_rows(n: int, d: int, lo: int, hi: int, generator: torch.Generator) -> Tensor:
    """Rows [lo, hi) of ``torch.randn(n, d, generator=generator)`` (CPU), leaving the generator in
    the same state as the whole draw, with at most RANDN_ROWS + (hi - lo) rows in memory.

    Exact because the CPU normal sampler turns sequential uniforms into normals 16 values at a
    time: blocks of a multiple of 16 values, the last one holding at least 16, reproduce the
    whole draw (checked in tests/test_distributed.py).
    """
    starts = list(range(0, n, RANDN_ROWS))
    if len(starts) > 1 and (n - starts[-1]) * d < 16:
        starts.pop()  # a last block under 16 values would take the sampler's short path
    bounds, keep = starts + [n], []
    for a, b in zip(bounds, bounds[1:]):
        block = torch.randn(b - a, d, generator=generator)
        if a < hi and b > lo:
            keep.append(block[max(lo - a, 0) : hi - a])
    return torch.cat(keep) if keep else torch.empty(0, d)


@torch.no_grad()
def init_shard(sae_cfg: SAEConfig, cfg: TrainConfig, sample: Tensor, index: int, shards: int) -> tuple[ShardedTopK, float]:
    """Shard ``index`` of ``shards`` of the SAE that ``new_trainer`` builds from the raw sample (N, d)
    and ``cfg.seed``, and the main-loss scale."""
    if sae_cfg.d and sae_cfg.d != sample.shape[1]:
        raise SaescaleError(f"--d {sae_cfg.d} does not match the data width {sample.shape[1]}; drop --d")
    resolved = resolve_sae_config(sae_cfg, sample)
    shard = LatentShard(resolved.n, shards, index)
    sae = ShardedTopK(resolved, shard)
    sae.check_input(sample)
    gen = torch.Generator().manual_seed(cfg.seed)
    x_n, _ = normalize(sample.float(), resolved.normalize, resolved.norm_scale)
    W = randn_rows(resolved.n, resolved.d, shard.lo, shard.hi, gen)
    W /= W.norm(dim=-1, keepdim=True)
    sae.W_dec.copy_(W)
    sae.W_enc.copy_(W)
    sae.b_pre.copy_(geometric_median(x_n[:32_768]))  # as init_sae
    if not cfg.tied_init:
        w = randn_rows(resolved.n, resolved.d, shard.lo, shard.hi, gen)
        sae.W_enc.copy_(w / w.norm(dim=-1, keepdim=True))
    return sae, loss_scale(x_n)


def rows_of(t: Tensor, shard: LatentShard) -> Tensor:
    """Rows [lo, hi) of a whole (n, ...) tensor, as a copy."""
    return t[shard.lo : shard.hi].clone()


@torch.no_grad()
def shard_of(sae: SparseAutoencoder, shard: LatentShard) -> ShardedTopK:
    """This shard's rows of a whole SAE (same dtype and device)."""
    out = ShardedTopK(sae.cfg, shard).to(sae.W_enc)
    for name in (*SHARDED, "b_pre"):
        getattr(out, name).copy_(rows_of(getattr(sae, name), shard) if name in SHARDED else getattr(sae, name))
    return out


def shard_state(tensors: dict[str, Tensor], shard: LatentShard) -> dict[str, Tensor]:
    """This shard's part of a whole trainer state (Trainer.state_tensors of a single-process checkpoint)."""
    return {k: rows_of(v, shard) if row_sharded(k) else v for k, v in tensors.items()}
