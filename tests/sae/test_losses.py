"""The pure loss functions on inputs with known answers."""

import torch

from saescale import losses


def test_nmse_of_predicting_the_mean_is_one_and_of_perfect_is_zero():
    x = torch.randn(100, 8, dtype=torch.float64) * 3 + 1
    assert abs(losses.normalized_mse(x.mean(0, keepdim=True).expand_as(x), x).item() - 1) < 1e-12
    assert losses.normalized_mse(x, x).item() == 0.0


def test_nmse_with_a_given_mean_uses_it():
    x = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    x_hat = torch.zeros_like(x)
    # errors: 1 + 9 = 10; around mean (0,0): 10 -> 1; around batch mean (2,0): 2 -> 5
    assert losses.normalized_mse(x_hat, x, mean=torch.zeros(2)).item() == 1.0
    assert losses.normalized_mse(x_hat, x).item() == 5.0


def test_scaled_mse_is_per_token_sum_times_scale():
    x = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    assert losses.scaled_mse(torch.zeros_like(x), x, 0.5).item() == 0.5 * (5 + 0) / 2


def test_auxk_is_zero_not_nan_when_residual_is_constant():
    e = torch.ones(4, 3)
    assert losses.auxk_loss(torch.zeros(4, 3), e).item() == 0.0
    e = torch.randn(16, 3)
    assert abs(losses.auxk_loss(e.mean(0).expand_as(e), e).item() - 1) < 1e-6


def test_auxk_gradient_does_not_flow_into_the_residual():
    e = torch.randn(8, 3, requires_grad=True)
    e_hat = torch.randn(8, 3, requires_grad=True)
    losses.auxk_loss(e_hat, e).backward()
    assert e.grad is None and e_hat.grad is not None


def test_multi_topk_weights_the_4k_term_by_one_eighth():
    assert losses.multi_topk_loss(torch.tensor(1.0), torch.tensor(8.0)).item() == 2.0


def test_l1_penalty_is_weighted_by_decoder_norms():
    z = torch.tensor([[1.0, 2.0], [0.0, 4.0]])
    norms = torch.tensor([2.0, 0.5])
    assert losses.l1_penalty(z, norms).item() == ((1 * 2 + 2 * 0.5) + (4 * 0.5)) / 2
