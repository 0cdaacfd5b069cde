"""Learning-rate rule and schedule, Adam settings, weight EMA."""

import pytest
import torch

from saescale.train.config import TrainConfig
from saescale.train.optim import EMA, lr_at, make_optimizer


def test_default_lr_rule_is_the_measured_power_law():
    """The default is 0.0368 n^-0.20 at batch 4096 (docs/scaling.md), square-root scaled in the batch size."""
    cfg = TrainConfig()
    assert cfg.resolved(1024, 576).lr == pytest.approx(0.03680 * 1024 ** -0.2009, rel=1e-3)
    assert cfg.resolved(2**15, 576).lr / cfg.resolved(2**10, 576).lr == pytest.approx(32 ** -0.2009, rel=1e-3)
    assert TrainConfig(batch_size=1024).resolved(1024, 576).lr == pytest.approx(cfg.resolved(1024, 576).lr / 2)
    assert TrainConfig(lr=3e-3).resolved(2**20, 576).lr == 3e-3
    assert cfg.lr is None  # the settings as given keep 'unset'; the resolved copy holds the value


def test_warmup_then_constant_and_decays():
    cfg = TrainConfig(tokens=1000 * 100, batch_size=100, warmup_steps=10, lr=1.0).resolved(64, 16)
    assert [lr_at(s, cfg) for s in (0, 4, 9, 10, 999)] == [0.1, 0.5, 1.0, 1.0, 1.0]
    lin = TrainConfig(tokens=1000 * 100, batch_size=100, warmup_steps=0, lr=1.0, lr_decay="linear", decay_start=0.8)
    assert lr_at(799, lin) == 1.0 and lr_at(900, lin) == pytest.approx(0.5)
    cos = TrainConfig(tokens=1000 * 100, batch_size=100, warmup_steps=0, lr=1.0, lr_decay="cosine", decay_start=0.0)
    assert lr_at(500, cos) == pytest.approx(0.5) and lr_at(999, cos) < 1e-4
    assert TrainConfig(tokens=100 * 4096).resolved(64, 16).warmup_steps == 5  # auto: 5% of 100 steps


def test_adam_uses_the_paper_settings():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = make_optimizer([p], TrainConfig(lr=1e-3))
    g = opt.param_groups[0]
    assert g["betas"] == (0.9, 0.999) and g["eps"] == 6.25e-10


def test_k_aux_defaults_to_power_of_two_near_half_d():
    cfg = TrainConfig()
    assert cfg.resolved(2**15, 768).k_aux == 512 and cfg.resolved(2**14, 576).k_aux == 256
    assert cfg.resolved(100, 576).k_aux == 100
    assert TrainConfig(tokens=10**9).resolved(64, 16).dead_tokens == 10_000_000
    assert TrainConfig(tokens=10**6).resolved(64, 16).dead_tokens == 100_000


def test_ema_is_bias_corrected():
    p = {"w": torch.tensor([2.0])}
    ema = EMA(p, 0.9)
    ema.update(p)
    assert ema.averaged()["w"].item() == pytest.approx(2.0)  # no pull towards the zero start
    ema.update({"w": torch.tensor([4.0])})
    assert ema.averaged()["w"].item() == pytest.approx((0.9 * 0.1 * 2 + 0.1 * 4) / (1 - 0.81))


def test_the_default_dead_window_has_a_floor_of_ten_batches():
    """Before: min(10M, tokens / 10) alone, under one batch on short runs (every latent not in this batch 'dead')."""
    assert TrainConfig(tokens=5 * 4096).resolved(64, 16).dead_tokens == 10 * 4096
    assert TrainConfig(tokens=5 * 4096, dead_tokens=100).resolved(64, 16).dead_tokens == 100  # given: as given
