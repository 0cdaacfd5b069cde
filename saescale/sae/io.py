"""Save and load a finished SAE: a folder with ``cfg.json`` + ``sae.safetensors``.

Loadable without any training code. Never pickle. The folder is written under a
temporary name and renamed into place, so a crash leaves either the old SAE or
the new one, never a mix. :func:`load_sae` and :func:`read_cfg` also read SAELens and
sparsify folders and OpenAI's released state dicts (:mod:`saescale.sae.formats`), detected
from the files.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from saescale.atomic import atomic_save_safetensors, atomic_write_json, fsync_dir
from saescale.configs import config_from_dict, config_to_dict
from saescale.errors import SaescaleError
from saescale.sae.base import SparseAutoencoder
from saescale.sae.config import SAEConfig, upgrade_sae_record
from saescale.sae.formats.common import RECORD_FORMAT as FORMAT
from saescale.sae.formats.detect import detect, read_foreign
from saescale.sae.registry import build_sae


def write_sae_files(sae: SparseAutoencoder, folder: Path, extra: dict[str, Any] | None = None) -> None:
    """Write cfg.json + sae.safetensors into an existing folder (each file atomic)."""
    cfg = {"format": FORMAT, **config_to_dict(sae.cfg), "extra": extra or {}}
    tensors = {name: getattr(sae, name).detach().float() for name in sae.stored_names()}
    atomic_save_safetensors(tensors, folder / "sae.safetensors", metadata={"format": FORMAT})
    atomic_write_json(folder / "cfg.json", cfg)


def save_sae(sae: SparseAutoencoder, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Save to folder ``path`` atomically; ``extra`` (e.g. activation source, training info) goes into cfg.json."""
    return replace_folder(path, lambda tmp: write_sae_files(sae, tmp, extra))


