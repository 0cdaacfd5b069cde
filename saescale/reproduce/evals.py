"""The eval metrics a reproduction adds to some sweep members (downstream loss, probes, N2G, ablation, ...).

One :class:`~saescale.eval.evalset.EvalSet` (the model, its held-out contexts and their activations) is
built per subject model, hook and corpus and shared by every SAE evaluated on it, so a sweep's members
are scored on the same tokens and the model's forward passes over them are paid once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saescale.eval.ablation import AblationConfig
from saescale.eval.downstream import DownstreamConfig
from saescale.eval.n2g import N2GConfig
from saescale.eval.probes import ProbeConfig
from saescale.eval.refine import RefineConfig
from saescale.reproduce.profiles import Profile


@dataclass
class EvalSettings:
    """What the metric suite (saescale.eval.suite) reads from its command: the settings of ``saescale eval``."""

    seed: int = 0
    batch: int = 16
    plots: bool = False
    out_dir: str = ""
    downstream: DownstreamConfig = field(default_factory=DownstreamConfig)
    probes: ProbeConfig = field(default_factory=ProbeConfig)
    n2g: N2GConfig = field(default_factory=N2GConfig)
    ablation: AblationConfig = field(default_factory=AblationConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)

    @classmethod
    def for_profile(cls, p: Profile) -> "EvalSettings":
        return cls(downstream=DownstreamConfig(contexts=p.downstream_contexts),
                   probes=ProbeConfig(tasks=p.probe_tasks, docs=p.probe_docs, dense=False),
                   n2g=N2GConfig(latents=p.n2g_latents, build=p.n2g_examples, test=p.n2g_examples),
                   ablation=AblationConfig(latents=p.ablation_latents))


class Evaluator:
    """``evaluator(metrics, sae_folder)`` -> {"metrics": ..., "timings_s": ..., "settings": ...} (JSON-ready)."""

    def __init__(self, p: Profile):
        self.profile, self.settings = p, EvalSettings.for_profile(p)
        self._sets: dict[tuple, Any] = {}

    def __call__(self, metrics: list[str], sae_dir: Path) -> dict[str, Any]:
        from saescale.eval.evalset import load_eval_set
        from saescale.eval.report import json_safe
        from saescale.eval.suite import run_metrics
        from saescale.sae.io import load_sae, read_cfg

        _, extra = read_cfg(sae_dir)
        acts = extra.get("activations", {})
        key = (acts.get("model"), acts.get("hook"), acts.get("corpus"))
        if key not in self._sets:
            self._sets[key] = load_eval_set(sae_dir, self.profile.eval_contexts, self.settings.seed, model_dtype="float32")
            es = self._sets[key]
        else:
            sae = load_sae(sae_dir).eval()
            sae.requires_grad_(False)
            es = dataclasses.replace(self._sets[key], sae=sae)
        results, timings = run_metrics(es, metrics, self.settings)
        return json_safe({"metrics": _slim(results), "timings_s": timings,
                          "eval_contexts": int(es.tokens.shape[0]), "eval_tokens": int(es.flat_acts.shape[0]),
                          "seed": self.settings.seed})


def _slim(results: dict[str, Any]) -> dict[str, Any]:
    """The results without what only a dashboard needs (per-document lists, histograms), to keep the
    committed member files small; every figure the report reads is kept."""
    drop = {"documents", "density_hist"}
    return {name: {k: v for k, v in res.items() if k not in drop} for name, res in results.items()}
