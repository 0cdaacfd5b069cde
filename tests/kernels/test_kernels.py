"""Fast kernels (chunked encoder, sparse decoder) against the dense reference path.

Every check runs the same TopKSAE twice, with ``SAESCALE_KERNELS`` unset (fast) and
``reference``, from the same weights and batch. Where pre-activations tie at the top-k
boundary, any valid top-k is correct and the two paths may keep different latents; those
cases check that the selected pre-activations are the k largest values and check the
fast gradients against the dense float64 loss evaluated on the fast path's own support.
"""

import pytest
import torch
import torch.nn.functional as F

from saescale.errors import SaescaleError
from saescale.kernels import select_topk
from saescale.kernels.select import split, top_columns
from saescale.sae.base import LossContext
from saescale.train.config import TrainConfig
from saescale.train.optim import make_optimizer
from tests.helpers import make_sae

PARAMS = ("W_enc", "b_enc", "W_dec", "b_pre")
TOL = 1e-5


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def ctx(n, n_dead=0, multi=False, k_aux=8, seed=0):
    dead = torch.zeros(n, dtype=torch.bool)
    dead[torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:n_dead]] = True
    return LossContext(dead=dead, k_aux=k_aux, aux_coef=1 / 32, loss_scale=0.7, multi_topk=multi, l1_coef=0.0)


def run(sae, x, c, kernels, monkeypatch):
    """(loss, x_hat, code, grads) of one loss_terms + backward with the given kernels."""
    monkeypatch.setenv("SAESCALE_KERNELS", kernels)
    sae.zero_grad(set_to_none=True)
    out = sae.loss_terms(x, c)
    out.loss.backward()
    return out, [getattr(sae, p).grad.clone() for p in PARAMS]


def same_code(a, b):
    """Codes equal as sets of (latent, value) per row."""
    ia, pa = a.indices.sort(1)
    ib, pb = b.indices.sort(1)
    return torch.equal(ia, ib) and torch.allclose(a.values.gather(1, pa), b.values.gather(1, pb), rtol=TOL, atol=1e-7)


CASES = [  # n, k, chunk, n_dead, multi
    (64, 4, 16, 0, False), (64, 4, 16, 20, False), (64, 4, 16, 0, True), (64, 4, 16, 20, True),
    (64, 4, 7, 50, True), (300, 8, 64, 100, True), (64, 60, 16, 0, False), (64, 64, 16, 10, False),
    (64, 20, 16, 64, True), (4096, 32, 512, 300, True), (4096, 8, 512, 300, False),  # n > B k
    (16, 16, 8, 4, True),  # k = n with Multi-TopK: no latents beyond the top k
]


