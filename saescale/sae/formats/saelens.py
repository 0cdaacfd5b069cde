"""SAELens folders: ``cfg.json`` + ``sae_weights.safetensors`` (``sae_lens.SAE.load_from_disk``).

SAELens computes, with its input x (B, d) normalised to x_s, W_enc (d, n), W_dec (n, d):

    pre = (x_s - b_dec 1[apply_b_dec_to_input]) W_enc + b_enc       (B, n)
    topk:     z = TopK_k(pre) with ReLU on the kept values             standard: z = ReLU(pre)
    jumprelu: z = ReLU(pre) 1[pre > threshold]
    gated:    z = 1[(x_s - b_dec) W_enc + b_gate > 0] ReLU((x_s - b_dec)(W_enc exp(r_mag)) + b_mag)
    x̂      = z W_dec + b_dec, then undo the normalisation:  layer_norm x̂ σ + μ  (σ unbiased, no ε)

normalize_activations 'layer_norm' is saescale's 'std' exactly, and saescale's 'layernorm' with the
constant c = sqrt(d - 1) folded (x_s = c x_n; see :mod:`.common`); 'mean_sq' (x_n = s x) folds with
a = 1/s into 'none'. The architectures map one to one: topk -> topk, relu -> standard, gated -> gated
(b_enc is b_gate; π_mag = exp(r_mag) (W_enc x_c) + b_mag in both), jumprelu -> jumprelu (threshold =
exp(log_threshold); with θ > 0, pre 1[pre > θ] = ReLU(pre) 1[pre > θ]), and batchtopk / matryoshka,
whose inference code is exactly ReLU(pre) 1[pre > threshold], -> jumprelu with their saved threshold.
ProLU (z = m 1[m > 0, m + b > 0], no bias inside the value) is none of these and is refused.

Transcoders (:mod:`saescale.sae.transcoder`) map to SAELens's ``transcoder`` / ``skip_transcoder``, which
compute, on the raw input x (normalize_activations 'none', no input bias), with W_enc (d, n), W_dec (n, d_out):

    z = ReLU(x W_enc + b_enc),   ŷ = z W_dec + b_dec [+ x W_skip^T]        W_skip (d_out, d)

so saescale's (x_n = s_x x, ŷ = ŷ_n / s_y) folds exactly, in float64, as W_enc_s = s_x W_enc^T, W_dec_s =
W_dec / s_y, b_dec_s = b_pre / s_y, W_skip_s = W_skip s_x / s_y. Only the ReLU transcoder has an equal
there: SAELens's transcoders have ReLU (or JumpReLU) codes, no TopK, so a TopK transcoder is refused.

saescale's own record (its SAEConfig and the provenance in ``extra``) goes into ``metadata.saescale``:
SAELens's SAEMetadata keeps any key. An import with the record restores the saescale SAE bit for bit;
without it (a genuinely foreign SAE) 'layer_norm' reads as 'std', and a SAELens SAE with
``apply_b_dec_to_input`` false or a TopK with ``rescale_acts_by_decoder_norm`` is converted exactly in
float64 (b_enc += b_dec W_enc; W_enc and b_enc times, W_dec divided by, the decoder row norms).
"""

from __future__ import annotations

from importlib import metadata as pkg_metadata
from pathlib import Path
from typing import Any

from torch import Tensor

from saescale.errors import SaescaleError
from saescale.sae.base import SparseAutoencoder
from saescale.sae.config import SAEConfig
from saescale.sae.formats.common import (Imported, as_int, check_record, check_tensors, div, finish, fold_factor,
                                         fold_transcoder, log_of, make_record, mul, parse_record, read_json,
                                         read_safetensors, unfold_transcoder)

CFG, WEIGHTS = "cfg.json", "sae_weights.safetensors"
ARCH_OUT = {"topk": "topk", "relu": "standard", "gated": "gated", "jumprelu": "jumprelu", "batchtopk": "jumprelu",
            "matryoshka": "jumprelu"}
NORM_OUT = {"layernorm": "layer_norm", "std": "layer_norm", "mean_sq": "none", "none": "none"}
ARCH_IN = {"topk": "topk", "standard": "relu", "gated": "gated", "jumprelu": "jumprelu"}
NORM_IN = {"none": "none", "layer_norm": "std"}
FIX = "re-save it with SAELens (SAE.save_model) or export it again"


