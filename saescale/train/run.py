"""Start or resume a training run in an output folder, and save the result.

``OUT/run.json`` holds the settings as given and as resolved (learning rate, warm-up,
k_aux, dead window, kernels, precision, threads, torch version); ``OUT/checkpoints/`` the
resumable state; ``OUT/metrics.jsonl`` the training curve; ``OUT/sae/`` the finished SAE
(cfg.json + sae.safetensors) and ``OUT/summary.json`` the final figures. Running the same
command again after a kill resumes from the last checkpoint and gives bit-identical weights
to an uninterrupted run.

A distributed run is the same code on a mesh of several processes (every rank calls
:func:`train_sae` with its :class:`~saescale.distributed.mesh.Mesh`): rank 0 writes run.json,
the metrics and the final files, every rank its part of each checkpoint, and a run resumes
from its last checkpoint whatever layout wrote it.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from saescale.atomic import atomic_write_json
from saescale.configs import config_to_dict
from saescale.data.source import BatchSource, DataParallelSlice
from saescale.distributed.mesh import Mesh
from saescale.errors import SaescaleError
from saescale.kernels import fast_kernels
from saescale.sae.base import SparseAutoencoder
from saescale.sae.config import SAEConfig, upgrade_sae_record
from saescale.sae.io import save_sae
from saescale.sae.registry import build_sae
from saescale.train.checkpoint import latest_checkpoint, load_checkpoint
from saescale.train.checkpoint_check import read_run_settings
from saescale.train.config import TrainConfig, upgrade_train_record
from saescale.train.init import init_sae, resolve_sae_config, scale_encoder
from saescale.train.trainer import Callback, Trainer

# Settings that may change between a killed run and its resumption.
_RESUMABLE_CHANGES = {"progress", "device", "log_every", "checkpoint_every", "keep_checkpoints", "precision"}

Log = Callable[[str], None]


@dataclass
class TrainResult:
    sae: SparseAutoencoder | None  # the whole trained SAE (None on ranks other than 0 of a distributed run)
    metrics: dict[str, float]  # last logged training metrics
    resumed_from: int  # step resumed from (0 = fresh start)
    seconds: float
    cfg: TrainConfig  # the training settings as resolved and used (learning rate, dead window, ...)


def init_sample(source: BatchSource, cfg: TrainConfig) -> torch.Tensor:
    """The first ``init_tokens`` tokens of the stream (N, d), as the released code does."""
    nb = math.ceil(cfg.init_tokens / cfg.batch_size)
    return torch.cat(list(islice(source.batches(cfg.batch_size), nb)))[: cfg.init_tokens].float()


def new_trainer(sae_cfg: SAEConfig, cfg: TrainConfig, source: BatchSource, out_dir: Path | None,
                mesh: Mesh | None = None) -> Trainer:
    """Build and initialise (tied init, geometric-median b_pre, loss scale) this rank's shard of an SAE
    from the whole stream's first tokens, and wrap it in a trainer."""
    sample = init_sample(source, cfg)
    sae = build_sae(resolve_sae_config(sae_cfg, sample, getattr(source, "d_target", None)), mesh)
    sae.check_input(sample)
    gen = torch.Generator().manual_seed(cfg.seed)
    scale = init_sae(sae, sample, gen, tied=cfg.tied_init)
    if cfg.init_encoder_scale:
        scale_encoder(sae, gen)
    return Trainer(sae, cfg, scale, out_dir)


PRECISION_LINES = {
    "float32": "encoder selection: float32",
    "bfloat16": "encoder selection: bfloat16, exact (bf16 keys certified against float32; rows that fail are "
                "redone in float32: bf16_fallback_frac in metrics.jsonl)",
    "autocast": "encoder selection: bfloat16 autocast, approximate (the top-k of bf16 pre-activations)",
}


def precision_line(precision: str, asked: str = "auto", arch: str = "") -> str:
    """The line a training run prints about the precision it uses (the reference kernels are float32); when
    ``asked`` (--precision) is not what runs because ``arch`` selects no top-k, the line says so."""
    line = PRECISION_LINES[precision if fast_kernels() else "float32"]
    if asked not in ("auto", precision) and precision == "float32":
        line += f" (--arch {arch} selects no top-k: --precision {asked} does not apply to it)"
    return line


