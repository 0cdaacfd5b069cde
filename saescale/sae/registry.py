"""Architectures by name. The name is written into cfg.json and picks the class on load."""

from __future__ import annotations

from typing import Callable

from saescale.distributed.mesh import Mesh
from saescale.errors import SaescaleError
from saescale.sae.base import SparseAutoencoder
from saescale.sae.config import SAEConfig

REGISTRY: dict[str, type[SparseAutoencoder]] = {}


def register(name: str) -> Callable[[type[SparseAutoencoder]], type[SparseAutoencoder]]:
    def wrap(cls: type[SparseAutoencoder]) -> type[SparseAutoencoder]:
        cls.arch = name
        REGISTRY[name] = cls
        return cls

    return wrap


def build_sae(cfg: SAEConfig, mesh: Mesh | None = None) -> SparseAutoencoder:
    """Instantiate the architecture named by ``cfg.arch`` on ``mesh`` (this rank's rows; default one
    process), weights zero: see saescale.train.init."""
    import saescale.sae.relu  # noqa: F401  (registers)
    import saescale.sae.topk  # noqa: F401

    if cfg.arch not in REGISTRY:
        raise SaescaleError(f"unknown SAE architecture {cfg.arch!r}; choose one of {sorted(REGISTRY)}")
    return REGISTRY[cfg.arch](cfg, mesh)
