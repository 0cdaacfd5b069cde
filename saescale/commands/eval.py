"""``saescale eval``: the paper's metrics for one SAE on the model, hook and corpus it was trained on (or,
with ``--corpus``, on another corpus, all of it held out)."""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from saescale.atomic import atomic_write_json
from saescale.configs import check_valid, config_to_dict, valid
from saescale.errors import SaescaleError
from saescale.eval.ablation import AblationConfig
from saescale.eval.downstream import DownstreamConfig
from saescale.eval.n2g import N2GConfig
from saescale.eval.probes import ProbeConfig
from saescale.eval.refine import RefineConfig

ALL_METRICS = ("recon", "downstream", "probes", "n2g", "ablation", "refine", "progressive")


@dataclass
class EvalCommand:
    """Evaluate a trained SAE: reconstruction, downstream loss, probes, N2G, ablation sparsity, refinement, progressive codes."""

    sae: str = field(metadata={"positional": True})
    """SAE folder (cfg.json + sae.safetensors, e.g. runs/<run>/sae); its model, hook and corpus are read from cfg.json. Also a SAELens or sparsify folder or an OpenAI .pt state dict: one exported by saescale keeps its record; a foreign one needs --model and --hook."""

    metrics: str = ",".join(ALL_METRICS)
    """Comma-separated metrics to compute, from: recon, downstream, probes, n2g, ablation, refine, progressive."""

    out: str = ""
    """Folder for metrics.json (and plots). Empty: the SAE folder's parent (the run folder); with --corpus, its subfolder eval-<corpus name>."""

    seed: int = valid(0, ">= 0")
    """Seed of every random choice (eval contexts, probe data, sampled latents); same seed, same numbers."""

    corpus: str = ""
    """Evaluate on this corpus instead (same syntax as 'saescale train --corpus'; all of it counts as validation: out-of-distribution eval). Empty: the SAE's own corpus's validation documents."""

    eval_contexts: int = valid(192, ">= 1")
    """Held-out contexts (a random sample of the validation documents' contexts, in random order) for recon, N2G, ablation, refine, progressive (about 63 tokens each)."""

    batch: int = valid(16, ">= 1")
    """Contexts per forward pass."""

    plots: bool = False
    """Save density.png and progressive.png next to metrics.json."""

    model: str = ""
    """Override the model recorded in the SAE's cfg.json (e.g. a local copy); empty = the recorded one."""

    hook: str = ""
    """Hook point of a foreign SAE (SAELens, sparsify or OpenAI, with no saescale record of where it was trained), e.g. 'layers.20'; it is then evaluated on all of --corpus (default: the embedded corpus). Empty = the recorded one (a saescale SAE records its own and takes no --hook)."""

    target_hook: str = ""
    """Target hook point of a foreign transcoder (with no saescale record), e.g. 'layers.20.mlp' with --hook layers.20.mlp.input; empty = the recorded one."""

    model_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """dtype of the model's forward passes: 'auto' = float32 for eval (a bf16 model moved the main job's ΔCE by 0.0063 nats, over the 0.005 tolerance: benchmarks/README.md); bfloat16 only when asked; metrics.json records the one used."""

    threads: int = valid(0, "[0, 1024]")
    """Torch CPU threads; 0 = torch's default."""

    downstream: DownstreamConfig = field(default_factory=DownstreamConfig, metadata={"prefix": "downstream"})
    probes: ProbeConfig = field(default_factory=ProbeConfig, metadata={"prefix": "probe"})
    n2g: N2GConfig = field(default_factory=N2GConfig, metadata={"prefix": "n2g"})
    ablation: AblationConfig = field(default_factory=AblationConfig, metadata={"prefix": "ablation"})
    refine: RefineConfig = field(default_factory=RefineConfig, metadata={"prefix": "refine"})

    def __post_init__(self) -> None:
        names = self.metric_names
        bad = [m for m in names if m not in ALL_METRICS]
        if bad or not names:
            raise SaescaleError(f"unknown metric(s) {bad or '(none)'} in --metrics; choose from {', '.join(ALL_METRICS)}")
        check_valid(self)
        if "downstream" in names and self.downstream.contexts > self.eval_contexts:
            raise SaescaleError(f"--downstream-contexts {self.downstream.contexts} is more than --eval-contexts "
                                f"{self.eval_contexts} (downstream splices the first eval contexts): lower the first "
                                "or raise the second")
        if "probes" in names:
            from saescale.eval.tasks import select_tasks

            select_tasks(self.probes.tasks)  # unknown task or missing data: fail before loading anything

    @property
    def metric_names(self) -> list[str]:
        return [m.strip() for m in self.metrics.split(",") if m.strip()]

    @property
    def out_dir(self) -> Path:
        """--out, else the run folder; with --corpus, its subfolder eval-<corpus name> (never the run's own metrics.json)."""
        if self.out:
            return Path(self.out)
        run = Path(self.sae).resolve().parent
        if not self.corpus:
            return run
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(self.corpus.split(",")[0]).stem)
        return run / f"eval-{name or 'corpus'}"