def runtime(precision: str = "float32") -> dict[str, Any]:
    """How this process computes: the kernel path, the selection's precision (the reference path is float32),
    CPU threads, torch version."""
    fast = fast_kernels()
    return {"kernels": "fast" if fast else "reference", "precision": precision if fast else "float32",
            "threads": torch.get_num_threads(), "torch": torch.__version__}


def resolved_record(trainer: Trainer) -> dict[str, Any]:
    """The settings that actually ran: the SAE's and training's with every unset value filled in, and the runtime."""
    mesh = trainer.mesh
    return {"sae": config_to_dict(trainer.sae.cfg), "train": config_to_dict(trainer.cfg),
            "runtime": {**runtime(trainer.cfg.precision), "device": trainer.cfg.device, "world": mesh.world,
                        "latent_shards": mesh.latent_shards}}


def run_record(sae_cfg: SAEConfig, cfg: TrainConfig, extra: dict[str, Any]) -> dict[str, Any]:
    return {"sae": config_to_dict(sae_cfg), "train": config_to_dict(cfg), "extra": extra}


def _as_given(record: dict[str, Any]) -> dict[str, Any]:
    """The settings of a run.json as given (older files' 'unset' sentinels read as None), resumable ones aside."""
    train = {k: v for k, v in upgrade_train_record(record["train"]).items() if k not in _RESUMABLE_CHANGES}
    extra = dict(record["extra"])
    if isinstance(extra.get("synthetic"), dict):  # older runs: synth_d, synth_k, ..., and no offset
        extra["synthetic"] = {"offset": 0.0, **{k.removeprefix("synth_"): v for k, v in extra["synthetic"].items()}}
    return {"sae": upgrade_sae_record(record["sae"]), "train": train, "extra": extra}


def check_same_run(out_dir: Path, record: dict[str, Any]) -> None:
    """One-line error when ``out_dir/run.json`` records other settings than ``record`` (resumable ones aside)."""
    path = out_dir / "run.json"
    try:
        old = _as_given(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise SaescaleError(f"{path} is damaged ({type(e).__name__}: {e}); restore it, or use another --out "
                            "to start a new run (the checkpoints there are kept)") from None
    new = _as_given(record)
    if old != new:
        diff = sorted(f"{sec}.{k}" for sec in new for k in set(old[sec]) | set(new[sec])
                      if old[sec].get(k) != new[sec].get(k))
        raise SaescaleError(
            f"{out_dir} holds a run with different settings ({', '.join(diff)}); use another --out to start a new run"
        )


def refuse_foreign_folder(out: Path, marker: str, what: str) -> None:
    """One-line error when ``out`` is a non-empty folder without ``marker``: not a saescale ``what`` folder,
    so its files are not ours to overwrite."""
    if out.is_dir() and not (out / marker).exists() and any(out.iterdir()):
        raise SaescaleError(f"--out {out} is not empty and holds no saescale {what} (no {marker}); its files are not "
                            "ours to overwrite: choose a new or empty folder")


def resume_folder(out: Path, record: dict[str, Any], first_writer: bool = True) -> Path | None:
    """The last checkpoint of the run in ``out`` (created if missing), its settings checked against
    ``record`` (one-line error if they differ); None when the run is new. The ``first_writer`` (rank 0,
    which writes run.json) refuses a non-empty folder without one; the other ranks would see rank 0's
    files appearing."""
    if first_writer:
        refuse_foreign_folder(out, "run.json", "run")
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "run.json").exists():
        return None
    check_same_run(out, record)  # also without a checkpoint yet: never restart another run's folder
    return latest_checkpoint(out)


