"""What the foreign formats share: the converted SAE, the fold of normalisation constants, the
saescale record kept at export, and one-line checks of foreign files.

A fold by a constant a (x_s = a x_n, the other format's normalised input is a times ours):

    W_enc_s = W_enc / a   (n, d)      b_dec_s = a b_pre  (d,)      W_dec_s = a W_dec  (n, d)
    b_enc_s = b_enc       (n,)        (gated's b_mag, r_mag and every threshold unchanged)

so pre = W_enc_s (x_s - b_dec_s) + b_enc_s = W_enc (x_n - b_pre) + b_enc (the codes are equal) and
x̂_s = W_dec_s^T z + b_dec_s = a x̂_n. a = sqrt(d - 1) for 'layernorm' into SAELens 'layer_norm',
1/s for 'mean_sq' into no normalisation, 1 otherwise. A folded tensor is written in float64, so that
the fold back (multiply by a again, float64, then round to float32) gives saescale's float32 tensors
bit for bit: |fl64(fl64(w / a) a) - w| <= 2^-52 |w|, far under half a float32 ulp (2^-24 |w|).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from saescale.configs import config_from_dict, config_to_dict
from saescale.errors import SaescaleError
from saescale.sae.config import SAEConfig, upgrade_sae_record
from saescale.sae.normalize import ln_constant

RECORD_FORMAT = "saescale-sae-v1"  # the same tag as a saescale folder's cfg.json (saescale.sae.io.FORMAT)


@dataclass
class Imported:
    """A foreign SAE converted to saescale's tensors (float32, saescale names) and config."""

    cfg: SAEConfig
    extra: dict[str, Any]  # the saescale record's provenance, or {"imported": {...what the file says...}}
    tensors: dict[str, Tensor]
    source: Path  # the weights file, for messages
    fmt: str  # 'saelens', 'sparsify' or 'openai'


def fold_factor(cfg: SAEConfig, fmt: str) -> float:
    """a with x_s = a x_n (see the module docstring) for exporting ``cfg`` to ``fmt``."""
    if cfg.normalize == "layernorm":
        return ln_constant(int(cfg.d))
    if cfg.normalize == "mean_sq":
        return 1.0 / float(cfg.norm_scale)
    return 1.0


def transcoder_folds(cfg: SAEConfig) -> tuple[float, float]:
    """(s_x, s_y): a transcoder's input and target scales (x_n = s_x x, y_n = s_y y)."""
    return (float(cfg.norm_scale) if cfg.normalize == "mean_sq" else 1.0), float(cfg.target_scale or 1.0)


def fold_transcoder(sae) -> dict[str, Tensor]:
    """A transcoder's raw-space weights in float64, its scales folded in (the same code z on raw x, so
    the same raw output): W_enc s_x (n, d), b_enc (n,), W_dec / s_y (n, d_out), b_dec = b_pre / s_y
    (d_out,) [, W_skip s_x / s_y (d_out, d)]. Each format renames / transposes them."""
    s_x, s_y = transcoder_folds(sae.cfg)
    t = {"W_enc": sae.W_enc.detach().double() * s_x, "b_enc": sae.b_enc.detach().double(),
         "W_dec": sae.W_dec.detach().double() / s_y, "b_dec": sae.b_pre.detach().double() / s_y}
    if sae.cfg.skip:
        t["W_skip"] = sae.W_skip.detach().double() * (s_x / s_y)
    return t


def unfold_transcoder(cfg: SAEConfig, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor,
                      W_skip: Tensor | None = None) -> dict[str, Tensor]:
    """The inverse of :func:`fold_transcoder` for ``cfg``'s scales: saescale's W_enc, b_enc, W_dec, b_pre
    [, W_skip] from raw-space weights of the same shapes."""
    s_x, s_y = transcoder_folds(cfg)
    out = {"W_enc": W_enc / s_x, "b_enc": b_enc, "W_dec": W_dec * s_y, "b_pre": b_dec * s_y}
    if W_skip is not None:
        out["W_skip"] = W_skip * (s_y / s_x)
    return out


def div(t: Tensor, a: float) -> Tensor:
    """t / a in float64 (t itself, float32, when a = 1: nothing to round)."""
    return t.detach().float() if a == 1.0 else t.detach().double() / a


def mul(t: Tensor, a: float) -> Tensor:
    """t a in float64 (t itself, float32, when a = 1)."""
    return t.detach().float() if a == 1.0 else t.detach().double() * a


def make_record(cfg: SAEConfig, extra: dict[str, Any]) -> dict[str, Any]:
    """What an import needs to restore the saescale SAE exactly: its config and provenance."""
    return {"format": RECORD_FORMAT, "sae": config_to_dict(cfg), "extra": extra}


