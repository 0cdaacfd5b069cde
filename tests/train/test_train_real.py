"""Training on real activations of the default model (SmolLM2-135M, residual stream after block 20)."""

import pytest
import torch

from saescale.activations.cache import CacheReader
from saescale.eval.recon import reconstruction_metrics
from saescale.sae.config import SAEConfig
from saescale.sae.io import load_sae
from saescale.train.config import TrainConfig
from saescale.train.run import train_sae


@pytest.mark.real
def test_topk_sae_learns_real_activations(real_cache, tmp_path):
    train, val = CacheReader(real_cache, "train"), CacheReader(real_cache, "val")
    assert train.d == 576
    held = val.read_all()["acts"]
    cfg = TrainConfig(tokens=8 * train.n_tokens, batch_size=512, lr=2e-3, progress=False)
    res = train_sae(SAEConfig(n=1024, k=16), cfg, train, tmp_path)
    before = reconstruction_metrics(res.sae.__class__(res.sae.cfg), [held])  # an all-zero SAE: predicts b_pre = 0
    after = reconstruction_metrics(load_sae(tmp_path / "sae"), held.split(512))
    print(f"\nreal activations, n=1024 k=16, {cfg.tokens:,} tokens: held-out nMSE {after['nmse']:.3f}, "
          f"L0 {after['l0']:.1f}, never fired on held-out {after['never_fired_frac']:.1%}")
    assert before["nmse"] > 0.99
    assert after["nmse"] < 0.5
    assert after["l0"] == 16.0
    assert torch.isfinite(held).all()