def settings(cfg: EvalCommand, es) -> dict:
    """The exact settings behind the numbers (reproducible with the same seed): the corpus evaluated on, the
    split its contexts were drawn from ('val': the SAE's own validation documents; 'all': another corpus)."""
    return {"config": config_to_dict(cfg), "model": es.acts_cfg.model, "model_dtype": es.acts_cfg.model_dtype, "hook": es.hook,
            "corpus": es.acts_cfg.corpus, "trained_corpus": es.trained_corpus, "split": es.split,
            "split_documents": es.split_docs, "context_len": es.acts_cfg.context_len, "keep_first": es.acts_cfg.keep_first,
            "eval_contexts": int(es.tokens.shape[0]), "eval_tokens": int(es.flat_acts.shape[0]),
            "sae": {"arch": es.sae.cfg.arch, "n": es.sae.cfg.n, "k": es.sae.cfg.k, "d": es.sae.cfg.d,
                    "normalize": es.sae.cfg.normalize}}


def tqdm_track(items, desc: str, total: int):
    """The eval loops' progress as transient tqdm bars (on stderr)."""
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, total=total, leave=False)


def eval_model_dtype(name: str) -> str:
    """The model dtype eval uses: as given, but 'auto' falls back to float32 (issue 13's rule: a bf16 eval
    model must keep ΔCE within 0.005 nats of fp32's; measured +0.0063, benchmarks/README.md)."""
    return "float32" if name == "auto" else name


@contextmanager
def provenance(cfg: EvalCommand):
    """(SAE folder, corpus) for load_eval_set. A saescale SAE, or a foreign one exported by saescale, records its
    model, hook and corpus: itself and --corpus. A foreign SAE without that record needs --model and --hook (one
    line naming the missing ones otherwise), and so does one trained on activation files (``--acts FILE``); it is
    then evaluated from a temporary saescale copy recording them, on all of --corpus (the embedded corpus by
    default: its training text is unknown)."""
    from saescale.sae.io import load_sae, read_cfg, save_sae

    sae_cfg, extra = read_cfg(cfg.sae)
    recorded, info = extra.get("activations"), extra.get("imported")
    if recorded or (info is None and extra.get("source") != "arrays"):
        if cfg.hook and isinstance(recorded, dict) and cfg.hook != recorded.get("hook"):
            raise SaescaleError(f"--hook {cfg.hook}: {cfg.sae} records its hook point "
                                f"{repr(recorded['hook']) if recorded.get('hook') else '(the model default)'} (where it was "
                                "trained); drop --hook")
        if cfg.target_hook and (not isinstance(recorded, dict) or cfg.target_hook != recorded.get("target_hook")):
            held = recorded.get("target_hook") if isinstance(recorded, dict) else None
            raise SaescaleError(f"--target-hook {cfg.target_hook}: {cfg.sae} records "
                                f"{f'its target hook {held!r}' if held else 'no target hook (it is not a transcoder)'}; "
                                "drop --target-hook")
        yield cfg.sae, cfg.corpus
        return
    if info is None:  # trained on the user's activation files: they record no model or hook point
        what, info = "was trained on activation files (--acts FILE), which record no model or hook point", {}
    else:
        what = f"is a {info.get('format', 'foreign')} SAE with no saescale record of the model and hook it was trained on"
    transcoder = sae_cfg.d_out is not None
    needed = (("--model", cfg.model), ("--hook", cfg.hook)) + ((("--target-hook", cfg.target_hook),) if transcoder else ())
    missing = [opt for opt, value in needed if not value]
    if missing:
        said = ", ".join(f"{k} {info[k]!r}" for k in ("model", "hook", "hook_out") if info.get(k))
        example = ("--model default --hook layers.20.mlp.input --target-hook layers.20.mlp" if transcoder
                   else "--model default --hook layers.20")
        raise SaescaleError(f"{cfg.sae} {what}{f' (its files say {said})' if said else ''}: give "
                            f"{' and '.join(missing)} (a saescale model and hook point{'s' if transcoder else ''}, "
                            f"e.g. {example})")
    if cfg.target_hook and not transcoder:
        raise SaescaleError(f"--target-hook {cfg.target_hook}: {cfg.sae} is an SAE, not a transcoder; drop --target-hook")
    with tempfile.TemporaryDirectory(prefix="saescale-eval-") as tmp:
        acts = {"model": cfg.model, "hook": cfg.hook, "corpus": "unknown",
                **({"target_hook": cfg.target_hook} if transcoder else {})}
        record = {**extra, "source": extra.get("source", "imported"), "activations": acts}  # its own record kept
        folder = save_sae(load_sae(cfg.sae), Path(tmp) / "sae", extra=record)
        yield str(folder), cfg.corpus or "default"


def run_eval(cfg: EvalCommand, lm=None) -> dict:
    """Compute the chosen metrics, write ``metrics.json`` atomically, print a table; returns the written dict."""
    from saescale.eval.evalset import load_eval_set
    from saescale.eval.report import format_table, json_safe
    from saescale.eval.suite import run_metrics

    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if not Path(cfg.sae).exists():
        raise SaescaleError(f"SAE folder {cfg.sae} not found: give the sae/ folder of a training run")
    with provenance(cfg) as (sae_dir, corpus):
        es = load_eval_set(sae_dir, cfg.eval_contexts, cfg.seed, cfg.model, lm=lm, corpus=corpus,
                           model_dtype=eval_model_dtype(cfg.model_dtype), track=tqdm_track)
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    results, timings = run_metrics(es, cfg.metric_names, cfg)
    doc = json_safe({"settings": settings(cfg, es), "metrics": results, "timings_s": timings})
    path = cfg.out_dir / "metrics.json"
    atomic_write_json(path, doc)
    print(format_table(results))
    print(f"wrote {path}")
    return doc
