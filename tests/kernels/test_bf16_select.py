"""The exact bf16 selection (saescale.kernels.bf16_select) against the plain float32 reference.

The reference is F.linear over all latents in float32 and ``topk``. "Same set" is asserted for every row;
where the reference's m-th and (m+1)-th values are within float32 rounding of each other (a near-tie, which
two float32 evaluations may order either way), the selected values must still equal the reference's top-m
values. These run on any CPU: without fast bf16 the bf16 matmul is emulated (slow but exact to its definition).
"""

import pytest
import torch
import torch.nn.functional as F

from saescale.kernels import bf16_select, precision
from saescale.kernels.bf16_select import _rescore, _rescore_certified, augmented, select_topk_bf16, upper
from saescale.kernels.encoder import fused_topk_encode
from saescale.kernels.select import select_topk_fp32

pytestmark = pytest.mark.usefixtures("one_thread")


def reference(x_c, W, b, m, dead=None, k_aux=0):
    pre = F.linear(x_c.double(), W.double(), b.double())  # float64: the real-valued pre-activations
    top = pre.topk(m + 1, dim=1)
    aux = pre.masked_fill(~dead, float("-inf")).topk(k_aux + 1, dim=1) if k_aux else None
    return pre, top, aux


def assert_same(values, indices, pre, top, m):
    """Same set as the reference's top-m in every row, except at a near-tie, where the values still agree."""
    tie = (top.values[:, m - 1] - top.values[:, m]).abs() <= 1e-6 * top.values[:, m - 1].abs().clamp_min(1e-3)
    got = {b: set(indices[b].tolist()) for b in range(indices.shape[0])}
    want = {b: set(top.indices[b, :m].tolist()) for b in range(indices.shape[0])}
    differ = [b for b in got if got[b] != want[b]]
    assert all(bool(tie[b]) for b in differ), f"rows {differ[:5]} select another set (not a near-tie)"
    assert torch.allclose(values.double(), pre.gather(1, indices), rtol=1e-5, atol=1e-6)  # values: float32 of their latents
    assert torch.allclose(values.double().sort(1).values, top.values[:, :m].sort(1).values, rtol=1e-5, atol=1e-6)
    assert bool((values[:, :-1] >= values[:, 1:]).all())  # sorted descending, as the float32 path returns


def data(B=512, d=96, n=2048, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, d, generator=g) * scale
    W = torch.randn(n, d, generator=g) / d**0.5 * (1 + torch.rand(n, 1, generator=g))  # unequal row norms
    b = torch.randn(n, generator=g) * 0.1
    return x, W, b


@pytest.mark.parametrize("m", [8, 32, 128])  # k, and Multi-TopK's 4k
def test_random_inputs_select_the_float32_set(m):
    x, W, b = data()
    sel = select_topk_bf16(x, W, b, m, chunk=512)
    pre, top, _ = reference(x, W, b, m)
    assert_same(sel.values, sel.indices, pre, top, m)


@pytest.mark.parametrize("d", [96, 576, 2304])  # 2304: several K-blocks in the bf16 kernel, if it blocks
def test_every_key_bounds_its_float32_value_on_this_machines_bf16_kernel(d):
    """p (float64) <= up(q) for every (row, latent), the docstring's analysis on the real kernel, and the key's
    raise over p is about 1.4 u ||x|| ||w+_j||: each latent's own bound, not the widest latent's."""
    for scale in (1.0, 1e3):
        x, W, b = data(B=256, d=d, n=1024, scale=scale)
        W[0] *= 50  # one wide encoder row must not loosen the others' keys
        xb, Wb = augmented(x, W, b)
        q = xb @ Wb.T  # the kernel's own bf16 matmul: bias and error bound as two more coordinates
        pre = F.linear(x.double(), W.double(), b.double())
        slack = upper(q).double() - pre
        assert bool((slack >= 0).all()), float(slack.min())
        norms = x.double().norm(dim=1)[:, None] * (W.double().norm(dim=1) ** 2 + b.double() ** 2).sqrt()[None, :]
        assert float((slack / norms).median()) < 3 * 2**-8  # tight: a few u, per latent