def parse_record(rec: Any, where: str) -> tuple[SAEConfig, dict[str, Any]]:
    """(SAEConfig, extra) of a saescale record; one line if it is damaged."""
    if not isinstance(rec, dict) or rec.get("format") != RECORD_FORMAT or not isinstance(rec.get("sae"), dict) \
            or not isinstance(rec.get("extra", {}), dict):
        raise SaescaleError(f"{where}: the saescale record is damaged (expected format {RECORD_FORMAT!r}, 'sae' and "
                            "'extra' objects); export the SAE again, or delete the record to read it as a foreign SAE")
    return config_from_dict(SAEConfig, upgrade_sae_record(rec["sae"]), what=where, strict=True), dict(rec.get("extra") or {})


def check_record(where: str, rec_cfg: SAEConfig, **facts: Any) -> None:
    """The record must describe the SAE the folder holds: each fact (record value, file value) equal."""
    for name, (mine, theirs) in facts.items():
        if mine != theirs:
            raise SaescaleError(f"{where}: the saescale record says {name} {mine!r} but the file says {theirs!r}: the "
                                "folder was changed after export; export the SAE again, or delete the record to read "
                                "it as a foreign SAE")


def read_json(f: Path, fix: str) -> dict[str, Any]:
    """A JSON object from ``f``; one line naming the file otherwise."""
    try:
        raw = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SaescaleError(f"{f} is not valid JSON ({getattr(e, 'msg', e)}); {fix}") from None
    except OSError as e:
        raise SaescaleError(f"{f} cannot be read ({e.strerror or e}); {fix}") from None
    if not isinstance(raw, dict):
        raise SaescaleError(f"{f} holds {type(raw).__name__}, not a JSON object; {fix}")
    return raw


def read_safetensors(f: Path, fix: str) -> dict[str, Tensor]:
    """Every tensor of a safetensors file, on the CPU, as stored; one line if missing or corrupt."""
    if not f.is_file():
        raise SaescaleError(f"{f} not found: the SAE folder is incomplete; {fix}")
    try:
        return load_file(str(f), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise SaescaleError(f"{f} is corrupt or truncated ({e}); {fix}") from None


def check_tensors(f: Path, tensors: dict[str, Tensor], shapes: dict[str, tuple[int, ...]], what: str, fix: str,
                  ignored: tuple[str, ...] = ()) -> None:
    """``tensors`` (the file's own names) must be exactly ``shapes`` (plus ``ignored`` ones), floating point,
    finite: one line naming the file, the tensor, the problem and ``fix`` otherwise."""
    unknown = sorted(set(tensors) - set(shapes) - set(ignored))
    if unknown:
        raise SaescaleError(f"{f}: unknown tensor(s) {', '.join(unknown)} (a {what} holds {', '.join(shapes)}); "
                            f"saescale cannot read what it would compute; {fix}")
    for name, shape in shapes.items():
        if name not in tensors:
            raise SaescaleError(f"{f}: tensor {name} is missing (a {what} holds {', '.join(shapes)}); {fix}")
        t = tensors[name]
        if not isinstance(t, Tensor) or not t.dtype.is_floating_point:
            kind = str(t.dtype).removeprefix("torch.") if isinstance(t, Tensor) else type(t).__name__
            raise SaescaleError(f"{f}: tensor {name} is {kind}, not floating point; {fix}")
        if tuple(t.shape) != shape:
            raise SaescaleError(f"{f}: tensor {name} has shape {tuple(t.shape)}, expected {shape} for a {what}; {fix}")
        if not torch.isfinite(t).all():
            raise SaescaleError(f"{f}: tensor {name} contains NaN/inf; {fix}")


def as_int(value: Any, f: Path, key: str, fix: str, low: int = 1) -> int:
    """An integer setting of a foreign config, at least ``low``; one line otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SaescaleError(f"{f}: {key} is {value!r}, expected an integer >= {low}; {fix}")
    return value


def finish(t: dict[str, Tensor]) -> dict[str, Tensor]:
    """float32, contiguous: what saescale holds."""
    return {k: v.float().contiguous() for k, v in t.items()}


def log_of(theta: Tensor, f: Path, fix: str) -> Tensor:
    """log θ (float64) of a JumpReLU threshold; saescale's JumpReLU needs θ > 0."""
    if not bool((theta > 0).all()):
        bad = int((theta <= 0).sum())
        raise SaescaleError(f"{f}: {bad} JumpReLU threshold(s) are <= 0 (saescale's JumpReLU stores log θ and needs "
                            f"θ > 0, its z = pre 1[pre > θ]); {fix}")
    return theta.double().log()
