"""Resumable training checkpoints.

Layout of ``OUT/checkpoints/``::

    step-000000500/   cfg.json + sae.safetensors   (the SAE, loadable on its own)
                      state.safetensors            (optimiser moments, dead-latent counters, EMA, RNG)
                      state.json                   (step, tokens seen, loss scale, configs)
    latest.json       {"folder": "step-000000500", "step": 500}   (written last, atomically)

A checkpoint folder is written under a temporary name and renamed into place;
``latest.json`` is only pointed at complete folders, so a kill at any moment
leaves the previous checkpoint valid.
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
from saescale.errors import SaescaleError
from saescale.sae.base import SparseAutoencoder
from saescale.sae.io import load_sae, write_sae_files


def save_checkpoint(
    root: Path, sae: SparseAutoencoder, tensors: dict[str, torch.Tensor], meta: dict[str, Any], keep: int
) -> Path:
    """Write checkpoint ``root/checkpoints/step-N`` and point latest.json at it; prune to ``keep``."""
    ckdir = root / "checkpoints"
    ckdir.mkdir(parents=True, exist_ok=True)
    name = f"step-{meta['step']:09d}"
    tmp = Path(tempfile.mkdtemp(dir=ckdir, prefix=f".{name}.tmp-"))
    write_sae_files(sae, tmp)
    atomic_save_safetensors(tensors, tmp / "state.safetensors")
    atomic_write_json(tmp / "state.json", meta)
    return publish_checkpoint(tmp, ckdir, name, meta["step"], keep)


def publish_checkpoint(tmp: Path, ckdir: Path, name: str, step: int, keep: int) -> Path:
    """Rename a complete temporary folder to ckdir/name, point latest.json at it, prune old ones."""
    final = ckdir / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(ckdir)
    atomic_write_json(ckdir / "latest.json", {"folder": name, "step": step})
    prune_checkpoints(ckdir, keep, name)
    return final


def prune_checkpoints(ckdir: Path, keep: int, current: str) -> None:
    """Keep the ``keep`` newest step-* folders (and ``current``); remove temporaries left by a killed run."""
    done = sorted(p for p in ckdir.glob("step-*") if p.is_dir())
    for p in done[:-keep]:
        if p.name != current:
            shutil.rmtree(p, ignore_errors=True)
    for p in ckdir.glob(".step-*.tmp-*"):  # left by a killed run
        shutil.rmtree(p, ignore_errors=True)


def latest_checkpoint(root: Path) -> Path | None:
    """The folder latest.json points to, or None when the run has no checkpoint yet."""
    ptr = root / "checkpoints" / "latest.json"
    if not ptr.is_file():
        return None
    try:
        folder = root / "checkpoints" / json.loads(ptr.read_text())["folder"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise SaescaleError(f"{ptr} is corrupt; delete it to resume from the newest step-* folder, or start a new --out") from None
    if not folder.is_dir():
        raise SaescaleError(f"{ptr} points to missing {folder.name}; delete latest.json or start a new --out")
    return folder


def load_checkpoint(folder: Path, device: str = "cpu") -> tuple[SparseAutoencoder, dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint folder -> (sae, state tensors, state meta); one-line errors if damaged."""
    sae = load_sae(folder, device)
    try:
        tensors = load_file(str(folder / "state.safetensors"))
        meta = json.loads((folder / "state.json").read_text())
    except (SafetensorError, OSError, ValueError) as e:
        raise SaescaleError(f"checkpoint {folder} is damaged ({e}); delete it to fall back to an older one") from None
    return sae, tensors, meta
