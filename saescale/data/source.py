"""The one thing the trainer needs from data: a restartable stream of activation batches."""

from __future__ import annotations

from itertools import islice
from typing import Iterable, Iterator, Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class BatchSource(Protocol):
    """A deterministic, restartable stream of (batch_size, d) activation batches.

    ``batches(bs, start=s)`` must yield exactly what ``batches(bs)`` yields from
    its s-th batch on, so a resumed run sees the same data as an uninterrupted one.
    """

    d: int

    def batches(self, batch_size: int, start: int = 0) -> Iterator[Tensor]: ...


class IterableSource:
    """Wrap any re-iterable of (B, d) tensors (batch size fixed by the iterable); resuming skips by consuming."""

    def __init__(self, data: Iterable[Tensor], d: int):
        self.data, self.d = data, d

    def batches(self, batch_size: int, start: int = 0) -> Iterator[Tensor]:
        return islice(iter(self.data), start, None)
