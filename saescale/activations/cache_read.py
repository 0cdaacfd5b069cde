"""Read an activation cache: shuffled float32 batches with bounded memory, samples, and whole splits.

Shuffling (deterministic in ``seed`` and the epoch): epoch e visits the shards in a permutation
drawn from ``rng([seed, e])``, groups them ``buffer_shards`` at a time into windows, and emits
each window's tokens in a permutation drawn from ``rng([seed, e, w])``. The stream of epochs
is cut into batches (a batch may span two epochs), so batch b is stream tokens
``[b*B, (b+1)*B)`` and ``batches(B, start=s)`` can jump straight to window and offset.
Only one window (copied out of the memory-mapped shards) and one batch are held in memory.
"""

from __future__ import annotations

from itertools import accumulate
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from safetensors.torch import load_file

from saescale.activations.config import ActivationConfig
from saescale.activations.corpus import SPLITS
from saescale.activations.manifest import (
    META_KEYS, REBUILD, STATS, TORCH_DTYPES, open_shard, raw_dtype, read_manifest, shard_problem, sha256_file, to_torch,
    verify_checksums,
)
from saescale.errors import SaescaleError


class CacheReader:
    """One split of the activation cache at ``path``, checked on open: sizes and headers, and the
    sha256 of every shard of the split and of the statistics file, re-hashing only the files changed
    since a reader last verified them (:func:`~saescale.activations.manifest.verify_checksums`; the
    first open of a cache reads it all once).

    A transcoder's cache (built with a target hook) gives rows [x | y]: the source hook's activations
    and the target hook's side by side, ``d`` = d_model + ``d_target`` (``d_target`` None otherwise);
    ``side='target'`` reads its target hook's activations alone (an SAE on the transcoder's target).

    Attributes: ``d`` (width of a row), ``n_tokens``, ``manifest`` (dict), ``dtype`` (storage dtype),
    ``stats`` (float64 train-split summary: mean_sq_norm, mean_norm, centered_mean_sq_norm, ...),
    ``max_buffer_tokens`` (largest window loaded so far, for memory checks), ``hashed`` (files
    whose sha256 this open computed).
    """

    def __init__(self, path: str | Path, split: str = "train", seed: int = 0, buffer_shards: int = 4,
                 side: str = "both"):
        if split not in SPLITS:
            raise SaescaleError(f"unknown cache split '{split}'; use one of {', '.join(SPLITS)}")
        self.path, self.split, self.seed, self.buffer_shards = Path(path), split, seed, max(1, buffer_shards)
        self.manifest = read_manifest(self.path)
        if not self.manifest["complete"]:
            raise SaescaleError(f"activation cache at {self.path} is incomplete; rerun `saescale cache` with the same options to finish it")
        self.stored_target = self.manifest.get("d_target")  # width of the shards' target array, None without one
        self.d_model, self.dtype = self.manifest["d_model"], TORCH_DTYPES[self.manifest["dtype"]]
        if side not in ("both", "target") or (side == "target" and self.stored_target is None):
            raise SaescaleError(f"cache at {self.path} has no target hook to read alone; train on its hook "
                                f"'{self.manifest['hook']}' instead")
        self.side = side
        self.d_target = self.stored_target if side == "both" else None
        self.d = self.stored_target if side == "target" else self.d_model + (self.d_target or 0)
        self.stats = self.manifest["stats"]
        self.shards = self.manifest["splits"][split]["shards"]
        for entry in self.shards:
            self._check(entry, checksum=False)
        self.hashed = verify_checksums(self.path, self._checksummed())
        self.sizes = [e["n_tokens"] for e in self.shards]
        self.offsets = [0, *accumulate(self.sizes)]  # shard i holds tokens offsets[i]:offsets[i+1]
        self.n_tokens = self.offsets[-1]
        if self.n_tokens == 0:
            raise SaescaleError(f"activation cache at {self.path} has no {split} tokens; rebuild it with a larger --n-tokens or --val-fraction")
        self.max_buffer_tokens = 0
        self._perm_key, self._perm = None, None  # (epoch, window) and its row permutation, for ``rows``

    def _checksummed(self) -> list[tuple[str, str]]:
        """(file, manifest sha256) of this split's shards and of the statistics file."""
        files = [(e["file"], e["sha256"]) for e in self.shards]
        if isinstance(self.stats, dict) and self.stats.get("sha256"):
            files.append((STATS, self.stats["sha256"]))
        return files

    def _check(self, entry: dict, checksum: bool) -> None:
        problem = shard_problem(self.path, entry, self.d_model, self.manifest["dtype"], checksum, self.stored_target)
        if problem:
            raise SaescaleError(f"cache shard {self.path / entry['file']} {problem}; {REBUILD}")

    def verify(self) -> None:
        """Check every shard of this split and the statistics file against their sha256 (reads them all)."""
        for entry in self.shards:
            self._check(entry, checksum=True)
        if sha256_file(self.path / STATS) != self.stats["sha256"]:
            raise SaescaleError(f"{self.path / STATS} fails its sha256 checksum; {REBUILD}")

    def channel_stats(self) -> dict[str, torch.Tensor]:
        """Float64 ``mean`` and ``var`` (d,) of the train split's activations."""
        return load_file(self.path / STATS)

    def _acts(self, i: int, rows=None) -> np.ndarray:
        """Raw (n_i, d) bits of shard i's activations (``rows`` of them), memory-mapped; a transcoder's cache
        joins each row's input and target, [x | y] (a copy)."""
        arrays = open_shard(self.path / self.shards[i]["file"])
        if self.side == "target":
            arrays = {"acts": arrays["target"]}
        acts = arrays["acts"] if rows is None else arrays["acts"][rows]
        if self.d_target is None:
            return acts
        target = arrays["target"] if rows is None else arrays["target"][rows]
        return np.concatenate([acts, target], axis=1)

    def _windows(self, epoch: int) -> list[list[int]]:
        """Shard indices of each window of ``epoch``, in visiting order."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards)).tolist()
        return [order[i : i + self.buffer_shards] for i in range(0, len(order), self.buffer_shards)]

    def _load(self, shards: list[int]) -> torch.Tensor:
        """(sum of sizes, d) activations of ``shards`` in storage dtype, concatenated in that order."""
        n = sum(self.sizes[i] for i in shards)
        self.max_buffer_tokens = max(self.max_buffer_tokens, n)
        buf = np.empty((n, self.d), dtype=raw_dtype(self.manifest["dtype"]))
        lo = 0
        for i in shards:
            buf[lo : lo + self.sizes[i]] = self._acts(i)
            lo += self.sizes[i]
        return torch.from_numpy(buf).view(self.dtype)

    def _segments(self, position: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(window (n, d), row order (m,)) pieces of the shuffled stream from token ``position`` on, forever."""
        epoch, skip = divmod(position, self.n_tokens)
        while True:
            lo = 0
            for w, shards in enumerate(self._windows(epoch)):
                n = sum(self.sizes[i] for i in shards)
                if skip < lo + n:
                    perm = torch.from_numpy(np.random.default_rng([self.seed, epoch, w]).permutation(n))
                    window = self._load(shards)
                    yield window, perm[max(skip - lo, 0) :]
                    del window  # free it before the next window loads
                lo += n
            epoch, skip = epoch + 1, 0

    def batches(self, batch_size: int, start: int = 0) -> Iterator[torch.Tensor]:
        """Shuffled float32 (batch_size, d) batches forever; ``start`` skips that many batches without reading them."""
        if batch_size <= 0 or start < 0:
            raise SaescaleError(f"batch size must be positive and start non-negative, got {batch_size} and {start}")
        carry = torch.empty(0, self.d)
        for window, order in self._segments(start * batch_size):
            i = min(batch_size - len(carry), len(order))
            carry = torch.cat([carry, window[order[:i]].float()])
            if len(carry) == batch_size:
                yield carry
                while i + batch_size <= len(order):
                    yield window[order[i : i + batch_size]].float()
                    i += batch_size
                carry = window[order[i:]].float()
            del window  # so the next window can replace it

    def rows(self, position: int, count: int) -> torch.Tensor:
        """Stream tokens ``[position, position + count)`` as float32 (count, d): the rows ``batches``
        yields there, read straight from the memory-mapped shards (only these rows, no window).
        A data-parallel rank reads its disjoint slice of every global batch this way."""
        parts = []
        while count > 0:
            epoch, skip = divmod(position, self.n_tokens)
            lo = 0
            for w, shards in enumerate(self._windows(epoch)):
                n = sum(self.sizes[i] for i in shards)
                if skip < lo + n:
                    break
                lo += n
            take = min(count, lo + n - skip)
            if self._perm_key != (epoch, w):  # one window's permutation, kept for the next call
                self._perm_key, self._perm = (epoch, w), np.random.default_rng([self.seed, epoch, w]).permutation(n)
            parts.append(self._window_rows(shards, self._perm[skip - lo : skip - lo + take]))
            position, count = position + take, count - take
        return torch.cat(parts) if parts else torch.empty(0, self.d)

    def _window_rows(self, shards: list[int], rows: np.ndarray) -> torch.Tensor:
        """float32 (len(rows), d): rows of the concatenation of ``shards`` (window row numbers)."""
        ends = np.cumsum([self.sizes[i] for i in shards])
        which = np.searchsorted(ends, rows, side="right")
        out = torch.empty(len(rows), self.d)
        for j, i in enumerate(shards):
            sel = np.nonzero(which == j)[0]
            if len(sel):
                local = rows[sel] - (ends[j] - self.sizes[i])
                out[torch.from_numpy(sel)] = to_torch(self._acts(i, local), self.dtype).float()
        return out

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """(n, d) float32 activations drawn uniformly without replacement, in random order; one shard mapped at a time."""
        if not 0 < n <= self.n_tokens:
            raise SaescaleError(f"cannot sample {n} tokens from a cache of {self.n_tokens}; build a larger cache (--n-tokens)")
        idx = np.random.default_rng(seed).choice(self.n_tokens, size=n, replace=False)
        order = np.argsort(idx, kind="stable")
        sorted_idx = idx[order]
        out = torch.empty(n, self.d)
        bounds = np.searchsorted(sorted_idx, self.offsets)
        for i in range(len(self.shards)):
            a, b = bounds[i], bounds[i + 1]
            if a < b:
                rows = self._acts(i, sorted_idx[a:b] - self.offsets[i])
                out[torch.from_numpy(order[a:b])] = to_torch(rows, self.dtype).float()
        return out

    def iter_shards(self) -> Iterator[dict[str, torch.Tensor]]:
        """Each shard in file order: ``acts`` (n, d) float32 (a transcoder's cache: rows [x | y]) and ``tokens``,
        ``doc``, ``pos``, ``ctx`` (n,) long."""
        for i, entry in enumerate(self.shards):
            arrays = open_shard(self.path / entry["file"])
            out = {k: torch.from_numpy(np.array(arrays[k], dtype=np.int64)) for k in META_KEYS}
            out["acts"] = to_torch(self._acts(i), self.dtype).float()
            yield out

    def read_all(self, max_tokens: int | None = None) -> dict[str, torch.Tensor]:
        """The split's first ``max_tokens`` tokens (all by default), unshuffled: acts (n, d) float32, tokens/doc/pos/ctx (n,) long."""
        if max_tokens is not None and max_tokens <= 0:
            raise SaescaleError(f"max_tokens must be positive, got {max_tokens}")
        limit = self.n_tokens if max_tokens is None else min(max_tokens, self.n_tokens)
        parts, have = [], 0
        for shard in self.iter_shards():
            if have >= limit:
                break
            parts.append({k: v[: limit - have] for k, v in shard.items()})
            have += len(parts[-1]["acts"])
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def built_cache(cfg: ActivationConfig) -> Path:
    """The folder of the complete activation cache for ``cfg``, checked against ``cfg`` without the
    writer's lock (all ranks of a distributed run open it at once; harvesting is one process's job,
    ``saescale cache``); a one-line error when it is missing or unfinished."""
    from saescale.activations.lm import model_fingerprint
    from saescale.activations.manifest import (
        MANIFEST,
        check_compatible,
        default_cache_dir,
        read_manifest,
    )

    folder = Path(cfg.cache_dir or default_cache_dir(cfg)).expanduser()
    manifest = read_manifest(folder) if (folder / MANIFEST).is_file() else None
    if manifest is None or not manifest["complete"]:
        raise SaescaleError(
            f"the activation cache {folder} is not built yet; build it in one process first ('saescale cache' with the "
            "same --model/--hook/--corpus/--n-tokens... options), then launch the distributed run again"
        )
    check_compatible(manifest, cfg, model_fingerprint(cfg.model), folder)
    return folder
