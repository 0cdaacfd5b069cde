"""Initialisation: geometric median, tied weights, loss scale."""

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from saescale.train.init import geometric_median, init_sae, loss_scale, randn_rows
from tests.helpers import make_sae


def test_geometric_median_matches_scipy_and_resists_outliers():
    g = torch.Generator().manual_seed(0)
    pts = torch.randn(200, 5, generator=g, dtype=torch.float64)
    pts[:20] += 100.0  # 10% far outliers drag the mean, barely the median
    m = geometric_median(pts, iters=500, tol=1e-12)
    obj = lambda v: np.linalg.norm(pts.numpy() - v, axis=1).sum()  # noqa: E731
    ref = minimize(obj, pts.mean(0).numpy(), method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000}).x
    assert obj(m.numpy()) <= obj(ref) + 1e-6
    assert m.norm() < 0.1 * pts.mean(0).norm()


def test_tied_init_unit_rows_zero_bias():
    sae = make_sae("topk", 32, 4, 8)
    g = torch.Generator().manual_seed(1)
    init_sae(sae, torch.randn(100, 8, generator=g), g)
    assert torch.equal(sae.W_enc, sae.W_dec)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(32))
    assert (sae.b_enc == 0).all()


def test_loss_scale_is_inverse_total_variance():
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert loss_scale(x) == 1.0
    assert abs(loss_scale(3 * x) - 1 / 9) < 1e-12


@pytest.mark.parametrize("n,d", [(64, 16), (4097, 3), (8200, 5), (9000, 17), (5, 2)])
def test_randn_rows_is_the_whole_draw(n, d):
    g = torch.Generator().manual_seed(1)
    whole, after = torch.randn(n, d, generator=g), torch.randn(3, generator=g)
    for lo, hi in [(0, n), (n // 3, 2 * n // 3), (n - 1, n)]:
        g = torch.Generator().manual_seed(1)
        assert torch.equal(randn_rows(n, d, lo, hi, g), whole[lo:hi])
        assert torch.equal(torch.randn(3, generator=g), after)  # the generator is where the whole draw leaves it


def test_geometric_median_leaves_a_data_point_that_is_not_the_median():
    """Before: plain Weiszfeld started at the mean (0,0), a data point, and stayed there."""
    pts = torch.tensor([[-1.0, 0.0]] * 3 + [[0.0, 0.0], [3.0, 0.0]])
    assert torch.allclose(geometric_median(pts), torch.tensor([-1.0, 0.0]), atol=1e-6, rtol=0)
    on_median = torch.tensor([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])  # starts on it: stays
    assert torch.equal(geometric_median(on_median), torch.zeros(2))


def test_encoder_scaling_gives_unit_input_reconstructions_norm_one():
    """Before: no such option; tied init reconstructs random unit inputs far longer than they are."""
    from saescale.sae.config import SAEConfig
    from saescale.sae.registry import build_sae
    from saescale.train.init import scale_encoder

    sae = build_sae(SAEConfig(n=512, k=16, d=32, normalize="none"))
    g = torch.Generator().manual_seed(1)
    init_sae(sae, 3 + torch.randn(1000, 32, generator=g), g)
    u = torch.randn(256, 32, generator=g)
    x = u / u.norm(dim=-1, keepdim=True) + sae.b_pre.detach()
    before = (sae.decode_normalized(sae.encode_normalized(x)) - sae.b_pre).norm(dim=-1).mean().item()
    s = scale_encoder(sae, torch.Generator().manual_seed(2))
    after = (sae.decode_normalized(sae.encode_normalized(x)) - sae.b_pre).norm(dim=-1).mean().item()
    assert s == pytest.approx(before, rel=0.1) and after == pytest.approx(1.0, rel=0.1) and abs(before - 1) > 0.5