def test_large_norms_and_auxk():
    x, W, b = data(scale=300.0, seed=1)
    dead = torch.rand(W.shape[0], generator=torch.Generator().manual_seed(2)) < 0.3
    sel = select_topk_bf16(x, W, b, 32, dead, 64, chunk=512)
    pre, top, aux = reference(x, W, b, 32, dead, 64)
    assert_same(sel.values, sel.indices, pre, top, 32)
    assert_same(sel.aux_values, sel.aux_indices, pre, aux, 64)
    assert bool(dead[sel.aux_indices].all())


def test_near_ties_fall_back_to_float32_and_stay_exact():
    """64 near-copies of each of 8 latents: within a row the top latents' bf16 values cannot be told apart from
    the candidates' left out, the certificate fails, and those rows are selected again in float32."""
    x, W, b = data(B=128, n=512, seed=3)
    g = torch.Generator().manual_seed(8)
    W = W[:8].repeat_interleave(64, 0) * (1 + 1e-5 * torch.randn(512, 1, generator=g))
    b = b[:8].repeat_interleave(64, 0)
    with precision.using("bfloat16") as stats:
        sel = select_topk_bf16(x, W, b, 16, chunk=256)
    assert stats.rows == 128 and stats.fallback_rows > 0
    pre, top, _ = reference(x, W, b, 16)
    assert_same(sel.values, sel.indices, pre, top, 16)
    fp32 = select_topk_fp32(x, W, b, 16, chunk=256)
    assert torch.equal(sel.indices.sort(1).values, fp32.indices.sort(1).values)


@pytest.mark.parametrize("keep", [True, False])
def test_retried_rows_are_exact_from_kept_keys_and_from_a_new_matmul(keep, monkeypatch):
    """factor 1 (c = m) can never certify a row (the m-th key's bound is >= the m-th value), so every row is
    retried with 2 m candidates: from the first pass's kept keys, or (keys too large to keep) a new matmul."""
    if not keep:
        monkeypatch.setattr(bf16_select, "KEEP_KEYS_BYTES", 0)
    x, W, b = data(seed=9)
    dead = torch.rand(W.shape[0], generator=torch.Generator().manual_seed(10)) < 0.3
    with precision.using("bfloat16") as stats:
        sel = select_topk_bf16(x, W, b, 32, dead, 64, chunk=512, factor=1)
    assert stats.rows == x.shape[0] and stats.fallback_rows < 0.5 * stats.rows
    pre, top, aux = reference(x, W, b, 32, dead, 64)
    assert_same(sel.values, sel.indices, pre, top, 32)
    assert_same(sel.aux_values, sel.aux_indices, pre, aux, 64)


def test_rescoring_falls_to_all_candidates_where_the_first_stage_cannot_certify():
    """Row 0's first-stage bound is made useless (its m1 + 1 largest keys raised): it must rescore all c
    candidates and still return their float32 top-m; the other rows keep the first stage's answer."""
    x, W, b = data(B=64, seed=11)
    xb, Wb = augmented(x, W, b)
    q_top, cand = (xb @ Wb.T).float().topk(64, dim=1)
    m, m1 = 32, 32 + 8
    q_top[0, : m1 + 1] = 1e30  # still sorted descending
    values, indices, ok = _rescore_certified(x, W, b, q_top, cand, m, True, True)
    full_values, full_indices = _rescore(x, W, b, cand, m)
    assert torch.equal(values, full_values) and torch.equal(indices.sort(1).values, full_indices.sort(1).values)
    assert bool(ok[0]) == bool(upper(q_top[0, -1]) < full_values[0, -1])


def test_every_row_is_certified_when_candidates_cover_all_latents():
    x, W, b = data(B=64, n=64)
    with precision.using("bfloat16") as stats:
        sel = select_topk_bf16(x, W, b, 32)
    assert stats.rows == 64 and stats.fallback_rows == 0
    pre, top, _ = reference(x, W, b, 32)
    assert_same(sel.values, sel.indices, pre, top, 32)


