"""Checkpoints of a distributed run with ``torch.distributed.checkpoint`` (DCP), re-sharded on load.

Layout of ``OUT/checkpoints/`` (as in one process, :mod:`saescale.train.checkpoint`)::

    step-000000500/   .metadata, __<rank>_0.distcp   DCP: every rank writes its own rows; replicated
                                                     tensors are written once
                      state.json                     {"format": "saescale-dcp-v1", step, tokens seen, loss
                                                     scale, EMA count, SAE config, layout that wrote it}
    latest.json       {"folder": ..., "step": ...}   written last, by rank 0

The state has the keys of a single-process checkpoint: the parameters W_enc, b_enc, W_dec, b_pre
and :meth:`Trainer.state_tensors` (Adam moments and steps, since_fired, EMA, RNG). Row-sharded
tensors (:func:`~saescale.distributed.sharded_sae.row_sharded`) are saved as DTensors split by
rows over the mesh's latent dim and replicated over its data dim; the others as plain tensors.

Loading builds the same keys, with shapes and dtypes from the checkpoint's metadata, as this
run's layout needs them (rows [lo, hi) of each sharded tensor, the whole of the others) and DCP
reads each rank's part whatever layout wrote it: 4 latent shards can resume 2 shards' run, and
one process (no process group) reads whole tensors. The folder is written under a temporary
name and renamed by rank 0 once every rank's files and the metadata are complete, so a kill at
any moment leaves the previous checkpoint valid.
"""

from __future__ import annotations

import json
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor

from saescale.atomic import atomic_write_json
from saescale.configs import config_to_dict
from saescale.distributed.mesh import Mesh, error_reason
from saescale.distributed.sharded_sae import LatentShard, row_sharded
from saescale.errors import SaescaleError
from saescale.sae.config import SAEConfig
from saescale.train.checkpoint import publish_checkpoint

FORMAT = "saescale-dcp-v1"


def is_dist_checkpoint(folder: Path) -> bool:
    """Whether a checkpoint folder was written by a distributed run (DCP metadata present)."""
    return (folder / ".metadata").is_file()


@contextmanager
def _dcp_call(mesh: Mesh, what: str) -> Iterator[None]:
    """One-line errors from DCP (which wraps failures in CheckpointException) and no single-process warning."""
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        with mesh.guard(what), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*assuming the intent is to .* in a single process")
            yield
    except CheckpointException as e:
        raise SaescaleError(f"rank {mesh.rank}: {what} failed ({error_reason(e)}); see the other ranks' errors, "
                            "then rerun the same command to resume from the previous checkpoint") from None


def _as_dcp(tensors: dict[str, Tensor], mesh: Mesh, n: int) -> dict[str, Tensor]:
    """Row-sharded tensors as DTensors (n, ...) split over the latent dim; the rest as they are."""
    if mesh.device_mesh is None:
        return dict(tensors)
    from torch.distributed.tensor import DTensor, Replicate, Shard

    out = {}
    for k, t in tensors.items():
        if row_sharded(k):
            shape = torch.Size([n, *t.shape[1:]])
            out[k] = DTensor.from_local(t.contiguous(), mesh.device_mesh, [Replicate(), Shard(0)], run_check=False,
                                        shape=shape, stride=torch.empty(shape, device="meta").stride())
        else:
            out[k] = t
    return out


def save_dist_checkpoint(root: Path, mesh: Mesh, sae_cfg: SAEConfig, tensors: dict[str, Tensor],
                         meta: dict[str, Any], keep: int) -> Path:
    """Write ``root/checkpoints/step-N`` from every rank's local ``tensors`` (collective); rank 0
    adds state.json, renames it into place, points latest.json at it and prunes to ``keep``."""
    ckdir = root / "checkpoints"
    name = f"step-{meta['step']:09d}"
    tmp, final = ckdir / f".{name}.tmp-dist", ckdir / name
    if mesh.rank == 0:
        ckdir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    mesh.barrier("preparing a checkpoint folder")
    import torch.distributed.checkpoint as dcp  # here: a 3 s import that one process never needs

    with _dcp_call(mesh, f"writing checkpoint {name}"):
        dcp.save(_as_dcp(tensors, mesh, sae_cfg.n), checkpoint_id=str(tmp))  # returns once .metadata is written
    if mesh.rank == 0:
        layout = {"world": mesh.world, "latent_shards": mesh.latent_shards}
        atomic_write_json(tmp / "state.json", {**meta, "format": FORMAT, "sae": config_to_dict(sae_cfg), "layout": layout})
        publish_checkpoint(tmp, ckdir, name, meta["step"], keep)
    return final


def read_dist_meta(folder: Path) -> dict[str, Any]:
    """state.json of a distributed checkpoint; one-line error if missing or damaged."""
    try:
        meta = json.loads((folder / "state.json").read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
    except (OSError, ValueError) as e:
        raise SaescaleError(f"checkpoint {folder} is damaged ({e}); delete it to fall back to an older one") from None
    return meta


def load_dist_checkpoint(folder: Path, mesh: Mesh, shard: LatentShard,
                         device: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """This rank's tensors (rows [lo, hi) of the row-sharded ones, the others whole) and the meta, from a
    checkpoint written with any layout."""
    import torch.distributed.checkpoint as dcp

    meta = read_dist_meta(folder)
    try:
        saved = dcp.FileSystemReader(str(folder)).read_metadata().state_dict_metadata
    except Exception as e:  # noqa: BLE001 (any damage to the metadata file)
        raise SaescaleError(f"checkpoint {folder} has damaged DCP metadata ({error_reason(e)}); "
                            "delete it to fall back to an older one") from None
    local = {}
    for key, md in saved.items():
        shape = list(md.size)
        if row_sharded(key):
            if shape[0] != shard.n:
                raise SaescaleError(f"checkpoint {folder}: {key} has {shape[0]} rows, this run has n={shard.n}")
            shape[0] = shard.size
        local[key] = torch.empty(shape, dtype=md.properties.dtype, device="cpu" if key.startswith("rng.") else device)
    state = _as_dcp(local, mesh, shard.n)
    with _dcp_call(mesh, f"reading checkpoint {folder.name}"):
        dcp.load(state, checkpoint_id=str(folder))
    return {k: v.to_local() if hasattr(v, "to_local") else v for k, v in state.items()}, meta