@pytest.mark.parametrize("n,k,chunk,n_dead,multi", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fast_matches_reference(n, k, chunk, n_dead, multi, dtype, monkeypatch):
    sae = make_sae("topk", n, k, 16, dtype=dtype, seed=n + k)
    sae.kernel_chunk = chunk
    x = torch.randn(48, 16, dtype=dtype, generator=torch.Generator().manual_seed(k))
    c = ctx(n, n_dead, multi, k_aux=min(8, n))
    fast, g_fast = run(sae, x, c, "fast", monkeypatch)
    ref, g_ref = run(sae, x, c, "reference", monkeypatch)
    assert rel_err(fast.loss.detach(), ref.loss.detach()) < TOL
    assert rel_err(fast.x_hat.detach(), ref.x_hat.detach()) < TOL
    assert rel_err(fast.aux_loss.detach(), ref.aux_loss.detach().clamp_min(1e-30)) < TOL or ref.aux_loss == 0
    assert same_code(fast.code, ref.code)
    for name, a, b in zip(PARAMS, g_fast, g_ref):
        assert rel_err(a, b) < TOL, name


def dense_loss_on_support(sae, x, c, code_idx, code4_idx, aux_idx):
    """The TopK loss in float64 with the supports given (ReLU of the pre-activations there)."""
    pre = (x - sae.b_pre) @ sae.W_enc.T + sae.b_enc

    def decode(idx):
        mask = torch.zeros_like(pre, dtype=torch.bool).scatter(1, idx, True)
        return torch.where(mask, F.relu(pre), torch.zeros_like(pre)) @ sae.W_dec

    x_hat = decode(code_idx) + sae.b_pre
    loss = ((x - x_hat) ** 2).sum(1).mean() * c.loss_scale
    if code4_idx is not None:
        loss = loss + ((x - decode(code4_idx) - sae.b_pre) ** 2).sum(1).mean() * c.loss_scale / 8
    if aux_idx is not None:  # the released code's AuxK: target e + sg(b_pre), reconstruction ê + b_pre
        e = (x - x_hat + sae.b_pre).detach()
        e_hat = decode(aux_idx) + sae.b_pre
        loss = loss + c.aux_coef * ((e - e_hat) ** 2).sum() / ((e - e.mean(0)) ** 2).sum()
    return loss


@pytest.mark.parametrize("multi,n_dead", [(False, 0), (True, 0), (False, 30), (True, 30)])
def test_ties_give_a_valid_topk_and_exact_gradients(multi, n_dead, monkeypatch):
    """Integer-valued pre-activations (many ties) and duplicated rows."""
    n, k, d = 64, 6, 8
    sae = make_sae("topk", n, k, d, dtype=torch.float64)
    sae.kernel_chunk = 16
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # integer W_enc, x, b_enc and b_pre = 0: integer pre-activations in [-12, 12]
        sae.W_enc.copy_(torch.randint(-1, 2, (n, d), generator=g).double())
        sae.b_enc.copy_(torch.randint(-2, 3, (n,), generator=g).double())
        sae.b_pre.zero_()
    x = torch.randint(-1, 2, (24, d), generator=g).double()
    x[12:] = x[:12]  # duplicated rows
    c = ctx(n, n_dead, multi)
    fast, g_fast = run(sae, x, c, "fast", monkeypatch)
    pre = (x - sae.b_pre) @ sae.W_enc.T + sae.b_enc
    # a valid top-k: the selected pre-activations are the k largest values
    chosen = pre.detach().gather(1, fast.code.indices).sort(1, descending=True).values
    assert torch.equal(chosen, pre.detach().topk(k, dim=1).values)
    assert torch.equal(fast.code.indices[12:].sort(1).values, fast.code.indices[:12].sort(1).values)
    # (the loss itself may differ from the reference's: tied latents have different decoder rows)
    # gradients: the dense loss on the fast path's own support
    sel = select_topk(x - sae.b_pre, sae.W_enc, sae.b_enc, min(4 * k, n) if multi else k,
                      c.dead if n_dead else None, min(8, n_dead), 16)
    assert torch.equal(sel.indices[:, :k], fast.code.indices)
    sae.zero_grad(set_to_none=True)
    dense_loss_on_support(sae, x, c, sel.indices[:, :k], sel.indices if multi else None,
                          sel.aux_indices if n_dead else None).backward()
    for name, a in zip(PARAMS, g_fast):
        assert rel_err(a, getattr(sae, name).grad) < 1e-10, name


def test_x_gradient_and_encode(monkeypatch):
    """Gradient w.r.t. the input (x_n requires grad) and inference encode, fast vs reference."""
    sae = make_sae("topk", 256, 8, 16, dtype=torch.float64)
    sae.kernel_chunk = 64
    x0 = torch.randn(40, 16, dtype=torch.float64)
    res = {}
    for kernels in ("fast", "reference"):
        monkeypatch.setenv("SAESCALE_KERNELS", kernels)
        x = x0.clone().requires_grad_(True)
        sae.loss_terms(x, ctx(256, 40, True)).loss.backward()
        res[kernels] = (x.grad, sae.encode(x0), sae.encode_k(x0, 20))
    assert rel_err(res["fast"][0], res["reference"][0]) < TOL
    assert same_code(res["fast"][1], res["reference"][1])
    assert same_code(res["fast"][2], res["reference"][2])


@pytest.mark.parametrize("multi,n_dead", [(False, 0), (True, 50)])
def test_one_adam_step_gives_the_same_weights(multi, n_dead, monkeypatch):
    """Full step: loss, backward, decoder-gradient projection, fused Adam, renormalisation."""
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(9))
    weights = {}
    for kernels in ("fast", "reference"):
        monkeypatch.setenv("SAESCALE_KERNELS", kernels)
        sae = make_sae("topk", 512, 8, 16)
        sae.kernel_chunk = 128
        opt = make_optimizer(list(sae.parameters()), TrainConfig(lr=1e-3))
        sae.loss_terms(x, ctx(512, n_dead, multi)).loss.backward()
        sae.project_decoder_grad()
        opt.step()
        sae.normalize_decoder()
        weights[kernels] = {p: getattr(sae, p).detach().clone() for p in PARAMS}
    for p in PARAMS:
        assert rel_err(weights["fast"][p], weights["reference"][p]) < TOL, p


