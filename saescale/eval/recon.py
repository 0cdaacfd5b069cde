"""Reconstruction metrics on held-out activations: nMSE, L0, dead and dense latents, density histogram.

Over N eval tokens (normalised space, x_n and x̂_n (N, d)):

    nMSE = sum ||x_n - x̂_n||^2 / sum ||x_n - mean(x_n)||^2     (mean over the eval set; this is also
           the fraction of variance unexplained, FVU = 1 - R^2, so only nMSE is reported; a transcoder's
           is against its target: y_n and ŷ_n in place of x_n and x̂_n)
    L0   = mean number of firing latents per token               (fires: z > 0, saescale.sae.base.fires)
    f_i  = (tokens where latent i fires) / N                    latent density, (n,)
    never_fired_frac = fraction of latents with f_i = 0: never fired on these N held-out tokens
           (not the paper's dead fraction, which counts the last W *training* tokens; see fires)
    dense = fraction of latents with f_i > 0.1
    density histogram: counts of log10 f_i over the latents that fired, bins of 0.25 decades
           from floor(log10(1/N)) to 0 (the others are counted in ``never_fired_frac``)
    expert_load (Switch SAEs only): the fraction of the N tokens routed to each expert, a list of E
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import Tensor

from saescale.sae.base import SparseAutoencoder, SparseCode, fires

BIN_WIDTH = 0.25  # decades per histogram bin


@torch.no_grad()
def reconstruction_metrics(sae: SparseAutoencoder, batches: Iterable[Tensor], k: int | None = None,
                           encode: Callable[[Tensor], SparseCode] | None = None) -> dict:
    """Stream raw batches (B, d) through the SAE; sums are float64 so the result is exact to the order of summation.

    ``k`` overrides the TopK k at test time, ``encode`` (normalised x_n (B, d) -> SparseCode) the
    whole encoder (progressive codes). The result also holds the latent-density histogram
    (``density_hist``: log10 bin edges and counts).
    """
    n = sae.cfg.n
    err = sq = 0.0
    s = torch.zeros(sae.cfg.d_out or sae.cfg.d, dtype=torch.float64)
    fired = torch.zeros(n, dtype=torch.float64)
    tokens = nnz = 0
    routed = getattr(sae, "expert_counts", None)  # Switch: tokens per expert
    load = None
    for x in batches:
        x_n, _ = sae.normalize(x.float())
        if routed is not None:
            load = routed(x_n) if load is None else load + routed(x_n)
        if encode is not None:
            code = encode(x_n)
        else:
            code = sae.encode_k(x_n, k) if k is not None and hasattr(sae, "encode_k") else sae.encode_normalized(x_n)
        x_hat, y_n = sae.output_normalized(x_n, code), sae.target(x_n)  # an SAE's target is x_n itself
        err += (y_n - x_hat).double().pow(2).sum().item()
        sq += y_n.double().pow(2).sum().item()
        s += y_n.double().sum(0)
        active = fires(code.values)
        nnz += int(active.sum())
        fired.index_add_(0, code.indices[active], torch.ones(int(active.sum()), dtype=torch.float64))
        tokens += x.shape[0]
    total_var = sq - s.pow(2).sum().item() / tokens
    freq = fired / tokens
    extra = {"expert_load": [c / max(tokens, 1) for c in load.tolist()]} if load is not None else {}
    return {
        "nmse": err / total_var,
        "l0": nnz / tokens,
        "never_fired_frac": float((fired == 0).double().mean()),
        "dense_frac": float((freq > 0.1).double().mean()),
        "tokens": tokens,
        "density_hist": density_histogram(freq, tokens),
        **extra,
    }


def density_histogram(freq: Tensor, tokens: int) -> dict[str, list]:
    """Histogram of log10 densities of live latents: {'edges_log10': (B+1,), 'counts': (B,)}; freq (n,)."""
    lo = math.floor(math.log10(1.0 / max(tokens, 1)))
    n_bins = int(round(-lo / BIN_WIDTH))
    edges = torch.linspace(lo, 0.0, n_bins + 1, dtype=torch.float64)
    live = freq[freq > 0].double().log10()
    idx = ((live - lo) / BIN_WIDTH + 1e-9).floor().long().clamp(0, n_bins - 1)  # f = 1 goes in the last bin
    counts = torch.bincount(idx, minlength=n_bins)
    return {"edges_log10": [round(float(e), 4) for e in edges], "counts": [int(c) for c in counts]}


def plot_density(hist: dict[str, list], never_fired_frac: float, path: Path) -> Path:
    """Save the latent-density histogram as a PNG (matplotlib imported only here)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges, counts = hist["edges_log10"], hist["counts"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(edges[:-1], counts, width=BIN_WIDTH, align="edge", edgecolor="black", linewidth=0.3)
    ax.set_xlabel("log10 latent density (fraction of tokens where the latent fires)")
    ax.set_ylabel("latents")
    ax.set_title(f"latent density ({never_fired_frac:.1%} never fired on the eval tokens)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
