"""Probes: Newton matches a float64 reference, a planted feature is found, tasks label the right things."""

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from saescale.errors import SaescaleError
from saescale.eval.logistic import cross_entropy_1d, newton_1d
from saescale.eval.probe_data import Pool, comment_mask
from saescale.eval.probes import best_latent, pool_code, score_task
from saescale.eval.tasks import TASKS, select_tasks
from saescale.activations.corpus import Document
from saescale.sae.base import SparseCode

pytestmark = pytest.mark.usefixtures("one_thread")


def test_newton_matches_scipy_reference():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(200, 3, generator=g, dtype=torch.float64)
    y = (torch.rand(200, generator=g, dtype=torch.float64) < torch.sigmoid(2 * z[:, 0] - 0.5)).double()
    w, b = newton_1d(z, y, l2=1e-3)
    for i in range(3):
        zi, yi = z[:, i].numpy(), y.numpy()

        def f(p):
            s = p[0] * zi + p[1]
            return np.mean(np.logaddexp(0, s) - yi * s) + 0.5e-3 * p[0] ** 2

        ref = minimize(f, [0.0, 0.0], method="BFGS", options={"gtol": 1e-10}).x
        assert abs(float(w[i]) - ref[0]) < 1e-5 and abs(float(b[i]) - ref[1]) < 1e-5


def test_newton_stopping_converged_columns_matches_iterating_all():
    g = torch.Generator().manual_seed(3)
    n_ex, n = 400, 600
    y = (torch.rand(n_ex, generator=g) < 0.4).double()
    z = torch.relu(torch.randn(n_ex, n, generator=g, dtype=torch.float64) - 1.0)
    z[:, 5] = y * 3  # separable: capped steps, never converges within the iterations
    z[:, 6] = 0  # constant
    z[:, 7] = torch.sigmoid(torch.randn(n_ex, generator=g, dtype=torch.float64)) + y  # informative
    fast, ref = newton_1d(z, y), newton_1d(z, y, tol=0)
    assert torch.allclose(fast[0], ref[0], rtol=0, atol=1e-11) and torch.allclose(fast[1], ref[1], rtol=0, atol=1e-11)
    ce_fast, ce_ref = cross_entropy_1d(z, y, *fast), cross_entropy_1d(z, y, *ref)
    assert torch.allclose(ce_fast, ce_ref, rtol=0, atol=1e-12)
    assert float(ce_ref[5]) < 0.05 and float(ce_ref[7]) < 0.6 < float(ce_ref[6])


def test_planted_feature_is_found_with_near_zero_loss():
    g = torch.Generator().manual_seed(1)
    n_ex, n = 400, 256
    y = (torch.rand(n_ex, generator=g) < 0.5).float()
    z = torch.relu(torch.randn(n_ex, n, generator=g))  # noise latents
    z[:, 137] = y * (1 + torch.rand(n_ex, generator=g))  # fires exactly on the positives
    x = torch.randn(n_ex, 8, generator=g)
    res = score_task(z, x, y, torch.arange(n_ex), seed=0, dense=True)
    assert res["latent"] == 137 and res["test_ce"] < 0.05
    assert res["dense_test_ce"] > 0.5  # the raw features are pure noise here
    w, b = newton_1d(z[:, :3], y)
    assert torch.all(cross_entropy_1d(z[:, :3], y, w, b) > 0.6)  # noise latents stay near log 2


