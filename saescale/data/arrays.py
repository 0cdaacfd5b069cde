"""Your own activations as a :class:`~saescale.data.source.BatchSource`: an (N, d) tensor or array in
memory, an ``.npy`` / ``.safetensors`` / ``.pt`` file, or a folder of such shards (memory-mapped, see
:mod:`saescale.data.array_files`). ``saescale train --acts FILE_OR_FOLDER`` trains on one.

Split: the LAST rows are held out (``heldout``: a fraction of N, default 5%, at least one row, or a
count of rows), the rest is trained on. Rows next to each other usually come from the same text, so a
tail split keeps held-out tokens away from the training tokens' contexts (a seeded row subset would
not); a file sorted by something else (a label, a layer) should be shuffled before it is saved.

Order: epoch e of a split visits its rows in the permutation ``numpy.random.default_rng([seed, e])``
draws (``[seed, e, 1]`` for the held-out split): every row exactly once per epoch. The epochs are one
stream cut into batches (a batch may span two epochs), so batch b is stream rows [b B, (b+1) B) and
``batches(B, start=s)`` starts there without reading the batches before. Memory: one permutation of the
split (8 bytes a row) and one batch; a batch's rows are read in file order and a file mapping's pages
handed back after each read.

Example (a notebook)::

    import torch
    from saescale.data.arrays import ArraySource
    from saescale.sae.config import SAEConfig
    from saescale.train.config import TrainConfig
    from saescale.train.run import train_sae

    acts = torch.load("acts.pt")                 # (N, d) float tensor, or ArraySource("acts.npy")
    src = ArraySource(acts, seed=0)              # the last 5% of the rows held out
    result = train_sae(SAEConfig(n=4096, k=32), TrainConfig(tokens=10_000_000), src, "runs/mine",
                       extra=src.provenance())   # recorded in runs/mine/sae/cfg.json
    held = src.heldout().read_all()["acts"]      # (N_held, d) float32, in file order
"""

from __future__ import annotations

from itertools import accumulate, count
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from saescale.data.array_files import Shard, check_widths, memory_shard, open_path
from saescale.errors import SaescaleError

HELDOUT_FRACTION = 0.05
"""Fraction of the rows (the last ones) held out by default."""

SPLITS = ("train", "heldout")
_READ_ROWS = 65_536  # rows per read of read_all


def heldout_rows(n: int, heldout: float | int) -> int:
    """Rows held out of ``n``: a float in [0, 1) is a fraction (rounded, at least 1 if positive), an int a count."""
    if isinstance(heldout, bool) or not isinstance(heldout, (int, float)) or heldout < 0 or (
            isinstance(heldout, float) and heldout >= 1):
        raise SaescaleError(f"heldout must be a fraction in [0, 1) or a row count >= 0, got {heldout!r}")
    h = heldout if isinstance(heldout, int) else (max(1, round(heldout * n)) if heldout > 0 else 0)
    if n - h < 1:
        raise SaescaleError(f"the activations have {n} row(s), too few to hold out {h} and train on the rest: "
                            "give more rows (at least 2)")
    return h


