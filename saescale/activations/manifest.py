"""An activation cache folder: layout, manifest, shard files, their checks, and the writer's lock.

A cache folder::

    manifest.json                  what was cached, from what, and every shard's size + sha256
    stats.safetensors              float64 per-channel ``mean`` and ``var`` (d,) of the train split
    train/shard_00000.safetensors  ...
    val/shard_00000.safetensors    ...
    verified.json                  which files readers found matching their sha256, and at what
                                   size, mtime and ctime (see :func:`verify_checksums`)

Shard ``i`` of a split holds tokens ``[i * shard_tokens, (i + 1) * shard_tokens)`` of that
split's token stream: ``acts`` (N, d) in the cache dtype and ``tokens``, ``doc``, ``pos``,
``ctx`` (N,) int32 (token id, document index in the corpus, position in the context, context
index in :func:`~saescale.activations.corpus.tokenize_contexts` order). The manifest lists one
entry per planned shard, ``null`` until the shard is written; ``complete`` is true once every
shard and the statistics are written.

Manifest keys: ``format``, ``complete``, ``config`` (the ActivationConfig fields but cache_dir:
model, model_dtype resolved ('float32' or 'bfloat16', never 'auto'; a manifest without it was
built in float32), hook as asked, corpus, context_len, keep_first, prepend_bos, n_tokens, cache_dtype,
shard_tokens, harvest_batch, val_fraction), ``model_fingerprint``, ``hook`` (resolved),
``d_model``, ``dtype``, ``seed``, (a transcoder's cache only: ``target_hook`` resolved and ``d_target``,
with a second array ``target`` (N, d_target) per shard: the target hook's activations of the same tokens), ``corpus_fingerprint``, ``n_documents``,
``tokens_per_context``, ``splits`` ({train, val}: ``n_tokens``, ``n_contexts``, ``shards``:
[{file, n_tokens, bytes, sha256} or null]) and ``stats`` (train split, float64: n_tokens,
mean_sq_norm = E‖x‖², mean_norm = E‖x‖, mean_vec_sq_norm = ‖E x‖², centered_mean_sq_norm =
E‖x − E x‖², file, sha256).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from saescale.activations.config import ActivationConfig
from saescale.activations.corpus import SPLITS
from saescale.activations.lm import saescale_home
from saescale.activations.precision import LEGACY, recorded_model_dtype, resolve_model_dtype
from saescale.atomic import atomic_write_json
from saescale.errors import SaescaleError

FORMAT = 1
MANIFEST = "manifest.json"
STATS = "stats.safetensors"
META_KEYS = ("tokens", "doc", "pos", "ctx")
# Options that change what the cache holds; a cache is reused only if they all match.
IDENTITY = ("corpus", "context_len", "keep_first", "prepend_bos", "n_tokens", "cache_dtype", "shard_tokens", "val_fraction")
TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_ST_CODES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32"}
_RAW = {"F16": np.int16, "BF16": np.int16, "F32": np.int32, "I32": np.int32}  # numpy stand-ins, same width
REBUILD = "rerun `saescale cache` with the same options to rebuild it"


def shard_file(split: str, i: int) -> str:
    """Path of shard ``i`` of ``split``, relative to the cache folder."""
    return f"{split}/shard_{i:05d}.safetensors"


def _slug(spec: str) -> str:
    """Short file-name-safe form of a model or corpus spec: basename of its first item, ``+N`` for N more."""
    items = [s.strip() for s in spec.split(",") if s.strip()] or [spec]
    base = re.sub(r"[^A-Za-z0-9._]+", "_", Path(items[0].rstrip("/")).name or items[0])[:32]
    return base + (f"+{len(items) - 1}" if len(items) > 1 else "")


def default_cache_dir(cfg: ActivationConfig) -> Path:
    """``$SAESCALE_HOME/acts/<model>-<hook>-<corpus>-ctx<T>-<n_tokens>-<dtype>-<hash of the other options>``.

    The hash covers the resolved model dtype only when it is not float32, so caches built before
    the option existed (float32) keep their folder and a bfloat16 model's cache gets another one.
    """
    ident = {k: getattr(cfg, k) for k in ("model", "hook", *IDENTITY)}
    if cfg.target_hook:  # only then: an SAE's cache keeps its folder
        ident["target_hook"] = cfg.target_hook
    model_dtype = resolve_model_dtype(cfg.model_dtype)
    if model_dtype != LEGACY:
        ident["model_dtype"] = model_dtype
    ident = json.dumps(ident, sort_keys=True)
    hook = _slug(cfg.hook or "auto") + (f"_to_{_slug(cfg.target_hook)}" if cfg.target_hook else "")
    parts = [_slug(cfg.model), hook, _slug(cfg.corpus), f"ctx{cfg.context_len}",
             str(cfg.n_tokens), cfg.cache_dtype, hashlib.sha256(ident.encode()).hexdigest()[:8]]
    return saescale_home() / "acts" / "-".join(parts)


def config_record(cfg: ActivationConfig) -> dict:
    """The options stored in the manifest (all but ``cache_dir``, which is where, not what), with
    ``model_dtype`` resolved (the dtype the model really ran in)."""
    record = dataclasses.asdict(cfg)
    record.pop("cache_dir")
    if not record["target_hook"]:  # an SAE's cache: the manifest as before transcoders, byte for byte
        record.pop("target_hook")
    record["model_dtype"] = resolve_model_dtype(cfg.model_dtype)
    return record


MANIFEST_FIELDS = {"complete": bool, "config": dict, "corpus_fingerprint": str, "d_model": int, "dtype": str,
                   "format": int, "hook": str, "model_fingerprint": str, "n_documents": int, "seed": int,
                   "splits": dict, "stats": (dict, type(None)), "tokens_per_context": int}  # stats: None until complete
SPLIT_FIELDS = {"n_contexts": int, "n_tokens": int, "shards": list}


def check_fields(manifest: dict) -> None:
    """ValueError naming the first field of a manifest (or of one of its splits) that is missing or of the wrong type."""
    for fields, record, where in [(MANIFEST_FIELDS, manifest, "")] + [
            (SPLIT_FIELDS, manifest.get("splits", {}).get(s), f"splits.{s}.") for s in SPLITS]:
        if not isinstance(record, dict):
            raise ValueError(f"field '{where.rstrip('.')}' is not an object")
        for key, tp in fields.items():
            value = record.get(key)
            if key not in record or not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
                raise ValueError(f"field '{where}{key}' is {'missing' if key not in record else repr(value)[:40]}")


def read_manifest(folder: Path) -> dict:
    """The parsed manifest of the cache at ``folder``; SaescaleError if missing or corrupt."""
    path = folder / MANIFEST
    if not path.is_file():
        raise SaescaleError(f"no activation cache at {folder} (missing {MANIFEST}); run `saescale cache` to build it")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ValueError("unknown format")
        check_fields(manifest)
    except (ValueError, KeyError, TypeError) as e:
        raise SaescaleError(f"{path} is corrupt ({e}); delete {folder} and run `saescale cache` to rebuild it") from None
    return manifest


def write_manifest(folder: Path, manifest: dict) -> None:
    atomic_write_json(folder / MANIFEST, manifest)


def check_compatible(manifest: dict, cfg: ActivationConfig, fingerprint: str, folder: Path) -> None:
    """SaescaleError unless the cache at ``folder`` holds what ``cfg`` asks for."""
    fix = f"pass another --cache-dir or delete {folder}"
    old = manifest["config"]
    if manifest["model_fingerprint"] != fingerprint:
        raise SaescaleError(f"cache at {folder} was built from model '{old['model']}' ({manifest['model_fingerprint']}), not '{cfg.model}' ({fingerprint}); {fix}")
    if cfg.hook not in (old["hook"], manifest["hook"]):
        raise SaescaleError(f"cache at {folder} was built at hook '{manifest['hook']}', not '{cfg.hook or 'default'}'; pass --hook {manifest['hook']} or {fix}")
    if cfg.target_hook not in (old.get("target_hook", ""), manifest.get("target_hook", "")):
        built_target = manifest.get("target_hook") or "none"
        raise SaescaleError(f"cache at {folder} was built with target hook '{built_target}', not "
                            f"'{cfg.target_hook or 'none'}' (--target-hook); {fix}")
    built, wanted = recorded_model_dtype(old), resolve_model_dtype(cfg.model_dtype)
    if built != wanted:
        raise SaescaleError(f"cache at {folder} was built with a {built} model, not {wanted} (--model-dtype {cfg.model_dtype}); pass --model-dtype {built} or {fix}")
    for key in IDENTITY:
        if old[key] != getattr(cfg, key):
            raise SaescaleError(f"cache at {folder} was built with --{key.replace('_', '-')} {old[key]}, not {getattr(cfg, key)}; {fix}")


def read_header(path: Path) -> tuple[dict, int]:
    """(tensor table, byte offset of the data section) of safetensors file ``path``; ValueError if unreadable."""
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < n < 1 << 24:
            raise ValueError("no safetensors header")
        raw = f.read(n)
    if len(raw) != n:
        raise ValueError("truncated header")
    table = json.loads(raw)
    table.pop("__metadata__", None)
    return table, 8 + n


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def shard_problem(folder: Path, entry: dict, d: int, dtype: str, checksum: bool = False,
                  d_target: int | None = None) -> str | None:
    """What is wrong with the shard ``entry`` describes (None if nothing).

    Checks existence, byte size and the header's tensor names, dtypes and shapes; with
    ``checksum`` also the sha256 of the whole file (reads it all).
    """
    path = folder / entry["file"]
    if not path.is_file():
        return "is missing"
    size = path.stat().st_size
    if size != entry["bytes"]:
        return f"has {size} bytes, expected {entry['bytes']} (truncated or overwritten)"
    want = {"acts": (_ST_CODES[dtype], [entry["n_tokens"], d])}
    if d_target is not None:  # a transcoder's cache: the target hook's activations of the same tokens
        want["target"] = (_ST_CODES[dtype], [entry["n_tokens"], d_target])
    want.update({k: ("I32", [entry["n_tokens"]]) for k in META_KEYS})
    try:
        table, start = read_header(path)
        got = {k: (v["dtype"], v["shape"]) for k, v in table.items()}
        end = max(v["data_offsets"][1] for v in table.values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "has a corrupt header"
    if got != want or start + end != size:
        return "has unexpected contents (corrupt header)"
    if checksum and sha256_file(path) != entry["sha256"]:
        return "fails its sha256 checksum (corrupted)"
    return None


VERIFIED = "verified.json"
VERIFIED_FORMAT = 1
DAMAGED = "run 'saescale cache' with the same options to rebuild damaged shards"


def _stamp(path: Path, sha256: str) -> dict:
    """What must be unchanged for a file once verified to count as verified: size, mtime, ctime, and the
    manifest's sha256 it was checked against (a rebuilt shard gets another)."""
    st = path.stat()
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "sha256": sha256}


