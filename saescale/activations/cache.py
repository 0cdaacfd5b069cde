"""The on-disk activation cache: build it (:func:`build_cache`) and read it (:class:`CacheReader`).

Format and checks: :mod:`saescale.activations.manifest`; writer: :mod:`~saescale.activations.cache_write`;
reader: :mod:`~saescale.activations.cache_read`.
"""

from saescale.activations.cache_read import CacheReader, built_cache
from saescale.activations.cache_write import build_cache
from saescale.activations.manifest import default_cache_dir

__all__ = ["CacheReader", "build_cache", "built_cache", "default_cache_dir"]
