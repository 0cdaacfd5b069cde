"""Ablation sparsity: the score's extremes, and a zero decoder row has no effect at all."""

import pytest
import torch

from saescale.eval.ablation import AblationConfig, ablate_batch, ablation_metrics, sparsity_score
from saescale.eval.splice import Splicer
from saescale.eval.suite import encode_all
from tests.helpers import make_sae

pytestmark = pytest.mark.usefixtures("one_thread")


def test_score_extremes():
    one_hot = torch.zeros(1, 4, 10)
    one_hot[0, 2, 3] = 5.0
    s, n = sparsity_score(one_hot)
    assert float(s) == pytest.approx(1 / 40) and float(n) == 5.0
    dense = torch.zeros(1, 4, 9)  # per position: four +1, four -1, one 0 -> median 0, 32 equal entries of 36
    dense[..., :4], dense[..., 4:8] = 1.0, -1.0
    assert float(sparsity_score(dense)[0]) == pytest.approx(32 / 36)
    s0, n0 = sparsity_score(torch.ones(2, 4, 10))  # constant shift per position: removed by the median
    assert torch.isnan(s0).all() and (n0 == 0).all()


def _tiny_sae(tiny_lm, zero_rows=()):
    sae = make_sae(n=64, k=8, d=32, normalize="layernorm")
    with torch.no_grad():
        for i in zero_rows:
            sae.W_dec[i] = 0.0
    return sae


def test_zero_decoder_row_has_no_effect(tiny_lm):
    model, _ = tiny_lm
    sae = _tiny_sae(tiny_lm, zero_rows=range(64))
    ids = torch.randint(3, 200, (3, 32), generator=torch.Generator().manual_seed(0))
    splicer = Splicer(model, "layers.3")
    _, h = splicer.forward_with_capture(ids)
    code = encode_all(sae, h[:, 1:].reshape(-1, 32))
    res = ablation_metrics(splicer, sae, ids, code, torch.arange(1, 32), torch.arange(64), AblationConfig(horizon=8), batch=4,
                           seed=0)
    assert res["ablations"] > 0 and res["zero_effect"] == res["ablations"]


def test_live_latent_has_an_effect_in_range(tiny_lm):
    model, _ = tiny_lm
    sae = _tiny_sae(tiny_lm)
    ids = torch.randint(3, 200, (2, 24), generator=torch.Generator().manual_seed(1))
    splicer = Splicer(model, "layers.3")
    _, h = splicer.forward_with_capture(ids)
    latent = int(sae.encode(h[0, 4][None]).indices[0, sae.encode(h[0, 4][None]).values[0].argmax()])
    s, n = ablate_batch(splicer, sae, ids[:1], [(latent, 4)], horizon=8)
    assert float(n) > 0 and 0 < float(s) <= 1
