"""Switch SAE training on the planted dictionary (d = 64, 256 features, k = 8 active; tests/train/conftest.py).

* Load balancing: from a router biased so that nearly every token goes to expert 0, training with the
  balance loss (balance_coef > 0) spreads the tokens until the busiest expert holds close to 1/E of them;
  without it (balance_coef = 0) the routing stays skewed. Both asserted on held-out tokens.
* Recovery: a Switch SAE whose experts are each wide enough for the planted dictionary recovers it
  (mean-max cosine >= 0.9, held-out L0 = k). Figures are printed (run with -s).
"""

from itertools import islice

import pytest
import torch

from saescale.data.synthetic import feature_recovery
from saescale.eval.recon import reconstruction_metrics
from saescale.sae.config import SAEConfig
from saescale.sae.registry import build_sae
from saescale.train.config import TrainConfig
from saescale.train.init import init_sae
from saescale.train.run import train_sae
from saescale.train.trainer import Trainer

D, FEATS, K = 64, 256, 8  # as the data fixture
E = 4
pytestmark = pytest.mark.usefixtures("one_thread_module")


def biased_switch(sample: torch.Tensor) -> torch.nn.Module:
    """A Switch SAE (n = 256, E = 4) initialised on the sample, then b_router moved against W_router[0] so
    that expert 0's logit is far above the others' on every token."""
    sae = build_sae(SAEConfig(arch="switch", n=FEATS, k=K, d=D, normalize="none", experts=E))
    scale = init_sae(sae, sample, torch.Generator().manual_seed(0))
    with torch.no_grad():
        u = sae.W_router[0] / sae.W_router[0].norm()
        others = sae.W_router[1:] @ u  # (E - 1,) how much the shift also raises the others
        sae.b_router.sub_(6.0 / (sae.W_router[0].norm() - others.max().clamp_min(0)) * u)
    return sae, scale


def held_load(sae, held) -> list[float]:
    return reconstruction_metrics(sae, islice(held.batches(4096), 1))["expert_load"]


@pytest.mark.parametrize("coef", [0.0, 0.1])
def test_the_balance_loss_spreads_a_router_biased_to_one_expert(coef, data):
    src, held = data
    sae, scale = biased_switch(next(src.batches(8192)))
    start = held_load(sae, held)
    assert max(start) > 0.9, start  # nearly every token starts in one expert
    cfg = TrainConfig(batch_size=1024, tokens=300 * 1024, lr=1e-2, balance_coef=coef, progress=False)
    trainer = Trainer(sae, cfg, loss_scale=scale)
    trainer.fit(src.batches(1024))
    load = held_load(sae, held)
    print(f"\nbalance_coef {coef}: held-out expert load {[round(f, 3) for f in start]} -> {[round(f, 3) for f in load]}")
    if coef > 0:
        assert max(load) <= 1.4 / E, load  # near 1/E = 0.25 (0.307 measured)
    else:
        assert max(load) >= 0.7, load  # still skewed


def test_recovers_the_planted_features(data):
    src, held = data
    n = FEATS * E  # each expert wide enough for the whole planted dictionary (features are duplicated across experts)
    cfg = TrainConfig(batch_size=1024, progress=False, tokens=600_000, lr=3e-2)
    sae = train_sae(SAEConfig(arch="switch", n=n, k=K, normalize="none", experts=E), cfg, src).sae
    m = reconstruction_metrics(sae, islice(held.batches(4096), 2))
    mmc, frac = feature_recovery(sae.W_dec.detach(), src.features)
    print(f"\nswitch n={n} E={E} planted k={K}: mean-max cos {mmc:.3f}, recovered {frac:.1%} at cos>=0.9, "
          f"held-out L0 {m['l0']:.2f}, nMSE {m['nmse']:.3f}, expert load {[round(f, 3) for f in m['expert_load']]}")
    assert m["l0"] <= K
    assert mmc >= 0.9
