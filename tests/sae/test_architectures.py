"""The seven SAE architectures against independent dense float64 references written here from the module
docstrings' formulas (straight-through estimators as value-preserving detach terms), the exact batch-wide
top-k selection, the prefix decoder, saving and loading, bad settings, and exact resumption of training.

Nothing here calls an architecture's own autograd Functions or its reference path to build the expected
values: the references below are plain dense autograd on (B, n) tensors.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import saescale.kernels.batch_select as batch_select
import saescale.sae.sparse_path as sparse_path
from saescale.data.synthetic import SyntheticConfig, SyntheticSource
from saescale.errors import SaescaleError
from saescale.kernels.batch_select import CANDIDATES, batch_topk_encode
from saescale.kernels.decoder import SparseCode, prefix_decode
from saescale.sae.base import LossContext
from saescale.sae.config import ARCHS, SAEConfig
from saescale.sae.io import load_sae, save_sae
from saescale.sae.registry import arch_class
from saescale.train.checkpoint import latest_checkpoint, load_checkpoint
from saescale.train.config import TrainConfig
from saescale.train.run import train_sae
from tests.commands.cli_helpers import Interrupted, StopAfter
from tests.helpers import make_sae

pytestmark = pytest.mark.usefixtures("one_thread")

N, K, D, B = 64, 4, 16, 32
NEW = ("gated", "prolu", "jumprelu", "batchtopk", "matryoshka")
DENSE_ENCODER = ("gated", "prolu", "jumprelu")
EPS = 0.4  # JumpReLU bandwidth of the gradient tests: wide enough that many entries lie in the window
PREFIXES = (8, 20, 40)  # Matryoshka's, n = 64 added by the config
VARIANTS = [*(a for a in ARCHS if a != "switch"), "prolu-relu"]  # ProLU with both synthetic bias gradients; switch: test_switch.py
DENSE_ONE_QUARTER = 0.25  # "sparse": at most the architectures' default dense-fallback fraction


# ---- set-ups --------------------------------------------------------------------------------------
def build(variant: str, dtype=torch.float64, seed: int = 0):
    """An SAE of ``variant`` with weights chosen so that every term of its loss has entries: non-unit decoder
    rows (the norm-weighted penalties), gated/prolu biases negative enough for a sparse code, JumpReLU
    thresholds with many pre-activations inside the window |pre - θ| < ε/2."""
    arch, extra = variant, {}
    if variant == "prolu-relu":
        arch, extra = "prolu", {"prolu_grad": "relu"}
    sae = make_sae(arch, N, K, D, dtype=dtype, seed=seed)
    if arch == "jumprelu":
        extra = {"bandwidth": EPS}
    if arch == "matryoshka":
        extra = {"prefixes": PREFIXES}
    if extra:
        sae.cfg = dataclasses.replace(sae.cfg, **extra)
    g = torch.Generator().manual_seed(100 + seed)
    rand = lambda *s: torch.rand(*s, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    randn = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    with torch.no_grad():
        sae.W_dec.mul_(0.5 + rand(N, 1))
        if arch == "gated":
            sae.b_enc.copy_(-1.2 + 0.4 * randn(N))  # the gate: sparse
            sae.r_mag.copy_(0.3 * randn(N))
            sae.b_mag.copy_(-1.5 + 0.5 * randn(N))  # some open gates with a negative magnitude
        elif arch == "prolu":
            sae.b_enc.copy_(-2.0 - rand(N))  # negative: m + b > 0 binds ...
            sae.b_enc[::10] = 0.2  # ... and a few positive, where m > 0 binds
        elif arch == "jumprelu":
            sae.b_enc.copy_(-0.6 + 0.1 * randn(N))
            sae.log_threshold.copy_((0.4 + 0.8 * rand(N)).log())
    return sae


def batch_for(arch: str, dtype=torch.float64, seed: int = 1) -> torch.Tensor:
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)
    if arch in ("batchtopk", "matryoshka"):
        x[0] *= 20.0  # one token holds far more than its share of the batch's top B k: widened rows
    return x


def context(n_dead: int = 20) -> LossContext:
    dead = torch.zeros(N, dtype=torch.bool)
    dead[torch.randperm(N, generator=torch.Generator().manual_seed(5))[:n_dead]] = True
    return LossContext(dead=dead, k_aux=8, aux_coef=0.25, loss_scale=0.7, multi_topk=True, l1_coef=0.3,
                       batch=None, l0_coef=0.2)


# ---- the independent dense references ---------------------------------------------------------------
def rectangle(u: torch.Tensor) -> torch.Tensor:
    return (u.abs() < 0.5).to(u.dtype)


def top_mask(v: torch.Tensor, k: int) -> torch.Tensor:
    """(B, n) bool: the k largest entries of each row."""
    return torch.zeros_like(v, dtype=torch.bool).scatter(1, v.topk(k, dim=1).indices, True)


def batch_mask(v: torch.Tensor, k: int) -> torch.Tensor:
    """(B, n) bool: the B k largest entries of v over the whole (flattened) batch."""
    flat = v.reshape(-1)
    return torch.zeros_like(flat, dtype=torch.bool).index_fill(0, flat.topk(k * v.shape[0]).indices, True).view_as(v)


def reference_loss(sae, variant: str, x: torch.Tensor, c: LossContext) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, dense code z (B, n)) of the docstrings' formulas, dense float64 autograd."""
    W_enc, b_enc, W_dec, b_pre = sae.W_enc, sae.b_enc, sae.W_dec, sae.b_pre
    Bx, n = x.shape[0], W_enc.shape[0]
    lin = (x - b_pre) @ W_enc.T  # W_enc (x_n - b_pre)  (B, n)
    pre = lin + b_enc
    norms = W_dec.norm(dim=1)

    def mse(x_hat):
        return c.loss_scale * ((x - x_hat) ** 2).sum() / Bx

    def auxk(x_hat):
        """alpha ||(e + sg(b_pre)) - (W_dec^T z_aux + b_pre)||^2 / V, e = sg(x - x̂), the top-k_aux of the dead latents."""
        k_aux = min(c.k_aux, int(c.dead.sum()))
        masked = pre.masked_fill(~c.dead, float("-inf"))
        z_aux = torch.where(top_mask(masked, k_aux), F.relu(pre), torch.zeros_like(pre))
        e = (x - x_hat).detach()
        target = e + b_pre.detach()
        e_hat = z_aux @ W_dec + b_pre
        var = ((e - e.mean(0)) ** 2).sum()
        return c.aux_coef * ((target - e_hat) ** 2).sum() / var

    if variant == "topk":
        z = torch.where(top_mask(pre, sae.cfg.k), F.relu(pre), torch.zeros_like(pre))
        z4 = torch.where(top_mask(pre, 4 * sae.cfg.k), F.relu(pre), torch.zeros_like(pre))
        x_hat = z @ W_dec + b_pre
        loss = mse(x_hat) + mse(z4 @ W_dec + b_pre) / 8 + auxk(x_hat)
    elif variant == "relu":
        z = F.relu(pre)
        loss = mse(z @ W_dec + b_pre) + c.l1_coef * (z * norms).sum() / Bx
    elif variant == "gated":
        gate = pre  # π_gate = W_enc x_c + b_gate
        mag = sae.r_mag.exp() * lin + sae.b_mag
        z = (gate > 0).to(x.dtype).detach() * F.relu(mag)
        g = F.relu(gate)
        x_gate = g @ W_dec.detach() + b_pre.detach()
        loss = mse(z @ W_dec + b_pre) + c.l1_coef * (g * norms).sum() / Bx + mse(x_gate)
    elif variant in ("prolu", "prolu-relu"):
        m, b = lin, b_enc
        A = ((m > 0) & (m + b > 0)).to(x.dtype).detach()
        slope = A * m.detach() if variant == "prolu" else A  # ProLU-STE dz/db = A m; ProLU-ReLU dz/db = A
        z = m * A + (b - b.detach()) * slope  # the second term is 0 in value
        loss = mse(z @ W_dec + b_pre) + c.l1_coef * (z * norms).sum() / Bx
    elif variant == "jumprelu":
        theta, eps = sae.log_threshold.exp(), sae.cfg.bandwidth
        H = (pre > theta).to(x.dtype).detach()
        Kw = rectangle((pre - theta) / eps).detach()
        dt = theta - theta.detach()  # 0 in value, gradient 1 to θ
        z = pre * H + dt * (-(theta.detach() / eps) * Kw)  # dz/dpre = H, dz/dθ = -(θ/ε) K
        l0 = (H + dt * (-(1.0 / eps) * Kw)).sum() / Bx  # dH/dθ = -(1/ε) K, none to pre
        loss = mse(z @ W_dec + b_pre) + c.l0_coef * l0
    elif variant in ("batchtopk", "matryoshka"):
        r = F.relu(pre)
        z = torch.where(batch_mask(r, sae.cfg.k), r, torch.zeros_like(r))
        if variant == "batchtopk":
            x_hat = z @ W_dec + b_pre
            loss = mse(x_hat)
        else:
            loss = 0.0
            for m_g in sae.cfg.prefixes:  # x̂_{<=m} = sum_{i < m} z_i W_dec[i] + b_pre
                x_hat = z[:, :m_g] @ W_dec[:m_g] + b_pre
                loss = loss + mse(x_hat)
            assert sae.cfg.prefixes[-1] == n  # x_hat is the full reconstruction
        loss = loss + auxk(x_hat)
    else:
        raise AssertionError(variant)
    return loss, z.detach()


