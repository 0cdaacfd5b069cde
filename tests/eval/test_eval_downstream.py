"""Downstream loss: an exact SAE changes nothing; zero-ablation hurts; splicing equals the plain forward."""

import pytest
import torch

from saescale.eval.downstream import downstream_metrics, kl_div, next_token_ce, summarize
from saescale.eval.splice import Splicer
from tests.eval.eval_helpers import identity_sae

pytestmark = pytest.mark.usefixtures("one_thread")


def _tokens(vocab: int, shape=(4, 24), seed=0):
    return torch.randint(3, vocab - 3, shape, generator=torch.Generator().manual_seed(seed))


def test_from_hook_skip_equals_full_forward(tiny_lm):
    model, _ = tiny_lm
    ids = _tokens(200)
    for hook in ("layers.3", "layers.3.mlp"):
        s = Splicer(model, hook)
        assert s.n_skip == (3 if hook == "layers.3" else 0)
        logits, h = s.forward_with_capture(ids)
        assert torch.equal(s.forward_from_hook(ids, h), logits)


def test_identity_sae_gives_zero_delta_ce_tiny(tiny_lm):
    model, _ = tiny_lm
    ids = _tokens(200)
    res = downstream_metrics(Splicer(model, "layers.3"), identity_sae(32), ids, torch.arange(1, ids.shape[1]),
                             torch.zeros(32), batch=2)
    assert abs(res["delta_ce_sae"]) < 1e-4 and res["kl_sae"] < 1e-5
    assert res["scored_tokens"] == 4 * 22
    assert res["loss_recovered_vs_zero"] == pytest.approx(1.0, abs=1e-3)


def test_ce_and_kl_reference():
    logits = torch.randn(2, 5, 7, dtype=torch.float64)
    tokens = torch.randint(0, 7, (2, 5))
    scored = torch.tensor([1, 2, 3])
    ce = next_token_ce(logits, tokens, scored)
    ref = torch.stack([-torch.log_softmax(logits[b, t], -1)[tokens[b, t + 1]] for b in range(2) for t in (1, 2, 3)])
    assert torch.allclose(ce.reshape(-1), ref)
    assert torch.allclose(kl_div(logits, logits, scored), torch.zeros(2, 3, dtype=torch.float64))
    s = summarize({"ce_orig": 2.0, "ce_sae": 3.0, "ce_zero": 6.0, "ce_mean": 4.0, "kl_sae": 0, "kl_zero": 0, "kl_mean": 0}, 1)
    assert s["loss_recovered_vs_zero"] == pytest.approx(0.75) and s["loss_recovered_vs_mean"] == pytest.approx(0.5)


@pytest.mark.real
def test_real_model_identity_and_zero_ablation(real_model):
    model, tok = real_model
    from saescale.activations.corpus import load_documents, tokenize_contexts

    ids = tokenize_contexts(load_documents()[:1], tok, 64).tokens[:2]
    splicer = Splicer(model, "layers.20")
    res = downstream_metrics(splicer, identity_sae(576), ids, torch.arange(1, 64), torch.zeros(576), batch=2)
    assert abs(res["delta_ce_sae"]) < 1e-3 and res["kl_sae"] < 1e-3
    assert res["delta_ce_zero"] > 1.0  # removing the residual stream at 2/3 depth wrecks the predictions
    assert res["ce_orig"] < 6.0
