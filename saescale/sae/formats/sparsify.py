"""sparsify (EleutherAI) folders: ``cfg.json`` + ``sae.safetensors`` (``sparsify.SparseCoder.load_from_disk``).

sparsify computes, on its raw input x (B, d) (it has no input normalisation), encoder.weight (N, d):

    top_acts, top_indices = TopK_k(ReLU((x - b_dec) encoder.weight^T + encoder.bias))    (B, k)
    x̂ = sum_j top_acts_j W_dec[top_indices_j] + b_dec                                    (B, d)

which is saescale's TopK SAE (TopK then ReLU keeps the same dense code as ReLU then TopK) with
encoder.weight = W_enc, encoder.bias = b_enc, W_dec = W_dec, b_dec = b_pre for --normalize none, and
with 'mean_sq' (x_n = s x) folded by a = 1/s (see :mod:`.common`). 'layernorm' and 'std' divide each
token by its own norm, which no constant can fold: refused. Only topk maps (sparsify's other
activation, groupmax, is not saescale's; saescale's other architectures are not sparsify's).

sparsify's loader keeps the dtype of the file's first tensor (it does not cast to float32), so a folded
(float64) export loads as a float64 SparseCoder computing the same thing; ``.to(torch.float32)`` makes
it float32 (within one rounding of the folded weights). Unfolded exports are float32. saescale's record
is written to ``saescale.json`` beside cfg.json (sparsify's loader ignores the file; an extra key in
cfg.json would be printed as a dropped argument on every load).

TopK transcoders (and skip transcoders) map to sparsify's ``transcode`` SparseCoder, which computes on
the raw input x (B, d), with no input bias, the output

    ŷ = sum_j top_acts_j W_dec[top_indices_j] + b_dec [+ x W_skip^T]      W_dec (N, d), W_skip (d, d)

so with saescale's scales (x_n = s_x x, y_n = s_y y; :func:`.common.transcoder_folds`) encoder.weight =
s_x W_enc, encoder.bias = b_enc, W_dec = W_dec / s_y, b_dec = b_pre / s_y, W_skip = W_skip s_x / s_y: the
same code z, so the same output. sparsify's transcoders keep one width for input and output (d_out = d);
others are refused.

A sparsify *run* folder holds one such folder per hook point (``layers.6/``, ...): the hook point is
the folder name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from saescale.errors import SaescaleError
from saescale.sae.base import SparseAutoencoder
from saescale.sae.config import SAEConfig
from saescale.sae.formats.common import (Imported, as_int, check_record, check_tensors, div, finish, fold_factor,
                                         fold_transcoder, make_record, mul, parse_record, read_json,
                                         read_safetensors, transcoder_folds, unfold_transcoder)

CFG, WEIGHTS, RECORD = "cfg.json", "sae.safetensors", "saescale.json"
FIX = "re-save it with sparsify (SparseCoder.save_to_disk) or export it again"


def export(sae: SparseAutoencoder, extra: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Tensor], dict[str, Any]]:
    """(cfg.json, sae.safetensors tensors, saescale.json) of ``sae`` in sparsify's format."""
    cfg = sae.cfg
    if sae.transcoder:
        return export_transcoder(sae, extra)
    if cfg.arch != "topk":
        raise SaescaleError(f"--arch {cfg.arch} cannot be exported to sparsify, which has TopK SAEs only: export it "
                            "with --format saelens, or train --arch topk")
    if cfg.normalize in ("layernorm", "std"):
        raise SaescaleError(f"--normalize {cfg.normalize} cannot be exported to sparsify, which has no input "
                            "normalisation (a per-token scale folds into no weight): retrain with --normalize mean_sq "
                            "or none, or export with --format saelens")
    a = fold_factor(cfg, "sparsify")
    t = {"encoder.weight": div(sae.W_enc, a), "encoder.bias": sae.b_enc.detach().float(),
         "W_dec": mul(sae.W_dec, a), "b_dec": mul(sae.b_pre, a)}
    if a != 1.0:  # sparsify takes its dtype from the first tensor: one dtype for all
        t = {k: v.double() for k, v in t.items()}
    out = {"activation": "topk", "expansion_factor": max(cfg.n // int(cfg.d), 1), "normalize_decoder": a == 1.0,
           "num_latents": cfg.n, "k": cfg.k, "multi_topk": False, "skip_connection": False, "transcode": False,
           "d_in": cfg.d}
    return out, t, make_record(cfg, extra)


def read_coder(f: Path, raw: dict[str, Any], folder: Path, skip: bool,
               what: str = "SAE") -> tuple[int, int, int, Path, dict[str, Tensor]]:
    """(d_in, num_latents, k, weights file, its tensors in float64) of a sparsify folder, shapes checked."""
    d = as_int(raw.get("d_in"), f, "d_in", FIX)
    n = raw.get("num_latents") or d * as_int(raw.get("expansion_factor", 32), f, "expansion_factor", FIX)
    n, k = as_int(n, f, "num_latents", FIX), as_int(raw.get("k", 32), f, "k", FIX)
    if k > n:
        raise SaescaleError(f"{f}: k {k} is more than num_latents {n}; {FIX}")
    w = folder / WEIGHTS
    tensors = read_safetensors(w, FIX)
    shapes = {"encoder.weight": (n, d), "encoder.bias": (n,), "W_dec": (n, d), "b_dec": (d,),
              **({"W_skip": (d, d)} if skip else {})}
    check_tensors(w, tensors, shapes, f"sparsify TopK {what} of d_in {d}, num_latents {n}", FIX)
    return d, n, k, w, {nm: tensors[nm].double() for nm in shapes}


def read(folder: Path) -> Imported:
    """A sparsify folder as saescale tensors and config; one line for anything it cannot read exactly."""
    f = folder / CFG
    raw = read_json(f, FIX)
    if raw.get("activation", "topk") != "topk":
        raise SaescaleError(f"{f}: activation is {raw['activation']!r}; saescale reads sparsify coders with activation "
                            "'topk' only")
    if raw.get("transcode", False):
        return read_transcoder(f, raw, folder)
    if raw.get("skip_connection", False):
        raise SaescaleError(f"{f}: skip_connection is set on an SAE that does not transcode; saescale has skip "
                            "connections on transcoders only")
    d, n, k, w, t = read_coder(f, raw, folder, skip=False)
    out = {"W_enc": t["encoder.weight"], "b_enc": t["encoder.bias"], "W_dec": t["W_dec"], "b_pre": t["b_dec"]}
    if (folder / RECORD).is_file():
        cfg, extra = parse_record(read_json(folder / RECORD, FIX), str(folder / RECORD))
        check_record(str(folder / RECORD), cfg, d_in=(cfg.d, d), num_latents=(cfg.n, n), k=(cfg.k, k),
                     architecture=(cfg.arch, "topk"))
        if cfg.normalize in ("layernorm", "std"):
            raise SaescaleError(f"{folder / RECORD}: records --normalize {cfg.normalize}, which sparsify cannot hold: "
                                "the folder was changed after export; export the SAE again")
        a = fold_factor(cfg, "sparsify")
        out = {"W_enc": out["W_enc"] * a, "b_enc": out["b_enc"], "W_dec": out["W_dec"] / a, "b_pre": out["b_pre"] / a}
        return Imported(cfg, extra, finish(out), w, "sparsify")
    info = {"format": "sparsify", "hook": folder.name}
    return Imported(SAEConfig(arch="topk", n=n, k=k, d=d, normalize="none"), {"imported": info}, finish(out), w,
                    "sparsify")


def export_transcoder(sae: SparseAutoencoder,
                      extra: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Tensor], dict[str, Any]]:
    """(cfg.json, sae.safetensors tensors, saescale.json) of a TopK (skip) transcoder as sparsify's
    ``transcode`` SparseCoder (float64 tensors when a scale is folded in, as the SAE export)."""
    cfg = sae.cfg
    if cfg.arch != "topk":
        raise SaescaleError(f"a --arch {cfg.arch} transcoder cannot be exported to sparsify, whose transcoders are "
                            "TopK: export it with --format saelens, or train --arch topk with --target-hook")
    if cfg.d_out != cfg.d:
        raise SaescaleError(f"a transcoder from width {cfg.d} to width {cfg.d_out} cannot be exported to sparsify, "
                            "whose transcoders keep one width (d_in) for input and output; keep saescale's format")
    s_x, s_y = transcoder_folds(cfg)
    names = {"W_enc": "encoder.weight", "b_enc": "encoder.bias"}
    exact = s_x == 1.0 and s_y == 1.0  # one dtype: sparsify takes the first tensor's
    t = {names.get(k, k): (v.float() if exact else v) for k, v in fold_transcoder(sae).items()}
    out = {"activation": "topk", "expansion_factor": max(cfg.n // int(cfg.d), 1), "normalize_decoder": s_y == 1.0,
           "num_latents": cfg.n, "k": cfg.k, "multi_topk": False, "skip_connection": bool(cfg.skip),
           "transcode": True, "d_in": cfg.d}
    return out, t, make_record(cfg, extra)


def read_transcoder(f: Path, raw: dict[str, Any], folder: Path) -> Imported:
    """A sparsify ``transcode`` folder as a saescale TopK (skip) transcoder (with saescale's record: exactly
    the exported one, scales and provenance included; without it, unscaled, d_out = d_in)."""
    skip = bool(raw.get("skip_connection", False))
    d, n, k, w, t = read_coder(f, raw, folder, skip=skip, what="transcoder")
    if (folder / RECORD).is_file():
        cfg, extra = parse_record(read_json(folder / RECORD, FIX), str(folder / RECORD))
        check_record(str(folder / RECORD), cfg, d_in=(cfg.d, d), d_out=(cfg.d_out, d), num_latents=(cfg.n, n),
                     k=(cfg.k, k), skip_connection=(bool(cfg.skip), skip), architecture=(cfg.arch, "topk"))
    else:
        cfg = SAEConfig(arch="topk", n=n, k=k, d=d, d_out=d, skip=skip, normalize="none")
        extra = {"imported": {"format": "sparsify", "hook": f"{folder.name}.input", "hook_out": folder.name,
                              "transcode": True}}  # sparsify's hookpoint is the module transcoded
    out = unfold_transcoder(cfg, t["encoder.weight"], t["encoder.bias"], t["W_dec"], t["b_dec"], t.get("W_skip"))
    return Imported(cfg, extra, finish(out), w, "sparsify")


def looks_like(raw: dict[str, Any]) -> bool:
    """A sparsify cfg.json: d_in and num_latents or expansion_factor, no d_sae."""
    return "d_in" in raw and "d_sae" not in raw and ("num_latents" in raw or "expansion_factor" in raw)