def read_verified(folder: Path) -> dict[str, dict]:
    """File (relative to the cache folder) -> its stamp when last verified; empty if none or unreadable."""
    try:
        record = json.loads((folder / VERIFIED).read_text())
    except (OSError, ValueError):
        return {}
    files = record.get("files") if isinstance(record, dict) and record.get("format") == VERIFIED_FORMAT else None
    return files if isinstance(files, dict) else {}


def _write_verified(folder: Path, stamps: dict[str, dict]) -> None:
    """Add ``stamps`` to the folder's verified.json (atomic); nothing on a folder we cannot write (read-only)."""
    try:
        atomic_write_json(folder / VERIFIED, {"format": VERIFIED_FORMAT, "files": {**read_verified(folder), **stamps}})
    except (OSError, SaescaleError):  # read-only cache: every open verifies again
        pass


def verify_checksums(folder: Path, files: list[tuple[str, str]]) -> int:
    """Check each (file, manifest sha256) of the cache at ``folder`` against its sha256, unless
    verified.json records it verified at its present size, mtime and ctime; record the ones hashed now.
    Returns how many files were hashed. A mismatch is a one-line SaescaleError naming the file.

    So the first open of a cache reads every shard once and later opens only stat them. An edit that
    keeps a file's size and restores its mtime (``touch -d``, ``os.utime``) still changes its ctime,
    which no system call sets back, so it is hashed again; only an edit that also turns back the ctime
    (the system clock) goes unseen here and is caught by ``saescale cache``, which hashes every file
    whatever verified.json says. A cache folder that cannot be written (read-only) is hashed on every
    open, without a verified.json and without an error.
    """
    known, fresh = read_verified(folder), {}
    for file, sha256 in files:
        path = folder / file
        stamp = _stamp(path, sha256)
        if known.get(file) == stamp:
            continue
        if sha256_file(path) != sha256:
            what = "cache shard" if file != STATS else "cache statistics file"
            raise SaescaleError(f"{what} {path} fails its sha256 checksum (its contents changed since the cache "
                                f"was built); {DAMAGED}")
        fresh[file] = stamp
    if fresh:
        _write_verified(folder, fresh)
    return len(fresh)


