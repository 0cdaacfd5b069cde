"""SAEs sparse by a penalty (L1 or L0) train at their own default learning rate, not the TopK rule: at the
TopK rule (6.9e-3 at n = 4096, batch 4096) their dense early codes overshoot and nearly every latent dies
(the reproduction's arch-jumprelu unit on the large corpus: 98.5 % dead by step 40)."""

import math

import pytest

from saescale.activations.cache import CacheReader
from saescale.eval.recon import reconstruction_metrics
from saescale.sae.config import SAEConfig
from saescale.sae.registry import REGISTRY, load_all
from saescale.train.config import TrainConfig, default_lr
from saescale.train.run import train_sae


def test_each_architecture_names_its_rule_and_the_trainer_resolves_it():
    load_all()
    rules = {name: cls.lr_rule for name, cls in REGISTRY.items()}
    assert {a for a, r in rules.items() if r == "penalty"} == {"relu", "gated", "prolu", "jumprelu"}
    assert {a for a, r in rules.items() if r == "topk"} == {"topk", "batchtopk", "matryoshka", "switch"}
    assert default_lr(4096, 4096, "penalty") == pytest.approx(4e-4)
    assert default_lr(16384, 1024, "penalty") == pytest.approx(2e-4 / 2)
    assert default_lr(4096, 4096, "topk") > 10 * default_lr(4096, 4096, "penalty")
    cfg = TrainConfig()
    assert cfg.resolved(4096, 576, "penalty").lr == pytest.approx(4e-4)
    assert cfg.resolved(4096, 576).lr == default_lr(4096, 4096, "topk")
    assert TrainConfig(lr=1e-2).resolved(4096, 576, "penalty").lr == 1e-2
    with pytest.raises(ValueError, match="unknown learning-rate rule"):
        default_lr(64, 64, "adam")


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.parametrize("arch,train_kw", [("jumprelu", {"l0_coef": 1e-3, "threshold_lr_mult": 100}),
                                           ("relu", {"l1_coef": 0.1})])
def test_default_lr_keeps_a_penalty_sae_alive_on_real_activations(arch, train_kw, real_cache, tmp_path):
    train, val = CacheReader(real_cache, "train"), CacheReader(real_cache, "val")
    held = val.read_all()["acts"]
    cfg = TrainConfig(tokens=40 * 4096, batch_size=4096, progress=False, **train_kw)  # lr unset: the default
    res = train_sae(SAEConfig(arch=arch, n=4096), cfg, train, tmp_path)
    after = reconstruction_metrics(res.sae, held.split(1024))
    print(f"\n{arch}, default lr, 40 steps of 4096 real tokens: dead {res.metrics['dead_frac']:.3f}, "
          f"held-out nMSE {after['nmse']:.3f}, L0 {after['l0']:.1f}")
    assert math.isclose(res.cfg.lr, 4e-4, rel_tol=1e-9)
    # at the TopK rule (measured on this data, 2026-12-02): jumprelu 69 % dead (nMSE 0.81, L0 18), relu 53 %
    # dead (nMSE 1.04, L0 1.4), gated 99.9 % dead; at the penalty rule 0 % dead (nMSE 0.45 / 0.92, L0 381 / 85)
    assert res.metrics["dead_frac"] < 0.2
    assert after["nmse"] < 0.95 and after["l0"] >= 20
