"""Learning-rate rule and schedule, Adam settings, weight EMA."""

import pytest
import torch

from saescale.train.config import TrainConfig
from saescale.train.optim import EMA, lr_at, make_optimizer


def test_paper_lr_rule_falls_like_inverse_sqrt_n():
    cfg = TrainConfig()
    assert cfg.resolved_lr(2**14) == pytest.approx(2e-4)
    assert cfg.resolved_lr(2**16) == pytest.approx(1e-4)
    assert TrainConfig(lr=3e-3).resolved_lr(2**20) == 3e-3


def test_warmup_then_constant_and_decays():
    cfg = TrainConfig(tokens=1000 * 100, batch_size=100, warmup_steps=10)
    assert [lr_at(s, cfg, 1.0) for s in (0, 4, 9, 10, 999)] == [0.1, 0.5, 1.0, 1.0, 1.0]
    lin = TrainConfig(tokens=1000 * 100, batch_size=100, warmup_steps=0, lr_decay="linear", decay_start=0.8)
    assert lr_at(799, lin, 1.0) == 1.0 and lr_at(900, lin, 1.0) == pytest.approx(0.5)
    cos = TrainConfig(tokens=1000 * 100, batch_size=100, warmup_steps=0, lr_decay="cosine", decay_start=0.0)
    assert lr_at(500, cos, 1.0) == pytest.approx(0.5) and lr_at(999, cos, 1.0) < 1e-4
    assert TrainConfig(tokens=100 * 4096).resolved_warmup() == 5  # auto: 5% of 100 steps


def test_adam_uses_the_paper_settings():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = make_optimizer([p], TrainConfig(), 1e-3)
    g = opt.param_groups[0]
    assert g["betas"] == (0.9, 0.999) and g["eps"] == 6.25e-10


def test_k_aux_defaults_to_power_of_two_near_half_d():
    cfg = TrainConfig()
    assert cfg.resolved_k_aux(768, 2**15) == 512 and cfg.resolved_k_aux(576, 2**14) == 256
    assert cfg.resolved_k_aux(576, 100) == 100
    assert TrainConfig(tokens=10**9).resolved_dead_tokens() == 10_000_000
    assert TrainConfig(tokens=10**6).resolved_dead_tokens() == 100_000


def test_ema_is_bias_corrected():
    p = {"w": torch.tensor([2.0])}
    ema = EMA(p, 0.9)
    ema.update(p)
    assert ema.averaged()["w"].item() == pytest.approx(2.0)  # no pull towards the zero start
    ema.update({"w": torch.tensor([4.0])})
    assert ema.averaged()["w"].item() == pytest.approx((0.9 * 0.1 * 2 + 0.1 * 4) / (1 - 0.81))
