"""Configuration of one sparse autoencoder (saved as cfg.json next to its weights)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from saescale.configs import check_valid, valid
from saescale.errors import SaescaleError

Normalization = Literal["layernorm", "std", "mean_sq", "none"]
ARCHS = ("topk", "relu", "gated", "prolu", "jumprelu", "batchtopk", "matryoshka", "switch")
"""The registered architectures (saescale.sae.registry checks that each has its module)."""
TOPK_ARCHS = ("topk", "batchtopk", "matryoshka", "switch")  # the architectures that use k (and AuxK)
L1_ARCHS = ("relu", "gated", "prolu")  # the architectures with an L1 penalty (TrainConfig.l1_coef)
ARCH_FIELDS = {"prefixes": ("matryoshka",), "bandwidth": ("jumprelu",), "prolu_grad": ("prolu",),
               "threshold_lr": ("batchtopk", "matryoshka"), "experts": ("switch",)}
"""The SAEConfig fields of some architectures only, with those architectures."""


@dataclass
class SAEConfig:
    """The SAE's architecture and input normalisation."""

    arch: str = "topk"
    """Architecture: 'topk' (the paper's TopK SAE), 'relu' (ReLU + L1 baseline), 'gated' (Gated SAE), 'prolu' (ProLU + L1), 'jumprelu' (JumpReLU + L0, the Gemma Scope format), 'batchtopk' (top B*k over the batch; saved with a JumpReLU threshold), 'matryoshka' (BatchTopK code, nested prefix losses), 'switch' (a router picks one of E TopK experts of n/E latents per token). docs/architectures.md has each one's maths and defaults."""

    n: int = valid(4096, ">= 1")
    """Number of latents."""

    k: int = valid(32, ">= 1")
    """Active latents per token: exactly k for 'topk' and 'switch' (inside the token's expert), k on average over each batch for 'batchtopk' and 'matryoshka' (unused by the others)."""

    d: int | None = valid(None, ">= 1")
    """Input width; unset (None) = taken from the data."""

    normalize: Normalization = "layernorm"
    """Input normalisation (x (B, d), per token μ = channel mean, x_c = x - μ, ε = 1e-5): 'layernorm' (paper: x_n = x_c / (||x_c|| + sqrt(d-1) ε), unit L2 norm), 'std' (OpenAI's released code and SAELens 'layer_norm': x_n = x_c / (σ + ε), σ the unbiased std; equals 'layernorm' times sqrt(d-1)), 'mean_sq' (one scalar s, x_n = s x, so E||x_n||^2 = d), 'none'. All errors are measured in the normalised space; decoding multiplies back by ||x_c|| (layernorm), σ (std) or 1/s. saescale.sae.normalize has the maths."""

    norm_scale: float | None = valid(None, "> 0")
    """Scalar s of 'mean_sq' normalisation (x_n = s x); unset (None) = estimated at init from a data sample so that E||x_n||^2 = d. Only for --normalize mean_sq."""

    prefixes: tuple[int, ...] | None = valid(None, ">= 1")
    """'matryoshka' only: the nested prefix sizes m_1 < ... < m_G = n whose reconstructions are each trained (the loss sums ||x - x̂_{<=m_g}||^2 over g); n is added when missing. Unset (None) = n/16, n/8, n/4, n/2, n."""

    bandwidth: float | None = valid(None, "> 0")
    """'jumprelu' only: the bandwidth epsilon of the straight-through estimators (rectangle kernel) of the threshold's gradient, in the normalised space. Unset (None) = 0.001 times the data's RMS spread per coordinate, sqrt(E||x_n - E x_n||^2 / d), measured at init (the paper's 0.001 on inputs with E||x||^2 = d)."""

    prolu_grad: Literal["ste", "relu"] = "ste"
    """'prolu' only: the synthetic gradient of the encoder bias: 'ste' (ProLU-STE: straight-through the gate, d z / d b = m on active latents) or 'relu' (ProLU-ReLU: the gradient ReLU(m + b) would give, d z / d b = 1 on active latents)."""

    threshold_lr: float = valid(0.01, "(0, 1]")
    """'batchtopk' and 'matryoshka' only: rate of the running average theta <- (1 - r) theta + r min(kept activation) per training batch; theta is the saved JumpReLU threshold used at inference."""

    experts: int | None = valid(None, ">= 1")
    """'switch' only: the number of experts E, each a TopK SAE of n/E latents (n must be divisible by E, and k at most n/E); one expert per token, chosen by a softmax router. Unset (None) = 8."""

    d_out: int | None = valid(None, ">= 1")
    """Transcoder output width: set, the SAE is a transcoder that reads the input x (width d) and reconstructs another module's output y (width d_out); unset (None) = an ordinary SAE, or a transcoder taking it from the data (--target-hook). docs/architectures.md, Transcoders."""

    skip: bool = False
    """Transcoders only: add a linear skip connection W_skip x (d_out, d) initialised to zero (skip transcoder, Paulo et al. 2025)."""

    target_scale: float | None = valid(None, "> 0")
    """Transcoders only: scalar s_y of the target, y_n = s_y y (the input uses --normalize mean_sq or none: the output must be computable from the input alone); unset (None) = estimated at init so that E||y_n||^2 = d_out."""

    def __post_init__(self) -> None:
        check_valid(self)
        if self.d_out is not None:
            check_transcoder(self)
        if self.arch not in ARCHS:
            raise SaescaleError(f"unknown SAE architecture {self.arch!r} (--arch); choose one of {', '.join(ARCHS)}")
        if self.arch in TOPK_ARCHS and not self.k <= self.n:
            raise SaescaleError(f"--k must be in [1, n={self.n}], got {self.k}")
        for name, archs in ARCH_FIELDS.items():
            if self.arch not in archs and getattr(self, name) != SAEConfig.__dataclass_fields__[name].default:
                opt = "--" + name.replace("_", "-")
                raise SaescaleError(f"{opt} applies to --arch {' / '.join(archs)} only, not {self.arch!r}; drop it")
        if self.arch == "switch":
            self.experts = switch_experts(self.n, self.k, self.experts)
        if self.arch == "matryoshka":
            self.prefixes = matryoshka_prefixes(self.n, self.prefixes)
        if self.norm_scale is not None and self.normalize != "mean_sq":
            raise SaescaleError(f"--norm-scale applies to --normalize mean_sq only, not {self.normalize!r}; drop it")