class ArraySource:
    """One split of (N, d) activations: shuffled float32 (batch_size, d) batches, restartable.

    ``data``: a torch tensor or numpy array (N, d) (not copied; a GPU tensor gives batches on its
    device), a path (file or folder of shards), or a list of arrays / paths (shards, concatenated in
    that order). ``heldout``: see :func:`heldout_rows`; ``seed``: the order; ``split``: 'train' or
    'heldout'. Attributes: ``d``, ``n_tokens`` (rows of this split), ``rows_total`` (N), ``lo`` (first
    row of the split), ``shards``.
    """

    def __init__(self, data: Any, seed: int = 0, heldout: float | int = HELDOUT_FRACTION, split: str = "train",
                 _shards: list[Shard] | None = None):
        if split not in SPLITS:
            raise SaescaleError(f"unknown split '{split}'; use one of {', '.join(SPLITS)}")
        self.source, self.seed, self.heldout_given, self.split = data, seed, heldout, split
        self.shards = _shards if _shards is not None else _open(data)
        self.d = self.shards[0].d
        self.offsets = [0, *accumulate(s.n for s in self.shards)]  # shard i holds rows offsets[i]:offsets[i+1]
        self.rows_total = self.offsets[-1]
        self.n_heldout = heldout_rows(self.rows_total, heldout)
        train = self.rows_total - self.n_heldout
        self.lo, self.n_tokens = (0, train) if split == "train" else (train, self.n_heldout)
        if self.n_tokens == 0:
            raise SaescaleError("no rows are held out (heldout=0): pass a positive heldout fraction or count")
        self._perm_epoch, self._perm = -1, np.empty(0, np.int64)

    def heldout(self) -> "ArraySource":
        """The held-out split of the same data (the same shards, not reopened)."""
        return ArraySource(self.source, self.seed, self.heldout_given, "heldout", _shards=self.shards)

    def provenance(self) -> dict[str, Any]:
        """What an SAE trained on these activations records (``extra`` of :func:`~saescale.train.run.train_sae`):
        the files (path, tensor name, shape, dtype), N, d, and the split."""
        return {"source": "arrays", "arrays": {
            "files": [s.record for s in self.shards], "rows": self.rows_total, "d": self.d,
            "split": {"rule": "last rows held out", "heldout": self.heldout_given,
                      "train_rows": self.rows_total - self.n_heldout, "heldout_rows": self.n_heldout}}}

    def _order(self, epoch: int) -> np.ndarray:
        """The split's row numbers (from 0) in epoch ``epoch``'s visiting order (kept for the next call)."""
        if epoch != self._perm_epoch:
            key = [self.seed, epoch] if self.split == "train" else [self.seed, epoch, 1]
            self._perm_epoch, self._perm = epoch, np.random.default_rng(key).permutation(self.n_tokens)
        return self._perm

    def rows(self, position: int, count: int) -> torch.Tensor:
        """Stream rows [position, position + count) as float32 (count, d): what ``batches`` yields there.
        A data-parallel rank reads its slice of every global batch this way."""
        parts = []
        while count > 0:
            epoch, skip = divmod(position, self.n_tokens)
            take = min(count, self.n_tokens - skip)
            parts.append(self.read(self._order(epoch)[skip : skip + take] + self.lo))
            position, count = position + take, count - take
        return parts[0] if len(parts) == 1 else torch.cat(parts) if parts else torch.empty(0, self.d)

    def batches(self, batch_size: int, start: int = 0) -> Iterator[torch.Tensor]:
        """Shuffled float32 (batch_size, d) batches forever; ``start`` skips that many without reading them."""
        if batch_size <= 0 or start < 0:
            raise SaescaleError(f"batch size must be positive and start non-negative, got {batch_size} and {start}")
        return (self.rows(b * batch_size, batch_size) for b in count(start))

    def read(self, rows: np.ndarray) -> torch.Tensor:
        """float32 (len(rows), d): the global rows ``rows`` (any order, int64), read in file order; one-line
        error naming the file and row if any holds NaN/inf."""
        if len(rows) == 0:
            return torch.empty(0, self.d)
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        bounds = np.searchsorted(ordered, self.offsets)
        parts = []
        for i, s in enumerate(self.shards):
            a, b = bounds[i], bounds[i + 1]
            if a < b:
                parts.append(s.take(ordered[a:b] - self.offsets[i]))
        x = torch.cat(parts) if len(parts) != 1 else parts[0]
        out = torch.empty_like(x)
        out[torch.from_numpy(order).to(x.device)] = x
        self._check_finite(out, rows)
        return out

    def _check_finite(self, x: torch.Tensor, rows: np.ndarray) -> None:
        if torch.isfinite(x.sum()) or torch.isfinite(x).all():  # one sum; the entrywise test only if it is not finite
            return
        bad = np.sort(rows[(~torch.isfinite(x)).any(dim=1).cpu().numpy()])
        i = int(np.searchsorted(self.offsets, bad[0], side="right")) - 1
        more = f" and {len(bad) - 1} more row(s) of this batch" if len(bad) > 1 else ""
        raise SaescaleError(f"{self.shards[i].name}: row {int(bad[0] - self.offsets[i])}{more} hold NaN/inf; drop or "
                            "fix those rows (e.g. keep acts[numpy.isfinite(acts).all(axis=1)]) and rerun")

    def read_all(self, max_tokens: int | None = None) -> dict[str, torch.Tensor]:
        """The split's first ``max_tokens`` rows (all by default) in file order: {"acts": (n, d) float32}."""
        if max_tokens is not None and max_tokens <= 0:
            raise SaescaleError(f"max_tokens must be positive, got {max_tokens}")
        n = self.n_tokens if max_tokens is None else min(max_tokens, self.n_tokens)
        parts = [self.read(np.arange(lo, min(lo + _READ_ROWS, n), dtype=np.int64) + self.lo)
                 for lo in range(0, n, _READ_ROWS)]
        return {"acts": torch.cat(parts)}


def _open(data: Any) -> list[Shard]:
    """Shards of ``data``: an array, a path, or a list of them (concatenated), all of one width."""
    items: Sequence[Any] = data if isinstance(data, (list, tuple)) else [data]
    if not items:
        raise SaescaleError("no activations given: pass an (N, d) tensor or array, a path, or a list of them")
    shards: list[Shard] = []
    for j, item in enumerate(items):
        if isinstance(item, (str, Path)):
            shards += open_path(item)
        else:
            shards.append(memory_shard(item, "<memory>" if len(items) == 1 else f"<memory #{j}>"))
    check_widths(shards)
    return shards
