"""``saescale cache``: build (or resume, or repair) an activation cache, verify it, print a summary."""

from __future__ import annotations

from saescale.activations.cache_write import build_cache
from saescale.activations.config import ActivationConfig
from saescale.activations.manifest import MANIFEST
from saescale.commands.progress import ProgressBar


def run_cache(cfg: ActivationConfig) -> None:
    """Build, resume or repair the cache for ``cfg``: every existing shard is checked by sha256
    (damaged ones are rebuilt) and every shard written now is read back and checked."""
    bar = ProgressBar(desc="cache")
    try:
        path = build_cache(cfg, progress=bar, verify=True, log=bar.write)
    finally:
        bar.close()
    print(f"verified: every shard matches its sha256 in {path / MANIFEST}")
