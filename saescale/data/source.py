"""The one thing the trainer needs from data: a restartable stream of activation batches."""

from __future__ import annotations

from itertools import count
from typing import Iterator, Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class BatchSource(Protocol):
    """A deterministic, restartable stream of (batch_size, d) activation batches.

    ``batches(bs, start=s)`` must yield exactly what ``batches(bs)`` yields from
    its s-th batch on, so a resumed run sees the same data as an uninterrupted one.
    """

    d: int

    def batches(self, batch_size: int, start: int = 0) -> Iterator[Tensor]: ...


class DataParallelSlice:
    """Replica ``rank`` of ``ranks``: its rows of every global batch of ``source``.

    With D replicas and a global batch of B rows, replica r takes rows [r b, (r+1) b) of every
    global batch, b = B / D, so the D replicas together see exactly the batches one process
    would see with batch B. A source with ``rows(position, count)`` (the activation cache) reads
    only this replica's rows; any other draws the global batch and keeps its rows (cheap for
    synthetic data; for a live model stream every replica runs the model on the whole batch).
    """

    def __init__(self, source: BatchSource, rank: int, ranks: int):
        self.source, self.rank, self.ranks = source, rank, ranks
        self.d = source.d

    def batches(self, batch_size: int, start: int = 0) -> Iterator[Tensor]:
        """This replica's (batch_size, d) rows of global batches start, start + 1, ...
        (a global batch is batch_size * ranks rows)."""
        if self.ranks == 1:
            return self.source.batches(batch_size, start)
        B, lo = batch_size * self.ranks, self.rank * batch_size
        if hasattr(self.source, "rows"):
            return (self.source.rows(i * B + lo, batch_size) for i in count(start))
        return (x[lo : lo + batch_size] for x in self.source.batches(B, start))