def open_run(sae_cfg: SAEConfig, cfg: TrainConfig, source: BatchSource, out: Path | None,
             extra: dict[str, Any], mesh: Mesh | None = None, log: Log | None = None) -> Trainer:
    """This rank's trainer for the run in ``out``: resumed from its last checkpoint (written by any
    layout), or new (run.json written by rank 0). ``source`` is the whole stream."""
    mesh = mesh or Mesh.single()
    record = run_record(sae_cfg, cfg, extra)
    folder = resume_folder(out, record, mesh.rank == 0) if out is not None else None
    if folder is not None:
        sae, tensors, meta = load_checkpoint(folder, cfg.device, mesh, run=read_run_settings(out, sae_cfg, cfg))
        trainer = Trainer(sae, cfg, meta["loss_scale"], out)
        trainer.load_state(tensors, meta)
        where = "" if mesh.world == 1 else f" on {mesh.world} process(es), {mesh.latent_shards} latent shard(s)"
        if log:
            log(f"resuming {out} from step {trainer.state.step} ({trainer.state.tokens_seen:,} tokens){where}")
    else:
        trainer = new_trainer(sae_cfg, cfg, source, out, mesh)
        if out is not None and mesh.rank == 0:
            atomic_write_json(out / "run.json", {**record, "resolved": resolved_record(trainer)})
    if source.d != trainer.sae.row_width:
        raise SaescaleError(f"data width {source.d} does not match the SAE's rows of width {trainer.sae.row_width}")
    return trainer


def finish_run(trainer: Trainer, out: Path | None, extra: dict[str, Any], metrics: dict[str, float]) -> SparseAutoencoder | None:
    """The whole trained SAE on rank 0 (None elsewhere; collective); with ``out``, saved by rank 0 to
    OUT/sae with its provenance and the resolved settings, and OUT/summary.json."""
    sae = trainer.final_sae()
    if out is not None and sae is not None:
        mesh = trainer.mesh
        layout = {"distributed": {"world": mesh.world, "latent_shards": mesh.latent_shards}} if mesh.world > 1 else {}
        res = resolved_record(trainer)
        info = {**extra, **layout, "train": res["train"], "runtime": res["runtime"], "loss_scale": trainer.state.loss_scale,
                "tokens_seen": trainer.state.tokens_seen, "steps": trainer.state.step}
        save_sae(sae, out / "sae", extra=info)
        atomic_write_json(out / "summary.json", {"final_train_metrics": metrics, **info})
    return sae


def train_sae(
    sae_cfg: SAEConfig, cfg: TrainConfig, source: BatchSource, out_dir: str | Path | None = None,
    extra: dict[str, Any] | None = None, mesh: Mesh | None = None, callbacks: Iterable[Callback] = (),
    log: Log | None = None,
) -> TrainResult:
    """Train (or resume) an SAE on ``source``; with ``out_dir`` save checkpoints, metrics and the SAE.

    On a ``mesh`` of several processes every rank calls this: ``cfg.batch_size`` is the global batch
    and each data replica trains on its rows of it. ``callbacks`` get every step's metrics;
    ``log`` gets the one-line messages (e.g. ``print``); the library prints nothing itself.
    """
    t0 = time.perf_counter()
    extra, mesh = extra or {}, mesh or Mesh.single()
    out = Path(out_dir) if out_dir is not None else None
    trainer = open_run(sae_cfg, cfg, source, out, extra, mesh, log)
    resumed = trainer.state.step
    if out is not None and resumed >= trainer.cfg.steps and (out / "summary.json").is_file():
        trainer.close()  # a finished run: its files stay as they were
        if log:
            log(f"{out} is already finished ({resumed} steps): nothing to train, its files are left as they were")
        summary = json.loads((out / "summary.json").read_text())
        return TrainResult(trainer.final_sae(), summary["final_train_metrics"], resumed, time.perf_counter() - t0,
                           trainer.cfg)
    if log:
        log(precision_line(trainer.cfg.precision, cfg.precision, trainer.sae.cfg.arch))
    trainer.callbacks.extend(callbacks)
    rows = DataParallelSlice(source, mesh.data_rank, mesh.data_shards)
    metrics = trainer.fit(rows.batches(cfg.batch_size // mesh.data_shards, start=trainer.state.step))
    return TrainResult(finish_run(trainer, out, extra, metrics), metrics, resumed, time.perf_counter() - t0, trainer.cfg)
