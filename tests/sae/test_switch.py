"""Switch SAE: gradients against an independent dense float64 reference (every parameter, the router's
through the gate p_e* and the balance loss), the fast path against the reference path, save/load, exact
resumption, expert-load metrics in training and eval, and bad settings refused in one line."""

from __future__ import annotations

import json
from itertools import islice

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from saescale.data.synthetic import SyntheticConfig, SyntheticSource
from saescale.distributed.mesh import check_layout
from saescale.errors import SaescaleError
from saescale.eval.recon import reconstruction_metrics
from saescale.sae.base import LossContext
from saescale.sae.config import SAEConfig
from saescale.sae.io import load_sae, save_sae
from saescale.sae.registry import build_sae
from saescale.train.config import TrainConfig
from saescale.train.init import init_sae
from saescale.train.run import train_sae
from tests.commands.cli_helpers import Interrupted, StopAfter
from tests.helpers import make_sae

pytestmark = pytest.mark.usefixtures("one_thread")

N, K, D, B, E = 64, 4, 16, 48, 8


def build(dtype=torch.float64, seed: int = 0, experts: int = E):
    """A Switch SAE initialised on a Gaussian sample (the router from the data), then perturbed so that every
    term of the loss is visible: non-unit decoder rows, random encoder biases, sharper routing."""
    g = torch.Generator().manual_seed(seed)
    sae = build_sae(SAEConfig(arch="switch", n=N, k=K, d=D, normalize="none", experts=experts))
    init_sae(sae, torch.randn(256, D, generator=g), g)
    with torch.no_grad():
        sae.W_dec.mul_(0.5 + torch.rand(N, 1, generator=g))
        sae.W_enc.add_(0.3 * torch.randn(N, D, generator=g))
        sae.b_enc.copy_(0.1 * torch.randn(N, generator=g))
        sae.W_router.mul_(3.0)  # gates far from 1/E
    return sae.to(dtype)


