"""Reused CPU memory for the kernels: named scratch buffers and a pool of recycled gradients.

Why: glibc hands allocations above its mmap threshold (at most 32 MB) straight to the
kernel and returns them on free, so every fresh (n, d) gradient or (B, chunk) block is
page-faulted in again on every step. On this 2-core machine a fresh (16384, 576) float32
tensor costs ~12 ms before its first write (``torch.empty(...).fill_`` 13 ms against 1 ms
for a reused one); a training step made ~10 of them. CUDA has PyTorch's caching allocator,
so both helpers below only cache CPU memory and allocate plainly elsewhere.

A :class:`Workspace` owns the memory and its owner (the trainer) installs it around each step
with :func:`using`; the kernels ask for memory through the module functions below, which
allocate plainly when no workspace is installed (e.g. evaluation, a user's own forward).

* :func:`scratch` returns a buffer owned by the workspace, the same memory on every call with
  the same name: for temporaries that never leave a kernel (selection blocks, candidates).
  Each thread has its own buffers; the contents are undefined on return.
* :func:`recycle` takes a tensor its caller owns outright (nobody else holds it or a view of
  it) and :func:`take` hands one of the same shape back out, for outputs that leave a kernel:
  the trainer recycles last step's (n, d) gradients and the sparse backward writes this
  step's into them (autograd then stores them as ``.grad`` without a copy).
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

import torch
from torch import Tensor

POOL_DEPTH = 2  # recycled tensors kept per (shape, dtype): a step has at most two (n, d) gradients


def _cached(device: torch.device) -> bool:
    return device.type == "cpu"


class Workspace:
    """Named per-thread scratch buffers and a pool of recycled tensors (CPU; elsewhere plain allocation)."""

    def __init__(self) -> None:
        self._scratch: dict[tuple[int, str, torch.dtype], Tensor] = {}  # (thread, name, dtype) -> flat buffer
        self._pool: dict[tuple[tuple[int, ...], torch.dtype], list[Tensor]] = {}

    def scratch(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        """An uninitialised tensor of ``shape``, the same memory for every call with this ``name`` (CPU)."""
        numel = math.prod(shape)
        if not _cached(device):
            return torch.empty(shape, dtype=dtype, device=device)
        key = (threading.get_ident(), name, dtype)
        buf = self._scratch.get(key)
        if buf is None or buf.numel() < numel:
            self._scratch.pop(key, None)  # free the old one first: peak memory is one buffer, not two
            buf = self._scratch[key] = torch.empty(numel, dtype=dtype)
        return buf[:numel].view(shape)

    def recycle(self, t: Tensor | None) -> None:
        """Give a tensor back for reuse by :meth:`take`. The caller must own it outright (no other
        reference, no view): its memory will be overwritten. CPU dense contiguous tensors only."""
        if t is None or not _cached(t.device) or t.layout != torch.strided or not t.is_contiguous():
            return
        kept = self._pool.setdefault((tuple(t.shape), t.dtype), [])
        if len(kept) < POOL_DEPTH and all(k.data_ptr() != t.data_ptr() for k in kept):
            kept.append(t)

    def take(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        """An uninitialised tensor of ``shape``: a recycled one when the pool has it, else a new one."""
        kept = self._pool.get((tuple(shape), dtype)) if _cached(device) else None
        return kept.pop() if kept else torch.empty(shape, dtype=dtype, device=device)

    def release(self) -> None:
        """Free every cached buffer and pooled tensor."""
        self._scratch.clear()
        self._pool.clear()


_active: ContextVar[Workspace | None] = ContextVar("saescale_workspace", default=None)


@contextmanager
def using(ws: Workspace) -> Iterator[Workspace]:
    """Serve the kernels' memory requests from ``ws`` inside the block."""
    token = _active.set(ws)
    try:
        yield ws
    finally:
        _active.reset(token)


def scratch(name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """The installed workspace's buffer ``name`` (see :meth:`Workspace.scratch`), or a new tensor."""
    ws = _active.get()
    return ws.scratch(name, shape, dtype, device) if ws else torch.empty(shape, dtype=dtype, device=device)


def take(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """A recycled tensor of the installed workspace (see :meth:`Workspace.take`), or a new one."""
    ws = _active.get()
    return ws.take(shape, dtype, device) if ws else torch.empty(shape, dtype=dtype, device=device)
