"""Reconstruction metrics: known nMSE / L0 / dead / dense on a hand-built SAE, the density histogram, its plot."""

import pytest
import torch

from saescale.eval.progressive import plot_progressive, progressive_metrics, topk_sweep
from saescale.eval.recon import density_histogram, plot_density, reconstruction_metrics
from saescale.eval.report import format_table
from tests.eval.eval_helpers import identity_sae
from tests.helpers import make_sae

pytestmark = pytest.mark.usefixtures("one_thread")


def test_identity_sae_is_exact_and_counts_latents():
    x = torch.randn(1000, 8)
    res = reconstruction_metrics(identity_sae(8), x.split(100))
    assert res["nmse"] < 1e-10 and "fvu" not in res
    assert res["l0"] == pytest.approx(8.0)  # each coordinate is positive in exactly one of the two halves
    assert res["never_fired_frac"] == 0.0 and res["dense_frac"] == 1.0  # every latent fires on ~half the tokens
    assert sum(res["density_hist"]["counts"]) == 16


def test_dead_latents_and_histogram_bins():
    sae = identity_sae(4)
    x = torch.rand(100, 4) + 0.1  # all positive: the 4 negative-half latents never fire
    res = reconstruction_metrics(sae, [x])
    assert res["never_fired_frac"] == 0.5
    hist = density_histogram(torch.tensor([0.0, 1e-2, 1e-2, 1.0]), tokens=100)
    assert hist["edges_log10"][0] == -2.0 and hist["edges_log10"][-1] == 0.0
    assert sum(hist["counts"]) == 3 and hist["counts"][0] == 2 and hist["counts"][-1] == 1


def test_density_plot_is_written(tmp_path):
    res = reconstruction_metrics(make_sae(), [torch.randn(500, 16)])
    assert plot_density(res["density_hist"], res["never_fired_frac"], tmp_path / "d.png").stat().st_size > 1000


def test_progressive_codes_improve_with_k():
    sae = identity_sae(16, k=8)  # keeps the k largest |x_j|: error falls with k, exact at k = 16
    res = progressive_metrics(sae, torch.randn(512, 16))
    assert res["k"] == topk_sweep(8, 32) == [2, 4, 8, 16, 32]
    assert res["l0"][0] == pytest.approx(2.0) and all(a > b for a, b in zip(res["nmse"], res["nmse"][1:4]))
    assert res["nmse"][3] < 1e-10


def test_threshold_sweep_is_jumprelu_at_test_time(tmp_path):
    """z = pre·1[pre > θ]: on the [I; -I] SAE that keeps x_j where |x_j| > θ; one θ per test-time k, at L0 = k."""
    x = torch.randn(512, 16, generator=torch.Generator().manual_seed(1))
    res = progressive_metrics(identity_sae(16, k=8), x)
    th = res["threshold"]
    assert th["target_l0"] == res["k"] == [2, 4, 8, 16, 32]
    total = (x - x.mean(0)).double().pow(2).sum()
    for theta, nmse, l0, target in zip(th["theta"], th["nmse"], th["l0"], th["target_l0"]):
        kept = x.abs() > theta
        assert nmse == pytest.approx(float((x * ~kept).double().pow(2).sum() / total), rel=1e-5, abs=1e-9)
        assert l0 == pytest.approx(kept.sum(1).double().mean()) and l0 == pytest.approx(min(target, 16))
    assert th["theta"][-1] == 0.0 and all(a > b for a, b in zip(th["nmse"], th["nmse"][1:4]))
    relu = progressive_metrics(make_sae(arch="relu", n=64, d=16), torch.randn(256, 16))
    assert "k" not in relu and len(relu["threshold"]["nmse"]) >= 3  # a ReLU SAE has no test-time k, but a θ
    assert plot_progressive(res, tmp_path / "p.png").stat().st_size > 1000
    assert "nMSE at test-time threshold" in format_table({"progressive": res})
