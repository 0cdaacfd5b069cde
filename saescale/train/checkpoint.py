"""Resumable training checkpoints.

Layout of ``OUT/checkpoints/``::

    step-000000500/   cfg.json + sae.safetensors   (the SAE, loadable on its own)
                      state.safetensors            (optimiser moments, dead-latent counters, EMA, RNG)
                      state.json                   (step, tokens seen, loss scale, configs)
    latest.json       {"folder": "step-000000500", "step": 500}   (written last, atomically)

A distributed run (world > 1) writes the same layout with ``torch.distributed.checkpoint``
shards instead of the safetensors files (:mod:`saescale.distributed.checkpoint`): every rank its
rows, rank 0 state.json (with the SAE config and the layout) and latest.json. Either kind resumes
under any layout, one process included: a distributed one is re-sharded, a single-process one sliced.

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
from saescale.configs import config_from_dict, config_to_dict
from saescale.distributed.checkpoint import is_dist_checkpoint, load_dcp, save_dcp
from saescale.distributed.mesh import Mesh
from saescale.errors import SaescaleError
from saescale.sae.base import PARAMS, SHARDED, SparseAutoencoder
from saescale.sae.config import SAEConfig, upgrade_sae_record
from saescale.sae.io import load_sae, write_sae_files
from saescale.sae.registry import build_sae

DIST_FORMAT = "saescale-dcp-v1"


def row_sharded(key: str) -> bool:
    """Whether a state tensor named ``key`` (a parameter, or as Trainer.state_tensors names them) is
    split by latent rows: the sharded parameters, their Adam moments and EMA, the dead-latent counters."""
    parts = key.split(".")
    return key == "since_fired" or (parts[-1] != "step" and any(p in SHARDED for p in parts))


def save_checkpoint(
    root: Path, sae: SparseAutoencoder, tensors: dict[str, torch.Tensor], meta: dict[str, Any], keep: int
) -> Path:
    """Write checkpoint ``root/checkpoints/step-N`` and point latest.json at it; prune to ``keep``
    (collective in a distributed run: every rank calls it with its shard)."""
    mesh, ckdir, name = sae.mesh, root / "checkpoints", f"step-{meta['step']:09d}"
    if mesh.world == 1:
        ckdir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=ckdir, prefix=f".{name}.tmp-"))
        write_sae_files(sae, tmp)
        atomic_save_safetensors(tensors, tmp / "state.safetensors")
        atomic_write_json(tmp / "state.json", meta)
        return publish_checkpoint(tmp, ckdir, name, meta["step"], keep)
    tmp = ckdir / f".{name}.tmp-dist"
    if mesh.rank == 0:
        ckdir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    mesh.barrier("preparing a checkpoint folder")
    save_dcp(tmp, mesh, {**{k: getattr(sae, k).detach() for k in PARAMS}, **tensors}, sae.cfg.n, row_sharded)
    if mesh.rank == 0:
        layout = {"world": mesh.world, "latent_shards": mesh.latent_shards}
        atomic_write_json(tmp / "state.json", {**meta, "format": DIST_FORMAT, "sae": config_to_dict(sae.cfg),
                                               "layout": layout})
        publish_checkpoint(tmp, ckdir, name, meta["step"], keep)
    return ckdir / name


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


def _read_json(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "state.json").read_text())
    except (OSError, ValueError) as e:
        raise SaescaleError(f"checkpoint {folder} is damaged ({e}); delete it to fall back to an older one") from None


def load_checkpoint(folder: Path, device: str = "cpu", mesh: Mesh | None = None,
                    ) -> tuple[SparseAutoencoder, dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint folder of either kind -> (this rank's SAE shard on ``mesh``, its state
    tensors, state meta); one-line errors if damaged."""
    mesh = mesh or Mesh.single()
    if is_dist_checkpoint(folder):
        meta = _read_json(folder)
        if meta.get("format") != DIST_FORMAT:
            raise SaescaleError(f"checkpoint {folder} is damaged (format {meta.get('format')!r}, expected "
                                f"{DIST_FORMAT!r}); delete it to fall back to an older one")
        cfg = config_from_dict(SAEConfig, upgrade_sae_record(meta["sae"]), what=f"{folder}/state.json", strict=True)
        sae = build_sae(cfg, mesh).to(device)
        tensors = load_dcp(folder, mesh, sae.shard, device, row_sharded)
    else:
        whole = load_sae(folder, device)
        try:
            tensors = load_file(str(folder / "state.safetensors"))
        except (SafetensorError, OSError, ValueError) as e:
            raise SaescaleError(f"checkpoint {folder} is damaged ({e}); delete it to fall back to an older one") from None
        meta = _read_json(folder)
        sae = build_sae(whole.cfg, mesh).to(whole.W_enc)  # this rank's rows of the whole SAE
        s = sae.shard
        tensors = {**{k: getattr(whole, k).detach() for k in PARAMS}, **tensors}
        tensors = {k: v[s.lo : s.hi].clone() if row_sharded(k) and mesh.latent_shards > 1 else v for k, v in tensors.items()}
    with torch.no_grad():
        for k in PARAMS:
            getattr(sae, k).copy_(tensors.pop(k))
    return sae, tensors, meta
