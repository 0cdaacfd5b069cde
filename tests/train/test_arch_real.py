"""The five architectures beyond TopK and ReLU train on real activations of the default model
(SmolLM2-135M, residual stream after block 20): each learns a sparse code that reconstructs held-out
activations, and its saved folder loads back to the same figures."""

import pytest
import torch

from saescale.activations.cache import CacheReader
from saescale.eval.recon import reconstruction_metrics
from saescale.sae.config import SAEConfig
from saescale.sae.io import load_sae
from saescale.train.config import TrainConfig
from saescale.train.run import train_sae

N, K = 1024, 16
SETTINGS = {  # (SAEConfig extras, TrainConfig extras): sparsity chosen for an L0 well below n / 4
    "gated": ({}, {"l1_coef": 0.1}),
    "prolu": ({}, {"l1_coef": 0.1}),
    "jumprelu": ({}, {"l0_coef": 0.003, "threshold_lr_mult": 300}),
    "batchtopk": ({}, {}),
    "matryoshka": ({}, {}),
}


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.parametrize("arch", list(SETTINGS))
def test_architecture_learns_real_activations(arch, real_cache, tmp_path):
    train, val = CacheReader(real_cache, "train"), CacheReader(real_cache, "val")
    held = val.read_all()["acts"]
    sae_kw, train_kw = SETTINGS[arch]
    cfg = TrainConfig(tokens=8 * train.n_tokens, batch_size=512, lr=2e-3, progress=False, **train_kw)
    res = train_sae(SAEConfig(arch=arch, n=N, k=K, **sae_kw), cfg, train, tmp_path)
    zero = reconstruction_metrics(res.sae.__class__(res.sae.cfg), [held])  # all-zero weights: predicts 0
    loaded = load_sae(tmp_path / "sae")
    after = reconstruction_metrics(loaded, held.split(512))
    print(f"\n{arch}, n={N}, real activations, {cfg.tokens:,} tokens: held-out nMSE {after['nmse']:.3f}, "
          f"L0 {after['l0']:.1f} (training L0 {res.metrics['l0']:.1f})")
    assert zero["nmse"] > 0.99
    assert after["nmse"] < 0.6
    assert 1 <= after["l0"] < N / 4  # sparse, and not dead
    if arch in ("batchtopk", "matryoshka"):
        assert res.metrics["l0"] == pytest.approx(K)  # B k per training batch
    again = reconstruction_metrics(res.sae, held.split(512))  # the saved folder is the trained SAE
    assert again["nmse"] == pytest.approx(after["nmse"], rel=1e-6) and again["l0"] == after["l0"]
    assert torch.isfinite(held).all()
