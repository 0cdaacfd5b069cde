"""A data-parallel rank's part of the activation stream: disjoint rows of every global batch.

With D data replicas and a global batch of B rows, replica r takes rows [r b, (r+1) b) of every
global batch, b = B / D. The D replicas together see exactly the batches one process would
see with batch B, so the run is the single-process run (checked in tests/test_distributed.py).

How the rows are read depends on the source:

- a source with ``rows(position, count)`` (the activation cache, :class:`CacheReader`): only this
  replica's rows are read from the memory-mapped shards; replicas read disjoint rows;
- ``--acts cache`` under torchrun opens the cache without building it (:func:`built_cache`): every
  rank opens it at once, and harvesting is one process's job (``saescale cache``);
- any other :class:`BatchSource`: the replica draws the global batch and keeps its rows. For
  synthetic data that is cheap; for ``--acts stream`` every replica runs the model on the whole
  batch, so for real runs build a cache first (``saescale cache``).

The L ranks of one latent group hold the same replica's rows (they split latents, not tokens).
"""

from __future__ import annotations

from itertools import count
from pathlib import Path
from typing import Iterator

from torch import Tensor

from saescale.activations.config import ActivationConfig
from saescale.data.source import BatchSource
from saescale.errors import SaescaleError


class DataParallelSlice:
    """Replica ``rank`` of ``ranks``: its rows of every global batch of ``source`` (a BatchSource)."""

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


def built_cache(cfg: ActivationConfig) -> Path:
    """The folder of the complete activation cache for ``cfg``, checked against ``cfg`` without the
    writer's lock (all ranks open it at once); a one-line error when it is missing or unfinished."""
    from saescale.activations.lm import model_fingerprint
    from saescale.activations.manifest import MANIFEST, check_compatible, default_cache_dir, read_manifest

    folder = Path(cfg.cache_dir or default_cache_dir(cfg)).expanduser()
    manifest = read_manifest(folder) if (folder / MANIFEST).is_file() else None
    if manifest is None or not manifest["complete"]:
        raise SaescaleError(
            f"the activation cache {folder} is not built yet; build it in one process first ('saescale cache' with the "
            "same --model/--hook/--corpus/--n-tokens... options), then launch the distributed run again"
        )
    check_compatible(manifest, cfg, model_fingerprint(cfg.model), folder)
    return folder
