"""(N, d) activation arrays, in memory or memory-mapped from files, read a set of rows at a time.

Files: ``.npy`` (``np.load(mmap_mode='r')``), ``.safetensors`` (checked with ``safe_open``, the tensor's
bytes memory-mapped at the offset its header gives) and ``.pt`` (``torch.load(weights_only=True,
mmap=True)`` only: a pickle of arbitrary objects is refused, never unpickled). A folder holds such files
(shards, all of one width), taken in the order of their names; other files in it are ignored.

A ``.safetensors`` file or a ``.pt`` dict with several tensors: the one named ``acts`` (the activation
cache's name) if there is one, else its only 2-D tensor; several 2-D tensors and none named ``acts`` is
a one-line error.

Reading rows through a memory map faults pages into this process, and they count in its RSS: measured
(benchmarks/README.md), 4096 random rows of a freshly written 10 GB .npy mapped 5 GB at once (the kernel
maps whole large page-cache folios, ~1 MB per row). So the rows of .npy and .safetensors files, whose
bytes lie at a known offset, are read with ``os.preadv`` (one call per run of consecutive rows) into the
batch's own buffer: nothing of the file enters RSS. A .pt tensor (mapped by torch) is read 32 rows at a
time, each chunk's pages handed back (``madvise(MADV_DONTNEED)``; they stay in the page cache).
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import pickle
import struct
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from saescale.errors import SaescaleError, file_error, first_line

EXTENSIONS = (".npy", ".safetensors", ".pt")
FLOATS = ("float16", "bfloat16", "float32", "float64")
_ST_DTYPES = {"F16": (np.float16, None), "F32": (np.float32, None), "F64": (np.float64, None),
              "BF16": (np.uint16, torch.bfloat16)}  # numpy has no bfloat16: its bits as uint16, viewed in torch
_RESAVE = "save an (N, d) float array, e.g. numpy.save(path, acts) or torch.save(acts, path)"

_CHUNK = 32  # rows of a torch-mapped tensor read between page hand-backs
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
_MADV_DONTNEED = 4


def drop_pages(ptr: int, nbytes: int) -> None:
    """Hand back this process's pages of the mapped bytes [ptr, ptr + nbytes) (Linux; a no-op elsewhere).
    The range is widened to whole pages, which lie in the same mapping."""
    if _LIBC is None or nbytes <= 0:
        return
    start = ptr - ptr % mmap.PAGESIZE
    _LIBC.madvise(ctypes.c_void_p(start), ctypes.c_size_t(ptr + nbytes - start), _MADV_DONTNEED)


class Shard:
    """One (n, d) array whose rows are read on demand.

    ``data`` is a numpy array (maybe a memory map) or a torch tensor; ``view`` the torch dtype its bits
    stand for when numpy cannot hold it (bfloat16 as uint16); ``mapped``: backed by a file mapping (its
    pages are handed back after each read). ``record`` is what provenance says about it.
    """

    def __init__(self, data: np.ndarray | torch.Tensor, name: str, dtype: str, mapped: bool,
                 tensor: str | None = None, view: torch.dtype | None = None, offset: int | None = None):
        check_array(name, tuple(data.shape), dtype)
        self.data, self.name, self.dtype, self.mapped, self.tensor, self.view = data, name, dtype, mapped, tensor, view
        self.n, self.d = int(data.shape[0]), int(data.shape[1])
        c_order = isinstance(data, np.ndarray) and data.flags.c_contiguous
        self.offset = offset if c_order else None  # byte offset of row 0 in the file: rows read with preadv

    @property
    def record(self) -> dict[str, Any]:
        """{"path", "tensor" (the name inside the file, or None), "shape": [n, d], "dtype"}."""
        return {"path": self.name, "tensor": self.tensor, "shape": [self.n, self.d], "dtype": self.dtype}

    def take(self, rows: np.ndarray) -> torch.Tensor:
        """float32 (len(rows), d): the given rows (sorted, int64), copied out; a mapping's pages handed back."""
        if self.offset is not None:
            raw = torch.from_numpy(self._pread(rows))
        elif isinstance(self.data, torch.Tensor):
            if not self.mapped:
                return self.data.index_select(0, torch.from_numpy(rows).to(self.data.device)).float()
            parts = []
            for lo in range(0, len(rows), _CHUNK):  # a chunk's pages at a time, then handed back
                part = rows[lo : lo + _CHUNK]
                parts.append(self.data.index_select(0, torch.from_numpy(part)).float())
                self._release(int(part[0]), int(part[-1]) + 1)
            return torch.cat(parts) if parts else torch.empty(0, self.d)
        else:
            raw = torch.from_numpy(np.take(self.data, rows, axis=0))
            if self.mapped and len(rows):  # a memory map in Fortran order: its pages handed back
                self._release(int(rows[0]), int(rows[-1]) + 1)
        return (raw.view(self.view) if self.view is not None else raw).float()

    def _pread(self, rows: np.ndarray) -> np.ndarray:
        """The raw (len(rows), d) rows read from the file with one ``preadv`` per run of consecutive rows."""
        a = self.data
        out = np.empty((len(rows), self.d), dtype=a.dtype)
        row = self.d * a.dtype.itemsize
        starts = np.flatnonzero(np.diff(rows, prepend=-2) != 1)  # first index of each run
        ends = np.append(starts[1:], len(rows))
        view = memoryview(out.reshape(-1).view(np.uint8))
        fd = os.open(self.name, os.O_RDONLY)
        try:
            for i, j in zip(starts.tolist(), ends.tolist()):
                want = (j - i) * row
                got = os.preadv(fd, [view[i * row : j * row]], self.offset + int(rows[i]) * row)
                if got != want:
                    raise SaescaleError(f"{self.name} is shorter than its header says (row {int(rows[i])} is cut "
                                        "off): the file is truncated; write it again")
        finally:
            os.close(fd)
        return out

    def _release(self, lo: int, hi: int) -> None:
        """Hand back the mapped pages of rows [lo, hi) (all of the array's if its rows are not contiguous)."""
        a = self.data
        if isinstance(a, torch.Tensor):
            if a.is_contiguous():
                row = a.shape[1] * a.element_size()
                drop_pages(a.data_ptr() + lo * row, (hi - lo) * row)
            else:
                drop_pages(a.untyped_storage().data_ptr(), a.untyped_storage().nbytes())
        elif a.flags.c_contiguous:
            drop_pages(a.ctypes.data + lo * a.strides[0], (hi - lo) * a.strides[0])
        else:
            drop_pages(a.ctypes.data, a.nbytes)


