"""The SAE architectures against dense float64 references."""

import pytest
import torch
import torch.nn.functional as F

from saescale.errors import SaescaleError
from saescale.sae.base import LossContext
from tests.helpers import make_sae

N, K, D, B = 64, 4, 16, 32


def ctx(dead=None, multi=False, l1=0.0, aux=1 / 32):
    dead = torch.zeros(N, dtype=torch.bool) if dead is None else dead
    return LossContext(dead=dead, k_aux=8, aux_coef=aux, loss_scale=0.7, multi_topk=multi, l1_coef=l1)


def dense_topk_loss(sae, x, c: LossContext):
    """The TopK loss written densely: masks over all n latents, z (B, n), x̂ = z W_dec + b_pre."""
    pre = (x - sae.b_pre) @ sae.W_enc.T + sae.b_enc

    def topk_dense(p, k):
        mask = torch.zeros_like(p, dtype=torch.bool).scatter(1, p.topk(k, dim=1).indices, True)
        return torch.where(mask, F.relu(p), torch.zeros_like(p))

    x_hat = topk_dense(pre, sae.cfg.k) @ sae.W_dec + sae.b_pre
    loss = ((x - x_hat) ** 2).sum(1).mean() * c.loss_scale
    if c.multi_topk:
        x4 = topk_dense(pre, 4 * sae.cfg.k) @ sae.W_dec + sae.b_pre
        loss = loss + ((x - x4) ** 2).sum(1).mean() * c.loss_scale / 8
    if c.dead.any():
        k_aux = min(c.k_aux, int(c.dead.sum()))
        z_aux = topk_dense(pre.masked_fill(~c.dead, float("-inf")), k_aux).nan_to_num(0.0)
        e = (x - x_hat + sae.b_pre).detach()  # the released code's target e + sg(b_pre) ...
        e_hat = z_aux @ sae.W_dec + sae.b_pre  # ... and reconstruction with b_pre (b_pre gets an AuxK gradient)
        aux = ((e - e_hat) ** 2).sum() / ((e - e.mean(0)) ** 2).sum()
        loss = loss + c.aux_coef * aux
    return loss


def grads(sae, loss):
    params = [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_pre]
    return torch.autograd.grad(loss, params)


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("n_dead", [0, 20])
def test_topk_sparse_path_gradients_match_dense_float64(multi, n_dead):
    torch.manual_seed(1)
    sae = make_sae("topk", N, K, D, dtype=torch.float64)
    x = torch.randn(B, D, dtype=torch.float64)
    dead = torch.zeros(N, dtype=torch.bool)
    dead[torch.randperm(N)[:n_dead]] = True
    c = ctx(dead, multi)
    out = sae.loss_terms(x, c)
    ref = dense_topk_loss(sae, x, c)
    assert rel_err(out.loss.detach(), ref.detach()) < 1e-12
    for g, r in zip(grads(sae, out.loss), grads(sae, ref)):
        assert rel_err(g, r) < 1e-6
    if n_dead:
        assert out.aux_loss.item() > 0


def test_relu_gradients_match_dense_float64():
    torch.manual_seed(2)
    sae = make_sae("relu", N, K, D, dtype=torch.float64)
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(N, 1, dtype=torch.float64) + 0.5)  # non-unit rows: the norm weighting matters
    x = torch.randn(B, D, dtype=torch.float64)
    c = ctx(l1=0.3)
    out = sae.loss_terms(x, c)
    z = F.relu((x - sae.b_pre) @ sae.W_enc.T + sae.b_enc)
    x_hat = z @ sae.W_dec + sae.b_pre
    ref = ((x - x_hat) ** 2).sum(1).mean() * 0.7 + 0.3 * (z * sae.W_dec.norm(dim=1)).sum(1).mean()
    assert rel_err(out.loss.detach(), ref.detach()) < 1e-12
    for g, r in zip(grads(sae, out.loss), grads(sae, ref)):
        assert rel_err(g, r) < 1e-6


def test_encode_is_sparse_and_decode_matches_dense():
    sae = make_sae("topk", N, K, D)
    x = torch.randn(B, D)
    code = sae.encode(x)
    assert code.values.shape == (B, K) and code.indices.shape == (B, K)
    assert (code.values >= 0).all()
    pre = sae.pre_acts(x)
    assert torch.equal(code.indices.sort(1).values, pre.topk(K, dim=1).indices.sort(1).values)
    dense = code.to_dense(N) @ sae.W_dec + sae.b_pre
    torch.testing.assert_close(sae.decode(code), dense, rtol=1e-5, atol=1e-6)


