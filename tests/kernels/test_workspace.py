"""Reused kernel memory (saescale.kernels.workspace): reuse really happens and never changes a result."""

import pytest
import torch

from saescale.kernels import workspace
from saescale.kernels.csr import latent_major, sparse_matmul
from saescale.sae.base import LossContext
from saescale.train.config import TrainConfig
from saescale.sae.base import PARAMS
from saescale.train.trainer import Trainer
from tests.helpers import make_sae


@pytest.fixture
def ws():
    """A workspace, installed for the kernels as a trainer installs its own around each step."""
    w = workspace.Workspace()
    with workspace.using(w):
        yield w


def test_sparse_matmul_writes_every_row_of_a_recycled_buffer(ws):
    """A recycled gradient full of NaN is reused as the output; rows without entries come out 0."""
    n, C, d = 50, 8, 16
    S = latent_major(torch.tensor([3, 3, 7, 40]), torch.tensor([0, 5, 2, 7]), torch.randn(4), n, C).S
    Y = torch.randn(C, d)
    old = torch.full((n, d), float("nan"))
    ws.recycle(old)
    out = sparse_matmul(S, Y)
    assert out.data_ptr() == old.data_ptr()
    torch.testing.assert_close(out, S.to_dense() @ Y)
    assert sparse_matmul(S, Y).data_ptr() != old.data_ptr()  # taken once: the pool is empty again


def test_scratch_reuses_its_memory_and_grows_on_demand(ws):
    a = workspace.scratch("t", (4, 5), torch.float32, torch.device("cpu"))
    b = workspace.scratch("t", (2, 3), torch.float32, torch.device("cpu"))
    assert b.data_ptr() == a.data_ptr() and b.shape == (2, 3)
    assert workspace.scratch("u", (4, 5), torch.float32, torch.device("cpu")).data_ptr() != a.data_ptr()
    c = workspace.scratch("t", (10, 10), torch.float32, torch.device("cpu"))
    assert c.shape == (10, 10)
    assert workspace.scratch("t", (10, 10), torch.float64, torch.device("cpu")).dtype == torch.float64


def test_recycle_refuses_views_and_keeps_at_most_the_pool_depth(ws):
    base = torch.zeros(6, 4)
    ws.recycle(base[:, :2])  # not contiguous: never reused
    assert workspace.take((6, 2), torch.float32, torch.device("cpu")).data_ptr() != base.data_ptr()
    ts = [torch.zeros(3, 3) for _ in range(workspace.POOL_DEPTH + 1)]
    for t in ts + ts[:1]:  # the same tensor twice is kept once
        ws.recycle(t)
    got = {workspace.take((3, 3), torch.float32, torch.device("cpu")).data_ptr() for _ in range(workspace.POOL_DEPTH)}
    assert got == {t.data_ptr() for t in ts[:workspace.POOL_DEPTH]}


@pytest.mark.parametrize("grad_clip", [0.0, 1e30])  # early decoder step inside backward, and the joint step
def test_trainer_steps_on_recycled_gradients_match_the_reference(grad_clip, monkeypatch):
    """Several Trainer steps (AuxK on, Multi-TopK on): the fast path reuses last step's gradient
    memory and still agrees with the dense reference path step after step."""
    weights, ptrs = {}, []
    for kernels in ("fast", "reference"):
        monkeypatch.setenv("SAESCALE_KERNELS", kernels)
        sae = make_sae("topk", 512, 8, 16, dtype=torch.float64)
        sae.kernel_chunk = 128
        cfg = TrainConfig(tokens=64 * 100, batch_size=64, lr=1e-3, progress=False, grad_clip=grad_clip,
                          multi_topk=True, dead_tokens=64)
        trainer = Trainer(sae, cfg, loss_scale=1.0)
        g = torch.Generator().manual_seed(3)
        for _ in range(4):
            trainer.step(torch.randn(64, 16, generator=g, dtype=torch.float64))
            if kernels == "fast":
                ptrs.append(sae.W_enc.grad.data_ptr())
        weights[kernels] = {p: getattr(sae, p).detach().clone() for p in PARAMS}
    assert len(set(ptrs)) <= 2  # the (n, d) gradients live in the same two buffers from step to step
    for p in PARAMS:
        a, b = weights["fast"][p], weights["reference"][p]
        assert ((a - b).norm() / b.norm()).item() < 1e-9, p


def test_backward_outside_the_trainer_never_reuses_a_live_gradient():
    """A user's own backward after training accumulates into .grad; its memory must not be recycled under it."""
    sae = make_sae("topk", 256, 8, 16, dtype=torch.float64)
    sae.kernel_chunk = 64
    trainer = Trainer(sae, TrainConfig(progress=False, batch_size=32), loss_scale=1.0)
    for _ in range(2):  # the early decoder step recycles W_dec's gradient inside each backward
        trainer.step(torch.randn(32, 16, dtype=torch.float64))
    ctx = LossContext(torch.zeros(256, dtype=torch.bool), 8, 1 / 32, 1.0, False, 0.0)
    x = torch.randn(32, 16, dtype=torch.float64)
    sae.zero_grad(set_to_none=True)
    sae.loss_terms(x, ctx).loss.backward()
    once = sae.W_enc.grad.clone()
    sae.loss_terms(x, ctx).loss.backward()
    torch.testing.assert_close(sae.W_enc.grad, 2 * once)


def test_scratch_buffers_are_per_thread(ws):
    import threading

    here = ws.scratch("t", (8,), torch.float32, torch.device("cpu")).data_ptr()
    there = []
    th = threading.Thread(target=lambda: there.append(
        ws.scratch("t", (8,), torch.float32, torch.device("cpu")).data_ptr()))
    th.start()
    th.join()
    assert there and there[0] != here


def test_kernels_allocate_plainly_without_a_workspace_and_the_trainer_owns_its_own():
    """No module-global memory: outside a trainer's step nothing is cached; each trainer has its own pool."""
    a = workspace.scratch("t", (4, 5), torch.float32, torch.device("cpu"))
    assert workspace.scratch("t", (4, 5), torch.float32, torch.device("cpu")).data_ptr() != a.data_ptr()
    one, two = (Trainer(make_sae("topk", 256, 8, 16), TrainConfig(progress=False, batch_size=32), 1.0) for _ in range(2))
    assert one.workspace is not two.workspace
    one.step(torch.randn(32, 16))
    assert one.workspace._pool and not two.workspace._pool  # last step's gradients wait in the owner's pool
    one.close()
    assert not one.workspace._pool and not one.workspace._scratch and one.sae.W_dec.grad is None
