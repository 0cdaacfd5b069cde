"""Reused CPU memory for the kernels: named scratch buffers and a pool of recycled gradients.

Why: glibc hands allocations above its mmap threshold (at most 32 MB) straight to the
kernel and returns them on free, so every fresh (n, d) gradient or (B, chunk) block is
page-faulted in again on every step. On this 2-core machine a fresh (16384, 576) float32
tensor costs ~12 ms before its first write (``torch.empty(...).fill_`` 13 ms against 1 ms
for a reused one); a training step made ~10 of them. CUDA has PyTorch's caching allocator,
so both helpers below only cache CPU memory and allocate plainly elsewhere.

* :func:`scratch` returns a buffer owned by this module, the same memory on every call with
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

import torch
from torch import Tensor

POOL_DEPTH = 2  # recycled tensors kept per (shape, dtype): a step has at most two (n, d) gradients

_scratch: dict[tuple[int, str, torch.dtype], Tensor] = {}  # (thread, name, dtype) -> flat buffer
_pool: dict[tuple[tuple[int, ...], torch.dtype], list[Tensor]] = {}


def _cached(device: torch.device) -> bool:
    return device.type == "cpu"


def scratch(name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """An uninitialised tensor of ``shape``, the same memory for every call with this ``name`` (CPU)."""
    numel = math.prod(shape)
    if not _cached(device):
        return torch.empty(shape, dtype=dtype, device=device)
    key = (threading.get_ident(), name, dtype)
    buf = _scratch.get(key)
    if buf is None or buf.numel() < numel:
        _scratch.pop(key, None)  # free the old one first: peak memory is one buffer, not two
        buf = _scratch[key] = torch.empty(numel, dtype=dtype)
    return buf[:numel].view(shape)


def recycle(t: Tensor | None) -> None:
    """Give a tensor back for reuse by :func:`take`. The caller must own it outright (no other
    reference, no view): its memory will be overwritten. CPU dense contiguous tensors only."""
    if t is None or not _cached(t.device) or t.layout != torch.strided or not t.is_contiguous():
        return
    kept = _pool.setdefault((tuple(t.shape), t.dtype), [])
    if len(kept) < POOL_DEPTH and all(k.data_ptr() != t.data_ptr() for k in kept):
        kept.append(t)


def take(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """An uninitialised tensor of ``shape``: a recycled one when the pool has it, else a new one."""
    kept = _pool.get((tuple(shape), dtype)) if _cached(device) else None
    return kept.pop() if kept else torch.empty(shape, dtype=dtype, device=device)


def release() -> None:
    """Free every cached buffer and pooled tensor (e.g. after training, before a memory-hungry job)."""
    _scratch.clear()
    _pool.clear()