def interesting_entries(sae, variant: str, x: torch.Tensor) -> None:
    """The entries whose gradient terms the comparison is about exist in this batch."""
    with torch.no_grad():
        lin = (x - sae.b_pre) @ sae.W_enc.T
        pre = lin + sae.b_enc
        if variant == "gated":
            gate = pre > 0
            assert 0.05 < gate.double().mean() < DENSE_ONE_QUARTER, gate.double().mean()  # sparse
            mag = sae.r_mag.exp() * lin + sae.b_mag
            assert (gate & (mag <= 0)).any() and (gate & (mag > 0)).any()
        elif variant.startswith("prolu"):
            active = (lin > 0) & (lin + sae.b_enc > 0)
            assert 0.05 < active.double().mean() < DENSE_ONE_QUARTER
            assert ((lin > 0) & ~active).any()  # gated off by the bias
            assert (active & (sae.b_enc > 0)).any()  # where m > 0 binds
        elif variant == "jumprelu":
            u = (pre - sae.log_threshold.exp()) / sae.cfg.bandwidth
            window = u.abs() < 0.5
            assert (window & (u > 0)).sum() >= 10 and (window & (u < 0)).sum() >= 10  # on both sides of θ
            assert 0.05 < (u > 0).double().mean() < DENSE_ONE_QUARTER
        elif variant in ("batchtopk", "matryoshka"):
            kept = batch_mask(F.relu(pre), sae.cfg.k).sum(1)
            assert kept.max() > 2 * CANDIDATES * sae.cfg.k  # a row widened at least twice
            assert (kept < sae.cfg.k).any()


