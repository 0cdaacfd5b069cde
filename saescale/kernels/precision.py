"""The encoder selection's precision, installed around a training step by its owner (the trainer).

* ``float32``: the selection's matmul in float32 (:func:`~saescale.kernels.select.select_topk_fp32`).
* ``bfloat16``: candidates from a bfloat16 matmul, rescored in float32 and certified, so the selected
  latents equal float32's (:mod:`saescale.kernels.bf16_select`): exact, a bf16 matmul (2.6-4.4x float32's on
  the two AVX512-BF16 machines of benchmarks/README.md) where the hardware multiplies bf16 natively.
* ``autocast``: the top-k of the bfloat16 pre-activations as they are, no extra candidates and no
  certificate (values rescored in float32): approximate, like the bf16 autocast of other trainers.

Outside a :func:`using` block (evaluation, a user's own forward) the selection is float32. Parameters,
gradients, Adam and the sparse backward are float32 in every mode.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Iterator

PRECISIONS = ("float32", "bfloat16", "autocast")


@dataclass
class SelectionStats:
    """Rows the bf16 selection saw inside a :func:`using` block, and how many it redid in float32."""

    rows: int = 0
    fallback_rows: int = 0


_active: ContextVar[tuple[str, SelectionStats | None]] = ContextVar("saescale_selection_precision",
                                                                    default=("float32", None))


@contextmanager
def using(precision: str) -> Iterator[SelectionStats]:
    """Select with ``precision`` (one of :data:`PRECISIONS`) inside the block; yields its counters."""
    if precision not in PRECISIONS:
        raise ValueError(f"selection precision {precision!r} is not one of {PRECISIONS}")
    stats = SelectionStats()
    token = _active.set((precision, stats))
    try:
        yield stats
    finally:
        _active.reset(token)


def active() -> str:
    """The precision installed by :func:`using` (float32 outside one)."""
    return _active.get()[0]


def record(rows: int, fallback_rows: int) -> None:
    """Count a bf16 selection's rows and its float32 redos in the installed block's stats (none: dropped)."""
    stats = _active.get()[1]
    if stats is not None:
        stats.rows += rows
        stats.fallback_rows += fallback_rows
