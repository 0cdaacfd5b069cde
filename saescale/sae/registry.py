"""Architectures by name. The name is written into cfg.json and picks the class on load."""

from __future__ import annotations

from typing import Callable

from saescale.distributed.mesh import Mesh
from saescale.errors import SaescaleError
from saescale.sae.base import SparseAutoencoder
from saescale.sae.config import ARCHS, SAEConfig

REGISTRY: dict[str, type[SparseAutoencoder]] = {}


def register(name: str) -> Callable[[type[SparseAutoencoder]], type[SparseAutoencoder]]:
    def wrap(cls: type[SparseAutoencoder]) -> type[SparseAutoencoder]:
        cls.arch = name
        REGISTRY[name] = cls
        return cls

    return wrap


def load_all() -> dict[str, type[SparseAutoencoder]]:
    """Import every architecture's module (each registers itself); the registry, checked against
    :data:`saescale.sae.config.ARCHS` (the names the config accepts)."""
    import saescale.sae.batchtopk  # noqa: F401  (registers)
    import saescale.sae.gated  # noqa: F401
    import saescale.sae.jumprelu  # noqa: F401
    import saescale.sae.matryoshka  # noqa: F401
    import saescale.sae.prolu  # noqa: F401
    import saescale.sae.relu  # noqa: F401
    import saescale.sae.switch  # noqa: F401
    import saescale.sae.topk  # noqa: F401

    assert set(REGISTRY) == set(ARCHS), (sorted(REGISTRY), ARCHS)
    return REGISTRY


def arch_class(name: str) -> type[SparseAutoencoder]:
    """The class registered as ``name``; one line naming the registered ones otherwise."""
    load_all()
    if name not in REGISTRY:
        raise SaescaleError(f"unknown SAE architecture {name!r}; choose one of {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def sae_class(cfg: SAEConfig) -> type[SparseAutoencoder]:
    """The class of the SAE ``cfg`` describes: its architecture's, or its transcoder form's when ``cfg.d_out``
    is set (saescale.sae.transcoder)."""
    cls = arch_class(cfg.arch)
    if cfg.d_out is None:
        return cls
    from saescale.sae.transcoder import TRANSCODERS

    return TRANSCODERS[(cfg.arch, cfg.skip)]


def build_sae(cfg: SAEConfig, mesh: Mesh | None = None) -> SparseAutoencoder:
    """Instantiate the architecture named by ``cfg.arch`` (a transcoder when ``cfg.d_out`` is set) on ``mesh``
    (this rank's rows; default one process), weights zero: see saescale.train.init."""
    return sae_class(cfg)(cfg, mesh)