def test_nan_rows_go_to_float32():
    x, W, b = data(B=16, n=256)
    x[3, 5] = float("nan")
    with precision.using("bfloat16") as stats:
        sel = select_topk_bf16(x, W, b, 8)
    assert stats.fallback_rows >= 1
    fp32 = select_topk_fp32(x, W, b, 8)
    ok = torch.arange(16) != 3
    assert torch.equal(sel.indices[ok].sort(1).values, fp32.indices[ok].sort(1).values)


def test_autocast_is_the_top_of_the_bf16_values_rescored():
    x, W, b = data()
    sel = select_topk_bf16(x, W, b, 32, certify=False)
    pre, top, _ = reference(x, W, b, 32)
    assert torch.allclose(sel.values.double(), pre.gather(1, sel.indices), rtol=1e-5, atol=1e-6)
    overlap = sum(len(set(a.tolist()) & set(r.tolist())) for a, r in zip(sel.indices, top.indices[:, :32]))
    assert overlap / (32 * x.shape[0]) > 0.9  # approximate: most of the set


@pytest.mark.parametrize("aux", [False, True])
def test_gradients_match_the_float32_path(aux):
    """fused_topk_encode under precision 'bfloat16' vs 'float32': same selection, gradients to 1e-5 relative."""
    x, W, b = data(B=256, n=1024, seed=4)
    g = torch.Generator().manual_seed(6)
    b_pre = torch.randn(x.shape[1], generator=g) * 0.1
    dead = torch.rand(W.shape[0], generator=torch.Generator().manual_seed(5)) < 0.2 if aux else None
    # upstream gradients per (row, latent), not per position: two latents of nearly equal value may swap
    # places inside the top-k between the two paths without changing the set
    up, up_aux = torch.randn(x.shape[0], W.shape[0], generator=g), torch.randn(x.shape[0], W.shape[0], generator=g)
    sels = {}
    for mode in ("float32", "bfloat16"):  # a near-tie at the k-th place may be ordered either way: those rows
        with precision.using(mode):      # (if any, at most 1 %) get no upstream gradient
            sels[mode] = fused_topk_encode(x, b_pre, W, b, 16, dead, 32 if aux else 0, chunk=256)
    same = (sels["float32"].indices.sort(1).values == sels["bfloat16"].indices.sort(1).values).all(1)
    if aux:
        same &= (sels["float32"].aux_indices.sort(1).values == sels["bfloat16"].aux_indices.sort(1).values).all(1)
    assert float(same.float().mean()) >= 0.99
    up, up_aux = up * same[:, None], up_aux * same[:, None]
    grads = {}
    for mode in ("float32", "bfloat16"):
        leaves = [t.clone().requires_grad_() for t in (x, b_pre, W, b)]
        with precision.using(mode):
            sel = fused_topk_encode(*leaves, 16, dead, 32 if aux else 0, chunk=256)
        loss = (sel.values * up.gather(1, sel.indices)).sum()
        if aux:
            loss = loss + (sel.aux_values * up_aux.gather(1, sel.aux_indices)).sum()
        loss.backward()
        grads[mode] = [t.grad for t in leaves]
    for name, g32, g16 in zip(("x_n", "b_pre", "W_enc", "b_enc"), grads["float32"], grads["bfloat16"]):
        assert torch.allclose(g16, g32, rtol=1e-5, atol=1e-5 * g32.abs().max()), name


def test_real_activations_of_the_default_model(real_cache):
    """The default model's cached activations (layer-norm inputs, as training sees them) and a tied-init encoder."""
    from saescale.activations.cache import CacheReader

    x = CacheReader(real_cache, "train").read_all(2048)["acts"].float()
    x = (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True)
    g = torch.Generator().manual_seed(7)
    W_dec = F.normalize(torch.randn(4096, x.shape[1], generator=g), dim=1)
    W, b = W_dec * 0.1, torch.zeros(4096)
    dead = torch.rand(4096, generator=g) < 0.1
    with precision.using("bfloat16") as stats:
        sel = select_topk_bf16(x, W, b, 32, dead, 128)
    pre, top, aux = reference(x, W, b, 32, dead, 128)
    assert_same(sel.values, sel.indices, pre, top, 32)
    assert_same(sel.aux_values, sel.aux_indices, pre, aux, 128)
    assert stats.fallback_rows < 0.5 * stats.rows  # the certificate accepts most rows, or bf16 would not pay