@pytest.mark.parametrize("case", ["a firing latent wins", "no latent beats the base rate"])
def test_skipping_silent_latents_matches_fitting_every_column(case):
    g = torch.Generator().manual_seed(2)
    n_ex, n = 300, 3000
    y = (torch.rand(n_ex, generator=g) < 0.3).float()
    z = torch.relu(torch.randn(n_ex, n, generator=g) - 2.5)  # a sparse code: most columns never fire
    z[:, torch.randperm(n, generator=g)[: n // 2]] = 0
    if case == "a firing latent wins":
        z[:, 2001] = y * torch.rand(n_ex, generator=g)
    else:
        z[:, 5:] = 0  # everything silent but some of columns 0-4, which fire on noise
    tr = torch.rand(n_ex, generator=g) < 0.5
    silent = int((~(z[tr] != 0).any(0)).sum())
    assert silent > n // 2
    fast = best_latent(z[tr], y[tr], z[~tr], y[~tr], chunk=256)
    ref = best_latent(z[tr], y[tr], z[~tr], y[~tr], chunk=256, skip_silent=False)
    assert fast["test_ce"] == pytest.approx(ref["test_ce"], rel=1e-12)
    assert fast["train_ce"] == pytest.approx(ref["train_ce"], rel=1e-12)
    if case == "a firing latent wins":
        assert fast["latent"] == ref["latent"] == 2001
    else:  # the base rate wins: a silent latent (the reference's pick among them is rounding noise; here the first)
        assert not (z[tr][:, ref["latent"]] != 0).any()
        assert fast["latent"] == int((~(z[tr] != 0).any(0)).nonzero()[0, 0])


def test_max_and_mean_pooling():
    code = SparseCode(torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 0.0], [0.0, 0.0]]),
                      torch.tensor([[0, 1], [0, 2], [1, 0], [2, 1]]))
    mx = pool_code(code, n_ctx=2, t_kept=2, n=3, how="max")
    assert mx.tolist() == [[3.0, 0.0, 2.0], [0.0, 5.0, 0.0]]
    mean = pool_code(code, n_ctx=2, t_kept=2, n=3, how="mean")
    assert mean.tolist() == [[2.0, 0.0, 1.0], [0.0, 2.5, 0.0]]


def test_token_and_sequence_labels():
    text = "x = 1  # One comment\ny = 2\n"
    mask = comment_mask(text)
    assert mask[text.index("#")] and mask[text.index("comment")] and not mask[text.index("y")]
    docs = [Document(text, {"source": "python"}), Document("The Whale", {"source": "moby-dick"})]
    spans = torch.tensor([[[0, 1], [7, 8], [9, 12], [21, 22]], [[0, 3], [3, 9], [-1, -1], [-1, -1]]])
    pool = Pool(docs, torch.zeros(2, 4, dtype=torch.long), torch.tensor([0, 1]), spans)
    assert TASKS["comment_vs_code"].label(pool)[0].tolist() == [0, 1, 1, 0]
    assert TASKS["capitalised"].label(pool)[1].tolist() == [1, 1, -1, -1]
    assert TASKS["has_digit"].label(pool)[0, 0] == 0
    assert TASKS["novel_vs_speech"].label(pool).tolist() == [-1, 1]
    assert TASKS["code_vs_prose"].label(pool).tolist() == [1, 0]


def test_missing_task_data_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("SAESCALE_HOME", str(tmp_path / "home"))  # no large corpus
    with pytest.raises(SaescaleError, match="install Debian package fortunes-de"):
        select_tasks("german_vs_english", root=tmp_path)
    builtin = select_tasks("all", root=tmp_path)
    assert len(builtin) >= 6 and not any(s.startswith("fortunes-") for t in builtin for s in t.sources)
    (tmp_path / "de").mkdir()
    (tmp_path / "de" / "witze").write_text("Ein Witz.\n%\nNoch einer.\n")
    with pytest.raises(SaescaleError, match="install Debian package fortunes-min"):  # the English side
        select_tasks("german_vs_english", root=tmp_path)
    (tmp_path / "fortunes").write_text("A joke.\n%\nAnother.\n")
    assert "german_vs_english" in [t.name for t in select_tasks("all", root=tmp_path)]
    with pytest.raises(SaescaleError, match="unknown probe task"):
        select_tasks("nope", root=tmp_path)


def test_chance_level_is_log2():
    y = torch.tensor([0.0, 1.0] * 50)
    z = torch.zeros(100, 1)
    w, b = newton_1d(z, y)
    assert float(cross_entropy_1d(z, y, w, b)[0]) == pytest.approx(math.log(2), abs=1e-6)
