"""The fast kernels and the trainer on CUDA, against the CPU dense reference.

Skipped where no CUDA device is present (CI has none); run on a GPU machine with
``pytest tests/kernels/test_cuda.py``.
"""

import pytest
import torch

from saescale.data.synthetic import SyntheticConfig, SyntheticSource
from saescale.train.config import TrainConfig
from saescale.train.trainer import Trainer
from tests.helpers import make_sae
from tests.kernels.test_kernels import PARAMS, ctx, rel_err, run, same_code

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CASES = [(64, 4, 16, 20, True), (300, 8, 64, 100, True), (64, 64, 16, 10, False), (4096, 32, 512, 300, True),
         (20000, 32, 4096, 0, False)]


def _to(c, device):
    return c._replace(dead=c.dead.to(device))


@pytest.mark.parametrize("n,k,chunk,n_dead,multi", CASES)
def test_cuda_fast_matches_cpu_reference(n, k, chunk, n_dead, multi, monkeypatch):
    """Loss, reconstruction, code and every gradient: fast kernels on CUDA vs the dense path on CPU (float64)."""
    sae = make_sae("topk", n, k, 16, dtype=torch.float64, seed=n + k)
    x = torch.randn(48, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(k))
    c = ctx(n, n_dead, multi, k_aux=min(8, n))
    ref, g_ref = run(sae, x, c, "reference", monkeypatch)
    sae_gpu = sae.to("cuda")
    sae_gpu.kernel_chunk = chunk
    fast, g_fast = run(sae_gpu, x.cuda(), _to(c, "cuda"), "fast", monkeypatch)
    assert fast.x_hat.is_cuda and fast.code.indices.is_cuda
    assert rel_err(fast.loss.detach().cpu(), ref.loss.detach()) < 1e-10
    assert rel_err(fast.x_hat.detach().cpu(), ref.x_hat.detach()) < 1e-10
    code = type(fast.code)(fast.code.values.cpu(), fast.code.indices.cpu())
    assert same_code(code, ref.code)
    for name, a, b in zip(PARAMS, g_fast, g_ref):
        assert rel_err(a.cpu(), b) < 1e-10, name


def test_cuda_trainer_steps_match_cpu(monkeypatch):
    """Three full trainer steps (AuxK, projection, fused Adam, renormalisation) on CUDA and on CPU."""
    weights = {}
    for device in ("cpu", "cuda"):
        monkeypatch.setenv("SAESCALE_KERNELS", "reference" if device == "cpu" else "fast")
        sae = make_sae("topk", 512, 8, 16, dtype=torch.float64)
        cfg = TrainConfig(batch_size=64, tokens=64 * 10, device=device, dead_tokens=64, progress=False)
        trainer = Trainer(sae, cfg, loss_scale=1.0)
        g = torch.Generator().manual_seed(1)
        for _ in range(3):
            trainer.step(torch.randn(64, 16, dtype=torch.float64, generator=g))
        assert trainer.dead.any()  # AuxK was active in the last steps
        weights[device] = {p: getattr(trainer.sae, p).detach().cpu() for p in PARAMS}
    for p in PARAMS:
        assert rel_err(weights["cuda"][p], weights["cpu"][p]) < 1e-8, p


def test_cuda_training_learns_a_planted_dictionary():
    """A short float32 run on CUDA with the fast kernels reduces nMSE well below its start."""
    src = SyntheticSource(SyntheticConfig(d=64, features=256, k=8, seed=0))
    sae = make_sae("topk", 256, 8, 64).to("cuda")
    cfg = TrainConfig(batch_size=1024, tokens=1024 * 150, lr=1e-2, device="cuda", progress=False)
    trainer = Trainer(sae, cfg, loss_scale=1.0)
    batches = src.batches(1024)
    first = trainer.step(next(batches))["nmse"]
    last = trainer.fit(batches)
    assert trainer.sae.W_enc.is_cuda
    assert last["nmse"] < 0.5 * first, (first, last["nmse"])
