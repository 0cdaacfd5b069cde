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

Loading checks every field of a checkpoint against the resuming run's settings before any of it is
used (:mod:`saescale.train.checkpoint_check`): a damaged or forged one is refused in one line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from saescale.atomic import atomic_save_safetensors, atomic_write_json, fsync_dir
from saescale.configs import config_to_dict
from saescale.distributed.checkpoint import is_dist_checkpoint, load_dcp, save_dcp, saved_tensors
from saescale.distributed.mesh import Mesh
from saescale.errors import SaescaleError
from saescale.sae.base import SHARDED, SparseAutoencoder
from saescale.sae.config import SAEConfig
from saescale.sae.io import FORMAT as SAE_FORMAT
from saescale.sae.io import write_sae_files
from saescale.sae.registry import build_sae
from saescale.train.checkpoint_check import (DIST_FORMAT, RunSettings, check_tensor_values, damaged, read_run_settings,
                                             step_folder, validate_checkpoint, validate_dcp_checkpoint)

STEP_NAME = re.compile(r"step-\d{9,}")  # a published checkpoint folder (temporaries start with '.')


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
    mesh, ckdir, name = sae.mesh, root / "checkpoints", step_folder(meta["step"])
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
    save_dcp(tmp, mesh, {**{k: getattr(sae, k).detach() for k in sae.stored_names()}, **tensors}, sae.cfg.n,
             row_sharded)
    if mesh.rank == 0:
        atomic_write_json(tmp / "state.json", dcp_state_record(meta, sae.cfg, mesh.world, mesh.latent_shards))
        publish_checkpoint(tmp, ckdir, name, meta["step"], keep)
    return ckdir / name


def dcp_state_record(meta: dict[str, Any], cfg: SAEConfig, world: int, latent_shards: int) -> dict[str, Any]:
    """state.json of a distributed checkpoint: the trainer's ``meta``, the format, the SAE config and the layout."""
    return {**meta, "format": DIST_FORMAT, "sae": config_to_dict(cfg),
            "layout": {"world": world, "latent_shards": latent_shards}}


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


def step_folders(ckdir: Path) -> list[Path]:
    """The published checkpoint folders step-N of ``ckdir``, oldest first (by step: past 10^9 steps the names
    grow longer, not larger as text; other step-* folders are not checkpoints)."""
    done = [p for p in ckdir.glob("step-*") if p.is_dir() and STEP_NAME.fullmatch(p.name)]
    return sorted(done, key=lambda p: int(p.name[5:]))


def prune_checkpoints(ckdir: Path, keep: int, current: str) -> None:
    """Keep the ``keep`` newest step-* folders (and ``current``); remove temporaries left by a killed run."""
    for p in step_folders(ckdir)[:-keep]:
        if p.name != current:
            shutil.rmtree(p, ignore_errors=True)
    for p in ckdir.glob(".step-*.tmp-*"):  # left by a killed run
        shutil.rmtree(p, ignore_errors=True)


def latest_checkpoint(root: Path) -> Path | None:
    """The folder latest.json points to (its record checked), the newest step-* folder when there is
    no latest.json (it is written last: deleted, the folders left still hold whole checkpoints), or
    None when the run has no checkpoint yet."""
    ckdir = root / "checkpoints"
    ptr = ckdir / "latest.json"
    if not ptr.is_file():
        done = step_folders(ckdir)
        return done[-1] if done else None
    fix = "delete it to resume from the newest step-* folder, or start a new --out"
    try:
        rec = json.loads(ptr.read_text())
    except (OSError, ValueError):
        raise SaescaleError(f"{ptr} is corrupt; {fix}") from None
    if not isinstance(rec, dict):
        raise SaescaleError(f"{ptr} holds a JSON {type(rec).__name__}, expected an object {{folder, step}}; {fix}")
    for key in ("folder", "step"):
        if key not in rec:
            raise SaescaleError(f"{ptr}: field '{key}' is missing; {fix}")
    unknown = sorted(set(rec) - {"folder", "step"})
    if unknown:
        raise SaescaleError(f"{ptr}: field '{unknown[0]}' is not one saescale writes (expected only folder, "
                            f"step); {fix}")
    name, step = rec["folder"], rec["step"]
    if type(step) is not int or step < 1:
        raise SaescaleError(f"{ptr}: field 'step' is {step!r}, expected an integer >= 1; {fix}")
    if name != step_folder(step):
        raise SaescaleError(f"{ptr}: field 'folder' is {name!r}, expected {step_folder(step)!r} (field 'step' is "
                            f"{step}); {fix}")
    folder = ckdir / name
    if not folder.is_dir():
        raise SaescaleError(f"{ptr} points to missing {folder.name}; delete latest.json or start a new --out")
    return folder


def _clean(e: BaseException) -> str:
    """An exception's text on one line."""
    return " ".join(str(e).split())


def _read_json(folder: Path, name: str) -> Any:
    try:
        return json.loads((folder / name).read_text())
    except (OSError, ValueError) as e:
        raise damaged(folder, name, f"cannot be read ({_clean(e)})") from None


def _read_tensors(folder: Path, name: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(folder / name))
    except (SafetensorError, OSError, ValueError) as e:
        raise damaged(folder, name, f"cannot be read ({_clean(e)})") from None


def _agreed(mesh: Mesh, folder: Path, check: Callable[[], None], device: str) -> None:
    """Run ``check`` on every rank (each on its own rows); when it fails anywhere every rank stops, the
    failing ones with their own message, so no rank goes on to wait for the others in a collective."""
    try:
        check()
        err = None
    except SaescaleError as e:
        err = e
    bad = mesh.all_reduce(torch.tensor([0.0 if err is None else 1.0], device=device), "world")
    if err is not None:
        raise err
    if bad.item() > 0:
        raise damaged(folder, "DCP shards", "are damaged in rows another rank holds (see its error)")


def load_checkpoint(folder: Path, device: str = "cpu", mesh: Mesh | None = None, run: RunSettings | None = None,
                    ) -> tuple[SparseAutoencoder, dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint folder of either kind -> (this rank's SAE shard on ``mesh``, its state
    tensors, state meta), every field validated before use (:mod:`saescale.train.checkpoint_check`)
    against ``run`` (default: the settings in run.json of the run folder holding it); one-line errors
    if damaged."""
    mesh = mesh or Mesh.single()
    run = run or read_run_settings(folder.parent.parent)
    meta = _read_json(folder, "state.json")
    if is_dist_checkpoint(folder):
        cfg = validate_dcp_checkpoint(folder, run, meta, saved_tensors(folder))
        sae = build_sae(cfg, mesh).to(device)
        tensors = load_dcp(folder, mesh, sae.shard, device, row_sharded)
        _agreed(mesh, folder, lambda: check_tensor_values(folder, "DCP", tensors, meta, run), device)
    else:
        cfg_record = _read_json(folder, "cfg.json")
        weights, state = _read_tensors(folder, "sae.safetensors"), _read_tensors(folder, "state.safetensors")
        cfg = validate_checkpoint(folder, run, meta, cfg_record, SAE_FORMAT, weights, state)
        sae = build_sae(cfg, mesh).to(device)  # this rank's rows of the whole SAE
        s = sae.shard
        tensors = {k: v[s.lo : s.hi].clone() if row_sharded(k) and mesh.latent_shards > 1 else v
                   for k, v in {**weights, **state}.items()}
    with torch.no_grad():
        for k in sae.stored_names():
            getattr(sae, k).copy_(tensors.pop(k))
    return sae, tensors, meta
