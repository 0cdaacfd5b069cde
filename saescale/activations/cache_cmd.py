"""``saescale cache``: build (or resume, or repair) an activation cache, verify it, print a summary."""

from __future__ import annotations

from saescale.activations.cache_write import build_cache
from saescale.activations.config import ActivationConfig
from saescale.activations.manifest import MANIFEST


def run_cache(cfg: ActivationConfig) -> None:
    """Build, resume or repair the cache for ``cfg``: every existing shard is checked by sha256
    (damaged ones are rebuilt) and every shard written now is read back and checked."""
    path = build_cache(cfg, progress=True, verify=True)
    print(f"verified: every shard matches its sha256 in {path / MANIFEST}")
