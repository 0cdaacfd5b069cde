"""Start, resume and finish a distributed training run (the counterpart of :mod:`saescale.train.run`).

The run folder is the single-process one (run.json, metrics.jsonl, checkpoints/, sae/,
summary.json), on a filesystem every rank sees. Rank 0 writes run.json, the metrics and the
final files; every rank writes its part of each checkpoint. A run resumes from its last
checkpoint whatever layout wrote it: a distributed checkpoint is re-sharded on load, a
single-process checkpoint is sliced.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from saescale.atomic import atomic_write_json
from saescale.configs import config_from_dict
from saescale.data.source import BatchSource
from saescale.distributed.checkpoint import is_dist_checkpoint, load_dist_checkpoint, read_dist_meta
from saescale.distributed.data import DataParallelSlice
from saescale.distributed.init import init_shard, shard_state
from saescale.distributed.mesh import Mesh
from saescale.distributed.sharded_sae import LatentShard, ShardedTopK
from saescale.distributed.trainer import DistTrainer
from saescale.errors import SaescaleError
from saescale.sae.config import SAEConfig
from saescale.train.checkpoint import load_checkpoint
from saescale.train.config import TrainConfig
from saescale.train.run import TrainResult, finish_run, init_sample, resume_folder, run_record
from saescale.train.trainer import PARAMS


def resume_trainer(folder: Path, cfg: TrainConfig, out: Path | None, mesh: Mesh) -> DistTrainer:
    """This rank's trainer restored from checkpoint ``folder``, written by any layout or by one process."""
    if is_dist_checkpoint(folder):
        sae_cfg = config_from_dict(SAEConfig, read_dist_meta(folder)["sae"], what=f"{folder}/state.json", strict=True)
        shard = LatentShard(sae_cfg.n, mesh.latent_shards, mesh.latent_rank)
        tensors, meta = load_dist_checkpoint(folder, mesh, shard, cfg.device)
    else:  # a single-process checkpoint: every rank reads it whole and keeps its rows
        whole, tensors, meta = load_checkpoint(folder, cfg.device)
        sae_cfg, shard = whole.cfg, LatentShard(whole.cfg.n, mesh.latent_shards, mesh.latent_rank)
        tensors = shard_state({**{k: getattr(whole, k).detach() for k in PARAMS}, **tensors}, shard)
    trainer = DistTrainer(ShardedTopK(sae_cfg, shard), cfg, meta["loss_scale"], out, mesh)
    trainer.load_state(tensors, meta)
    return trainer


def open_dist_run(sae_cfg: SAEConfig, cfg: TrainConfig, source: BatchSource, out: Path | None,
                  extra: dict[str, Any], mesh: Mesh) -> DistTrainer:
    """This rank's trainer for the run in ``out``: resumed from its last checkpoint, or new (run.json by rank 0).

    ``source`` is the whole stream (every rank reads the same initialisation sample from it).
    """
    record = run_record(sae_cfg, cfg, extra)
    trainer = None
    if out is not None:
        folder = resume_folder(out, record)
        if folder is not None:
            trainer = resume_trainer(folder, cfg, out, mesh)
            print(f"resuming {out} from step {trainer.state.step} ({trainer.state.tokens_seen:,} tokens) on "
                  f"{mesh.world} process(es), {mesh.latent_shards} latent shard(s)", flush=True)
        elif mesh.rank == 0:
            atomic_write_json(out / "run.json", record)
    if trainer is None:
        sample = init_sample(source, cfg)
        sae, scale = init_shard(sae_cfg, cfg, sample, mesh.latent_rank, mesh.latent_shards)
        trainer = DistTrainer(sae, cfg, scale, out, mesh)
    if source.d != trainer.sae.cfg.d:
        raise SaescaleError(f"data width {source.d} does not match the SAE's d={trainer.sae.cfg.d}")
    return trainer


def train_sae_distributed(sae_cfg: SAEConfig, cfg: TrainConfig, source: BatchSource, mesh: Mesh,
                          out_dir: str | Path | None = None, extra: dict[str, Any] | None = None) -> TrainResult:
    """Train (or resume) an SAE on ``source`` as this rank of ``mesh``; every rank of the run calls it.

    ``cfg.batch_size`` is the global batch; each data replica trains on its rows of it. The result's
    ``sae`` is the whole trained SAE on global rank 0 (saved to OUT/sae with OUT/summary.json there)
    and None on the other ranks.
    """
    t0 = time.perf_counter()
    extra = extra or {}
    out = Path(out_dir) if out_dir is not None else None
    trainer = open_dist_run(sae_cfg, cfg, source, out, extra, mesh)
    resumed = trainer.state.step
    rows = DataParallelSlice(source, mesh.data_rank, mesh.data_shards)
    metrics = trainer.fit(rows.batches(cfg.batch_size // mesh.data_shards, start=trainer.state.step))
    sae = trainer.final_sae()  # collective over the latent group of replica 0
    if mesh.rank == 0:
        layout = {"world": mesh.world, "latent_shards": mesh.latent_shards}
        finish_run(trainer, out, {**extra, "distributed": layout}, metrics, sae)
    return TrainResult(sae, metrics, resumed, time.perf_counter() - t0)  # type: ignore[arg-type]

