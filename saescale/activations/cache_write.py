"""Build an activation cache: a model's activations at one hook over a corpus, in checksummed shards.

The plan is a pure function of the options, so every run writes byte-identical shards:

1. Documents are split into train / val by document (``split_documents``, seed ``SEED``).
2. Each split's contexts are shuffled (numpy generator seeded ``[SEED, split number]``); the
   split's token stream is the kept positions of those contexts, context after context.
3. Budgets: train gets ``n_tokens``; val gets ``ceil(val_fraction * n_tokens)``. Each is capped
   at what the split's documents hold (never cycled; one warning line) and the real count is
   recorded. A context cut by the budget contributes its first kept positions.
4. Contexts are run in fixed batches (batch j = contexts ``[j*B, (j+1)*B)`` of the split's order,
   B = ``harvest_batch`` recorded at the first run), so an activation comes from the same
   forward pass whichever shard a (resumed) run starts from.
5. Shard i holds stream tokens ``[i*S, (i+1)*S)``, S = ``shard_tokens``.

Shards and the manifest are written atomically, the manifest after each shard; a rerun
(after SIGKILL, or after a shard was lost or damaged) rebuilds only the missing shards.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from safetensors.torch import save as st_save

from saescale.activations.config import ActivationConfig
from saescale.activations.corpus import SPLIT_SEED, SPLITS, Contexts, split_documents
from saescale.activations.harvest import harvest_hooks, positions_kept
from saescale.activations.hooks import check_target, hook_width
from saescale.activations.lm import model_fingerprint
from saescale.activations.lm_text import load_lm_text
from saescale.activations.precision import recorded_model_dtype
from saescale.activations.manifest import (
    FORMAT, META_KEYS, STATS, TORCH_DTYPES, config_record, default_cache_dir, existing_manifest, find_todo, locked,
    open_shard, remove_scratch, shard_file, sha256_file, stats_ok, to_torch, warn, write_manifest,
)
from saescale.atomic import atomic_write_bytes
from saescale.errors import SaescaleError

SEED = SPLIT_SEED  # document split (shared with the live stream) and context order; recorded in the manifest

Progress = Callable[[dict[str, Any]], None]  # called with {"tokens": done, "total": to do}


@dataclass
class Job:
    """Everything needed to harvest any shard of a cache."""

    model: torch.nn.Module
    hook: str
    d: int
    contexts: Contexts
    positions: torch.Tensor  # (T',) kept positions of a context
    keep_first: bool
    batch: int  # contexts per forward pass
    n_docs: int
    order: dict[str, torch.Tensor]  # split -> (C,) context indices in harvest order
    n_tokens: dict[str, int]  # split -> tokens in the split's stream
    corpus_fingerprint: str
    model_dtype: str  # the resolved dtype the model runs in ('float32' or 'bfloat16')
    target_hook: str = ""  # a transcoder's target hook ('' for an SAE's cache)
    d_target: int | None = None  # its width


def plan_splits(doc: torch.Tensor, n_docs: int, cfg: ActivationConfig, per_ctx: int) -> tuple[dict, dict]:
    """(split -> (C,) context order, split -> token count) for contexts whose documents are ``doc`` (M,)."""
    budgets = {"train": cfg.n_tokens, "val": math.ceil(cfg.val_fraction * cfg.n_tokens)}
    order, counts = {}, {}
    for number, (split, docs) in enumerate(zip(SPLITS, split_documents(n_docs, cfg.val_fraction, SEED))):
        ids = torch.nonzero(torch.isin(doc, torch.tensor(docs, dtype=torch.long))).flatten()
        ids = ids[torch.from_numpy(np.random.default_rng([SEED, number]).permutation(len(ids)))]
        counts[split] = min(budgets[split], len(ids) * per_ctx)
        order[split] = ids[: math.ceil(counts[split] / per_ctx)]
        if counts[split] < budgets[split]:
            warn(f"corpus '{_short(cfg.corpus)}' holds only {counts[split]:,} {split} tokens (asked {budgets[split]:,}); caching those")
    if counts["train"] == 0:
        raise SaescaleError(f"corpus '{cfg.corpus}' leaves no train contexts; give more documents or lower --val-fraction")
    return order, counts


def _short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _corpus_fingerprint(docs) -> str:
    h = hashlib.sha256()
    for d in docs:
        h.update(hashlib.sha256(d.text.encode()).digest())
    return h.hexdigest()[:16]


def prepare(cfg: ActivationConfig, manifest: dict | None, lm: tuple | None = None) -> Job:
    """Load model and corpus and plan the splits (resuming: with the manifest's hook and batch)."""
    lt = load_lm_text(cfg, lm, manifest["hook"] if manifest else None)
    positions = torch.as_tensor(positions_kept(cfg.context_len, cfg.keep_first), dtype=torch.long)
    order, counts = plan_splits(lt.contexts.doc, len(lt.docs), cfg, len(positions))
    batch = manifest["config"]["harvest_batch"] if manifest else cfg.harvest_batch
    target = manifest.get("target_hook", "") if manifest else cfg.target_hook
    if target:
        check_target(lt.model, lt.hook, target)
    return Job(lt.model, lt.hook, lt.d, lt.contexts, positions, cfg.keep_first, batch, len(lt.docs), order, counts,
               _corpus_fingerprint(lt.docs), lt.model_dtype, target, hook_width(lt.model, target) if target else None)


def new_manifest(cfg: ActivationConfig, fingerprint: str, job: Job) -> dict:
    splits = {
        s: {"n_tokens": job.n_tokens[s], "n_contexts": len(job.order[s]),
            "shards": [None] * math.ceil(job.n_tokens[s] / cfg.shard_tokens)}
        for s in SPLITS
    }
    config = dict(config_record(cfg), model_dtype=job.model_dtype)  # the dtype the model really runs in
    target = {"target_hook": job.target_hook, "d_target": job.d_target} if job.target_hook else {}
    return {**target, 
        "format": FORMAT, "complete": False, "config": config, "model_fingerprint": fingerprint,
        "hook": job.hook, "d_model": job.d, "dtype": cfg.cache_dtype, "seed": SEED,
        "corpus_fingerprint": job.corpus_fingerprint, "n_documents": job.n_docs,
        "tokens_per_context": len(job.positions), "splits": splits, "stats": None,
    }


def _check_resume(manifest: dict, job: Job, folder: Path) -> None:
    same = manifest["corpus_fingerprint"] == job.corpus_fingerprint and manifest["d_model"] == job.d and \
        manifest.get("d_target") == job.d_target and all(
        manifest["splits"][s]["n_tokens"] == job.n_tokens[s] for s in SPLITS)
    if not same:
        raise SaescaleError(f"the corpus or model changed since the cache at {folder} was started; delete {folder} to rebuild it")


def harvest_stream(job: Job, split: str, first_token: int) -> Iterator[dict[str, torch.Tensor]]:
    """Rows of ``split``'s token stream from ``first_token`` on, one forward batch at a time.

    Yields dicts of ``acts`` (n, d) float32 (a bfloat16 model's activations widened exactly; the
    shard stores them in the cache dtype), ``target`` (n, d_target) for a transcoder's cache (the target
    hook's, same forward pass) and ``tokens``, ``doc``, ``pos``, ``ctx`` (n,) long.
    """
    hooks = [job.hook, job.target_hook] if job.target_hook else [job.hook]
    per, order = len(job.positions), job.order[split]
    lo = first_token // per // job.batch * job.batch
    skip = first_token - lo * per
    for lo in range(lo, len(order), job.batch):
        ids = order[lo : lo + job.batch]
        tokens = job.contexts.tokens[ids]  # (b, T)
        acts = harvest_hooks(job.model, hooks, tokens, job.keep_first)  # (b*T', d) [and (b*T', d_target)]
        rows = {
            "acts": acts[0],
            **({"target": acts[1]} if job.target_hook else {}),
            "tokens": tokens[:, job.positions].reshape(-1),
            "doc": job.contexts.doc[ids].repeat_interleave(per),
            "pos": job.positions.repeat(len(ids)),
            "ctx": ids.repeat_interleave(per),
        }
        yield {k: v[skip:] for k, v in rows.items()}
        skip = 0


def cut_shards(stream, first: int, stop: int, shard_tokens: int, total: int,
               advance: Callable[[int], None]) -> Iterator[tuple[int, dict]]:
    """(i, rows of shard i) for shards ``first .. stop-1`` of a stream that starts at shard ``first``;
    ``advance(tokens)`` as each piece of the stream arrives."""
    pending: list[dict] = []
    have, i, left = 0, first, min(stop * shard_tokens, total) - first * shard_tokens
    for rows in stream:
        n_rows = len(rows["acts"])
        advance(min(n_rows, left))
        pending.append(rows)
        have, left = have + n_rows, left - n_rows
        while i < stop and have >= min(shard_tokens, total - i * shard_tokens):
            n = min(shard_tokens, total - i * shard_tokens)
            joined = {k: torch.cat([p[k] for p in pending]) for k in rows}
            yield i, {k: v[:n] for k, v in joined.items()}
            pending, have, i = [{k: v[n:] for k, v in joined.items()}], have - n, i + 1
        if i == stop:
            return


def write_shard(folder: Path, split: str, i: int, rows: dict, dtype: str) -> dict:
    """Write shard ``i`` atomically; its manifest entry (file, n_tokens, bytes, sha256)."""
    tensors = {"acts": rows["acts"].to(TORCH_DTYPES[dtype]).contiguous()}
    if "target" in rows:
        tensors["target"] = rows["target"].to(TORCH_DTYPES[dtype]).contiguous()
    tensors.update({k: rows[k].to(torch.int32).contiguous() for k in META_KEYS})
    data = st_save(tensors)
    atomic_write_bytes(folder / shard_file(split, i), data)
    return {"file": shard_file(split, i), "n_tokens": len(rows["acts"]), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Maximal runs [first, stop) of consecutive integers in sorted ``indices``."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def _forget(folder: Path, manifest: dict, todo: dict[str, list[int]]) -> None:
    """Record on disk, before rebuilding, that the shards in ``todo`` (and stats, if train changes) are not valid."""
    for split in SPLITS:
        for i in todo[split]:
            manifest["splits"][split]["shards"][i] = None
    if todo["train"]:
        manifest["stats"] = None
    manifest["complete"] = False
    write_manifest(folder, manifest)


def write_missing(folder: Path, manifest: dict, job: Job, todo: dict[str, list[int]], progress: Progress | None) -> int:
    """Harvest and write the shards in ``todo`` (split -> indices); tokens written. ``progress`` gets
    {"tokens": harvested so far, "total": to harvest}, first with 0."""
    size = manifest["config"]["shard_tokens"]
    total = sum(min(size, job.n_tokens[s] - i * size) for s in SPLITS for i in todo[s])
    _forget(folder, manifest, todo)
    done = [0]

    def advance(tokens: int) -> None:
        done[0] += tokens
        if progress:
            progress({"tokens": done[0], "total": total})

    advance(0)
    for split in SPLITS:
        for first, stop in _runs(todo[split]):
            stream = harvest_stream(job, split, first * size)
            for i, rows in cut_shards(stream, first, stop, size, job.n_tokens[split], advance):
                manifest["splits"][split]["shards"][i] = write_shard(folder, split, i, rows, manifest["dtype"])
                write_manifest(folder, manifest)
    return total


def write_stats(folder: Path, manifest: dict, chunk: int = 8192) -> dict:
    """Float64 statistics of the train split: ``stats.safetensors`` (mean, var) (d,) and a JSON summary."""
    d, dtype = manifest["d_model"], TORCH_DTYPES[manifest["dtype"]]
    s1, s2 = torch.zeros(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)
    norm_sum, n = 0.0, 0
    for entry in manifest["splits"]["train"]["shards"]:
        acts = open_shard(folder / entry["file"])["acts"]
        for lo in range(0, len(acts), chunk):
            x = to_torch(acts[lo : lo + chunk], dtype).double()  # (chunk, d)
            s1 += x.sum(0)
            s2 += (x * x).sum(0)
            norm_sum += x.norm(dim=1).sum().item()
            n += len(x)
    mean, mean_sq = s1 / n, s2 / n
    data = st_save({"mean": mean, "var": (mean_sq - mean * mean).clamp_min(0)})
    atomic_write_bytes(folder / STATS, data)
    ms, mv = mean_sq.sum().item(), (mean * mean).sum().item()
    return {"n_tokens": n, "mean_sq_norm": ms, "mean_norm": norm_sum / n, "mean_vec_sq_norm": mv,
            "centered_mean_sq_norm": ms - mv, "file": STATS, "sha256": hashlib.sha256(data).hexdigest()}


def build_cache(cfg: ActivationConfig, out_dir: Path | None = None, progress: Progress | None = None, *,
                verify: bool = False, lm: tuple | None = None, log: Callable[[str], None] | None = None) -> Path:
    """Build, resume or repair the activation cache for ``cfg``; its folder.

    out_dir: folder (default ``cfg.cache_dir``, else :func:`default_cache_dir`). progress: called
    with the harvest's progress (see :func:`write_missing`). log: gets the summary line. verify: check existing shards by sha256 (not only
    size and header) and re-read the shards written now. lm: an already loaded (model, tokenizer)
    of ``cfg.model``. A complete, matching cache is left alone; one built with other options
    raises SaescaleError and is never overwritten.
    """
    folder = Path(out_dir or cfg.cache_dir or default_cache_dir(cfg)).expanduser()
    fingerprint = model_fingerprint(cfg.model)
    start, written = time.perf_counter(), 0
    with locked(folder):
        manifest = existing_manifest(folder, cfg, fingerprint)
        todo = find_todo(folder, manifest, verify) if manifest else None
        if todo is None or any(todo.values()):
            remove_scratch(folder)
            job = prepare(cfg, manifest, lm)
            if manifest is None:
                manifest = new_manifest(cfg, fingerprint, job)
                write_manifest(folder, manifest)
                todo = {s: list(range(len(manifest["splits"][s]["shards"]))) for s in SPLITS}
            _check_resume(manifest, job, folder)
            written = write_missing(folder, manifest, job, todo, progress)
            if verify:
                _check_written(folder, manifest, todo)
        if not stats_ok(folder, manifest, verify):
            manifest["stats"] = write_stats(folder, manifest)
        if not manifest["complete"]:
            manifest["complete"] = True
            write_manifest(folder, manifest)
    if log:
        log(summary(folder, manifest, written, time.perf_counter() - start))
    return folder


def _check_written(folder: Path, manifest: dict, todo: dict[str, list[int]]) -> None:
    for split in SPLITS:
        for i in todo[split]:
            entry = manifest["splits"][split]["shards"][i]
            if sha256_file(folder / entry["file"]) != entry["sha256"]:
                raise SaescaleError(f"{folder / entry['file']} reads back different from what was written; check the disk, then rerun `saescale cache`")


def summary(folder: Path, manifest: dict, written: int, seconds: float) -> str:
    """One line: tokens per split, shards, what this run wrote, time, rate, folder."""
    n = {s: manifest["splits"][s]["n_tokens"] for s in SPLITS}
    shards = sum(len(manifest["splits"][s]["shards"]) for s in SPLITS)
    done = f"wrote {written:,} tokens in {seconds:.1f} s ({written / max(seconds, 1e-9):,.0f} tok/s)" if written else "nothing to do"
    model_dtype = recorded_model_dtype(manifest["config"])
    return (f"cache: {n['train']:,} train + {n['val']:,} val tokens, d={manifest['d_model']} {manifest['dtype']} "
            f"({model_dtype} model), {shards} shards; {done} -> {folder}")
