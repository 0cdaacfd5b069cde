"""``saescale eval``: the paper's metrics for one SAE on the model, hook and corpus it was trained on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from saescale.atomic import atomic_write_json
from saescale.configs import config_to_dict
from saescale.errors import SaescaleError

ALL_METRICS = ("recon", "downstream", "probes", "n2g", "ablation", "refine", "progressive")


@dataclass
class EvalConfig:
    """Evaluate a trained SAE: reconstruction, downstream loss, probes, N2G, ablation sparsity, refinement, progressive codes."""

    sae: str
    """SAE folder (cfg.json + sae.safetensors, e.g. runs/<run>/sae); its model, hook and corpus are read from cfg.json."""

    metrics: str = ",".join(ALL_METRICS)
    """Comma-separated metrics to compute, from: recon, downstream, probes, n2g, ablation, refine, progressive."""

    out: str = ""
    """Folder for metrics.json (and plots). Empty: the SAE folder's parent (the run folder)."""

    seed: int = 0
    """Seed of every random choice (eval contexts, probe data, sampled latents); same seed, same numbers."""

    eval_contexts: int = 192
    """Held-out contexts (from the corpus's validation documents) for recon, N2G, ablation, refine, progressive (about 63 tokens each)."""

    downstream_contexts: int = 48
    """Contexts (the first of the eval contexts) spliced for the downstream loss (4 forward passes each)."""

    probe_tasks: str = "all"
    """Probe tasks, comma-separated, or 'all' (every built-in task plus optional ones whose data is installed)."""

    probe_docs: int = 32
    """Documents drawn per probe data source (State of the Union, Moby-Dick, Python stdlib, fortunes)."""

    probe_per_doc: int = 3
    """Contexts drawn per probe document."""

    probe_pooling: Literal["max", "mean"] = "max"
    """How sequence-level probe tasks pool a latent over the context's tokens (paper unpublished; our default max)."""

    probe_max_per_class: int = 1024
    """Most examples per class and task (classes are balanced by subsampling)."""

    probe_dense: bool = True
    """Also fit a dense logistic probe on the raw activations (the ceiling)."""

    n2g_latents: int = 32
    """Latents sampled (among those firing on the eval tokens) for N2G explanations."""

    n2g_build: int = 16
    """Top-activating examples used to build each explanation."""

    n2g_test: int = 16
    """Top-activating held-out examples used to test each explanation."""

    n2g_negatives: int = 1024
    """Random eval tokens added to the test set (negative sample for precision)."""

    n2g_frac: float = 0.5
    """Fraction of the original activation a suffix / wildcard must keep (paper: 0.5)."""

    n2g_max_len: int = 12
    """Longest suffix (tokens) tried when shortening an example; bounds N2G's cost (the paper gives no limit)."""

    ablation_latents: int = 200
    """Latents sampled for ablation sparsity (one ablation each)."""

    ablation_horizon: int = 16
    """Positions T over which logit effects are compared (paper: 16)."""

    refine_tokens: int = 4096
    """Eval tokens re-optimised for the refinement (shrinkage) metric."""

    refine_iters: int = 300
    """Projected-gradient iterations of the refinement."""

    batch: int = 16
    """Contexts per forward pass."""

    plots: bool = False
    """Save density.png and progressive.png next to metrics.json."""

    model: str = ""
    """Override the model recorded in the SAE's cfg.json (e.g. a local copy); empty = the recorded one."""

    threads: int = 0
    """Torch CPU threads; 0 = torch's default."""

    def __post_init__(self) -> None:
        names = self.metric_names
        bad = [m for m in names if m not in ALL_METRICS]
        if bad or not names:
            raise SaescaleError(f"unknown metric(s) {bad or '(none)'} in --metrics; choose from {', '.join(ALL_METRICS)}")
        for f in ("eval_contexts", "downstream_contexts", "probe_docs", "probe_per_doc", "probe_max_per_class",
                  "n2g_latents", "n2g_max_len", "n2g_build", "n2g_test", "ablation_latents", "ablation_horizon", "refine_tokens",
                  "refine_iters", "batch"):
            if getattr(self, f) <= 0:
                raise SaescaleError(f"--{f.replace('_', '-')} must be positive, got {getattr(self, f)}")
        if self.n2g_negatives < 0 or not 0 < self.n2g_frac <= 1:
            raise SaescaleError("--n2g-negatives must be >= 0 and --n2g-frac in (0, 1]")
        if "probes" in names:
            from saescale.eval.tasks import select_tasks

            select_tasks(self.probe_tasks)  # unknown task or missing data: fail before loading anything

    @property
    def metric_names(self) -> list[str]:
        return [m.strip() for m in self.metrics.split(",") if m.strip()]

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path(self.sae).resolve().parent


def settings(cfg: EvalConfig, es) -> dict:
    """The exact settings behind the numbers (reproducible with the same seed)."""
    return {"config": config_to_dict(cfg), "model": es.acts_cfg.model, "hook": es.hook,
            "corpus": es.acts_cfg.corpus, "context_len": es.acts_cfg.context_len, "keep_first": es.acts_cfg.keep_first,
            "eval_contexts": int(es.tokens.shape[0]), "eval_tokens": int(es.flat_acts.shape[0]),
            "sae": {"arch": es.sae.cfg.arch, "n": es.sae.cfg.n, "k": es.sae.cfg.k, "d": es.sae.cfg.d,
                    "normalize": es.sae.cfg.normalize}}


def run_eval(cfg: EvalConfig, lm=None) -> dict:
    """Compute the chosen metrics, write ``metrics.json`` atomically, print a table; returns the written dict."""
    from saescale.eval.evalset import load_eval_set
    from saescale.eval.report import format_table, json_safe
    from saescale.eval.suite import run_metrics

    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if not Path(cfg.sae).is_dir():
        raise SaescaleError(f"SAE folder {cfg.sae} not found: give the sae/ folder of a training run")
    es = load_eval_set(cfg.sae, cfg.eval_contexts, cfg.seed, cfg.model, lm=lm)
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    results, timings = run_metrics(es, cfg.metric_names, cfg)
    doc = json_safe({"settings": settings(cfg, es), "metrics": results, "timings_s": timings})
    path = cfg.out_dir / "metrics.json"
    atomic_write_json(path, doc)
    print(format_table(results))
    print(f"wrote {path}")
    return doc
