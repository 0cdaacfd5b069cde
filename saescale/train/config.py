"""Training configuration (optimiser, schedule, dead latents, logging, checkpoints)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

from saescale.configs import check_valid, valid


@dataclass
class TrainConfig:
    """How to train: token budget, optimiser and schedule, AuxK, logging and checkpoints."""

    tokens: int = valid(1_400_000, ">= 1")
    """Total training tokens."""

    batch_size: int = valid(4096, ">= 1")
    """Tokens per optimiser step."""

    lr: float | None = valid(None, "> 0")
    """Learning rate; unset (None) = by the architecture's rule: TopK-family SAEs (topk, batchtopk, matryoshka, switch) the rule measured on this machine, 0.0368 n^-0.20 sqrt(batch_size / 4096) (docs/scaling.md, 'Learning-rate rule'; the paper's 2e-4 / sqrt(n / 2^14) was 7-13x too small for TopK at batch 4096); SAEs sparse by a penalty (relu, gated, prolu, jumprelu) the paper's 2e-4 / sqrt(n / 2^14) sqrt(batch_size / 4096), since their dense early codes collapse at the TopK rule (docs/architectures.md)."""

    warmup_steps: int | None = valid(None, ">= 0")
    """Linear learning-rate warm-up steps; unset (None) = min(1000, 5% of steps)."""

    lr_decay: Literal["constant", "linear", "cosine"] = "constant"
    """Learning-rate schedule after warm-up (the paper keeps it constant)."""

    decay_start: float = valid(0.8, "[0, 1]")
    """Fraction of training after which 'linear'/'cosine' decay to 0 starts."""

    adam_beta1: float = valid(0.9, "[0, 1)")
    """Adam beta1."""

    adam_beta2: float = valid(0.999, "[0, 1)")
    """Adam beta2."""

    adam_eps: float = valid(6.25e-10, "> 0")
    """Adam epsilon (the paper's 6.25e-10)."""

    grad_clip: float = valid(0.0, ">= 0")
    """Clip the global gradient norm to this value; 0 = off."""

    ema: float = valid(0.0, "[0, 1)")
    """Decay of an exponential moving average of the weights (e.g. 0.999, bias-corrected); the saved SAE uses it. 0 = off."""

    init_encoder_scale: bool = False
    """Scale W_enc at init so that reconstructions of random unit inputs have norm about 1 (PAPER.md's optional encoder scaling, as in the released code; the paper found it neutral). Default chosen by measurement: benchmarks/README.md."""

    tied_init: bool = True
    """Initialise W_enc = W_dec^T (paper). --no-tied-init draws the encoder independently. A transcoder ties across its two spaces: W_enc rows = A^T W_dec rows (normalised), A the init sample's least-squares map from input to target."""

    k_aux: int | None = valid(None, ">= 1")
    """Dead latents used by the AuxK loss; unset (None) = the power of two nearest d/2, at most n."""

    aux_coef: float = valid(1 / 32, ">= 0")
    """Weight alpha of the AuxK loss (paper: 1/32); 0 turns AuxK off."""

    dead_tokens: int | None = valid(None, ">= 1")
    """The dead-latent window W: a latent is dead (and AuxK may use it) after W training tokens without firing (saescale.sae.base.fires); unset (None) = min(10M, tokens / 10), at least 10 batches."""

    multi_topk: bool = False
    """Train with the Multi-TopK loss L(k) + L(4k)/8 (progressive code)."""

    l1_coef: float = valid(0.01, ">= 0")
    """L1 weight lambda of the sparsity penalty of 'relu', 'gated' (on the gate) and 'prolu'."""

    l0_coef: float = valid(0.001, ">= 0")
    """L0 weight lambda of 'jumprelu' (loss = nMSE-scaled error + lambda * mean number of active latents)."""

    balance_coef: float = valid(0.01, ">= 0")
    """'switch' only: weight alpha of the router's load-balancing loss alpha E sum_e f_e P_e (f_e: fraction of the batch's tokens routed to expert e, P_e: their mean router probability for e). 0.01 is Switch Transformers' value (Fedus et al. 2022), which the Switch SAE paper's loss follows; 0 = off."""

    threshold_lr_mult: float = valid(1.0, "> 0")
    """'jumprelu' only: the learning rate of log θ is this times the learning rate (1 = the paper, which trains for 100k+ steps; Adam moves log θ by about lr per step, so a short run's thresholds barely move unless this is larger: docs/architectures.md)."""

    seed: int = valid(0, ">= 0")
    """Seed of the initialisation and data order."""

    init_tokens: int = valid(32_768, ">= 1")
    """Tokens used to initialise b_pre (geometric median) and the loss scale."""

    log_every: int = valid(10, ">= 1")
    """Write a metrics line to metrics.jsonl every this many steps."""

    checkpoint_every: int = valid(100, ">= 0")
    """Save a resumable checkpoint every this many steps (and at the end); 0 = only at the end."""

    keep_checkpoints: int = valid(2, ">= 1")
    """How many recent checkpoints to keep."""

    device: str = "cpu"
    """Torch device for training ('cpu', 'cuda', 'cuda:1')."""

    precision: Literal["auto", "float32", "bfloat16", "autocast"] = "auto"
    """The encoder's top-k selection: 'bfloat16' picks candidates with a bf16 matmul, rescores them in float32 and certifies that the selection equals float32's (rows that fail are redone in float32), so the result is float32's, faster where bf16 matmuls are fast; 'float32' the float32 matmul; 'autocast' the plain top-k of the bf16 pre-activations (approximate near the k-th value, as other trainers' bf16 autocast); 'auto' = bfloat16 where the device has fast bf16 matmuls (CPU with AVX512-BF16 or AMX, CUDA compute capability >= 8.0; $SAESCALE_FAST_BF16=1/0 forces), else float32. Parameters, gradients and Adam are float32 in every mode; run.json records the one used. It applies to the architectures that select a top-k (topk, batchtopk, matryoshka, switch and TopK transcoders); relu, gated, jumprelu and prolu select none and run float32 whatever is asked (recorded as float32)."""

    progress: bool = True
    """Show a progress bar with tokens/s and ETA."""

    def __post_init__(self) -> None:
        check_valid(self)

    @property
    def steps(self) -> int:
        return max(1, self.tokens // self.batch_size)

    def resolved(self, n: int, d: int, lr_rule: str = "topk", precisions: tuple[str, ...] | None = None) -> "TrainConfig":
        """These settings with every unset one filled in for an SAE of n latents on width d whose
        architecture follows the learning-rate rule ``lr_rule`` (``SparseAutoencoder.lr_rule``) and honours
        the selection precisions ``precisions`` (``SparseAutoencoder.selection_precisions``; None: all):

        lr = :func:`default_lr` (n, batch_size, lr_rule), warmup_steps = min(1000, steps / 20),
        k_aux = the power of two nearest d/2 (512 for GPT-2's d = 768), at most n,
        dead_tokens = max(10 batches, min(10M, tokens / 10)): the paper's 10M scaled to the run, with a
        floor so that on a short run "dead" never means "did not fire in one batch",
        precision = :func:`resolve_precision` (auto -> bfloat16 or float32 by the device; float32 for an
        architecture without a top-k selection, whatever was asked: what runs is what is recorded).
        """
        return dataclasses.replace(
            self,
            lr=self.lr if self.lr is not None else default_lr(n, self.batch_size, lr_rule),
            warmup_steps=self.warmup_steps if self.warmup_steps is not None else min(1000, self.steps // 20),
            k_aux=min(self.k_aux if self.k_aux is not None else 2 ** round(math.log2(max(d / 2, 1))), n),
            dead_tokens=self.dead_tokens if self.dead_tokens is not None else default_dead_tokens(self.tokens, self.batch_size),
            precision=resolve_precision(self.precision, self.device, precisions),
        )


LR_RULE = {"log_A": -3.3018331847520455, "p": -0.2008594909119092, "batch_size": 4096}
"""The default learning-rate rule lr*(n) = exp(log_A) n^p at batch 4096: fitted by ``saescale fit`` to
``examples/sweep-lr.toml`` (TopK, k = 32, n in 256..2048, 400k tokens, SmolLM2-135M, 2026-12-01;
docs/scaling/sweep-lr-fit.json, table in docs/scaling.md)."""

PAPER_LR_RULE = {"log_A": math.log(2e-4 * 2**7), "p": -0.5}
"""The paper's rule lr = 2e-4 / sqrt(n / 2^14) (derived at batch 131,072), the default before 2026-12-01, and
the default at batch 4096 of the SAEs sparse by a penalty (:func:`default_lr`)."""

LR_RULES = {"topk": LR_RULE, "penalty": PAPER_LR_RULE}
"""The default learning-rate rules by name (``SparseAutoencoder.lr_rule``)."""


def resolve_precision(precision: str, device: str = "cpu", precisions: tuple[str, ...] | None = None) -> str:
    """The selection precision that runs: 'auto' -> 'bfloat16' where ``device`` has fast bf16 matmuls
    (:func:`saescale.activations.precision.fast_bf16`), else 'float32'; other values as they are. With
    ``precisions`` (the ones the architecture honours) a precision outside them is 'float32', which it runs."""
    if precision == "auto":
        from saescale.activations.precision import fast_bf16

        precision = "bfloat16" if fast_bf16(device) else "float32"
    return precision if precisions is None or precision in precisions else "float32"


def default_lr(n: int, batch_size: int, lr_rule: str = "topk") -> float:
    """The default learning rate of an SAE of n latents at ``batch_size``, by its architecture's rule:

    - ``"topk"``: lr = exp(log_A) n^p sqrt(batch_size / 4096) with :data:`LR_RULE` (0.0368 n^-0.20 at batch
      4096). The n-dependence was measured on TopK SAEs at batch 4096 (n = 256..2048; beyond that range it
      is extrapolated).
    - ``"penalty"`` (SAEs sparse by an L1 or L0 penalty): lr = :data:`PAPER_LR_RULE` sqrt(batch_size / 4096)
      (4e-4 at n = 4096, batch 4096): the rate of docs/architectures.md's L1-family and JumpReLU runs. At
      the TopK rule (6.9e-3 at n = 4096) their codes, dense at initialisation (thousands of latents active
      per token, nMSE ~8), overshoot and 98-99 % of the latents die in the first 40 steps (the reproduction's
      arch-jumprelu unit, 2026-12-02).

    Other batch sizes follow Adam's square-root scaling of the learning rate with the batch (Malladi et al.
    2022), which is a rule of thumb here, not a measurement."""
    if lr_rule not in LR_RULES:
        raise ValueError(f"unknown learning-rate rule {lr_rule!r}; one of {sorted(LR_RULES)}")
    rule = LR_RULES[lr_rule]
    return math.exp(rule["log_A"]) * n ** rule["p"] * math.sqrt(batch_size / 4096)


def default_dead_tokens(tokens: int, batch_size: int) -> int:
    """The default dead-latent window W = max(10 batch_size, min(10M, tokens / 10))."""
    return max(10 * batch_size, min(10_000_000, tokens // 10))


SAME_RESULT = {"train.precision": {"auto": "float32", "bfloat16": "float32"}}
"""Recorded values that train the same SAE as another value, read as that one wherever runs are compared
(a sweep's rerun check, the scaling laws' groups): the bfloat16 selection is certified to pick float32's
latents (:mod:`saescale.kernels.bf16_select`; rows it cannot certify are redone in float32) and 'auto'
runs one of the two; 'autocast' (the plain, approximate bf16 top-k) stays apart."""


def read_as_same(flat: dict) -> None:
    """``flat`` (dotted setting name -> recorded value) with each :data:`SAME_RESULT` value replaced, in place,
    by the value it trains the same SAE as."""
    for name, same in SAME_RESULT.items():
        if isinstance(flat.get(name), str):
            flat[name] = same.get(flat[name], flat[name])


def upgrade_train_record(record: dict) -> dict:
    """A TrainConfig record written before unset settings were None (run.json of an older run):
    lr = 0, warmup_steps = -1, k_aux = 0 and dead_tokens = 0 meant 'the default'; fire_threshold
    (then 1e-3 by default) is gone: firing is z > 0 (an older run with another value is refused);
    init_encoder_scale did not exist (no scaling); precision did not exist (top-k selected in float32, the
    only path then)."""
    legacy = {"lr": 0.0, "warmup_steps": -1, "k_aux": 0, "dead_tokens": 0}
    out = {k: None if k in legacy and v == legacy[k] else v for k, v in record.items()}
    if out.get("fire_threshold") == 1e-3:
        del out["fire_threshold"]
    out.setdefault("init_encoder_scale", False)  # added later; older runs had no encoder scaling
    out.setdefault("precision", "float32")  # added later (2026-12-02); older runs selected in float32
    return out
