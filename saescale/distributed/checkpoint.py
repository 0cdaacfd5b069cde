"""Shards of a distributed run's checkpoint with ``torch.distributed.checkpoint`` (DCP), re-sharded on load.

A distributed checkpoint folder (laid out and published by :mod:`saescale.train.checkpoint`)::

    step-000000500/   .metadata, __<rank>_0.distcp   DCP: every rank writes its own rows; replicated
                                                     tensors are written once
                      state.json                     step, tokens seen, loss scale, EMA count, SAE
                                                     config, layout that wrote it (rank 0)

Row-sharded tensors (the caller says which: ``sharded(name)``) are saved as DTensors split by
rows over the mesh's latent dim and replicated over its data dim; the others as plain tensors.

Loading builds the same keys, with shapes and dtypes from the checkpoint's metadata (which the
caller checks against its run first: :func:`saved_tensors`), as this run's layout needs them
(rows [lo, hi) of each sharded tensor, the whole of the others) and DCP reads each rank's part
whatever layout wrote it: 4 latent shards can resume 2 shards' run, and one process (no process
group) reads whole tensors.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import Tensor

from saescale.distributed.mesh import LatentShard, Mesh, error_reason
from saescale.errors import SaescaleError

Sharded = Callable[[str], bool]  # whether the tensor of a name is split by latent rows


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


def _as_dcp(tensors: dict[str, Tensor], mesh: Mesh, n: int, sharded: Sharded) -> dict[str, Tensor]:
    """Row-sharded tensors as DTensors (n, ...) split over the latent dim; the rest as they are."""
    if mesh.device_mesh is None:
        return dict(tensors)
    from torch.distributed.tensor import DTensor, Replicate, Shard

    out = {}
    for k, t in tensors.items():
        if sharded(k):
            shape = torch.Size([n, *t.shape[1:]])
            out[k] = DTensor.from_local(t.contiguous(), mesh.device_mesh, [Replicate(), Shard(0)], run_check=False,
                                        shape=shape, stride=torch.empty(shape, device="meta").stride())
        else:
            out[k] = t
    return out


def save_dcp(folder: Path, mesh: Mesh, tensors: dict[str, Tensor], n: int, sharded: Sharded) -> None:
    """Every rank writes its local ``tensors`` into the empty ``folder`` (collective; returns once
    .metadata is written)."""
    import torch.distributed.checkpoint as dcp  # here: a 3 s import that one process never needs

    with _dcp_call(mesh, f"writing checkpoint {folder.name}"):
        dcp.save(_as_dcp(tensors, mesh, n, sharded), checkpoint_id=str(folder))


def _read_metadata(folder: Path) -> dict:
    """The DCP metadata of ``folder`` (name -> storage metadata); one-line error if damaged."""
    import torch.distributed.checkpoint as dcp

    try:
        return dcp.FileSystemReader(str(folder)).read_metadata().state_dict_metadata
    except Exception as e:  # noqa: BLE001 (any damage to the metadata file)
        raise SaescaleError(f"checkpoint {folder} has damaged DCP metadata ({error_reason(e)}); "
                            f"delete it and {folder.parent / 'latest.json'} to fall back to an older one") from None


def saved_tensors(folder: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype] | None]:
    """What a DCP folder holds, from its metadata alone (no shard read): name -> (global shape, dtype),
    None for an entry that is not a tensor."""
    out: dict[str, tuple[tuple[int, ...], torch.dtype] | None] = {}
    for key, md in _read_metadata(folder).items():
        size, props = getattr(md, "size", None), getattr(md, "properties", None)
        out[key] = (tuple(size), props.dtype) if size is not None and props is not None else None
    return out


def load_dcp(folder: Path, mesh: Mesh, shard: LatentShard, device: str, sharded: Sharded) -> dict[str, Tensor]:
    """This rank's tensors (rows [lo, hi) of the row-sharded ones, the others whole) from a DCP folder
    written with any layout (its metadata checked first: :func:`saved_tensors`)."""
    import torch.distributed.checkpoint as dcp

    saved = _read_metadata(folder)
    local = {}
    for key, md in saved.items():
        shape = list(md.size)
        if sharded(key):
            if shape[0] != shard.n:
                raise SaescaleError(f"checkpoint {folder}: {key} has {shape[0]} rows, this run has n={shard.n}")
            shape[0] = shard.size
        local[key] = torch.empty(shape, dtype=md.properties.dtype, device="cpu" if key.startswith("rng.") else device)
    state = _as_dcp(local, mesh, shard.n, sharded)
    with _dcp_call(mesh, f"reading checkpoint {folder.name}"):
        dcp.load(state, checkpoint_id=str(folder))
    return {k: v.to_local() if hasattr(v, "to_local") else v for k, v in state.items()}