def param_grads(sae, loss):
    return torch.autograd.grad(loss, [getattr(sae, name) for name in sae.param_names()])


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


@pytest.fixture
def sparse_forced(monkeypatch):
    """The dense-encoder architectures take their sparse path whatever the code's density."""
    monkeypatch.setattr(sparse_path, "DENSE_FRACTION", 1.0)


def spy_gathered(monkeypatch, arch: str) -> list[int]:
    """Count the sparse path's gathered encodes of a dense-encoder architecture."""
    import importlib

    module = importlib.import_module(f"saescale.sae.{arch}")
    calls, real = [], module.gathered_encode

    def spy(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(module, "gathered_encode", spy)
    return calls


def run_loss(sae, x, c):
    out = sae.loss_terms(x, c)
    return out, param_grads(sae, out.loss)


# ---- a. losses and gradients ---------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_fast_path_loss_and_gradients_equal_the_independent_dense_reference(variant, sparse_forced, monkeypatch):
    sae = build(variant)
    arch = sae.arch
    x, c = batch_for(arch), context()
    interesting_entries(sae, variant, x)
    calls = spy_gathered(monkeypatch, arch) if arch in DENSE_ENCODER else None
    out, got = run_loss(sae, x, c)
    if calls is not None:
        assert calls, "the sparse path was not taken"
    if arch in ("topk", "batchtopk", "matryoshka"):
        assert out.aux_loss > 0  # AuxK on the dead latents is part of the comparison
    ref, z_ref = reference_loss(sae, variant, x, c)
    expected = param_grads(sae, ref)
    assert rel_err(out.loss.detach(), ref.detach()) < 1e-12, (out.loss.item(), ref.item())
    for name, g, r in zip(sae.param_names(), got, expected):
        assert r.norm() > 0, f"{name}: the reference gradient is zero, the comparison would be vacuous"
        assert rel_err(g, r) < 1e-10, (name, rel_err(g, r))
    torch.testing.assert_close(out.code.to_dense(N), z_ref, rtol=1e-12, atol=1e-12)  # the code trained on
    torch.testing.assert_close(out.x_hat.detach(), (z_ref @ sae.W_dec + sae.b_pre).detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("variant", ["gated", "prolu", "prolu-relu", "jumprelu"])
def test_dense_fallback_equals_the_independent_dense_reference(variant, monkeypatch):
    """Above DENSE_FRACTION of n the fast path computes densely: the same loss and gradients."""
    monkeypatch.setattr(sparse_path, "DENSE_FRACTION", 0.0)
    sae = build(variant)
    x, c = batch_for(sae.arch), context()
    calls = spy_gathered(monkeypatch, sae.arch)
    out, got = run_loss(sae, x, c)
    assert not calls, "the dense fallback was not taken"
    ref, _ = reference_loss(sae, variant, x, c)
    assert rel_err(out.loss.detach(), ref.detach()) < 1e-12
    for name, g, r in zip(sae.param_names(), got, param_grads(sae, ref)):
        assert rel_err(g, r) < 1e-10, name


@pytest.mark.parametrize("variant", VARIANTS)
def test_fast_path_equals_its_own_reference_path(variant, sparse_forced, monkeypatch):
    sae = build(variant)
    x, c = batch_for(sae.arch), context()
    fast, g_fast = run_loss(sae, x, c)
    monkeypatch.setenv("SAESCALE_KERNELS", "reference")
    ref, g_ref = run_loss(sae, x, c)
    assert rel_err(fast.loss.detach(), ref.loss.detach()) < 1e-12
    torch.testing.assert_close(fast.aux_loss, ref.aux_loss, rtol=1e-10, atol=1e-14)
    for name, g, r in zip(sae.param_names(), g_fast, g_ref):
        assert rel_err(g, r) < 1e-10, name
    torch.testing.assert_close(fast.x_hat, ref.x_hat, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast.code.to_dense(N), ref.code.to_dense(N), rtol=1e-12, atol=1e-12)


def test_the_jumprelu_window_below_the_threshold_carries_gradient(sparse_forced):
    """The L0 term alone: d/d log θ_i = -(θ_i/ε) #{b: |pre_bi - θ_i| < ε/2} / B, counting the window's entries
    below θ too, which have no value (z = 0) and which the sparse path must still gather."""
    sae = build("jumprelu")
    x = batch_for("jumprelu")
    c = context(0)._replace(l0_coef=1.0, loss_scale=0.0)  # the L0 term alone
    out = sae.loss_terms(x, c)
    (g,) = torch.autograd.grad(out.loss, [sae.log_threshold])
    with torch.no_grad():
        theta = sae.log_threshold.exp()
        in_window = rectangle((sae.pre_acts(x) - theta) / EPS)
        expected = -(theta / EPS) * in_window.sum(0) / B  # d/d log θ of -(1/ε) K summed, times θ
    torch.testing.assert_close(g, expected, rtol=1e-12, atol=1e-15)
    assert (expected != 0).sum() > N // 4


# ---- b. BatchTopK's exact selection ---------------------------------------------------------------------
def selected(sel) -> set[tuple[int, int]]:
    out = set()
    for vals, idx, keep in ((sel.values, sel.indices, sel.keep), (sel.extra_values, sel.extra_indices, sel.extra_keep)):
        for b, j in keep.nonzero().tolist():
            pair = (b, int(idx[b, j]))
            assert pair not in out, f"{pair} selected twice"
            out.add(pair)
    return out


def check_batch_topk(x, b_pre, W_enc, b_enc, k, chunk=16, dead=None, k_aux=0):
    """batch_topk_encode's selection, values, threshold and gradients against a flat topk of the dense pre."""
    W_enc, b_enc, b_pre = (t.clone().requires_grad_(True) for t in (W_enc, b_enc, b_pre))
    sel = batch_topk_encode(x, b_pre, W_enc, b_enc, k, dead, k_aux, chunk)
    pre = F.linear(x - b_pre, W_enc, b_enc)
    T = k * x.shape[0]
    top = pre.detach().reshape(-1).topk(T)
    want = {divmod(int(i), pre.shape[1]) for i in top.indices}
    assert selected(sel) == want
    assert sel.threshold == pytest.approx(top.values[-1].item(), rel=1e-12)
    for vals, idx, keep in ((sel.values, sel.indices, sel.keep), (sel.extra_values, sel.extra_indices, sel.extra_keep)):
        torch.testing.assert_close(vals[keep], pre.gather(1, idx)[keep], rtol=0, atol=1e-12)
    w = torch.randn(pre.shape, dtype=pre.dtype, generator=torch.Generator().manual_seed(3))
    got = (sel.values * w.gather(1, sel.indices) * sel.keep).sum() + \
        (sel.extra_values * w.gather(1, sel.extra_indices) * sel.extra_keep).sum()
    mask = torch.zeros_like(pre, dtype=torch.bool).view(-1).index_fill(0, top.indices, True).view_as(pre)
    ref = (pre * w * mask).sum()
    for a, r in zip(torch.autograd.grad(got, [W_enc, b_enc, b_pre]), torch.autograd.grad(ref, [W_enc, b_enc, b_pre])):
        assert rel_err(a, r) < 1e-10
    return sel, mask.sum(1)


def weights(n, d, seed=0, common=0.0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(d, generator=g, dtype=torch.float64)
    W = torch.randn(n, d, generator=g, dtype=torch.float64) + common * u / u.norm()
    return W, 0.1 * torch.randn(n, generator=g, dtype=torch.float64), 0.1 * torch.randn(d, generator=g, dtype=torch.float64), u


def count_calls(monkeypatch) -> list[int]:
    """The widths of batch_select's widening passes (the calls of select_topk after the first pass)."""
    widths, calls, real = [], [], batch_select.select_topk

    def spy(x_c, W, b, m, *a, **kw):
        if calls:
            widths.append(m)
        calls.append(m)
        return real(x_c, W, b, m, *a, **kw)

    monkeypatch.setattr(batch_select, "select_topk", spy)
    return widths


def test_batch_topk_plain_batch_is_the_flat_topk(monkeypatch):
    W, b, b_pre, _ = weights(256, 16)
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    check_batch_topk(x, b_pre, W, b, 4)


def test_batch_topk_with_a_token_holding_many_times_2k_of_the_top(monkeypatch):
    """Token 0 holds far more than 2k of the batch's top B k: its candidates are widened (2k, 4k, 8k, ...)
    until none is saturated; the selection is still exactly the flat top B k. A second token holds a few more
    than 2k, widened once."""
    k, n = 4, 256
    W, b, b_pre, _ = weights(n, 16)
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x[0] *= 30.0
    x[1] *= 3.0
    widths = count_calls(monkeypatch)
    sel, per_row = check_batch_topk(x, b_pre, W, b, k)
    assert per_row[0] > 4 * CANDIDATES * k  # more than 4 times the first pass
    assert len(widths) >= 3 and widths == sorted(widths)  # widened more than once
    assert sel.extra_indices.shape[1] == per_row.max() - CANDIDATES * k  # trimmed to the widest row


def test_batch_topk_widening_reaches_n(monkeypatch):
    """n small: a token whose every entry is in the top B k is widened to all n latents."""
    k, n = 3, 20
    W, b, b_pre, u = weights(n, 8, common=4.0)  # every latent shares a direction u
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    x[0] = 20.0 * u / u.norm()  # token 0: every pre-activation far above the others
    widths = count_calls(monkeypatch)
    sel, per_row = check_batch_topk(x, b_pre, W, b, k, chunk=8)
    assert per_row[0] == n and widths[-1] == n
    assert sel.extra_indices.shape[1] == n - math.ceil(CANDIDATES * k)


def test_batch_topk_first_pass_already_holds_all_n(monkeypatch):
    """ceil(1.5 k) >= n: the first pass holds every latent; nothing to widen."""
    W, b, b_pre, u = weights(6, 8, common=4.0)
    x = torch.randn(10, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    x[0] = 20.0 * u / u.norm()
    widths = count_calls(monkeypatch)
    sel, per_row = check_batch_topk(x, b_pre, W, b, 4, chunk=4)
    assert per_row[0] == 6 and widths == [] and sel.extra_indices.shape[1] == 0


def test_batch_topk_with_dead_latents_gives_auxk_its_top_among_the_dead():
    W, b, b_pre, _ = weights(128, 16)
    x = torch.randn(24, 16, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    x[0] *= 10
    dead = torch.zeros(128, dtype=torch.bool)
    dead[::3] = True
    sel, _ = check_batch_topk(x, b_pre, W, b, 4, dead=dead, k_aux=8)
    pre = F.linear(x - b_pre, W, b).masked_fill(~dead, float("-inf"))
    top = pre.topk(8, dim=1)
    assert torch.equal(sel.aux_indices.sort(1).values, top.indices.sort(1).values)
    torch.testing.assert_close(sel.aux_values.detach().sort(1).values, top.values.sort(1).values, rtol=0, atol=1e-12)


# ---- c. the prefix decoder -----------------------------------------------------------------------------
@pytest.mark.parametrize("bounds", [(8, 20, 40, 64), (1, 2, 63, 64), (64,), (10, 11, 12, 64)])
def test_prefix_decode_equals_a_dense_reference(bounds):
    """Two codes over the same tokens (distinct latents per token, as BatchTopK's parts), zeros among the values,
    groups empty for some tokens (or for all: [11, 12)), against dense per-group matmuls; values and gradients."""
    g = torch.Generator().manual_seed(7)
    n, d, Bt = 64, 12, 20
    W = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    allowed = torch.tensor([i for i in range(n) if i != 11])  # latent 11 in no code: group [11, 12) empty
    perm = torch.stack([allowed[torch.randperm(n - 1, generator=g)] for _ in range(Bt)])
    codes = [SparseCode(torch.randn(Bt, w, generator=g, dtype=torch.float64).relu().requires_grad_(True),
                        perm[:, s : s + w].contiguous()) for s, w in ((0, 7), (7, 3))]
    bt = torch.tensor(bounds)
    parts = prefix_decode(W, codes, bt)
    assert len(parts) == len(bounds) and all(p.shape == (Bt, d) for p in parts)
    out = torch.stack(parts)
    z = sum(c.values.new_zeros(Bt, n).scatter(1, c.indices, c.values) for c in codes)
    lo = (0, *bounds[:-1])
    ref = torch.stack([z[:, a:b_] @ W[a:b_] for a, b_ in zip(lo, bounds)])
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    R = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    wrt = [W, *(c.values for c in codes)]
    for a, r in zip(torch.autograd.grad((out * R).sum(), wrt, retain_graph=True),
                    torch.autograd.grad((ref * R).sum(), wrt, retain_graph=True)):
        assert rel_err(a, r) < 1e-12
    if len(bounds) > 1:  # a loss on some groups only: the others' gradients are None in the backward
        for a, r in zip(torch.autograd.grad((parts[-1] * R[-1]).sum(), wrt), torch.autograd.grad((ref[-1] * R[-1]).sum(), wrt)):
            assert rel_err(a, r) < 1e-12


# ---- d. save and load -----------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_each_architecture_saves_and_loads_identically(arch, tmp_path):
    sae = build(arch, dtype=torch.float32)
    with torch.no_grad():  # the architecture's own tensors non-zero (BatchTopK's threshold starts at 0)
        for name in sae.extra_params + sae.buffers:
            t = getattr(sae, name)
            if not t.any():
                t.copy_(0.3 + 0.2 * torch.rand(t.shape, generator=torch.Generator().manual_seed(9)))
    stored = set(sae.stored_names())
    assert stored >= {"W_enc", "b_enc", "W_dec", "b_pre"} | set(sae.extra_params) | set(sae.buffers)
    expected_own = {"gated": {"r_mag", "b_mag"}, "jumprelu": {"log_threshold"}, "batchtopk": {"threshold"},
                    "matryoshka": {"threshold"}, "switch": {"W_router", "b_router"}}.get(arch, set())
    assert stored - {"W_enc", "b_enc", "W_dec", "b_pre"} == expected_own
    save_sae(sae, tmp_path / "sae")
    assert set(load_file(str(tmp_path / "sae" / "sae.safetensors"))) == stored
    back = load_sae(tmp_path / "sae")
    assert type(back) is type(sae) and back.cfg == sae.cfg
    for name in stored:
        assert torch.equal(getattr(back, name), getattr(sae, name)), name
    x = batch_for(arch, torch.float32) * 2
    a, b = sae.encode(x), back.encode(x)
    assert torch.equal(a.values, b.values) and torch.equal(a.indices, b.indices)
    assert (a.values > 0).sum(1).float().mean() > 0.5  # the code is not empty
    assert torch.equal(sae(x), back(x))


# ---- e. bad settings -------------------------------------------------------------------------------------
def one_line_error(fn, *needles):
    with pytest.raises(SaescaleError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


def test_a_prefix_larger_than_n_is_refused():
    one_line_error(lambda: SAEConfig(arch="matryoshka", n=64, prefixes=(16, 128)), "128", "n = 64", "--prefixes")


@pytest.mark.parametrize("prefixes", [(16, 16, 64), (32, 16), (8, 32, 24, 64)])
def test_non_increasing_prefixes_are_refused(prefixes):
    one_line_error(lambda: SAEConfig(arch="matryoshka", n=64, prefixes=prefixes), "strictly increasing")


def test_a_missing_last_prefix_is_added():
    assert SAEConfig(arch="matryoshka", n=64, prefixes=(16, 32)).prefixes == (16, 32, 64)


@pytest.mark.parametrize("bandwidth", [-1.0, 0.0, math.nan])
def test_a_bad_bandwidth_is_refused(bandwidth):
    one_line_error(lambda: SAEConfig(arch="jumprelu", bandwidth=bandwidth), "bandwidth")


def test_an_unregistered_architecture_is_refused_with_the_names():
    for fn in (lambda: SAEConfig(arch="mixture"), lambda: arch_class("mixture")):
        msg = one_line_error(fn, "'mixture'")
        for name in ARCHS:
            assert name in msg, (name, msg)


@pytest.mark.parametrize("arch,setting,value,applies", [
    ("topk", "prefixes", (16, 64), "matryoshka"),
    ("batchtopk", "prefixes", (16, 64), "matryoshka"),
    ("relu", "bandwidth", 0.1, "jumprelu"),
    ("gated", "prolu_grad", "relu", "prolu"),
    ("jumprelu", "threshold_lr", 0.5, "batchtopk / matryoshka"),
])
def test_another_architectures_setting_is_refused(arch, setting, value, applies):
    opt = "--" + setting.replace("_", "-")
    one_line_error(lambda: SAEConfig(arch=arch, n=64, k=4, **{setting: value}), opt, applies, repr(arch))


def test_a_saved_jumprelu_with_a_nan_threshold_is_refused(tmp_path):
    save_sae(build("jumprelu", dtype=torch.float32), tmp_path / "sae")
    f = tmp_path / "sae" / "sae.safetensors"
    tensors = load_file(str(f))
    tensors["log_threshold"][3] = float("nan")
    save_file(tensors, str(f))
    one_line_error(lambda: load_sae(tmp_path / "sae"), "log_threshold", "NaN")


def test_a_saved_sae_missing_its_own_tensor_is_refused(tmp_path):
    save_sae(build("gated", dtype=torch.float32), tmp_path / "sae")
    f = tmp_path / "sae" / "sae.safetensors"
    tensors = load_file(str(f))
    del tensors["r_mag"]
    save_file(tensors, str(f))
    one_line_error(lambda: load_sae(tmp_path / "sae"), "r_mag", "missing")


# ---- f. exact resumption ------------------------------------------------------------------------------
SYN = SyntheticConfig(d=16, features=64, k=4)
STEPS, EVERY, KILL = 12, 5, 7


def configs(arch: str) -> tuple[SAEConfig, TrainConfig]:
    sae = SAEConfig(arch=arch, n=64, k=4, normalize="none")
    train = TrainConfig(tokens=64 * STEPS, batch_size=64, lr=3e-3, checkpoint_every=EVERY, init_tokens=256,
                        ema=0.9, dead_tokens=128, progress=False, l1_coef=0.05, l0_coef=0.01)
    return sae, train


@pytest.mark.parametrize("arch", NEW)
def test_a_killed_run_resumes_to_the_uninterrupted_weights(arch, tmp_path):
    sae_cfg, cfg = configs(arch)
    ref = train_sae(sae_cfg, cfg, SyntheticSource(SYN), tmp_path / "ref")
    with pytest.raises(Interrupted):
        train_sae(sae_cfg, cfg, StopAfter(SYN, KILL), tmp_path / "run")
    assert json.loads((tmp_path / "run" / "checkpoints" / "latest.json").read_text())["step"] == EVERY
    again = train_sae(sae_cfg, cfg, SyntheticSource(SYN), tmp_path / "run")
    assert again.resumed_from == EVERY
    a = load_file(str(tmp_path / "ref" / "sae" / "sae.safetensors"))
    b = load_file(str(tmp_path / "run" / "sae" / "sae.safetensors"))
    assert set(a) == set(b) == set(arch_class(arch).stored_names())
    for name in a:
        assert torch.equal(a[name], b[name]), name
    for name in ref.sae.extra_params + ref.sae.buffers:  # the architecture's own tensors trained / updated
        assert getattr(ref.sae, name).detach().abs().sum() > 0, name


def test_a_matryoshka_checkpoint_passes_its_own_validation(tmp_path):
    """Its prefixes, a tuple, are a JSON list in run.json and cfg.json: the checkpoint a killed run left is
    accepted (it was refused: a list is not a tuple), as is the rerun (run.json's list compared with a tuple)."""
    sae_cfg, cfg = configs("matryoshka")
    with pytest.raises(Interrupted):
        train_sae(sae_cfg, cfg, StopAfter(SYN, KILL), tmp_path / "run")
    sae, tensors, meta = load_checkpoint(latest_checkpoint(tmp_path / "run"))
    assert meta["step"] == EVERY and sae.cfg.prefixes == (4, 8, 16, 32, 64) and bool(sae.threshold.any())