def check_array(name: str, shape: tuple[int, ...], dtype: str) -> None:
    """One-line error unless ``shape`` is a non-empty (N, d) and ``dtype`` a float type."""
    if len(shape) != 2:
        raise SaescaleError(f"{name} holds an array of shape {shape}, not (N, d): {_RESAVE} (reshape to (-1, d) first)")
    if dtype not in FLOATS:
        raise SaescaleError(f"{name} holds {dtype} values; activations must be one of {', '.join(FLOATS)}: {_RESAVE}")
    if 0 in shape:
        raise SaescaleError(f"{name} holds an empty array of shape {shape}: it has no activations; remove it or "
                            "write the activations into it")


def memory_shard(data: Any, name: str = "<memory>") -> Shard:
    """A :class:`Shard` over an in-memory (n, d) torch tensor or numpy array (not copied)."""
    if isinstance(data, torch.Tensor):
        return Shard(data.detach(), name, str(data.dtype).removeprefix("torch."), mapped=False)
    if isinstance(data, np.ndarray):
        return Shard(data, name, data.dtype.name, mapped=False)
    raise SaescaleError(f"cannot read activations from a {type(data).__name__}: give an (N, d) torch tensor, "
                        "numpy array, or the path of a .npy / .safetensors / .pt file or of a folder of them")


def _npy(path: Path) -> Shard:
    try:
        a = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, EOFError) as e:  # pickled objects, a bad header, an empty file
        raise SaescaleError(f"{path} is not a readable .npy array ({first_line(e, 100)}): {_RESAVE}") from None
    if a.dtype.kind != "f":
        raise SaescaleError(f"{path} holds {a.dtype} values; activations must be one of {', '.join(FLOATS)}: {_RESAVE}")
    mapped = isinstance(a, np.memmap)
    return Shard(a, str(path), a.dtype.name, mapped=mapped, offset=a.offset if mapped else None)


def choose(path: Path, shapes: dict[str, Sequence[int]]) -> str:
    """The tensor of a file with several: 'acts' if there is one, else the only 2-D one (one-line error if none or several)."""
    if "acts" in shapes:
        return "acts"
    two_d = [k for k, s in shapes.items() if len(s) == 2]
    if len(two_d) == 1:
        return two_d[0]
    if not two_d:
        shown = ", ".join(f"{k} {tuple(s)}" for k, s in list(shapes.items())[:4]) or "no tensors"
        raise SaescaleError(f"{path} holds no 2-D tensor ({shown}): {_RESAVE} (reshape to (-1, d) first)")
    raise SaescaleError(f"{path} holds {len(two_d)} 2-D tensors ({', '.join(sorted(two_d)[:6])}): say which are the "
                        "activations by naming that tensor 'acts' (or keep one tensor per file)")


