"""BatchTopK's inference threshold: estimated during training, saved, and giving the training L0.

BatchTopK keeps the B k largest activations of each training batch; the saved SAE encodes one token at
a time with z = pre 1[pre > θ] (a JumpReLU with one global θ, the running average of each batch's
smallest kept activation). If θ were estimated wrongly the saved SAE's L0 would drift from k.
"""

from itertools import islice

import pytest
import torch
from conftest import single_thread
from safetensors.torch import load_file

from saescale.data.synthetic import SyntheticConfig, SyntheticSource
from saescale.eval.recon import reconstruction_metrics
from saescale.sae.config import SAEConfig
from saescale.sae.io import load_sae, save_sae
from saescale.train.config import TrainConfig
from saescale.train.run import train_sae

K = 8


@pytest.fixture(scope="module")
def trained():
    with single_thread():
        src = SyntheticSource(SyntheticConfig(d=64, features=256, k=K))
        cfg = TrainConfig(tokens=600_000, batch_size=1024, lr=1e-2, progress=False)
        return train_sae(SAEConfig(arch="batchtopk", n=256, k=K, normalize="none"), cfg, src), src.heldout()


def test_saved_batchtopk_l0_is_within_10_percent_of_k(trained, tmp_path):
    result, held = trained
    folder = save_sae(result.sae, tmp_path / "sae")
    theta = load_file(str(folder / "sae.safetensors"))["threshold"]
    assert theta.shape == (256,) and bool((theta == theta[0]).all()) and theta[0] > 0  # one global θ, set
    loaded = load_sae(folder)
    with single_thread():
        m = reconstruction_metrics(loaded, islice(held.batches(4096), 4))
    print(f"\nBatchTopK k={K}: training L0 {result.metrics['l0']:.2f}, saved SAE held-out L0 {m['l0']:.2f} "
          f"(theta {theta[0].item():.4g}), nMSE {m['nmse']:.3f}")
    assert result.metrics["l0"] == pytest.approx(K, rel=1e-3)  # training: exactly B k per batch
    assert abs(m["l0"] - K) <= 0.1 * K


def test_threshold_is_the_jumprelu_of_the_saved_tensor(trained):
    """Inference encodes with exactly z = pre 1[pre > θ], θ the saved tensor."""
    sae = trained[0].sae
    x = trained[1].batch(0, 512) if hasattr(trained[1], "batch") else next(trained[1].batches(512))
    with torch.no_grad():
        pre = sae.pre_acts(x)
        want = torch.relu(pre) * (pre > sae.threshold)
        got = sae.encode_normalized(x).to_dense(sae.cfg.n)
    assert torch.equal(got, want)