def batch(seed: int = 1, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(B, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def context(n_dead: int = 20, balance: float = 0.3) -> LossContext:
    dead = torch.zeros(N, dtype=torch.bool)
    dead[torch.randperm(N, generator=torch.Generator().manual_seed(5))[:n_dead]] = True
    return LossContext(dead=dead, k_aux=6, aux_coef=0.25, loss_scale=0.7, multi_topk=False, l1_coef=0.0,
                       batch=None, l0_coef=0.0, balance_coef=balance)


def reference_loss(sae, x: torch.Tensor, c: LossContext) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, dense code z (B, n)) from the module docstring's formulas, dense float64 autograd."""
    n, E_, m = sae.cfg.n, sae.cfg.experts, sae.cfg.n // sae.cfg.experts
    p = torch.softmax((x - sae.b_router) @ sae.W_router.T, dim=1)  # (B, E)
    e = p.argmax(1)
    gate = p[torch.arange(x.shape[0]), e]
    pre = (x - sae.b_pre) @ sae.W_enc.T + sae.b_enc  # (B, n)
    own = (torch.arange(n) // m)[None, :] == e[:, None]
    inside = pre.masked_fill(~own, float("-inf"))
    top = torch.zeros_like(own).scatter(1, inside.topk(sae.cfg.k, dim=1).indices, True)
    z = torch.where(top, F.relu(pre), 0.0) * gate[:, None]
    x_hat = z @ sae.W_dec + sae.b_pre
    loss = c.loss_scale * ((x - x_hat) ** 2).sum() / x.shape[0]
    k_aux = min(c.k_aux, int(c.dead.sum()))
    if c.aux_coef > 0 and k_aux:
        pool = own & c.dead[None, :]
        width = pool.sum(1).clamp(max=k_aux)  # (B,) k_aux_t: min(k_aux, dead latents of the token's expert)
        rank = pre.masked_fill(~pool, float("-inf")).argsort(1, descending=True).argsort(1)
        chosen = pool & (rank < width[:, None])
        res = (x - x_hat).detach()
        e_hat = torch.where(chosen, F.relu(pre), 0.0) @ sae.W_dec
        V = ((res - res.mean(0)) ** 2).sum()
        loss = loss + c.aux_coef * (((res + sae.b_pre.detach()) - (e_hat + sae.b_pre)) ** 2).sum() / V
    f = torch.bincount(e, minlength=E_).to(x.dtype) / x.shape[0]
    loss = loss + c.balance_coef * E_ * (f * p.mean(0)).sum()
    return loss, z


def grads(sae, loss):
    return torch.autograd.grad(loss, [getattr(sae, name) for name in sae.param_names()])


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


PATHS = {"one buffer": None, "chunked": 4}
"""The fast selection's two forms, by kernel_chunk: every expert's matmul into one (B, n / E) buffer and one
top-k; each expert's selection by the chunked kernel (4 < n / E = 8 latents)."""


@pytest.mark.parametrize("kernels,path", [("reference", "one buffer"), *(("fast", p) for p in PATHS)])
def test_loss_and_every_gradient_equal_the_independent_dense_reference(kernels, path, monkeypatch):
    monkeypatch.setenv("SAESCALE_KERNELS", kernels)
    sae = build()
    sae.kernel_chunk = PATHS[path]
    x, c = batch(), context()
    r = sae.route(x)
    assert not r.grouped  # the batch is not in expert order: loss_terms groups it and returns x̂ in its order
    assert (r.counts > 0).sum() >= 5 and bool((r.gate < 0.9).any())  # many experts used, gates not one-hot
    per = (c.dead.view(E, -1).sum(1)).tolist()
    assert min(per) < c.k_aux <= max(per) or len(set(per)) > 1  # the experts' AuxK widths differ: padding used
    out = sae.loss_terms(x, c)
    ref, z = reference_loss(sae, x, c)
    assert rel_err(out.loss, ref) < 1e-12
    assert torch.allclose(out.code.to_dense(N), z.detach(), atol=1e-13, rtol=0)  # rows in the caller's order
    with torch.no_grad():
        assert torch.allclose(out.x_hat, z @ sae.W_dec + sae.b_pre, atol=1e-12, rtol=0)
    assert out.aux_loss > 0
    names = sae.param_names()
    assert set(names) == {"W_enc", "b_enc", "W_dec", "b_pre", "W_router", "b_router"}
    for name, g, r_ in zip(names, grads(sae, out.loss), grads(sae, ref)):
        assert r_.norm() > 0, name  # every parameter gets gradient, the router's included
        assert rel_err(g, r_) < 1e-10, (name, rel_err(g, r_))


def test_the_balance_loss_alone_trains_the_router_towards_uniform_probabilities():
    sae, x = build(), batch()
    c = context(balance=1.0)._replace(aux_coef=0.0, loss_scale=0.0)
    out = sae.loss_terms(x, c)
    g_W, g_b = torch.autograd.grad(out.loss, [sae.W_router, sae.b_router])
    with torch.no_grad():
        sae.W_router.sub_(0.5 * g_W)
        sae.b_router.sub_(0.5 * g_b)
    after = sae.loss_terms(x, c).loss
    assert after < out.loss  # a descent step on E sum f_e P_e lowers it


@pytest.mark.parametrize("path", list(PATHS))
def test_fast_path_equals_the_reference_path(path, monkeypatch):
    sae, x, c = build(), batch(3), context()
    sae.kernel_chunk = PATHS[path]
    got = {}
    for kernels in ("fast", "reference"):
        monkeypatch.setenv("SAESCALE_KERNELS", kernels)
        out = sae.loss_terms(x, c)
        code = sae.encode_normalized(x)
        got[kernels] = (out.loss, out.code, code, grads(sae, out.loss))
    (la, ca, ea, ga), (lb, cb, eb, gb) = got["fast"], got["reference"]
    assert rel_err(la, lb) < 1e-12
    for a, b in ((ca, cb), (ea, eb)):
        # same latents per token (each row sorted by value, ties impossible on random float64) and values
        ia, ib = a.indices.sort(1).values, b.indices.sort(1).values
        assert torch.equal(ia, ib)
        assert torch.allclose(a.to_dense(N), b.to_dense(N), atol=1e-13, rtol=0)
    for name, a, b in zip(build().param_names(), ga, gb):
        assert rel_err(a, b) < 1e-10, name


def test_a_token_only_uses_latents_of_its_expert():
    sae, x = build(dtype=torch.float32), batch(dtype=torch.float32)
    code = sae.encode(x)
    expert = sae.route(x).expert
    assert torch.equal(code.indices // (N // E), expert[:, None].expand_as(code.indices))
    assert code.values.shape == (B, K)


# ---- save / load, resume -------------------------------------------------------------------------------
def test_save_and_load_round_trip(tmp_path):
    sae = build(dtype=torch.float32, experts=4)
    save_sae(sae, tmp_path / "sae")
    tensors = load_file(str(tmp_path / "sae" / "sae.safetensors"))
    assert tensors["W_router"].shape == (4, D) and tensors["b_router"].shape == (D,)
    back = load_sae(tmp_path / "sae")
    assert back.cfg == sae.cfg and back.cfg.experts == 4
    for name in sae.stored_names():
        assert torch.equal(getattr(back, name), getattr(sae, name)), name
    x = batch(dtype=torch.float32)
    assert torch.equal(sae(x), back(x))


def test_a_saved_router_of_the_wrong_shape_is_refused(tmp_path):
    from safetensors.torch import save_file
    save_sae(build(dtype=torch.float32), tmp_path / "sae")
    f = tmp_path / "sae" / "sae.safetensors"
    tensors = load_file(str(f))
    tensors["W_router"] = tensors["W_router"][:3].contiguous()
    save_file(tensors, str(f))
    with pytest.raises(SaescaleError) as e:
        load_sae(tmp_path / "sae")
    assert "W_router" in str(e.value) and "\n" not in str(e.value)


SYN = SyntheticConfig(d=16, features=64, k=4)
STEPS, EVERY, KILL = 12, 5, 7


def run_configs() -> tuple[SAEConfig, TrainConfig]:
    sae = SAEConfig(arch="switch", n=64, k=4, normalize="none", experts=4)
    train = TrainConfig(tokens=64 * STEPS, batch_size=64, lr=3e-3, checkpoint_every=EVERY, init_tokens=256,
                        ema=0.9, dead_tokens=128, progress=False, balance_coef=0.1)
    return sae, train


def test_a_killed_run_resumes_to_the_uninterrupted_weights(tmp_path):
    sae_cfg, cfg = run_configs()
    ref = train_sae(sae_cfg, cfg, SyntheticSource(SYN), tmp_path / "ref")
    with pytest.raises(Interrupted):
        train_sae(sae_cfg, cfg, StopAfter(SYN, KILL), tmp_path / "run")
    again = train_sae(sae_cfg, cfg, SyntheticSource(SYN), tmp_path / "run")
    assert again.resumed_from == EVERY
    a = load_file(str(tmp_path / "ref" / "sae" / "sae.safetensors"))
    b = load_file(str(tmp_path / "run" / "sae" / "sae.safetensors"))
    assert set(a) == set(b) == {"W_enc", "b_enc", "W_dec", "b_pre", "W_router", "b_router"}
    for name in a:
        assert torch.equal(a[name], b[name]), name
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    last = lines[-1]
    assert len(last["expert_load"]) == 4 and abs(sum(last["expert_load"]) - 1) < 1e-5
    assert last["expert_load_max"] == max(last["expert_load"]) and last["balance_loss"] >= 1 - 1e-6
    m = reconstruction_metrics(ref.sae, islice(SyntheticSource(SYN).heldout().batches(256), 2))
    assert len(m["expert_load"]) == 4 and abs(sum(m["expert_load"]) - 1) < 1e-9


def test_eval_reports_expert_load_for_switch_only():
    x = [batch(dtype=torch.float32)]
    assert "expert_load" not in reconstruction_metrics(make_sae("topk", N, K, D), x)
    load = reconstruction_metrics(build(dtype=torch.float32), x)["expert_load"]
    assert len(load) == E and abs(sum(load) - 1) < 1e-9


# ---- bad settings ----------------------------------------------------------------------------------------
def one_line_error(fn, *needles):
    with pytest.raises(SaescaleError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, (needle, msg)


def test_bad_settings_are_refused_in_one_line():
    one_line_error(lambda: SAEConfig(arch="switch", n=60, k=4, experts=8), "--n 60", "divisible", "--experts 8")
    one_line_error(lambda: SAEConfig(arch="switch", n=64, k=4, experts=128), "--experts 128", "n = 64")
    one_line_error(lambda: SAEConfig(arch="switch", n=64, k=16, experts=8), "--k 16", "n / E = 8")
    one_line_error(lambda: SAEConfig(arch="topk", n=64, k=4, experts=8), "--experts", "switch", "'topk'")
    one_line_error(lambda: SAEConfig(arch="switch", n=64, k=4, experts=0), "experts")
    assert SAEConfig(arch="switch", n=64, k=4).experts == 8  # the default
    assert SAEConfig(arch="topk").experts is None


def test_switch_under_torchrun_is_refused_in_one_line():
    one_line_error(lambda: check_layout(2, 1, 64, 64, "switch"), "--arch switch", "torchrun")
    assert check_layout(1, 1, 64, 64, "switch").world == 1
