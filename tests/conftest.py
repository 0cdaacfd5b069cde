"""Shared fixtures: a tiny random-weight llama with a byte-level tokenizer, and the real default model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from saescale.threads import one_thread as one_thread_context

# --model-dtype auto gives the same fp32 path on every machine under test (an AVX512-BF16 host would
# otherwise pick bf16 for the fp32 fixtures); the bf16 tests force it explicitly.
os.environ.setdefault("SAESCALE_FAST_BF16", "0")


def save_tiny_llama(folder: Path, n_layers: int = 6, seed: int = 0) -> Path:
    """Save a llama with ``n_layers`` blocks (d=32, random weights) and a byte-level tokenizer (BOS '<s>') to ``folder``."""
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab.update({"<s>": len(vocab), "</s>": len(vocab) + 1})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>").save_pretrained(folder)
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"],
    )
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


single_thread = one_thread_context  # tiny matmuls on a shared 2-core machine run far faster on one thread


@pytest.fixture
def one_thread():
    """Run a test on one torch thread (use with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    with single_thread():
        yield


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory) -> Path:
    """Folder of a 6-block tiny llama + byte-level tokenizer (loadable with ``load_model(str(folder))``)."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def tiny_lm(tiny_lm_dir):
    """(model, tokenizer) of the tiny llama, loaded through ``load_model``."""
    from saescale.activations.lm import load_model

    return load_model(str(tiny_lm_dir))


@pytest.fixture(scope="session")
def real_model():
    """(model, tokenizer) of the default SmolLM2-135M; the first run on a machine converts the GGUF (~30 s)."""
    from saescale.activations.lm import load_model

    return load_model("default")


@pytest.fixture(scope="session")
def real_cache(real_model, tmp_path_factory) -> Path:
    """A small activation cache of the default model at its default hook on the embedded corpus (8k train tokens)."""
    from saescale.activations.cache import build_cache
    from saescale.activations.config import ActivationConfig

    cfg = ActivationConfig(n_tokens=8192, val_fraction=0.25, cache_dir=str(tmp_path_factory.mktemp("real_cache")))
    return build_cache(cfg, progress=False, lm=real_model)
