"""Start or resume a training run in an output folder, and save the result.

``OUT/run.json`` holds the configs; ``OUT/checkpoints/`` the resumable state;
``OUT/metrics.jsonl`` the training curve; ``OUT/sae/`` the finished SAE
(cfg.json + sae.safetensors) and ``OUT/summary.json`` the final figures.
Running the same command again after a kill resumes from the last checkpoint
and gives bit-identical weights to an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import torch

from saescale.atomic import atomic_write_json
from saescale.configs import config_to_dict
from saescale.data.source import BatchSource
from saescale.errors import SaescaleError
from saescale.sae.base import SparseAutoencoder
from saescale.sae.config import SAEConfig
from saescale.sae.io import save_sae
from saescale.sae.registry import build_sae
from saescale.train.checkpoint import latest_checkpoint, load_checkpoint
from saescale.train.config import TrainConfig
from saescale.train.init import init_sae, resolve_sae_config
from saescale.train.trainer import Trainer

# Settings that may change between a killed run and its resumption.
_RESUMABLE_CHANGES = {"progress", "device", "log_every", "checkpoint_every", "keep_checkpoints"}


@dataclass
class TrainResult:
    sae: SparseAutoencoder
    metrics: dict[str, float]  # last logged training metrics
    resumed_from: int  # step resumed from (0 = fresh start)
    seconds: float


def init_sample(source: BatchSource, cfg: TrainConfig) -> torch.Tensor:
    """The first ``init_tokens`` tokens of the stream (N, d), as the released code does."""
    nb = math.ceil(cfg.init_tokens / cfg.batch_size)
    return torch.cat(list(islice(source.batches(cfg.batch_size), nb)))[: cfg.init_tokens].float()


def new_trainer(sae_cfg: SAEConfig, cfg: TrainConfig, source: BatchSource, out_dir: Path | None) -> Trainer:
    """Build, initialise (tied init, geometric-median b_pre, loss scale) and wrap an SAE."""
    sample = init_sample(source, cfg)
    if sae_cfg.d and sae_cfg.d != sample.shape[1]:
        raise SaescaleError(f"--d {sae_cfg.d} does not match the data width {sample.shape[1]}; drop --d")
    sae = build_sae(resolve_sae_config(sae_cfg, sample))
    sae.check_input(sample)
    gen = torch.Generator().manual_seed(cfg.seed)
    scale = init_sae(sae, sample, gen)
    if not cfg.tied_init:
        with torch.no_grad():
            w = torch.randn(sae.W_enc.shape, generator=gen)
            sae.W_enc.copy_(w / w.norm(dim=-1, keepdim=True))
    return Trainer(sae, cfg, scale, out_dir)


def run_record(sae_cfg: SAEConfig, cfg: TrainConfig, extra: dict[str, Any]) -> dict[str, Any]:
    return {"sae": config_to_dict(sae_cfg), "train": config_to_dict(cfg), "extra": extra}


def check_same_run(out_dir: Path, record: dict[str, Any]) -> None:
    """One-line error when ``out_dir/run.json`` records other settings than ``record`` (resumable ones aside)."""
    old = json.loads((out_dir / "run.json").read_text())
    strip = lambda r: {**r, "train": {k: v for k, v in r["train"].items() if k not in _RESUMABLE_CHANGES}}  # noqa: E731
    if strip(old) != strip(record):
        diff = sorted(
            f"{sec}.{k}" for sec in ("sae", "train", "extra") for k in set(old[sec]) | set(record[sec])
            if old[sec].get(k) != record[sec].get(k) and k not in _RESUMABLE_CHANGES
        )
        raise SaescaleError(
            f"{out_dir} holds a run with different settings ({', '.join(diff)}); use another --out to start a new run"
        )


def resume_folder(out: Path, record: dict[str, Any]) -> Path | None:
    """The last checkpoint of the run in ``out`` (created if missing), its settings checked against
    ``record`` (one-line error if they differ); None when the run is new."""
    out.mkdir(parents=True, exist_ok=True)
    folder = latest_checkpoint(out) if (out / "run.json").exists() else None
    if folder is not None:
        check_same_run(out, record)
    return folder


def open_run(sae_cfg: SAEConfig, cfg: TrainConfig, source: BatchSource, out: Path | None,
             extra: dict[str, Any]) -> Trainer:
    """A trainer for the run in ``out``: resumed from its last checkpoint, or new (run.json written)."""
    record = run_record(sae_cfg, cfg, extra)
    trainer = None
    if out is not None:
        folder = resume_folder(out, record)
        if folder is not None:
            sae, tensors, meta = load_checkpoint(folder, cfg.device)
            trainer = Trainer(sae, cfg, meta["loss_scale"], out)
            trainer.load_state(tensors, meta)
            print(f"resuming {out} from step {trainer.state.step} ({trainer.state.tokens_seen:,} tokens)", flush=True)
        else:
            atomic_write_json(out / "run.json", record)
    if trainer is None:
        trainer = new_trainer(sae_cfg, cfg, source, out)
    if source.d != trainer.sae.cfg.d:
        raise SaescaleError(f"data width {source.d} does not match the SAE's d={trainer.sae.cfg.d}")
    return trainer


def finish_run(trainer: Trainer, out: Path | None, extra: dict[str, Any], metrics: dict[str, float],
               sae: SparseAutoencoder | None = None) -> SparseAutoencoder:
    """The trained SAE (``sae``, or the trainer's); with ``out``, saved to OUT/sae with its provenance, and OUT/summary.json."""
    sae = trainer.final_sae() if sae is None else sae
    if out is not None:
        info = {**extra, "train": config_to_dict(trainer.cfg), "loss_scale": trainer.state.loss_scale,
                "tokens_seen": trainer.state.tokens_seen, "steps": trainer.state.step}
        save_sae(sae, out / "sae", extra=info)
        atomic_write_json(out / "summary.json", {"final_train_metrics": metrics, **info})
    return sae


def train_sae(
    sae_cfg: SAEConfig, cfg: TrainConfig, source: BatchSource, out_dir: str | Path | None = None,
    extra: dict[str, Any] | None = None,
) -> TrainResult:
    """Train (or resume) an SAE on ``source``; with ``out_dir`` save checkpoints, metrics and the SAE."""
    t0 = time.perf_counter()
    extra = extra or {}
    out = Path(out_dir) if out_dir is not None else None
    trainer = open_run(sae_cfg, cfg, source, out, extra)
    resumed = trainer.state.step
    metrics = trainer.fit(source.batches(cfg.batch_size, start=trainer.state.step))
    return TrainResult(finish_run(trainer, out, extra, metrics), metrics, resumed, time.perf_counter() - t0)