def test_relu_sparse_code_holds_every_active_latent():
    sae = make_sae("relu", N, K, D)
    x = torch.randn(B, D)
    code = sae.encode(x)
    z = F.relu(sae.pre_acts(x))
    torch.testing.assert_close(code.to_dense(N), z)


@pytest.mark.parametrize("kind", ["layernorm", "std", "mean_sq", "none"])
def test_decode_returns_raw_space(kind):
    sae = make_sae("topk", N, N, D, normalize=kind)  # k = n: the code loses little
    sae.cfg.norm_scale = 0.37
    x = 5 * torch.randn(B, D) + 3
    x_n, stats = sae.normalize(x)
    if kind == "layernorm":
        torch.testing.assert_close(x_n.norm(dim=1), torch.ones(B))
        torch.testing.assert_close(x_n.mean(dim=1), torch.zeros(B), atol=1e-6, rtol=0)
    # decoding the exact normalised input gives back x
    from saescale.sae.normalize import denormalize

    torch.testing.assert_close(denormalize(x_n, stats), x, rtol=1e-5, atol=1e-4)
    y = sae(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y, sae.decode(sae.encode(x), stats))


def test_decoder_projection_keeps_rows_unit_norm_under_adam():
    torch.manual_seed(3)
    sae = make_sae("topk", N, K, D)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    x = torch.randn(B, D)
    for _ in range(5):
        opt.zero_grad()
        sae.loss_terms(x, ctx()).loss.backward()
        sae.project_decoder_grad()
        g, w = sae.W_dec.grad, sae.W_dec.detach()
        assert (g * w).sum(1).abs().max() < 1e-5  # no component along the row
        opt.step()
        sae.normalize_decoder()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(N))


@pytest.mark.parametrize("bad", ["nan", "inf", "width", "ndim"])
def test_bad_batches_give_one_line_errors(bad):
    sae = make_sae("topk", N, K, D)
    x = torch.randn(B, D)
    if bad == "nan":
        x[3, 2] = float("nan")
    elif bad == "inf":
        x[5, 0] = float("inf")
    elif bad == "width":
        x = torch.randn(B, D + 1)
    else:
        x = torch.randn(B, D, 2)
    with pytest.raises(SaescaleError) as e:
        sae.encode(x)
    msg = str(e.value)
    assert "\n" not in msg
    assert ("NaN/inf" in msg) if bad in ("nan", "inf") else (f"expected (batch, {D})" in msg)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_the_finite_check_catches_nan_and_inf_and_passes_huge_finite_values(dtype):
    """The check sums the batch first (one pass); a sum that overflows must not reject finite data."""
    sae = make_sae("topk", N, K, D)
    big = torch.full((B, D), torch.finfo(dtype).max / 2, dtype=dtype)  # the sum overflows (but float16's)
    sae.check_input(big)
    for bad in (float("nan"), float("inf"), float("-inf")):
        x = torch.randn(B, D).to(dtype)
        x[B - 1, D - 1] = bad
        with pytest.raises(SaescaleError, match=f"NaN/inf in 1 row\\(s\\) \\(first: \\[{B - 1}\\]\\)"):
            sae.check_input(x)


def test_auxk_gives_b_pre_the_released_codes_gradient():
    """AuxK's b_pre gradient = the encoder term (through the dead latents' pre-activations) plus the
    released code's direct term -2 alpha sum_b (e_b - ê_b) / V; before, the direct term was missing."""
    torch.manual_seed(3)
    sae = make_sae("topk", N, K, D, dtype=torch.float64)
    x = torch.randn(B, D, dtype=torch.float64)
    dead = torch.arange(N) < 20
    with_aux = grads(sae, sae.loss_terms(x, ctx(dead, aux=0.5)).loss)[3]
    without = grads(sae, sae.loss_terms(x, ctx(dead, aux=0.0)).loss)[3]
    e = x - sae.decode_normalized(sae.encode_normalized(x)).detach()
    pre = (x - sae.b_pre) @ sae.W_enc.T + sae.b_enc
    top = pre.masked_fill(~dead, float("-inf")).topk(8, dim=1)
    e_hat = F.embedding_bag(top.indices, sae.W_dec, per_sample_weights=F.relu(top.values), mode="sum")
    V = ((e - e.mean(0)) ** 2).sum()
    encoder_term = torch.autograd.grad(0.5 * ((e - e_hat) ** 2).sum() / V, sae.b_pre)[0]
    direct = -2 * 0.5 * (e - e_hat.detach()).sum(0) / V
    assert rel_err(with_aux - without, encoder_term + direct) < 1e-9 and direct.norm() > 1e-3
