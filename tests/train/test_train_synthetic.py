"""The paper's recipe on synthetic data with a planted dictionary (d=64, 4d features, k=8 active).

Figures are printed (run with -s) so they can be quoted; the assertions are the issue's claims.
"""

from itertools import islice

import pytest
import torch

from saescale.data.synthetic import SyntheticConfig, SyntheticSource, feature_recovery
from saescale.eval.recon import reconstruction_metrics
from saescale.sae.config import SAEConfig
from saescale.train.config import TrainConfig
from saescale.train.run import train_sae

D, FEATS, K = 64, 256, 8  # as the data fixture (tests/train/conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread_module")


def train(src, arch="topk", n=FEATS, tokens=1_000_000, **kw):
    """Train on ``src`` (batch 1024, lr 1e-2 unless given); returns the TrainResult."""
    cfg = TrainConfig(tokens=tokens, batch_size=1024, lr=kw.pop("lr", 1e-2), progress=False, **kw)
    return train_sae(SAEConfig(arch=arch, n=n, k=K, normalize="none"), cfg, src)


def heldout(sae, held):
    return reconstruction_metrics(sae, islice(held.batches(4096), 4))


@pytest.fixture(scope="module")
def topk(data):
    return train(data[0]).sae


def test_topk_recovers_planted_features(data, topk):
    mmc, frac = feature_recovery(topk.W_dec.detach(), data[0].features)
    print(f"\nTopK n={FEATS} k={K}: recovered {frac:.1%} of planted features at cos>=0.9, mean-max cos {mmc:.3f}")
    assert frac >= 0.90
    assert mmc >= 0.9


def test_relu_baseline_has_higher_nmse_at_the_same_l0(data, topk):
    """Two L1 strengths bracket the TopK L0; both ReLU SAEs reconstruct worse than TopK."""
    ref = heldout(topk, data[1])
    runs = {lam: heldout(train(data[0], "relu", l1_coef=lam).sae, data[1]) for lam in (0.1, 0.2)}
    print(f"\nTopK: nMSE {ref['nmse']:.3f} at L0 {ref['l0']:.1f}; " + "; ".join(
        f"ReLU l1={lam}: nMSE {m['nmse']:.3f} at L0 {m['l0']:.1f}" for lam, m in runs.items()))
    assert runs[0.1]["l0"] >= ref["l0"] >= runs[0.2]["l0"]  # the bracket holds the TopK L0
    for m in runs.values():
        assert m["nmse"] > ref["nmse"] + 0.05


def test_tied_init_and_auxk_leave_fewer_dead_latents(data):
    """n = 8x the planted features; dead = not fired in the last 20k tokens of training."""
    kw = dict(n=8 * FEATS, tokens=300_000, lr=3e-3, dead_tokens=20_000)
    with_both = train(data[0], **kw).metrics["dead_frac"]
    neither = train(data[0], tied_init=False, aux_coef=0.0, **kw).metrics["dead_frac"]
    print(f"\ndead fraction, n={8 * FEATS}: tied init + AuxK {with_both:.2%}, neither {neither:.2%}")
    assert neither >= 0.05
    assert with_both < neither / 3


def test_synthetic_stream_is_restartable_and_heldout_is_independent(data):
    src, held = data
    first = list(zip(range(5), src.batches(64)))
    assert all(torch.equal(a, b) for (_, a), b in zip(first[2:], src.batches(64, start=2)))
    assert not torch.equal(first[0][1], next(held.batches(64)))
    assert torch.equal(held.features, src.features)


def test_planted_data_can_carry_a_dataset_wide_offset():
    """Before: no offset, so the normalisations were never compared on data with a mean, as real streams have."""
    plain = SyntheticSource(SyntheticConfig(d=D, features=FEATS, k=K))
    shifted = SyntheticSource(SyntheticConfig(d=D, features=FEATS, k=K, offset=5.0))
    a, b = plain.batch(512, 3), shifted.batch(512, 3)
    diff = b - a  # the same tokens plus one constant vector of norm 5
    assert torch.allclose(diff, diff[:1].expand_as(diff), atol=1e-5) and diff[0].norm().item() == pytest.approx(5.0)
    assert torch.equal(plain.features, shifted.features)