def test_select_topk_never_needs_the_whole_matrix():
    """The running merge over chunks equals one topk over the whole (B, n) matrix."""
    g = torch.Generator().manual_seed(3)
    x, W, b = torch.randn(100, 12, generator=g), torch.randn(1000, 12, generator=g), torch.randn(1000, generator=g)
    dead = torch.rand(1000, generator=g) < 0.1
    sel = select_topk(x, W, b, 40, dead, 16, chunk=96)
    pre = x @ W.T + b
    ref = pre.topk(40, dim=1)
    torch.testing.assert_close(sel.values, ref.values)
    torch.testing.assert_close(sel.values, pre.gather(1, sel.indices))
    aux_ref = pre.masked_fill(~dead, float("-inf")).topk(16, dim=1)
    torch.testing.assert_close(sel.aux_values, aux_ref.values)
    assert dead[sel.aux_indices].all()


def test_bad_switch_value_is_an_error(monkeypatch):
    monkeypatch.setenv("SAESCALE_KERNELS", "triton")
    sae = make_sae("topk", 64, 4, 16)
    with pytest.raises(SaescaleError, match="SAESCALE_KERNELS"):
        sae.encode(torch.randn(4, 16))


@pytest.mark.parametrize("n,m,chunk,ties", [
    (64 * 20 + 24, 4, 64, False),  # 20 grouped chunks (more than MERGE_EVERY) and a narrow last chunk
    (64 * 20 + 24, 4, 64, True),  # (groups of 4 columns: strided)
    (1024 * 10 + 50, 4, 1024, False),  # groups of 64 columns: contiguous
    (1024 * 10 + 50, 4, 1024, True),
    (2048, 32, 512, True),  # integer values: many ties across groups and chunks
    (1000, 100, 250, False),  # chunks too narrow to group for this m
    (96, 96, 32, True),  # m = n
])
def test_grouped_selection_equals_topk(n, m, chunk, ties):
    """Group-maxima pruning, buffered merges and a ragged last chunk give exactly topk's values."""
    g = torch.Generator().manual_seed(n + m)
    x, W, b = torch.randn(50, 8, generator=g), torch.randn(n, 8, generator=g), torch.randn(n, generator=g)
    if ties:
        x, W, b = x.round(), W.round(), b.round()
    pre = x @ W.T + b
    sel = select_topk(x, W, b, m, chunk=chunk)
    torch.testing.assert_close(sel.values, pre.topk(m, dim=1).values, rtol=0, atol=0)
    torch.testing.assert_close(sel.values, pre.gather(1, sel.indices), rtol=0, atol=0)
    assert all(len(set(row.tolist())) == m for row in sel.indices)  # m distinct latents per row


def test_top_columns_recursion_equals_topk():
    g = torch.Generator().manual_seed(0)
    v = torch.randint(-20, 20, (33, 4096), generator=g).float()  # heavy ties
    values, cols = top_columns(v, 32)
    torch.testing.assert_close(values.sort(1, descending=True).values, v.topk(32, dim=1).values, rtol=0, atol=0)
    torch.testing.assert_close(values, v.gather(1, cols), rtol=0, atol=0)
    assert all(len(set(row.tolist())) == 32 for row in cols)


def test_latent_major_dots_equal_token_major_and_dense():
    """The decoder's two sampled-matmul orders (CPU latent-major, CUDA token-major) against dense dots,
    with repeated latents across codes and activation values that must not leak in (NaN)."""
    from saescale.kernels.csr import latent_major, latent_major_dots, rowwise_dots

    g = torch.Generator().manual_seed(2)
    B, n, d = 40, 30, 8
    W, grads = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(2, B, d, generator=g, dtype=torch.float64)
    idx = [torch.randint(0, n, (B, 5), generator=g), torch.randint(0, n, (B, 3), generator=g)]
    latents = torch.cat([i.reshape(-1) for i in idx])
    cols = torch.cat([torch.arange(B).repeat_interleave(i.shape[1]) + s * B for s, i in enumerate(idx)])
    lm = latent_major(latents, cols, torch.full_like(latents, float("nan"), dtype=torch.float64), n, 2 * B)
    dots = latent_major_dots(lm, W, grads.reshape(2 * B, d))
    dense = torch.cat([(grads[s] @ W.T).gather(1, i).reshape(-1) for s, i in enumerate(idx)])
    torch.testing.assert_close(dots, dense, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.cat([rowwise_dots(grads[s], W, i).reshape(-1) for s, i in enumerate(idx)]),
                               dense, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("q", [1, 2, 8, 256, 3, 20, 96])
def test_split_is_floor_division_and_remainder(q):
    t = torch.randint(0, 1 << 40, (64, 33), generator=torch.Generator().manual_seed(q))
    hi, lo = split(t, q)
    assert torch.equal(hi, t // q) and torch.equal(lo, t % q)
