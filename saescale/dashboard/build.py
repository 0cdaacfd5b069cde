"""Build a dashboard folder: check the inputs, one pass over the cache, logit lens, neighbours, N2G, pages.

The folder is written under a temporary name beside ``out`` and renamed into place at the end, so an
interrupted or failed build leaves the old dashboard (or nothing), never a half-written one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from saescale.activations.config import ActivationConfig
from saescale.activations.manifest import MANIFEST, read_manifest
from saescale.dashboard.collect import Collected, collect
from saescale.dashboard.explain import explain
from saescale.dashboard.logit_lens import logit_lens
from saescale.dashboard.neighbours import nearest
from saescale.dashboard.ngram import ngram_explanations
from saescale.dashboard.render import write_doc, write_shell
from saescale.dashboard.schema import (
    INDEX_FIELDS,
    INDEX_FORMAT,
    density_histogram,
    index_row,
    latent_doc,
    neuronpedia_feature,
)
from saescale.errors import SaescaleError, file_error
from saescale.eval.n2g import N2GConfig, model_act_fn

MARKER = "dashboard.json"  # written last into every dashboard folder: a folder holding it may be replaced


def parse_latents(spec: str, n: int) -> list[int]:
    """``all``, a count N (latents 0..N-1), or a comma list of ids and ranges a-b; checked against ``n``."""
    s = spec.strip().lower()
    if s == "all":
        return list(range(n))
    try:
        if s.isdigit():
            count = int(s)
            if not 1 <= count <= n:
                raise SaescaleError(f"--latents {count} is out of range: this SAE has {n} latents (give 1..{n} or 'all')")
            return list(range(count))
        out: list[int] = []
        for part in s.split(","):
            a, _, b = part.strip().partition("-")
            lo, hi = int(a), int(b) if b else int(a)
            if lo > hi:
                raise SaescaleError(f"--latents range {part.strip()} is empty (write low-high)")
            out.extend(range(lo, hi + 1))
    except ValueError:
        raise SaescaleError(f"--latents {spec!r} is not 'all', a count or a list like 0,5,10-20") from None
    bad = [i for i in out if not 0 <= i < n]
    if bad:
        raise SaescaleError(f"--latents: latent {bad[0]} is out of range: this SAE has latents 0..{n - 1}")
    return sorted(set(out))


def cache_command(acts: ActivationConfig, folder: str) -> str:
    """The ``saescale cache`` command that rebuilds the cache with the recorded settings at ``folder``."""
    parts = ["saescale cache", f"--model {acts.model}", f"--corpus {acts.corpus}"]
    if acts.hook:
        parts.append(f"--hook {acts.hook}")
    parts += [f"--context-len {acts.context_len}", f"--n-tokens {acts.n_tokens}", f"--cache-dtype {acts.cache_dtype}",
              f"--shard-tokens {acts.shard_tokens}", f"--harvest-batch {acts.harvest_batch}",
              f"--val-fraction {acts.val_fraction}"]
    if acts.model_dtype != "auto":
        parts.append(f"--model-dtype {acts.model_dtype}")
    if acts.keep_first:
        parts.append("--keep-first")
    if not acts.prepend_bos:
        parts.append("--no-prepend-bos")
    return " ".join(parts + [f"--cache-dir {folder}"])


def find_cache(extra: dict[str, Any], acts: ActivationConfig, where: str) -> Path:
    """The complete activation cache the SAE records (``extra.cache``, else the default folder of its settings)."""
    from saescale.activations.manifest import default_cache_dir

    folder = str(extra.get("cache") or acts.cache_dir or default_cache_dir(acts))
    path = Path(folder).expanduser()
    if not (path / MANIFEST).is_file():
        raise SaescaleError(f"the activation cache {path} recorded in {where} is missing: rebuild it with "
                            f"`{cache_command(acts, folder)}` (the settings the SAE was trained with)")
    if not read_manifest(path)["complete"]:
        raise SaescaleError(f"the activation cache {path} recorded in {where} is incomplete: finish it with "
                            f"`{cache_command(acts, folder)}`")
    return path


def scratch_folder(out: Path) -> Path:
    """An empty temporary folder beside ``out`` (a one-line error when ``out`` cannot be written); refuses an
    existing ``out`` that is not a dashboard (it would be replaced)."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).is_file())):
        raise SaescaleError(f"--out {out} exists and is not a dashboard folder (no {MARKER}); give a new or empty "
                            "folder, or a dashboard built before (it is replaced)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    except OSError as e:
        raise file_error(e, out, "write the dashboard to") from None


def replace_folder(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` to ``out`` (an old dashboard there is removed after the swap)."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@dataclass
class Inputs:
    """Everything a build reads: the SAE, its model, the cache, and the pass's geometry."""

    sae: Any
    model: Any
    tokenizer: Any
    acts: ActivationConfig
    hook: str
    reader: Any
    first_pos: int
    width: int
    cache: Path
    sae_dir: Path


def vocabulary(tokenizer, size: int) -> list[str]:
    """Every token id's text (``tokenizer.decode([id])``), ``size`` ids (ids past the tokenizer: '<id>')."""
    out = [tokenizer.decode([i]) for i in range(min(len(tokenizer), size))]
    return out + [f"<{i}>" for i in range(len(out), size)]


Track = Callable[..., Any]


def n2g_key(inp: Inputs, cfg: N2GConfig, seed: int, split: str, kept: int) -> str:
    """What N2G explanations depend on: the SAE's weights, the cache split's shards, the N2G settings but
    the latent count, the seed, the top contexts kept per latent (``kept``: the others are negatives). A
    rebuild with the same key keeps the explanations of the last build."""
    import dataclasses
    import hashlib
    import json

    from saescale.activations.manifest import sha256_file

    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "latents"}
    parts = [sha256_file(inp.sae_dir / "sae.safetensors"), inp.acts.model, split,
             *(e["sha256"] for e in inp.reader.shards), json.dumps(settings, sort_keys=True), str(seed), str(kept)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def previous_explanations(out: Path, key: str) -> dict[int, dict]:
    """The explanations of the dashboard at ``out`` if it was built with N2G key ``key`` (else none)."""
    import json

    try:
        summary = json.loads((out / MARKER).read_text())
        if summary.get("n2g_key") != key:
            return {}
        return {i: json.loads((out / "latents" / f"{i}.json").read_text())["explanation"]
                for i in summary.get("explained_ids", [])}
    except (OSError, ValueError, KeyError, TypeError):
        return {}  # no earlier dashboard, or not a readable one: explain afresh


def explain_all(inp: Inputs, col: Collected, latents: list[int], cfg: N2GConfig, seed: int, track: Track,
                decode, done: dict[int, dict] | None = None) -> dict[int, dict]:
    """N2G explanations of ``cfg.latents`` latents drawn (seeded) from the firing ones among ``latents`` that
    ``done`` (a previous build's explanations, kept) does not already explain."""
    done = {i: e for i, e in (done or {}).items() if i in set(latents) and e}
    alive = [i for i in latents if int(col.fires[i]) > 0 and i not in done]
    g = torch.Generator().manual_seed(seed)
    pick = sorted(alive[j] for j in torch.randperm(len(alive), generator=g)[: cfg.latents].tolist())
    tok = inp.tokenizer
    bos = tok.bos_token_id if inp.acts.prepend_bos else None
    pad = next((i for i in (tok.pad_token_id, tok.eos_token_id) if i is not None), 0)
    act_fn = model_act_fn(inp.model, inp.hook, inp.sae, bos, pad)
    lead = None if inp.acts.keep_first else (bos if bos is not None else pad)
    text_start = 1 if (inp.acts.prepend_bos or not inp.acts.keep_first) else 0
    positions = torch.arange(inp.width) + (0 if lead is None else inp.first_pos)
    out = dict(done)
    for i in track(pick, "n2g", len(pick)):
        r = explain(act_fn, col, i, positions, lead, pad, text_start, seed + i, cfg, decode)
        if r is not None:
            out[i] = r
    return out


def build(inp: Inputs, out: Path, tmp: Path, latents: list[int], *, top: int, samples: int, neighbours: int,
          logits: int, n2g: N2GConfig, seed: int, batch: int, neuronpedia: bool, track: Track,
          progress: Callable[[dict], None] | None, settings: dict) -> dict:
    """Run the pass and write the site into ``tmp``, then rename it to ``out``; returns the summary."""
    sae = inp.sae
    K = max(top, n2g.build + n2g.test)
    done = [0]

    def advance(tokens: int) -> None:
        done[0] += tokens
        if progress:
            progress({"tokens": done[0], "total": inp.reader.n_tokens})

    if progress:
        progress({"tokens": 0, "total": inp.reader.n_tokens})
    clock, seconds = time.perf_counter(), {}

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[stage], clock = round(now - clock, 2), now

    col = collect(sae, inp.reader.iter_shards(), inp.first_pos, inp.width, K, batch=batch, seed=seed, advance=advance)
    if hasattr(progress, "close"):
        progress.close()  # the pass's bar ends with the pass
    lap("pass")
    W_dec = sae.W_dec.detach().float().cpu()
    lens = logit_lens(inp.model, W_dec, logits)
    nb_ids, nb_cos = nearest(W_dec, neighbours)
    vocab = vocabulary(inp.tokenizer, inp.model.get_output_embeddings().weight.shape[0])
    lap("logit_lens_neighbours_vocab")
    key = n2g_key(inp, n2g, seed, settings["split"], K)
    explanations = explain_all(inp, col, latents, n2g, seed, track, lambda t: vocab[t], previous_explanations(out, key))
    lap("n2g")
    ngrams = ngram_explanations(col, latents, lambda t: vocab[t])
    lap("ngram")

    write_shell(tmp, settings["title"])
    write_doc(tmp / "data", "vocab", "SAESCALE_VOCAB", vocab)
    rows, features = [], []
    for i in track(latents, "pages", len(latents)):
        doc = latent_doc(col, i, lens, nb_ids, nb_cos, vocab, samples, explanations.get(i), top, inp.first_pos,
                         ngrams.get(i))
        write_doc(tmp / "latents", str(i), "SAESCALE_LATENT", doc)
        rows.append(index_row(doc, vocab))
        if neuronpedia:
            features.append(neuronpedia_feature(doc, col, lens, W_dec[i], vocab, inp.acts.corpus, inp.acts.context_len))
    meta = {"model": inp.acts.model, "hook": inp.hook, "arch": sae.cfg.arch, "n": sae.cfg.n, "k": sae.cfg.k,
            "d": sae.cfg.d, "normalize": sae.cfg.normalize, "split": settings["split"], "n_tokens": col.n_tokens,
            "n_contexts": len(col.tokens), "cache": str(inp.cache), "sae": settings["sae"],
            "explained": len(explanations), "ngram_explained": len(ngrams), "first_position": inp.first_pos, "context_len": inp.acts.context_len,
            "final_norm": lens.final_norm}
    index = {"format": INDEX_FORMAT, "meta": meta, "fields": list(INDEX_FIELDS), "rows": rows,
             "density_histogram": density_histogram(col), "settings": settings}
    write_doc(tmp / "data", "index", "SAESCALE_INDEX", index)
    write_doc(tmp / "data", "meta", "SAESCALE_META", {
        "title": settings["title"], "latents": latents,
        "subtitle": f"{inp.acts.model} · hook {inp.hook} · {sae.cfg.arch} n={sae.cfg.n} k={sae.cfg.k} · "
                    f"{settings['split']} split of the cache, {col.n_tokens:,} tokens",
        "explanations": {str(i): e["text"] for i, e in {**ngrams, **explanations}.items()},
        "explanation_kinds": {str(i): "n2g" if i in explanations else "ngram" for i in {**ngrams, **explanations}}})
    if neuronpedia:
        write_neuronpedia(tmp / "neuronpedia", features, inp, settings)
    lap("pages")
    summary = {"format": "saescale-dashboard-v1", "latents": len(latents), "explained": len(explanations),
               "ngram_explained": len(ngrams),
               "explained_ids": sorted(explanations), "n2g_key": key, "n_tokens": col.n_tokens, "seconds": seconds,
               "settings": settings}
    (tmp / MARKER).write_text(__import__("json").dumps(summary, indent=1), encoding="utf-8")
    replace_folder(tmp, out)
    return summary


def layer_number(hook: str) -> int:
    """The block number in a hook name such as 'layers.20' (0 when it has none)."""
    digits = [p for p in hook.split(".") if p.isdigit()]
    return int(digits[-1]) if digits else 0


def write_neuronpedia(folder: Path, features: list[dict], inp: Inputs, settings: dict, per_batch: int = 128) -> None:
    """``batch-<b>.json`` files in the shape of SAEDashboard's ``NeuronpediaDashboardBatch.to_dict()``."""
    import json

    folder.mkdir()
    for b in range(0, max(len(features), 1), per_batch):
        batch = {"model_id": inp.acts.model, "layer": layer_number(inp.hook), "sae_set": settings["title"],
                 "features": features[b : b + per_batch]}
        (folder / f"batch-{b // per_batch}.json").write_text(json.dumps(batch, allow_nan=False), encoding="utf-8")


def load_inputs(sae_dir: str | Path, split: str = "train", model_override: str = "", lm=None) -> Inputs:
    """The SAE at ``sae_dir``, its model (or ``lm`` = (model, tokenizer)) in float32, and its recorded cache;
    one-line errors for a missing SAE, cache or model, or a model whose hook width is not the SAE's."""
    from saescale.activations.cache_read import CacheReader
    from saescale.activations.harvest import positions_kept
    from saescale.activations.hooks import hook_width
    from saescale.activations.lm_text import load_lm
    from saescale.eval.evalset import recorded_activations
    from saescale.sae.io import load_sae, read_cfg

    if not Path(sae_dir).is_dir():
        raise SaescaleError(f"SAE folder {sae_dir} not found: give the sae/ folder of a training run")
    sae_cfg, extra = read_cfg(sae_dir)
    where = str(Path(sae_dir) / "cfg.json")
    acts = recorded_activations(extra, where)
    if model_override:
        acts.model = model_override
    cache = find_cache(extra, acts, where)
    try:
        reader = CacheReader(cache, split)
    except SaescaleError as e:
        raise SaescaleError(f"{e} (the command: `{cache_command(acts, str(cache))}`)") from None
    manifest = reader.manifest
    sae = load_sae(sae_dir).eval()
    sae.requires_grad_(False)
    if manifest["d_model"] != sae_cfg.d:
        raise SaescaleError(f"the cache {cache} holds width {manifest['d_model']} but the SAE has d={sae_cfg.d}: "
                            f"it is not this SAE's cache; rebuild it with `{cache_command(acts, str(cache))}`")
    try:
        model, tokenizer, _ = load_lm(acts.model, "float32", lm)
    except SaescaleError as e:
        raise SaescaleError(f"the SAE's model '{acts.model}' (recorded in {where}) cannot be loaded: {e}; give "
                            "--model with a local copy of it") from None
    hook = manifest["hook"]
    if hook_width(model, hook) != sae_cfg.d:
        raise SaescaleError(f"hook '{hook}' of model '{acts.model}' has width {hook_width(model, hook)}, the SAE "
                            f"d={sae_cfg.d}: give the model the SAE was trained on (--model)")
    positions = positions_kept(manifest["config"]["context_len"], manifest["config"]["keep_first"])
    return Inputs(sae, model, tokenizer, acts, hook, reader, int(positions[0]), int(manifest["tokens_per_context"]), cache,
                  Path(sae_dir))
