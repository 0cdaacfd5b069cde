"""Save and load a finished SAE: a folder with ``cfg.json`` + ``sae.safetensors``.

Loadable without any training code. Never pickle. The folder is written under a
temporary name and renamed into place, so a crash leaves either the old SAE or
the new one, never a mix.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from saescale.atomic import atomic_save_safetensors, atomic_write_json, fsync_dir
from saescale.configs import config_from_dict, config_to_dict
from saescale.errors import SaescaleError
from saescale.sae.base import PARAMS, SparseAutoencoder
from saescale.sae.config import SAEConfig, upgrade_sae_record
from saescale.sae.registry import build_sae

FORMAT = "saescale-sae-v1"


def write_sae_files(sae: SparseAutoencoder, folder: Path, extra: dict[str, Any] | None = None) -> None:
    """Write cfg.json + sae.safetensors into an existing folder (each file atomic)."""
    cfg = {"format": FORMAT, **config_to_dict(sae.cfg), "extra": extra or {}}
    tensors = {name: getattr(sae, name).detach().float() for name in PARAMS}
    atomic_save_safetensors(tensors, folder / "sae.safetensors", metadata={"format": FORMAT})
    atomic_write_json(folder / "cfg.json", cfg)


def save_sae(sae: SparseAutoencoder, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Save to folder ``path`` atomically; ``extra`` (e.g. activation source, training info) goes into cfg.json."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    write_sae_files(sae, tmp, extra)
    old = None
    if path.exists():
        old = path.parent / f".{path.name}.old-{os.getpid()}"
        os.replace(path, old)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path


def read_cfg(path: str | os.PathLike) -> tuple[SAEConfig, dict[str, Any]]:
    """Read and validate ``cfg.json`` of an SAE folder -> (SAEConfig, extra)."""
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
    """Load an SAE folder; one-line SaescaleError for a missing, corrupt or mismatched file."""
    cfg, _ = read_cfg(path)
    f = Path(path) / "sae.safetensors"
    if not f.is_file():
        raise SaescaleError(f"{f} not found: the SAE folder is incomplete; retrain or restore it")
    try:
        tensors = load_file(str(f), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise SaescaleError(f"{f} is corrupt or truncated ({e}); restore it from a checkpoint or retrain") from None
    sae = build_sae(cfg)
    expect = {name: tuple(getattr(sae, name).shape) for name in PARAMS}
    got = {name: tuple(t.shape) for name, t in tensors.items()}
    if got != expect:
        raise SaescaleError(f"{f}: tensors {got} do not match cfg.json (expected {expect}); the files are from different SAEs")
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            raise SaescaleError(f"{f}: tensor {name} contains NaN/inf; restore an earlier checkpoint")
    sae.load_state_dict(tensors)
    return sae.to(device)
