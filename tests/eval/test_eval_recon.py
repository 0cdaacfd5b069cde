"""Reconstruction metrics: known nMSE / L0 / dead / dense on a hand-built SAE, the density histogram, its plot."""

import pytest
import torch

from saescale.eval.recon import density_histogram, plot_density, reconstruction_metrics
from saescale.eval.progressive import progressive_metrics, topk_sweep
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
    assert progressive_metrics(make_sae(arch="relu"), torch.randn(64, 16)) is None