DEFAULT_EXPERTS = 8  # 'switch' experts when --experts is unset


def switch_experts(n: int, k: int, given: int | None) -> int:
    """E checked: at most n, dividing n, with k <= n / E (TopK inside an expert); the default 8 when unset."""
    E = DEFAULT_EXPERTS if given is None else int(given)
    if E > n:
        raise SaescaleError(f"--experts {E} is larger than n = {n}: each expert holds n / E latents; lower --experts or raise --n")
    if n % E:
        raise SaescaleError(f"--n {n} is not divisible by --experts {E}: each expert holds n / E latents")
    if k > n // E:
        raise SaescaleError(f"--k {k} is larger than an expert's n / E = {n // E} latents (TopK runs inside the "
                            "token's expert): lower --k or --experts")
    return E


def matryoshka_prefixes(n: int, given: tuple[int, ...] | None) -> tuple[int, ...]:
    """The prefix sizes, checked: strictly increasing, at most n, ending at n (added when missing)."""
    if given is None:
        sizes = sorted({max(1, n // 2**i) for i in range(5)})
        return tuple(sizes)
    sizes = tuple(int(m) for m in given)
    if not sizes:
        raise SaescaleError("--prefixes is empty; give sizes like 512 2048 8192, or leave it unset for n/16 ... n")
    big = [m for m in sizes if m > n]
    if big:
        raise SaescaleError(f"--prefixes {big[0]} is larger than n = {n} (a prefix is latents 0..m-1): "
                            f"give sizes up to {n}, or raise --n")
    if any(b <= a for a, b in zip(sizes, sizes[1:])):
        raise SaescaleError(f"--prefixes {' '.join(map(str, sizes))} must be strictly increasing")
    return sizes if sizes[-1] == n else sizes + (n,)


TRANSCODER_ARCHS = ("topk", "relu")  # the architectures with a transcoder form (saescale.sae.transcoder)


def check_transcoder(cfg: "SAEConfig") -> None:
    """A transcoder's own limits, one line each: a TopK or ReLU code; scalar input normalisation (a per-token
    one is fine for the encoder, but the target's scale must not depend on the unknown target)."""
    if cfg.arch not in TRANSCODER_ARCHS:
        raise SaescaleError(f"--arch {cfg.arch} has no transcoder form (--target-hook); use --arch "
                            f"{' or '.join(TRANSCODER_ARCHS)}")
    if cfg.normalize not in ("mean_sq", "none"):
        raise SaescaleError(f"a transcoder (--target-hook) needs --normalize mean_sq or none, not {cfg.normalize!r}: "
                            "its output is decoded without the target's per-token statistics; add --normalize mean_sq")


def upgrade_sae_record(record: dict) -> dict:
    """An SAEConfig record written before unset settings were None (cfg.json, run.json, checkpoints):
    d = 0 meant 'from the data'; norm_scale was 1.0 (unused) for every normalisation but mean_sq. One
    written before the architectures' own settings existed gets their defaults (no architecture then used them)."""
    out = dict(record)
    for name in ("d_out", "skip", "target_scale"):  # records from before transcoders: an SAE
        out.setdefault(name, SAEConfig.__dataclass_fields__[name].default)
    if out.get("d") == 0:
        out["d"] = None
    if out.get("normalize") != "mean_sq" and out.get("norm_scale") == 1.0:
        out["norm_scale"] = None
    if out.get("arch") in ("topk", "relu"):
        for name in ARCH_FIELDS:
            out.setdefault(name, SAEConfig.__dataclass_fields__[name].default)
    return out
