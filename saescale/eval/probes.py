"""Probe loss: how well the best single latent predicts a binary property (Gao et al. 2024, sec. 4.2).

For task t with examples j (contexts for sequence-level tasks, tokens for token-level tasks):

    pooled latent   z_ji = max over the context's kept positions of z_i     (sequence, default)
                         = mean over the kept positions                     (--probe-pooling mean)
                         = z_i at the token                                 (token-level)
    per latent i:   fit p = σ(w_i z_ji + b_i) on the train half (Newton, :mod:`saescale.eval.logistic`)
    score_t       = min_i  held-out CE_i   (nats; log 2 = chance for balanced classes)
    probe loss    = mean over tasks of score_t
    95 % intervals: percentile bootstrap (seeded, ``--probe-bootstrap`` resamples) of the mean over
                    tasks (tasks resampled), and of each score_t over its test documents (the chosen
                    latent's fit held fixed, so it ignores the optimism of choosing the latent)

Classes are balanced by subsampling (at most ``max_per_class`` each); the train/test halves are
split by source document, so no text is shared (falls back to a split by example when a class
would be missing from one half). Selecting the latent by its held-out loss is the paper's
definition; it is slightly optimistic, so the latent's train loss is reported too. The ceiling is
a dense L2 logistic probe on the raw activations (mean-pooled for sequence tasks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from saescale.configs import check_valid, valid
from saescale.eval.logistic import cross_entropy_1d, dense_probe, newton_1d, standardize
from saescale.eval.tasks import Task
from saescale.sae.base import SparseCode


@dataclass(frozen=True)
class ProbeConfig:
    """Probe loss: the best single latent as a classifier of each probe task."""

    tasks: str = "all"
    """Probe tasks, comma-separated, or 'all' (every built-in task plus optional ones whose data is installed)."""

    docs: int = valid(32, ">= 1")
    """Documents drawn per probe data source (State of the Union, Moby-Dick, Python stdlib, fortunes)."""

    per_doc: int = valid(3, ">= 1")
    """Contexts drawn per probe document."""

    pooling: Literal["max", "mean"] = "max"
    """How sequence-level probe tasks pool a latent over the context's tokens (paper unpublished; our default max)."""

    max_per_class: int = valid(1024, ">= 1")
    """Most examples per class and task (classes are balanced by subsampling)."""

    dense: bool = True
    """Also fit a dense logistic probe on the raw activations (the ceiling)."""

    bootstrap: int = valid(1000, ">= 10")
    """Bootstrap resamples for the 95% intervals (of the mean over tasks, and of each task's score over its test documents)."""

    def __post_init__(self) -> None:
        check_valid(self, "probe-")


def pool_code(code: SparseCode, n_ctx: int, t_kept: int, n: int, how: str) -> Tensor:
    """Sparse code of (n_ctx * t_kept) tokens, context-major -> pooled dense (n_ctx, n) by 'max' or 'mean'."""
    ctx = torch.arange(n_ctx).repeat_interleave(t_kept)[:, None].expand_as(code.indices)
    flat = (ctx * n + code.indices).reshape(-1)
    out = torch.zeros(n_ctx * n)
    if how == "max":
        out.scatter_reduce_(0, flat, code.values.reshape(-1).float(), reduce="amax")
    else:
        out.index_add_(0, flat, code.values.reshape(-1).float() / t_kept)
    return out.view(n_ctx, n)


def balanced(labels: Tensor, max_per_class: int, g: torch.Generator) -> Tensor:
    """Indices (2m,) of m examples of each class (labels (N,) in {1, 0, -1}), m = min(counts, max_per_class)."""
    pos, neg = (labels == 1).nonzero()[:, 0], (labels == 0).nonzero()[:, 0]
    m = min(len(pos), len(neg), max_per_class)
    pick = [c[torch.randperm(len(c), generator=g)[:m]] for c in (pos, neg)]
    return torch.cat(pick).sort().values


