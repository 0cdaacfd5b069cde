"""Initialisation: geometric-median pre-bias, tied encoder/decoder, normalisation constants."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from saescale.errors import SaescaleError
from saescale.sae.base import LossContext, SparseAutoencoder
from saescale.sae.config import SAEConfig
from saescale.sae.normalize import estimate_norm_scale, normalize

RANDN_ROWS = 4096  # rows per block of the blocked normal draw of a shard; a multiple of 16


def geometric_median(points: Tensor, iters: int = 100, tol: float = 1e-7) -> Tensor:
    """argmin_m sum_i ||p_i - m||, points (N, d) -> (d,), computed in float64 by Vardi & Zhang's
    modified Weiszfeld iteration (PNAS 2000), which handles an estimate that lands on data points.

    Weiszfeld's step m <- T(m) = sum_i w_i p_i / sum_i w_i, w_i = 1 / ||p_i - m||, is undefined at a
    data point and stalls there even when it is not the median (e.g. the mean of {(-1,0) x3, (0,0),
    (3,0)} is the point (0,0), the median is (-1,0)). With eta = the number of points at m, the sums
    over the other points and R = sum_i w_i (p_i - m), r = ||R||:

        m is the median             if r <= eta
        m <- (1 - eta/r) T(m) + (eta/r) m   otherwise (plain Weiszfeld when eta = 0)
    """
    p = points.double()
    m = p.mean(0)
    at_eps = 1e-12 * max(p.abs().max().item(), 1.0)
    for _ in range(iters):
        dist = (p - m).norm(dim=-1)  # (N,)
        at = dist <= at_eps
        q, w = p[~at], 1.0 / dist[~at]
        if len(q) == 0:
            break
        eta, T = int(at.sum()), (w[:, None] * q).sum(0) / w.sum()
        if eta:
            r = (w[:, None] * (q - m)).sum(0).norm().item()
            if r <= eta:
                break
            T = (1 - eta / r) * T + (eta / r) * m
        done = (T - m).norm() <= tol * max(m.norm().item(), 1.0)
        m = T
        if done:
            break
    return m.to(points.dtype)


def resolve_sae_config(cfg: SAEConfig, sample: Tensor, d_target: int | None = None) -> SAEConfig:
    """Fill the data-dependent fields from a raw sample (N, d): d; norm_scale for 'mean_sq' unless given;
    JumpReLU's bandwidth unless given, 0.001 sqrt(E||x_n - E x_n||^2 / d) (the paper's 0.001 on data with
    E||x||^2 = d, scaled to this normalisation). With ``d_target`` (rows [x | y] of a transcoder's data,
    (N, d + d_target)): d_out, and the target's scale s_y (E||y_n||^2 = d_out) unless given."""
    if d_target is not None:
        return _resolve_transcoder(cfg, sample, d_target)
    if cfg.d_out is not None:
        raise SaescaleError(f"--d-out {cfg.d_out} makes a transcoder, but the data holds no target: build the cache "
                            "with --target-hook, or drop --d-out")
    d = sample.shape[-1]
    if cfg.d is not None and cfg.d != d:
        raise SaescaleError(f"--d {cfg.d} does not match the data width {d}; drop --d")
    scale = cfg.norm_scale
    if cfg.normalize == "mean_sq" and scale is None:
        scale = estimate_norm_scale(sample)
    bandwidth = cfg.bandwidth
    if cfg.arch == "jumprelu" and bandwidth is None:
        x_n, _ = normalize(sample.float(), cfg.normalize, scale)
        bandwidth = float(f"{0.001 * (1.0 / (loss_scale(x_n) * d)) ** 0.5:.4g}")
    return dataclasses.replace(cfg, d=d, norm_scale=scale, bandwidth=bandwidth)


def _resolve_transcoder(cfg: SAEConfig, sample: Tensor, d_out: int) -> SAEConfig:
    """A transcoder's config from rows [x | y] (N, d + d_out): d, d_out, the input's and the target's scales."""
    d = sample.shape[-1] - d_out
    for opt, given, width in (("--d", cfg.d, d), ("--d-out", cfg.d_out, d_out)):
        if given is not None and given != width:
            raise SaescaleError(f"{opt} {given} does not match the data's width {width}; drop {opt}")
    probe = dataclasses.replace(cfg, d_out=d_out)  # checks the architecture and normalisation (one line)
    scale = probe.norm_scale
    if cfg.normalize == "mean_sq" and scale is None:
        scale = estimate_norm_scale(sample[:, :d])
    target = cfg.target_scale or estimate_norm_scale(sample[:, d:])
    return dataclasses.replace(probe, d=d, norm_scale=scale, target_scale=target)