def hook_name(hook: str) -> str:
    """TransformerLens's name of a saescale hook point (layers.i -> blocks.i.hook_resid_post, .mlp ->
    hook_mlp_out, .self_attn -> hook_attn_out); any other name as it is."""
    parts = hook.split(".")
    if len(parts) >= 2 and parts[0] == "layers" and parts[1].isdigit():
        tail = {(): "hook_resid_post", ("mlp",): "hook_mlp_out", ("self_attn",): "hook_attn_out"}.get(tuple(parts[2:]))
        if tail:
            return f"blocks.{parts[1]}.{tail}"
    return hook


def sae_lens_version() -> str:
    """The installed SAELens's version (the cfg format it reads), else the first 6.x release."""
    try:
        return pkg_metadata.version("sae-lens")
    except pkg_metadata.PackageNotFoundError:
        return "6.0.0"


TRANSCODER_ARCHS = {False: "transcoder", True: "skip_transcoder"}


def export_transcoder(sae: SparseAutoencoder, extra: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(cfg.json, tensors) of a ReLU transcoder in SAELens's ``transcoder`` / ``skip_transcoder`` format."""
    cfg = sae.cfg
    if cfg.arch != "relu":
        raise SaescaleError(f"a --arch {cfg.arch} transcoder cannot be exported to SAELens: its transcoders compute "
                            "ReLU (or JumpReLU) codes, not TopK; export it with --format sparsify (TopK transcoders), "
                            "keep it in saescale's format, or train --arch relu with --target-hook")
    t = fold_transcoder(sae)
    t["W_enc"], t["b_enc"] = t["W_enc"].T.contiguous(), t["b_enc"].float()  # SAELens: W_enc (d, n)
    acts = extra.get("activations") if isinstance(extra.get("activations"), dict) else {}
    meta = {"sae_lens_version": sae_lens_version(), "sae_lens_training_version": None,
            "model_name": acts.get("model"), "hook_name": hook_name(acts["hook"]) if acts.get("hook") else None,
            "hook_name_out": hook_name(acts["target_hook"]) if acts.get("target_hook") else None,
            "context_size": acts.get("context_len"), "prepend_bos": acts.get("prepend_bos"),
            "dataset_path": acts.get("corpus"), "hook_head_index": None, "model_from_pretrained_kwargs": {},
            "saescale": make_record(cfg, extra)}
    out = {"architecture": TRANSCODER_ARCHS[cfg.skip], "d_in": cfg.d, "d_sae": cfg.n, "d_out": cfg.d_out,
           "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": False, "normalize_activations": "none",
           "reshape_activations": "none", "metadata": meta}
    return out, t


def read_transcoder(f: Path, raw: dict[str, Any], folder: Path) -> Imported:
    """A SAELens ``transcoder`` / ``skip_transcoder`` folder as a saescale ReLU transcoder (with saescale's
    record: exactly the exported one, scales and provenance included)."""
    skip = raw["architecture"] == "skip_transcoder"
    d, n = as_int(raw.get("d_in"), f, "d_in", FIX), as_int(raw.get("d_sae"), f, "d_sae", FIX)
    d_out = as_int(raw.get("d_out"), f, "d_out", FIX)
    if raw.get("normalize_activations", "none") != "none":
        raise SaescaleError(f"{f}: normalize_activations {raw.get('normalize_activations')!r} on a transcoder has no "
                            "saescale equivalent (saescale reads 'none'); fold it into the weights with SAELens first")
    w = folder / WEIGHTS
    tensors = read_safetensors(w, FIX)
    shapes = {"W_enc": (d, n), "b_enc": (n,), "W_dec": (n, d_out), "b_dec": (d_out,), **({"W_skip": (d_out, d)} if skip else {})}
    check_tensors(w, tensors, shapes, f"SAELens {raw['architecture']!r} of d_in {d}, d_sae {n}, d_out {d_out}", FIX)
    t = {nm: tensors[nm].double() for nm in shapes}
    meta = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
    rec = meta.get("saescale")
    if rec is not None:
        cfg, extra = parse_record(rec, f"{f} metadata.saescale")
        check_record(str(f), cfg, d_in=(cfg.d, d), d_sae=(cfg.n, n), d_out=(cfg.d_out, d_out), skip=(cfg.skip, skip),
                     architecture=("relu", cfg.arch))
    else:
        cfg = SAEConfig(arch="relu", n=n, d=d, d_out=d_out, skip=skip, normalize="none")
        extra = {"imported": {"format": "saelens", "architecture": raw["architecture"], "model": meta.get("model_name"),
                              "hook": meta.get("hook_name"), "hook_out": meta.get("hook_name_out")}}
    out = unfold_transcoder(cfg, t["W_enc"].T, t["b_enc"], t["W_dec"], t["b_dec"], t.get("W_skip"))
    return Imported(cfg, extra, finish(out), w, "saelens")


def export(sae: SparseAutoencoder, extra: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(cfg.json, sae_weights.safetensors tensors) of ``sae`` in SAELens's format; see the module docstring."""
    cfg = sae.cfg
    if sae.transcoder:
        return export_transcoder(sae, extra)
    if cfg.arch not in ARCH_OUT:
        why = "its activation z = m 1[m > 0, m + b > 0]" if cfg.arch == "prolu" else "it"
        raise SaescaleError(f"--arch {cfg.arch} cannot be exported to SAELens: {why} is none of SAELens's architectures; "
                            f"keep it in saescale's format, or train --arch {' / '.join(ARCH_OUT)}")
    a = fold_factor(cfg, "saelens")
    t = {"W_enc": div(sae.W_enc, a).T.contiguous(), "W_dec": mul(sae.W_dec, a), "b_dec": mul(sae.b_pre, a)}
    if cfg.arch == "gated":
        t.update(b_gate=sae.b_enc.detach().float(), b_mag=sae.b_mag.detach().float(), r_mag=sae.r_mag.detach().float())
    else:
        t["b_enc"] = sae.b_enc.detach().float()
    if cfg.arch == "jumprelu":
        t["threshold"] = sae.log_threshold.detach().double().exp()  # float64: log of it is log_threshold again
    elif cfg.arch in ("batchtopk", "matryoshka"):
        t["threshold"] = sae.threshold.detach().float()
    acts = extra.get("activations") if isinstance(extra.get("activations"), dict) else {}
    meta = {"sae_lens_version": sae_lens_version(), "sae_lens_training_version": None,
            "model_name": acts.get("model"), "hook_name": hook_name(acts["hook"]) if acts.get("hook") else None,
            "context_size": acts.get("context_len"), "prepend_bos": acts.get("prepend_bos"),
            "dataset_path": acts.get("corpus"), "hook_head_index": None, "model_from_pretrained_kwargs": {},
            "saescale": make_record(cfg, extra)}
    out = {"architecture": ARCH_OUT[cfg.arch], "d_in": cfg.d, "d_sae": cfg.n, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": True, "normalize_activations": NORM_OUT[cfg.normalize],
           "reshape_activations": "none", "metadata": meta}
    if cfg.arch == "topk":
        out.update(k=cfg.k, rescale_acts_by_decoder_norm=False)
    return out, t


def names(arch: str) -> tuple[str, ...]:
    """The tensors of a SAELens SAE of architecture ``arch``."""
    extra = {"gated": ("b_gate", "b_mag", "r_mag"), "jumprelu": ("b_enc", "threshold")}.get(arch, ("b_enc",))
    return ("W_enc", "W_dec", "b_dec") + extra


def read(folder: Path) -> Imported:
    """A SAELens folder as saescale tensors and config; one line for anything it cannot read exactly."""
    f = folder / CFG
    raw = read_json(f, FIX)
    arch = raw.get("architecture")
    if arch is None and raw.get("activation_fn", raw.get("activation_fn_str")) == "topk":  # SAELens < 6
        arch, raw = "topk", {**raw, "k": (raw.get("activation_fn_kwargs") or {}).get("k")}
    arch = arch or "standard"
    if arch in TRANSCODER_ARCHS.values():
        return read_transcoder(f, raw, folder)
    if arch not in ARCH_IN:
        raise SaescaleError(f"{f}: SAELens architecture {arch!r} has no saescale equivalent (saescale reads "
                            f"{', '.join(ARCH_IN)}); use SAELens itself for it")
    act = raw.get("activation_fn", raw.get("activation_fn_str"))
    if arch == "standard" and act not in (None, "relu"):
        raise SaescaleError(f"{f}: activation_fn {act!r} is not ReLU (saescale's relu SAE computes ReLU(pre)); use "
                            "SAELens itself for it")
    d, n = as_int(raw.get("d_in"), f, "d_in", FIX), as_int(raw.get("d_sae"), f, "d_sae", FIX)
    norm = raw.get("normalize_activations", "none")
    if norm not in NORM_IN:
        raise SaescaleError(f"{f}: normalize_activations {norm!r} has no saescale equivalent (saescale reads 'none' "
                            "and 'layer_norm', which is its --normalize std); fold it into the weights with SAELens first")
    k = as_int(raw.get("k"), f, "k", FIX) if arch == "topk" else None
    w = folder / WEIGHTS
    tensors = read_safetensors(w, FIX)
    wanted = names(arch)
    if arch == "jumprelu" and "threshold" not in tensors and "log_threshold" in tensors:  # older SAELens files
        wanted = tuple("log_threshold" if x == "threshold" else x for x in wanted)
    shapes = {nm: ((d, n) if nm == "W_enc" else (n, d) if nm == "W_dec" else (d,) if nm == "b_dec" else (n,)) for nm in wanted}
    check_tensors(w, tensors, shapes, f"SAELens {arch!r} SAE of d_in {d}, d_sae {n}", FIX)
    t = {nm: tensors[nm].double() for nm in wanted}
    meta = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
    rec = meta.get("saescale")
    if rec is not None:
        return _with_record(f, w, raw, arch, norm, d, n, k, t, rec)
    if raw.get("apply_b_dec_to_input", True) is False:  # pre = x W_enc + b: b_enc absorbs b_dec W_enc exactly
        offset = t["b_dec"] @ t["W_enc"]
        if arch == "gated":
            t["b_gate"], t["b_mag"] = t["b_gate"] + offset, t["b_mag"] + t["r_mag"].exp() * offset
        else:
            t["b_enc"] = t["b_enc"] + offset
    if arch == "topk" and raw.get("rescale_acts_by_decoder_norm"):  # pre scaled by ||W_dec[i]||, z divided by it
        norms = t["W_dec"].norm(dim=-1)
        t["W_enc"], t["b_enc"], t["W_dec"] = t["W_enc"] * norms, t["b_enc"] * norms, t["W_dec"] / norms[:, None]
    out = {"W_enc": t["W_enc"].T, "W_dec": t["W_dec"], "b_pre": t["b_dec"]}
    if arch == "gated":
        out.update(b_enc=t["b_gate"], b_mag=t["b_mag"], r_mag=t["r_mag"])
    else:
        out["b_enc"] = t["b_enc"]
    if arch == "jumprelu":
        out["log_threshold"] = t["log_threshold"] if "log_threshold" in t else log_of(t["threshold"], w, FIX)
    cfg = SAEConfig(arch=ARCH_IN[arch], n=n, d=d, normalize=NORM_IN[norm], **({"k": k} if k else {}))
    info = {"format": "saelens", "architecture": arch, "model": meta.get("model_name"), "hook": meta.get("hook_name")}
    return Imported(cfg, {"imported": info}, finish(out), w, "saelens")


def _with_record(f: Path, w: Path, raw: dict, arch: str, norm: str, d: int, n: int, k: int | None,
                 t: dict[str, Tensor], rec: Any) -> Imported:
    """Undo the export's fold: saescale's SAE and provenance exactly as they were."""
    cfg, extra = parse_record(rec, f"{f} metadata.saescale")
    check_record(str(f), cfg, d_in=(cfg.d, d), d_sae=(cfg.n, n), architecture=(ARCH_OUT.get(cfg.arch), arch),
                 normalize_activations=(NORM_OUT[cfg.normalize], norm), apply_b_dec_to_input=(True, raw.get("apply_b_dec_to_input", True)),
                 **({"k": (cfg.k, k), "rescale_acts_by_decoder_norm": (False, bool(raw.get("rescale_acts_by_decoder_norm")))}
                    if arch == "topk" else {}))
    a = fold_factor(cfg, "saelens")
    out = {"W_enc": t["W_enc"].T * a, "W_dec": t["W_dec"] / a, "b_pre": t["b_dec"] / a}
    if arch == "gated":
        out.update(b_enc=t["b_gate"], b_mag=t["b_mag"], r_mag=t["r_mag"])
    else:
        out["b_enc"] = t["b_enc"]
    if cfg.arch == "jumprelu":
        out["log_threshold"] = t["log_threshold"] if "log_threshold" in t else log_of(t["threshold"], w, FIX)
    elif cfg.arch in ("batchtopk", "matryoshka"):
        out["threshold"] = t["threshold"]
    return Imported(cfg, extra, finish(out), w, "saelens")


def looks_like(raw: dict[str, Any]) -> bool:
    """A SAELens cfg.json: d_in and d_sae (and usually architecture)."""
    return "d_sae" in raw and "d_in" in raw


__all__ = ["CFG", "WEIGHTS", "export", "read", "looks_like", "hook_name"]