def split_by_group(groups: Tensor, y: Tensor, g: torch.Generator) -> Tensor:
    """(N,) bool test mask: a random half of the groups; by example if a class would miss a half."""
    uniq = groups.unique()
    test_groups = uniq[torch.randperm(len(uniq), generator=g)[: len(uniq) // 2]]
    test = torch.isin(groups, test_groups)
    ok = all(((y == c) & m).any() for c in (0, 1) for m in (test, ~test))
    if not ok:
        test = torch.zeros(len(y), dtype=torch.bool)
        test[torch.randperm(len(y), generator=g)[: len(y) // 2]] = True
    return test


def best_latent(z_tr: Tensor, y_tr: Tensor, z_te: Tensor, y_te: Tensor, chunk: int = 1024,
                skip_silent: bool = True) -> dict[str, float]:
    """Fit a 1-D probe per column (chunks of latents) -> the lowest held-out CE, its latent and train CE.

    A column that is zero on every train example (a latent that never fires there: most of a sparse code's
    n) standardises to zeros, so its probe is the same for all of them: w = 0 and b the logit of the train
    base rate. ``skip_silent`` fits the first such column alone for all of them (same result: ties go to the
    lowest latent index either way); False fits every column (the plain reference)."""
    cols = torch.arange(z_tr.shape[1])
    if skip_silent:
        fires = (z_tr != 0).any(0)
        silent = (~fires).nonzero()[:, 0]
        cols = torch.cat([fires.nonzero()[:, 0], silent[:1]]).sort().values
    z_tr, z_te = standardize(z_tr[:, cols], z_te[:, cols])
    best = {"test_ce": float("inf"), "latent": -1, "train_ce": float("nan")}
    for a in range(0, z_tr.shape[1], chunk):
        w, b = newton_1d(z_tr[:, a : a + chunk], y_tr)
        ce = cross_entropy_1d(z_te[:, a : a + chunk], y_te, w, b)
        i = int(ce.argmin())
        if float(ce[i]) < best["test_ce"]:
            tr = cross_entropy_1d(z_tr[:, a + i : a + i + 1], y_tr, w[i : i + 1], b[i : i + 1])
            best = {"test_ce": float(ce[i]), "latent": int(cols[a + i]), "train_ce": float(tr[0])}
    return best


def bootstrap_ci(values: Tensor, resamples: int, seed: int, groups: Tensor | None = None,
                 level: float = 0.95) -> list[float]:
    """[lo, hi] percentile-bootstrap interval of the mean of values (K,), resampling groups (K,) (default: each value).

    With groups the statistic is the mean over all values of the resampled groups (a cluster bootstrap).
    """
    v = values.double()
    gid = torch.arange(len(v)) if groups is None else groups.unique(return_inverse=True)[1]
    n_g = int(gid.max()) + 1
    sums = torch.zeros(n_g, dtype=torch.float64).index_add_(0, gid, v)
    counts = torch.zeros(n_g, dtype=torch.float64).index_add_(0, gid, torch.ones_like(v))
    idx = torch.randint(n_g, (resamples, n_g), generator=torch.Generator().manual_seed(seed))
    means = sums[idx].sum(1) / counts[idx].sum(1)
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    return [float(t) for t in torch.quantile(means, q)]


def latent_test_losses(z_tr: Tensor, y_tr: Tensor, z_te: Tensor, y_te: Tensor, latent: int) -> Tensor:
    """(N_test,) per-example held-out CE of the 1-D probe on column ``latent`` (fit as in :func:`best_latent`)."""
    tr, te = standardize(z_tr[:, latent : latent + 1], z_te[:, latent : latent + 1])
    w, b = newton_1d(tr, y_tr)
    logits = (te.double() * w + b)[:, 0]
    return F.binary_cross_entropy_with_logits(logits, y_te.double(), reduction="none")


def score_task(z: Tensor, x: Tensor, y: Tensor, groups: Tensor, seed: int, dense: bool, resamples: int = 0) -> dict:
    """Single-latent and dense probe scores for examples z (N, n), raw features x (N, d), labels y (N,).

    ``resamples`` > 0 adds ``test_ce_ci``: a bootstrap 95% interval of the score over the test groups.
    """
    g = torch.Generator().manual_seed(seed)
    test = split_by_group(groups, y, g)
    out = best_latent(z[~test], y[~test], z[test], y[test])
    out.update(n_train=int((~test).sum()), n_test=int(test.sum()))
    if resamples and out["latent"] >= 0:
        losses = latent_test_losses(z[~test], y[~test], z[test], y[test], out["latent"])
        out["test_ce_ci"] = bootstrap_ci(losses, resamples, seed, groups[test])
    if dense:
        out["dense_test_ce"] = dense_probe(x[~test], y[~test], x[test], y[test])
    return out


def task_examples(task: Task, labels: Tensor, code: SparseCode, acts: Tensor, doc: Tensor, positions: Tensor,
                  n: int, cfg: ProbeConfig, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(z (N, n), x (N, d), y (N,), groups (N,)) of a task's balanced examples (at most ``cfg.max_per_class`` each).

    labels: (M,) or (M, T); code: sparse code of acts (M, T', d) flattened context-major; doc (M,).
    """
    g = torch.Generator().manual_seed(seed)
    n_ctx, t_kept, _ = acts.shape
    if task.level == "sequence":
        idx = balanced(labels, cfg.max_per_class, g)
        if len(idx) == 0:  # a class is missing from the pool: no examples (the caller skips the task)
            return torch.zeros(0, n), acts.new_zeros(0, acts.shape[-1]), torch.zeros(0), doc[:0]
        z = pool_code(SparseCode(*(t.view(n_ctx, t_kept, -1)[idx].reshape(len(idx) * t_kept, -1) for t in code)),
                      len(idx), t_kept, n, cfg.pooling)
        return z, acts[idx].mean(1), labels[idx].float(), doc[idx]
    flat = labels[:, positions].reshape(-1)  # (M * T',)
    idx = balanced(flat, cfg.max_per_class, g)
    z = SparseCode(code.values[idx], code.indices[idx]).to_dense(n)
    return z, acts.reshape(-1, acts.shape[-1])[idx], flat[idx].float(), doc.repeat_interleave(t_kept)[idx]