def replace_folder(path: str | os.PathLike, fill: Callable[[Path], None]) -> Path:
    """Make folder ``path`` hold what ``fill(tmp)`` writes into a fresh temporary folder beside it, renamed into
    place: a reader sees the old folder or the new one, never a mix; if ``fill`` (or the rename) fails, the
    temporary folder is removed and the old folder (or nothing) is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    old = None
    try:
        fill(tmp)
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        if old is not None and not path.exists():
            os.replace(old, path)  # the rename failed: put the previous folder back
            old = None
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path


def read_cfg(path: str | os.PathLike) -> tuple[SAEConfig, dict[str, Any]]:
    """Read and validate ``cfg.json`` of an SAE folder -> (SAEConfig, extra). A foreign SAE (SAELens, sparsify,
    OpenAI) gives the saescale record kept at export, or ``extra = {"imported": {...what its files say...}}``."""
    kind = detect(path)
    if kind != "saescale":
        imported = read_foreign(path, kind)
        return imported.cfg, imported.extra
    return _read_own_cfg(path)


def _read_own_cfg(path: str | os.PathLike) -> tuple[SAEConfig, dict[str, Any]]:
    """``cfg.json`` of a saescale SAE folder -> (SAEConfig, extra)."""
    f = Path(path) / "cfg.json"
    if not f.is_file():
        raise SaescaleError(f"{f} not found: give a folder written by saescale (cfg.json + sae.safetensors)")
    try:
        raw = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SaescaleError(f"{f} is not valid JSON ({e.msg if hasattr(e, 'msg') else e}); restore it or retrain") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise SaescaleError(f"{f}: missing or unknown 'format' (expected {FORMAT!r}); is this a saescale SAE folder?")
    raw = dict(raw)
    raw.pop("format")
    extra = raw.pop("extra", {}) or {}
    return config_from_dict(SAEConfig, upgrade_sae_record(raw), what=str(f), strict=True), extra


def load_sae(path: str | os.PathLike, device: str | torch.device = "cpu") -> SparseAutoencoder:
    """Load an SAE folder; one-line SaescaleError for a missing, corrupt or mismatched file, or weights
    that break the SAE's invariants (:func:`check_weights`). Reads SAELens and sparsify folders and OpenAI
    state dicts too (:mod:`saescale.sae.formats`)."""
    kind = detect(path)
    if kind != "saescale":
        imported = read_foreign(path, kind)
        cfg, tensors, f = imported.cfg, imported.tensors, imported.source
    else:
        cfg, _ = _read_own_cfg(path)
        f = Path(path) / "sae.safetensors"
        if not f.is_file():
            raise SaescaleError(f"{f} not found: the SAE folder is incomplete; retrain or restore it")
        try:
            tensors = load_file(str(f), device=str(device))
        except (SafetensorError, OSError, ValueError) as e:
            raise SaescaleError(f"{f} is corrupt or truncated ({e}); restore it from a checkpoint or retrain") from None
    sae = build_sae(cfg)
    check_weights(f, tensors, {name: tuple(getattr(sae, name).shape) for name in sae.stored_names()})
    sae.load_state_dict(tensors)
    return sae.to(device)


RESTORE = "restore it from a checkpoint or retrain"


def check_weights(f: Path, tensors: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]]) -> None:
    """One-line SaescaleError (naming file ``f``, the tensor, the problem and the fix) unless ``tensors``
    are exactly the parameters of the SAE that cfg.json describes, each of its ``shapes``, floating point
    and finite, with a usable decoder (:func:`check_decoder`). Extra tensors are refused: saescale writes
    none, so they mean the file belongs to something else."""
    extra = sorted(set(tensors) - set(shapes))
    if extra:
        raise SaescaleError(f"{f}: unknown tensor(s) {', '.join(extra)} (this SAE holds {', '.join(shapes)}); "
                            f"the file is not this SAE's: {RESTORE}")
    for name, shape in shapes.items():
        if name not in tensors:
            raise SaescaleError(f"{f}: tensor {name} is missing; {RESTORE}")
        t = tensors[name]
        if tuple(t.shape) != shape:
            raise SaescaleError(f"{f}: tensor {name} has shape {tuple(t.shape)}, but cfg.json implies {shape}: the "
                                "tensors do not match cfg.json (the files are from different SAEs); " + RESTORE)
        if not t.dtype.is_floating_point:
            raise SaescaleError(f"{f}: tensor {name} has dtype {str(t.dtype).removeprefix('torch.')}, not a floating "
                                f"point type (saescale saves float32); {RESTORE}")
        if not torch.isfinite(t).all():
            raise SaescaleError(f"{f}: tensor {name} contains NaN/inf; restore an earlier checkpoint or retrain")
    check_decoder(f, tensors["W_dec"])


ZERO_ROW = 1e-12
"""A decoder row with a norm at most this is zero: :meth:`SparseAutoencoder.normalize_decoder` cannot bring it
back to unit norm (it clamps norms to 1e-12), so its latent decodes to nothing however it fires."""


def check_decoder(f: Path, W_dec: torch.Tensor) -> None:
    """Refuse a decoder that is all zero or has rows of zero norm. Training keeps every row at unit norm
    (renormalised after each step, and after EMA averaging); unit norm itself is not required, since an SAE
    built by hand (or converted) may scale its rows, but a zero row is never a trained latent direction."""
    norms = torch.linalg.vector_norm(W_dec.double(), dim=-1)
    zero = (norms <= ZERO_ROW).nonzero().flatten().tolist()
    if len(zero) == len(norms):
        raise SaescaleError(f"{f}: tensor W_dec is all zero (every decoder row of a trained SAE has unit norm); {RESTORE}")
    if zero:
        rows = ", ".join(map(str, zero[:5])) + (", ..." if len(zero) > 5 else "")
        raise SaescaleError(f"{f}: tensor W_dec has {len(zero)} of {len(norms)} rows of zero norm (rows {rows}; "
                            f"a trained SAE's decoder rows have unit norm); {RESTORE}")
