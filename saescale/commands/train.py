"""``saescale train``: pick an activation source, train (or resume) an SAE, report held-out figures."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Iterable

import torch

from saescale.activations.config import ActivationConfig
from saescale.configs import config_to_dict
from saescale.data.source import BatchSource
from saescale.data.synthetic import SyntheticConfig, SyntheticSource, feature_recovery
from saescale.distributed.config import DistConfig
from saescale.errors import SaescaleError
from saescale.eval.recon import reconstruction_metrics
from saescale.sae.base import SparseAutoencoder
from saescale.sae.config import SAEConfig
from saescale.train.config import TrainConfig
from saescale.train.run import train_sae


@dataclass
class RunConfig:
    """Where the activations come from and where results go."""

    acts: str = "cache"
    """Activation source: 'cache' (build or reuse the on-disk cache for --model/--hook/--corpus, then train on it), 'stream' (run the model live, no cache), 'synthetic' (planted sparse dictionary, see --synth-*), or the path of an existing cache folder."""

    out: str = ""
    """Output folder (checkpoints, metrics.jsonl, sae/, summary.json). Empty: runs/<acts>-<arch>-n<n>-k<k>-seed<seed>. Rerunning with the same folder resumes."""

    eval_tokens: int = 65_536
    """Held-out tokens used for the final nMSE / L0 / dead-fraction report."""

    threads: int = 0
    """Torch CPU threads; 0 = torch's default."""


@dataclass
class TrainCommand:
    """Train a sparse autoencoder (TopK by default) on language-model activations."""

    run: RunConfig = field(default_factory=RunConfig)
    sae: SAEConfig = field(default_factory=SAEConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    activations: ActivationConfig = field(default_factory=ActivationConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    dist: DistConfig = field(default_factory=DistConfig)


def train_sources(cmd: TrainCommand) -> tuple[BatchSource, BatchSource, dict[str, Any]]:
    """(train source, held-out source, provenance recorded with the SAE)."""
    acts = cmd.run.acts
    if acts == "synthetic":
        src = SyntheticSource(cmd.synthetic)
        return src, src.heldout(), {"source": "synthetic", "synthetic": config_to_dict(cmd.synthetic)}
    if acts == "stream":
        from saescale.activations.lm_text import load_lm_text
        from saescale.activations.stream import StreamSource

        a, seed = cmd.activations, cmd.train.seed
        lt = load_lm_text(a)  # one model load and one tokenisation for both splits
        return (StreamSource(a, "train", seed, lm_text=lt), StreamSource(a, "val", seed, lm_text=lt),
                {"source": "stream", "activations": config_to_dict(a)})
    from saescale.activations.cache import CacheReader, build_cache

    path = Path(acts) if acts != "cache" else build_cache(cmd.activations)
    if not path.exists():
        raise SaescaleError(f"activation cache {path} not found; build it with 'saescale cache' or use --acts cache")
    train = CacheReader(path, "train", cmd.train.seed)
    return train, CacheReader(path, "val", cmd.train.seed), cache_provenance(train)


def cache_provenance(reader: Any) -> dict[str, Any]:
    """What an SAE trained on a cache records about its data: the cache folder and the activation
    settings (hook resolved, e.g. 'layers.20'), so evaluation can rerun the same model and corpus."""
    acts = {**reader.manifest.get("config", {}), "hook": reader.manifest["hook"]}
    return {"source": "cache", "cache": str(reader.path), "activations": acts}


def heldout_batches(held: BatchSource, tokens: int, batch_size: int) -> Iterable[torch.Tensor]:
    """Up to ``tokens`` held-out tokens, each once: a cache's split read in order, or a stream's first batches."""
    if hasattr(held, "read_all"):
        return held.read_all(max_tokens=tokens)["acts"].split(batch_size)
    return islice(held.batches(batch_size), max(1, tokens // batch_size))


def default_out(cmd: TrainCommand) -> Path:
    name = "cache" if Path(cmd.run.acts).exists() else cmd.run.acts
    return Path("runs") / f"{name}-{cmd.sae.arch}-n{cmd.sae.n}-k{cmd.sae.k}-seed{cmd.train.seed}"


def run_train(cmd: TrainCommand) -> dict[str, float]:
    """Train, then print and return held-out metrics (and the recovered-feature score on synthetic data).

    Under torchrun (or with --latent-shards > 1, or resuming a distributed run) every process runs
    this as one rank of a distributed run: see :mod:`saescale.distributed.launch`.
    """
    if cmd.run.threads > 0:
        torch.set_num_threads(cmd.run.threads)
    out = Path(cmd.run.out) if cmd.run.out else default_out(cmd)
    from saescale.distributed.launch import run_train_distributed, wants_distributed

    if wants_distributed(cmd.dist, out):
        return run_train_distributed(cmd, out)
    src, held, extra = train_sources(cmd)
    result = train_sae(cmd.sae, cmd.train, src, out, extra)
    return heldout_report(cmd, result.sae, src, held, out)


def heldout_report(cmd: TrainCommand, sae: SparseAutoencoder, src: BatchSource, held: BatchSource,
                   out: Path) -> dict[str, float]:
    """Held-out nMSE / L0 / dead fraction of a trained SAE (+ recovered features on synthetic data),
    printed and written to OUT/eval.json."""
    report = reconstruction_metrics(sae, heldout_batches(held, cmd.run.eval_tokens, cmd.train.batch_size))
    if isinstance(src, SyntheticSource):
        mmc, frac = feature_recovery(sae.W_dec.detach().cpu(), src.features)
        report.update(mean_max_cos=mmc, recovered_frac=frac)
    from saescale.atomic import atomic_write_json

    atomic_write_json(out / "eval.json", {"heldout": report, "eval_tokens": report["tokens"], "seed": cmd.train.seed})
    line = (f"held-out nMSE {report['nmse']:.4f} | L0 {report['l0']:.1f} | dead {report['dead_frac']:.2%} "
            f"({report['tokens']:,} tokens)")
    if "mean_max_cos" in report:
        line += f" | recovered features {report['recovered_frac']:.1%} (mean-max cos {report['mean_max_cos']:.3f})"
    print(line)
    print(f"saved SAE to {out / 'sae'}")
    return report
