"""The paper's metrics; each metric's settings are a small config beside it (DownstreamConfig in downstream.py, ...)."""

from __future__ import annotations

from typing import Callable, Iterable, TypeVar


T = TypeVar("T")
Track = Callable[[Iterable[T], str, int], Iterable[T]]  # (items, what, how many) -> the same items, reported


def untracked(items: Iterable[T], desc: str, total: int) -> Iterable[T]:
    """The default progress callback of the eval loops: report nothing (the CLI passes a tqdm bar)."""
    return items