def open_shard(path: Path) -> dict[str, np.memmap]:
    """Zero-copy read-only maps of a shard's tensors, as same-width numpy integers.

    ``acts`` (N, d) is int16 (float16/bfloat16) or int32 (float32) bits: view it with
    :func:`to_torch`. Maps are not cached; drop them to release the file.
    """
    table, start = read_header(path)
    return {
        name: np.memmap(path, dtype=_RAW[info["dtype"]], mode="r", offset=start + info["data_offsets"][0], shape=tuple(info["shape"]))
        for name, info in table.items()
    }


def raw_dtype(dtype: str) -> type:
    """Numpy integer type holding the bits of cache dtype ``dtype`` (numpy lacks bfloat16)."""
    return _RAW[_ST_CODES[dtype]]


def to_torch(bits: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """A torch tensor of ``dtype`` over (a copy of) the raw integer ``bits`` from :func:`open_shard`."""
    return torch.from_numpy(np.array(bits, copy=True)).view(dtype)


def warn(message: str) -> None:
    """Print a one-line warning to stderr."""
    print(f"warning: {message}", file=sys.stderr)


def find_todo(folder: Path, manifest: dict, checksum: bool) -> dict[str, list[int]]:
    """Split -> indices of shards not yet written, missing, or damaged (warning for each damaged one)."""
    todo: dict[str, list[int]] = {}
    for split in SPLITS:
        todo[split] = []
        for i, entry in enumerate(manifest["splits"][split]["shards"]):
            problem = entry and shard_problem(folder, entry, manifest["d_model"], manifest["dtype"], checksum,
                                              manifest.get("d_target"))
            if problem:
                warn(f"{folder / entry['file']} {problem}; rebuilding it")
            if entry is None or problem:
                todo[split].append(i)
    return todo


def stats_ok(folder: Path, manifest: dict, checksum: bool) -> bool:
    """True if the recorded statistics file is there (and, with ``checksum``, intact)."""
    stats, path = manifest["stats"], folder / STATS
    if stats is None:
        return False
    if path.is_file() and (not checksum or sha256_file(path) == stats["sha256"]):
        return True
    warn(f"{path} is missing or damaged; recomputing it")
    return False


@contextmanager
def locked(folder: Path):
    """Hold an exclusive lock on ``folder``, creating it (the OS releases the lock even on SIGKILL)."""
    if folder.exists() and not folder.is_dir():
        raise SaescaleError(f"{folder} is a file; pass a folder as --cache-dir")
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_CREAT | os.O_RDWR)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SaescaleError(f"another process is writing the cache at {folder}; wait for it or pass another --cache-dir") from None
        yield
    finally:
        os.close(fd)


def _is_scratch(path: Path) -> bool:
    return path.name == ".lock" or (path.name.startswith(".") and path.name.endswith(".tmp"))


def existing_manifest(folder: Path, cfg: ActivationConfig, fingerprint: str) -> dict | None:
    """The manifest of the cache at ``folder`` if it matches ``cfg``; None for an empty folder."""
    if not (folder / MANIFEST).exists():
        if any(not _is_scratch(p) for p in folder.iterdir()):
            raise SaescaleError(f"{folder} is not empty and has no {MANIFEST}, so it is not an activation cache; pass an empty or new --cache-dir")
        return None
    manifest = read_manifest(folder)
    check_compatible(manifest, cfg, fingerprint, folder)
    return manifest


def remove_scratch(folder: Path) -> None:
    """Delete temp files left by a killed run (call with the lock held)."""
    for sub in (folder, *(folder / s for s in SPLITS)):
        for path in sub.glob(".*.tmp") if sub.is_dir() else ():
            path.unlink()
