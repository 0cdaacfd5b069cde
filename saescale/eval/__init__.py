"""The paper's metrics; each metric's settings are a small config beside it (DownstreamConfig in downstream.py, ...)."""

from __future__ import annotations

from typing import Any, Callable, Iterable, TypeVar

from saescale.errors import SaescaleError

T = TypeVar("T")
Track = Callable[[Iterable[T], str, int], Iterable[T]]  # (items, what, how many) -> the same items, reported


def untracked(items: Iterable[T], desc: str, total: int) -> Iterable[T]:
    """The default progress callback of the eval loops: report nothing (the CLI passes a tqdm bar)."""
    return items


def require_positive(cfg: Any, option_prefix: str, *names: str) -> None:
    """One-line error naming the option (``--<option_prefix><name>``) of the first field in ``names`` that is <= 0."""
    for name in names:
        if getattr(cfg, name) <= 0:
            raise SaescaleError(f"--{option_prefix}{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}")
