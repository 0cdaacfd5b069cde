"""The paper's metrics; each metric's settings are a small config beside it (DownstreamConfig in downstream.py, ...)."""

from __future__ import annotations

from typing import Any

from saescale.errors import SaescaleError


def require_positive(cfg: Any, option_prefix: str, *names: str) -> None:
    """One-line error naming the option (``--<option_prefix><name>``) of the first field in ``names`` that is <= 0."""
    for name in names:
        if getattr(cfg, name) <= 0:
            raise SaescaleError(f"--{option_prefix}{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}")
