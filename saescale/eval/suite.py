"""The metric suite: one function per metric, each (EvalSet, eval code, EvalCommand) -> JSON-ready dict.

Every function is deterministic given ``cmd.seed``; each records what it used (token counts,
sampled latents, tasks, and its metric config) next to its numbers, and :func:`run_metrics` adds
``documents``: the validation documents behind the eval contexts the metric read (see
:meth:`EvalSet.documents`; the eval contexts are in random order, so a metric reading the first
ones reads a random sample of the whole split). Probes read their own labelled data instead.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from saescale.configs import config_to_dict
from saescale.eval.ablation import ablation_metrics
from saescale.eval.downstream import downstream_metrics
from saescale.eval.evalset import EvalSet, harvest
from saescale.eval.n2g import explain_latent, latent_values, model_act_fn
from saescale.eval.probe_data import build_pool
from saescale.eval.probes import bootstrap_ci, score_task, task_examples
from saescale.eval.progressive import plot_progressive, progressive_metrics
from saescale.eval.recon import plot_density, reconstruction_metrics
from saescale.eval.refine import refinement_metrics
from saescale.eval.tasks import select_tasks
from saescale.sae.base import SparseAutoencoder, SparseCode, fires


@torch.no_grad()
def encode_all(sae: SparseAutoencoder, x: Tensor, batch: int = 2048) -> SparseCode:
    """Sparse code of raw x (N, d), batches concatenated (rows padded with zeros to the widest batch)."""
    parts = [sae.encode(xb) for xb in x.split(batch)]
    width = max(p.values.shape[1] for p in parts)
    pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]))  # noqa: E731
    return SparseCode(torch.cat([pad(p.values) for p in parts]), torch.cat([pad(p.indices) for p in parts]))


def live_latents(code: SparseCode, n: int, count: int, seed: int) -> Tensor:
    """``count`` latents drawn (seeded, sorted) from those that fire (:func:`fires`) on the eval tokens."""
    fired = torch.zeros(n, dtype=torch.bool)
    fired[code.indices[fires(code.values)]] = True
    live = fired.nonzero()[:, 0]
    pick = torch.randperm(len(live), generator=torch.Generator().manual_seed(seed))[:count]
    return live[pick].sort().values


def recon(es: EvalSet, code: SparseCode, cmd) -> dict:
    res = reconstruction_metrics(es.sae, es.flat_acts.split(2048))
    if cmd.plots:
        res["plot"] = str(plot_density(res["density_hist"], res["never_fired_frac"], Path(cmd.out_dir) / "density.png"))
    return res


def downstream(es: EvalSet, code: SparseCode, cmd) -> dict:
    return downstream_metrics(es.splicer(), es.sae, es.tokens, es.positions, es.spliced_acts.mean(0),
                              cmd.downstream, batch=cmd.batch, track=es.track)


def probes(es: EvalSet, code: SparseCode, cmd) -> dict:
    """Each task's best-latent CE (with a 95% bootstrap interval over its test documents), the mean over
    tasks (``probe_loss``) and its 95% bootstrap interval over tasks (``probe_loss_ci``; seed and resamples
    in ``bootstrap``); per task, ``pos`` / ``neg`` count its labelled examples in the pool before balancing."""
    cfg, tasks = cmd.probes, select_tasks(cmd.probes.tasks)
    sources = list(dict.fromkeys(s for t in tasks for s in t.sources))
    pool, acts = probe_data(es, sources, cfg, cmd)
    pcode = encode_all(es.sae, acts.reshape(-1, acts.shape[-1]))
    out: dict[str, Any] = {"tasks": {}, "contexts": len(pool.tokens), "sources": sources}
    for task in es.track(tasks, "probes", len(tasks)):
        labels = task.label(pool)
        lab = labels if task.level == "sequence" else labels[:, es.positions]
        size = {"level": task.level, "pos": int((lab == 1).sum()), "neg": int((lab == 0).sum())}
        z, x, y, groups = task_examples(task, labels, pcode, acts, pool.doc, es.positions, es.sae.cfg.n, cfg, cmd.seed)
        if len(y) < 8:
            out["tasks"][task.name] = {"skipped": f"only {len(y)} balanced examples", **size}
            continue
        out["tasks"][task.name] = dict(score_task(z, x, y, groups, cmd.seed, cfg.dense, cfg.bootstrap), **size)
    out.update(probe_summary(out["tasks"], cfg.bootstrap, cmd.seed, cfg.dense))
    return out


def probe_data(es: EvalSet, sources: list[str], cfg, cmd) -> tuple:
    """The labelled pool and its activations (M, T', d) at the hook: the model's forward passes over it depend on
    the model, hook and pool settings, not on the SAE, so SAEs sharing one EvalSet (``es.memo``) share them."""
    a = es.acts_cfg
    key = ("probes", es.hook, tuple(sources), cfg.docs, cfg.per_doc, cmd.seed, a.context_len, a.keep_first)
    if key not in es.memo:
        pool = build_pool(sources, es.tokenizer, a.context_len, es.bos_id, cfg.docs, cfg.per_doc, cmd.seed)
        es.memo[key] = (pool, harvest(es.model, es.hook, pool.tokens, a.keep_first, cmd.batch, desc="probe data",
                                      track=es.track))
    return es.memo[key]


def probe_summary(tasks: dict[str, dict], resamples: int, seed: int, dense: bool) -> dict:
    """Mean best-latent CE over scored tasks, its 95% bootstrap interval over tasks, and the same for the dense probe."""
    scored = [r for r in tasks.values() if "test_ce" in r]
    out: dict[str, Any] = {"probe_loss": sum(r["test_ce"] for r in scored) / max(len(scored), 1),
                           "tasks_scored": len(scored),
                           "bootstrap": {"over": "tasks", "level": 0.95, "resamples": resamples, "seed": seed}}
    if scored:
        out["probe_loss_ci"] = bootstrap_ci(torch.tensor([r["test_ce"] for r in scored]), resamples, seed)
    if dense and scored:
        out["dense_probe_loss"] = sum(r["dense_test_ce"] for r in scored) / len(scored)
        out["dense_probe_loss_ci"] = bootstrap_ci(torch.tensor([r["dense_test_ce"] for r in scored]), resamples, seed)
    return out


def n2g(es: EvalSet, code: SparseCode, cmd) -> dict:
    latents = live_latents(code, es.sae.cfg.n, cmd.n2g.latents, cmd.seed)
    act_fn = model_act_fn(es.model, es.hook, es.sae, es.bos_id, es.pad_id, batch=4 * cmd.batch)
    text_start = int(es.bos_id is not None)
    shape = es.acts.shape[:2]
    rows = []
    for i in es.track(latents.tolist(), "n2g", len(latents)):
        values = latent_values(code, i).view(shape)
        r = explain_latent(act_fn, es.tokens, values, es.positions, i, es.pad_id, text_start, cmd.seed + i, cmd.n2g)
        if r is not None:
            r["explanation"] = r.pop("trie").describe(lambda t: es.tokenizer.decode([t]))
            rows.append(r)
    precs = [r["precision"] for r in rows if r["precision"] == r["precision"]]
    recs = [r["recall"] for r in rows if r["recall"] == r["recall"]]
    return {"precision": sum(precs) / max(len(precs), 1), "recall": sum(recs) / max(len(recs), 1),
            "latents": len(rows), "no_prediction": len(rows) - len(precs), "per_latent": rows}


def ablation(es: EvalSet, code: SparseCode, cmd) -> dict:
    latents = live_latents(code, es.sae.cfg.n, cmd.ablation.latents, cmd.seed + 1)
    return ablation_metrics(es.splicer(), es.sae, es.tokens, code, es.positions, latents, cmd.ablation,
                            batch=cmd.batch, seed=cmd.seed, track=es.track)


def refine(es: EvalSet, code: SparseCode, cmd) -> dict:
    if es.sae.transcoder:
        return {"skipped": "refinement re-encodes the reconstruction, which a transcoder does not make", "tokens": 0}
    return refinement_metrics(es.sae, es.flat_acts, cmd.refine)


def progressive(es: EvalSet, code: SparseCode, cmd) -> dict:
    if es.sae.transcoder:
        return {"skipped": "progressive codes are measured for SAEs only"}
    res = progressive_metrics(es.sae, es.flat_acts, seed=cmd.seed)
    if cmd.plots:
        res["plot"] = str(plot_progressive(res, Path(cmd.out_dir) / "progressive.png"))
    return res


METRICS: dict[str, Callable[[EvalSet, SparseCode, Any], dict]] = {
    "recon": recon, "downstream": downstream, "probes": probes, "n2g": n2g,
    "ablation": ablation, "refine": refine, "progressive": progressive,
}


def contexts_read(name: str, es: EvalSet, res: dict) -> Tensor | None:
    """(K,) eval contexts metric ``name`` read (its result ``res``): the first ``res['contexts']`` (downstream),
    those holding the first ``res['tokens']`` tokens (refine), the ablation sites' contexts, or all of them;
    None for probes (their own data)."""
    if name == "probes":
        return None
    if name == "downstream":
        return torch.arange(res["contexts"])
    if name == "refine":
        return torch.arange(-(-res["tokens"] // len(es.positions)))  # ceil: flat tokens are context-major
    if name == "ablation":
        return torch.tensor(res["contexts"], dtype=torch.long)
    return torch.arange(len(es.tokens))


def run_metrics(es: EvalSet, names: list[str], cmd) -> tuple[dict, dict]:
    """Run metrics ``names`` in order -> (results by name, seconds by name).

    A metric with its own config (``cmd.<name>``, e.g. ``cmd.n2g``) records it as ``settings`` next to its
    figures; each records the ``documents`` it read (:func:`contexts_read`).
    """
    code = encode_all(es.sae, es.flat_acts)
    results, timings = {}, {}
    for name in names:
        t0 = time.perf_counter()
        res = METRICS[name](es, code, cmd)
        ctx = contexts_read(name, es, res)
        if ctx is not None:
            res = dict(res, documents=es.documents(ctx))
        cfg = getattr(cmd, name, None)
        results[name] = dict(res, settings=config_to_dict(cfg)) if dataclasses.is_dataclass(cfg) else res
        timings[name] = round(time.perf_counter() - t0, 2)
    return results, timings
