"""Progressive codes: nMSE as a function of the test-time k (Gao et al. 2024, sec. 5.3).

For a TopK (or Multi-TopK) SAE trained at k, encode the same eval tokens with TopK(k') for
k' in {k/4, k/2, k, 2k, 4k} (clamped to [1, n]) and report nMSE(k') and L0(k') (see
:mod:`saescale.eval.recon`). A plain TopK code degrades past its training k; Multi-TopK keeps
improving. Architectures without a test-time k (ReLU) are skipped.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from saescale.eval.recon import reconstruction_metrics
from saescale.sae.base import SparseAutoencoder

FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)


def topk_sweep(k: int, n: int) -> list[int]:
    """Sorted distinct k' = round(f k) for f in FACTORS, clamped to [1, n]."""
    return sorted({min(n, max(1, round(f * k))) for f in FACTORS})


def progressive_metrics(sae: SparseAutoencoder, x: Tensor, batch: int = 2048) -> dict | None:
    """{'k': [...], 'nmse': [...], 'l0': [...]} over test-time k on raw activations x (N, d); None for ReLU SAEs."""
    if not hasattr(sae, "encode_k"):
        return None
    ks = topk_sweep(sae.cfg.k, sae.cfg.n)
    rows = [reconstruction_metrics(sae, x.split(batch), k=k) for k in ks]
    return {"k": ks, "nmse": [r["nmse"] for r in rows], "l0": [r["l0"] for r in rows], "train_k": sae.cfg.k}


def plot_progressive(res: dict, path: Path) -> Path:
    """Save nMSE against test-time k (log-log) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.loglog(res["k"], res["nmse"], "o-")
    ax.axvline(res["train_k"], color="grey", linestyle=":", label=f"training k = {res['train_k']}")
    ax.set_xlabel("test-time k")
    ax.set_ylabel("nMSE")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
