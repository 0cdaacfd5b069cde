"""Adam with the paper's settings, the learning-rate schedule, and a weight EMA."""

from __future__ import annotations

import math

import torch
from torch import nn

from saescale.train.config import TrainConfig


def make_optimizer(params: list[nn.Parameter] | list[dict], cfg: TrainConfig) -> torch.optim.Adam:
    """Adam(beta1, beta2, eps) fused over all parameters where supported (cfg resolved: lr set). ``params``
    may be parameter groups; a group's ``lr_mult`` scales the scheduled learning rate (see :func:`set_lr`)."""
    kw = dict(lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps)
    try:
        return torch.optim.Adam(params, fused=True, **kw)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, foreach=True, **kw)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate to ``lr`` times its ``lr_mult`` (1 by default)."""
    for group in opt.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimiser step ``step`` (0-based) of resolved settings ``cfg``
    (:meth:`TrainConfig.resolved`): linear warm-up to cfg.lr, then constant or decayed."""
    warm, base_lr = cfg.warmup_steps, cfg.lr
    if step < warm:
        return base_lr * (step + 1) / warm
    if cfg.lr_decay == "constant":
        return base_lr
    start = int(cfg.decay_start * cfg.steps)
    if step < start:
        return base_lr
    frac = (step - start) / max(1, cfg.steps - start)
    if cfg.lr_decay == "linear":
        return base_lr * (1 - frac)
    return base_lr * 0.5 * (1 + math.cos(math.pi * frac))


class EMA:
    """Bias-corrected exponential moving average of parameters: m <- beta m + (1 - beta) p; p_ema = m / (1 - beta^t)."""

    def __init__(self, params: dict[str, torch.Tensor], beta: float):
        self.beta, self.t = beta, 0
        self.avg = {k: torch.zeros_like(v) for k, v in params.items()}

    @torch.no_grad()
    def update(self, params: dict[str, torch.Tensor]) -> None:
        self.t += 1
        for k, v in params.items():
            self.avg[k].mul_(self.beta).add_(v.detach(), alpha=1 - self.beta)

    def averaged(self) -> dict[str, torch.Tensor]:
        c = 1 - self.beta**self.t
        return {k: v / c for k, v in self.avg.items()}
