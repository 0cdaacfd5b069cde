"""The normalisations against OpenAI's released LN (unbiased std, eps outside) and SAELens's layer_norm."""

import math

import pytest
import torch

from saescale.sae.normalize import EPS, denormalize, ln_constant, normalize


def openai_ln(x: torch.Tensor, eps: float = 1e-5):
    """sparse_autoencoder/model.py LN, verbatim: returns (x_n, mu, std); decode is x_n * std + mu."""
    mu = x.mean(dim=-1, keepdim=True)
    x = x - mu
    std = x.std(dim=-1, keepdim=True)
    x = x / (std + eps)
    return x, mu, std


@pytest.mark.parametrize("d", [2, 7, 64])
def test_std_is_openai_ln_exactly(d):
    x = (3 * torch.randn(50, d, generator=torch.Generator().manual_seed(d)) + 1).double()
    x_n, stats = normalize(x, "std")
    ref, mu, std = openai_ln(x)
    assert torch.equal(x_n, ref)  # bit for bit: the unbiased std (the biased one differs by sqrt(d/(d-1)))
    assert torch.equal(stats.scale, std) and torch.equal(stats.shift, mu)
    assert torch.equal(denormalize(ref, stats), ref * std + mu)


@pytest.mark.parametrize("d", [2, 16, 576])
def test_layernorm_is_std_over_sqrt_d_minus_1(d):
    x = (0.01 + torch.randn(40, d, generator=torch.Generator().manual_seed(1))).double()
    ln, s_ln = normalize(x, "layernorm")
    sd, s_sd = normalize(x, "std")
    c = ln_constant(d)
    assert c == math.sqrt(d - 1)
    torch.testing.assert_close(ln * c, sd, rtol=1e-12, atol=0)
    torch.testing.assert_close(s_ln.scale, c * s_sd.scale, rtol=1e-12, atol=0)  # the same decode
    xc = x - x.mean(-1, keepdim=True)
    torch.testing.assert_close(ln, xc / (xc.norm(dim=-1, keepdim=True) + c * EPS), rtol=1e-14, atol=0)


def test_d1_is_finite():
    x = torch.randn(5, 1)
    for kind in ("layernorm", "std"):
        x_n, stats = normalize(x, kind)
        assert torch.isfinite(x_n).all() and torch.equal(denormalize(x_n, stats), x)