def loss_scale(x_n: Tensor) -> float:
    """1 / E||x_n - E x_n||^2 over a normalised sample (N, d): the fixed main-loss scale."""
    var = (x_n.double() - x_n.double().mean(0)).pow(2).sum(-1).mean().item()
    return 1.0 / max(var, 1e-30)


def randn_rows(n: int, d: int, lo: int, hi: int, generator: torch.Generator) -> Tensor:
    """Rows [lo, hi) of ``torch.randn(n, d, generator=generator)`` (CPU), leaving the generator in
    the same state as the whole draw, with at most RANDN_ROWS + (hi - lo) rows in memory.

    Exact because the CPU normal sampler turns sequential uniforms into normals 16 values at a
    time: blocks of a multiple of 16 values, the last one holding at least 16, reproduce the
    whole draw (checked in tests/train/test_init.py).
    """
    if lo == 0 and hi == n:
        return torch.randn(n, d, generator=generator)
    starts = list(range(0, n, RANDN_ROWS))
    if len(starts) > 1 and (n - starts[-1]) * d < 16:
        starts.pop()  # a last block under 16 values would take the sampler's short path
    bounds, keep = starts + [n], []
    for a, b in zip(bounds, bounds[1:]):
        block = torch.randn(b - a, d, generator=generator)
        if a < hi and b > lo:
            keep.append(block[max(lo - a, 0) : hi - a])
    return torch.cat(keep) if keep else torch.empty(0, d)


def unit_rows(sae: SparseAutoencoder, generator: torch.Generator) -> Tensor:
    """This shard's rows of n uniformly random unit directions (normalised Gaussians), (n_L, d)."""
    s = sae.shard
    W = randn_rows(s.n, sae.cfg.d, s.lo, s.hi, generator)
    return W / W.norm(dim=-1, keepdim=True)


@torch.no_grad()
def init_sae(sae: SparseAutoencoder, sample: Tensor, generator: torch.Generator, tied: bool = True) -> float:
    """Tied init on a raw sample (N, d); returns the main-loss scale.

    W_dec rows: uniformly random directions (normalised Gaussians); W_enc = W_dec (tied,
    untied afterwards; ``tied=False`` draws the encoder's directions independently, next from
    the same generator); b_enc = 0; b_pre = geometric median of the normalised sample. A
    shard of a mesh gets exactly its rows of the whole SAE's draw. A transcoder (rows [x | y]) has its own
    init, tied across its two spaces by the sample's best linear map
    (:meth:`saescale.sae.transcoder.Transcoder.init_transcoder`).
    """
    if sae.transcoder:
        return sae.init_transcoder(sample, generator, tied=tied)
    x_n, _ = normalize(sample.float(), sae.cfg.normalize, sae.cfg.norm_scale)
    W = unit_rows(sae, generator)
    sae.W_dec.copy_(W)
    sae.W_enc.copy_(W if tied else unit_rows(sae, generator))
    sae.b_enc.zero_()
    sae.b_pre.copy_(geometric_median(x_n[:32_768]))
    sae.init_extra(x_n)
    return loss_scale(x_n)


@torch.no_grad()
def scale_encoder(sae: SparseAutoencoder, generator: torch.Generator, samples: int = 256) -> float:
    """Divide W_enc by s = mean_u ||x̂(u) - b_pre|| over random unit directions u (samples, d) placed at
    b_pre (x_n = u + b_pre), so that such inputs reconstruct with norm about 1; returns s.

    The released code's optional encoder scaling (PAPER.md, Initialisation). With tied init the
    code of a unit input is a few large cosines times decoder rows, so x̂ can be far longer than
    x_n; the forward is the SAE's own loss path, so a shard of a mesh gets the global s.
    """
    u = torch.randn(samples, sae.cfg.d, generator=generator).to(sae.W_enc)
    if sae.transcoder:
        raise SaescaleError("--init-encoder-scale is the SAE's encoder scaling (inputs placed at b_pre); a transcoder "
                            "has no input bias: drop --init-encoder-scale")
    x_n = u / u.norm(dim=-1, keepdim=True) + sae.b_pre
    off = torch.zeros(sae.shard.size, dtype=torch.bool, device=sae.W_enc.device)
    x_hat = sae.loss_terms(x_n, LossContext(off, 0, 0.0, 1.0, False, 0.0)).x_hat
    s = (x_hat - sae.b_pre).norm(dim=-1).mean().item()
    sae.W_enc.div_(max(s, 1e-12))
    return s
