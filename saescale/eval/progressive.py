"""Progressive codes: nMSE as a function of L0 at test time (Gao et al. 2024, sec. 5.3).

Two test-time sweeps over the same eval tokens, each reported as nMSE(L0) (see :mod:`saescale.eval.recon`):

- **TopK(k')**: for a TopK (or Multi-TopK) SAE trained at k, encode with TopK(k') for
  k' in {k/4, k/2, k, 2k, 4k} (clamped to [1, n]). A plain TopK code degrades past its training
  k; Multi-TopK keeps improving. Skipped for architectures without a test-time k (ReLU).
- **Fixed threshold θ** (JumpReLU at test time), on the pre-activations pre = W_enc (x_n - b_pre) + b_enc:

      z_j = pre_j · 1[pre_j > θ]          (no TopK: every latent above θ fires)

  One θ per target L0 t in {k'} (TopK SAEs) or {f · L0_own : f in 1/4..4} (ReLU SAEs, L0_own the
  SAE's own L0): on a calibration sample of S tokens (seeded, at most 2,048),

      θ(t) = max(0, the (t·S + 1)-th largest pre-activation over the S × n sample)

  so about t latents per token exceed θ(t). The reported L0 is measured on all eval tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from saescale.eval.recon import reconstruction_metrics
from saescale.sae.base import SparseAutoencoder, SparseCode, fires
from saescale.sae.base import dense_to_code

FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
CALIBRATION_TOKENS = 2048  # tokens of the sample that sets the thresholds
DENSE_ENTRIES = 1 << 22  # pre-activation entries (tokens x n) formed at once by the threshold sweep


def topk_sweep(k: int, n: int) -> list[int]:
    """Sorted distinct k' = round(f k) for f in FACTORS, clamped to [1, n]."""
    return sorted({min(n, max(1, round(f * k))) for f in FACTORS})


def threshold_code(sae: SparseAutoencoder, x_n: Tensor, theta: float) -> SparseCode:
    """JumpReLU at test time: z = pre · 1[pre > θ] (θ >= 0) for normalised x_n (B, d), as a SparseCode
    padded to the row with most firing latents."""
    pre = sae.pre_acts(x_n)
    return dense_to_code(pre * (pre > theta))


def dense_rows(n: int) -> int:
    """Tokens per block so that a block's pre-activations (rows, n) hold at most DENSE_ENTRIES entries."""
    return max(1, DENSE_ENTRIES // n)


@torch.no_grad()
def calibrate_thresholds(sae: SparseAutoencoder, x_n: Tensor, targets: list[int]) -> list[float]:
    """θ(t) per target L0 t on normalised sample x_n (S, d) (module docstring): the (t·S + 1)-th largest
    pre-activation, from each token's top min(n, 4 max t) (exact unless one token has more above θ)."""
    m = min(sae.cfg.n, 4 * max(targets))
    tops = torch.cat([sae.pre_acts(xb).topk(m, dim=-1).values.reshape(-1) for xb in x_n.split(dense_rows(sae.cfg.n))])
    ranked = tops.sort(descending=True).values
    return [max(0.0, float(ranked[min(t * len(x_n), len(ranked) - 1)])) for t in targets]


@torch.no_grad()
def own_l0(sae: SparseAutoencoder, x_n: Tensor) -> float:
    """Mean firing latents (:func:`fires`) per token of the SAE's own code on normalised x_n (B, d)."""
    return float(fires(sae.encode_normalized(x_n).values).sum(-1).double().mean())


def threshold_sweep(sae: SparseAutoencoder, x: Tensor, targets: list[int] | None, seed: int = 0) -> dict:
    """{'theta', 'target_l0', 'nmse', 'l0'} of the fixed-threshold code on raw x (N, d) (module docstring);
    ``targets`` None: FACTORS times the SAE's own L0 on the calibration sample."""
    g = torch.Generator().manual_seed(seed)
    sample = sae.normalize(x[torch.randperm(len(x), generator=g)[:CALIBRATION_TOKENS]])[0]
    if targets is None:
        l0 = own_l0(sae, sample)
        targets = sorted({min(sae.cfg.n, max(1, round(f * l0))) for f in FACTORS})
    thetas = calibrate_thresholds(sae, sample, targets)
    blocks = x.split(dense_rows(sae.cfg.n))
    rows = [reconstruction_metrics(sae, blocks, encode=lambda x_n, t=t: threshold_code(sae, x_n, t)) for t in thetas]
    return {"theta": thetas, "target_l0": targets, "nmse": [r["nmse"] for r in rows], "l0": [r["l0"] for r in rows]}


def progressive_metrics(sae: SparseAutoencoder, x: Tensor, batch: int = 2048, seed: int = 0) -> dict:
    """Both sweeps on raw activations x (N, d): {'k', 'nmse', 'l0', 'train_k'} (TopK SAEs only) and
    'threshold': {'theta', 'target_l0', 'nmse', 'l0'} (every SAE)."""
    res: dict = {}
    targets = None
    if hasattr(sae, "encode_k"):
        targets = topk_sweep(sae.cfg.k, sae.cfg.n)
        rows = [reconstruction_metrics(sae, x.split(batch), k=k) for k in targets]
        res = {"k": targets, "nmse": [r["nmse"] for r in rows], "l0": [r["l0"] for r in rows], "train_k": sae.cfg.k}
    res["threshold"] = threshold_sweep(sae, x, targets, seed)
    return res


def plot_progressive(res: dict, path: Path) -> Path:
    """Save nMSE against L0 (log-log) of the TopK(k') and fixed-threshold sweeps as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    if "k" in res:
        ax.loglog(res["l0"], res["nmse"], "o-", label="TopK(k') at test time")
        ax.axvline(res["train_k"], color="grey", linestyle=":", label=f"training k = {res['train_k']}")
    th = res["threshold"]
    ax.loglog(th["l0"], th["nmse"], "s--", label="fixed threshold θ (JumpReLU)")
    ax.set_xlabel("L0 (firing latents per token)")
    ax.set_ylabel("nMSE")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