def _safetensors(path: Path) -> Shard:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:  # checks the header and the offsets
            shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
        with path.open("rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
    except (OSError, ValueError, struct.error) as e:
        if isinstance(e, OSError) and e.errno is not None:
            raise file_error(e, path, "read") from None
        raise SaescaleError(f"{path} is not a readable .safetensors file ({first_line(e, 100)}): {_RESAVE}") from None
    except Exception as e:  # noqa: BLE001 - safetensors' own error type (SafetensorError) is not exported stably
        raise SaescaleError(f"{path} is not a readable .safetensors file ({first_line(e, 100)}): {_RESAVE}") from None
    if not shapes:
        raise SaescaleError(f"{path} holds no tensors: it has no activations; {_RESAVE}")
    name = choose(path, shapes)
    info = header[name]
    if info["dtype"] not in _ST_DTYPES:
        raise SaescaleError(f"{path} tensor '{name}' holds {info['dtype']} values; activations must be one of "
                            f"{', '.join(FLOATS)}: {_RESAVE}")
    np_dtype, view = _ST_DTYPES[info["dtype"]]
    shape, dtype = tuple(info["shape"]), "bfloat16" if view else np.dtype(np_dtype).name
    check_array(f"{path} tensor '{name}'", shape, dtype)
    offset = 8 + size + info["data_offsets"][0]
    a = np.memmap(path, dtype=np_dtype, mode="r", offset=offset, shape=shape)
    return Shard(a, str(path), dtype, True, name, view, offset)


def _pt(path: Path) -> Shard:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        raise SaescaleError(f"{path} is a pickle that torch.load(weights_only=True) refuses: it holds objects, not only "
                            "tensors, and saescale never unpickles code; save just the (N, d) tensor "
                            "(torch.save(acts, path)) or use .npy / .safetensors") from None
    except (RuntimeError, EOFError, ValueError) as e:  # empty, truncated, the legacy (non-zip) format
        raise SaescaleError(f"{path} cannot be memory-mapped by torch.load(weights_only=True, mmap=True) "
                            f"({first_line(e, 100)}): re-save it with torch.save(acts, path) (torch >= 1.6), "
                            "or use .npy / .safetensors") from None
    key = None
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        key = choose(path, {str(k): tuple(v.shape) for k, v in obj.items()})
        obj = obj[key]
    if not isinstance(obj, torch.Tensor):
        raise SaescaleError(f"{path} holds a {type(obj).__name__}, not a tensor: save just the (N, d) tensor "
                            "(torch.save(acts, path)) or a dict of tensors with the activations under 'acts'")
    return Shard(obj, str(path), str(obj.dtype).removeprefix("torch."), mapped=True, tensor=key)


_OPENERS = {".npy": _npy, ".safetensors": _safetensors, ".pt": _pt}


def open_file(path: Path) -> Shard:
    """The (N, d) array in ``path`` (.npy / .safetensors / .pt), memory-mapped and checked."""
    if path.suffix not in _OPENERS:
        raise SaescaleError(f"{path}: unknown activation file type '{path.suffix}'; give a {', '.join(EXTENSIONS)} "
                            "file, a folder of them, or a built activation cache folder")
    try:
        if path.stat().st_size == 0:
            raise SaescaleError(f"{path} is empty (0 bytes): it holds no activations; write them into it (e.g. "
                                "numpy.save(path, acts)) or remove it")
        return _OPENERS[path.suffix](path)
    except OSError as e:
        raise file_error(e, path, "read") from None


def open_path(path: str | Path) -> list[Shard]:
    """The shards of a file, or of a folder's array files in name order; one-line error if it is missing,
    holds none, or they differ in width."""
    path = Path(path).expanduser().absolute()  # recorded as an absolute path
    if not path.exists():
        raise SaescaleError(f"activations {path} not found: give an activation file ({', '.join(EXTENSIONS)}), a "
                            "folder of them, or a built activation cache folder")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in EXTENSIONS and p.is_file() and not p.name.startswith("."))
        if not files:
            raise SaescaleError(f"{path} holds no activation files ({', '.join(EXTENSIONS)}) and is not an activation "
                                "cache (no manifest.json): give a file, a folder of them, or a built cache")
        shards = [open_file(p) for p in files]
    else:
        shards = [open_file(path)]
    check_widths(shards)
    return shards


def check_widths(shards: list[Shard]) -> None:
    """One-line error naming the first shard whose width differs from the first's."""
    for s in shards[1:]:
        if s.d != shards[0].d:
            raise SaescaleError(f"{s.name} has width {s.d} but {shards[0].name} has width {shards[0].d}: every shard "
                                "of the activations must have the same width d")
