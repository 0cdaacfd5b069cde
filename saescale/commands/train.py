"""``saescale train``: pick an activation source, train (or resume) an SAE, report held-out figures.

The same command is one process or one rank of a distributed run under torchrun (the
process's place in the mesh comes from torchrun's environment; one process is a one-rank mesh).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from saescale.activations.config import ActivationConfig
from saescale.activations.sources import activation_sources, heldout_batches, is_array_path
from saescale.atomic import atomic_write_json
from saescale.commands.progress import ProgressBar
from saescale.data.source import BatchSource
from saescale.data.synthetic import SyntheticConfig, SyntheticSource, feature_recovery
from saescale.distributed.launch import rank_output, stop_on_sigterm, train_device
from saescale.distributed.mesh import DistConfig, check_layout, close_mesh, env_ranks, init_mesh
from saescale.configs import check_valid, non_default, valid
from saescale.errors import SaescaleError
from saescale.eval.recon import reconstruction_metrics
from saescale.sae.config import L1_ARCHS, TOPK_ARCHS, SAEConfig, check_transcoder
from saescale.train.config import TrainConfig
from saescale.train.memory import check_fits
from saescale.train.run import TrainResult, train_sae


@dataclass
class RunConfig:
    """Where the activations come from and where results go."""

    acts: str = "cache"
    """Activation source: 'cache' (build or reuse the on-disk cache for --model/--hook/--corpus, then train on it), 'stream' (run the model live, no cache), 'synthetic' (planted sparse dictionary, see --synth-*), the path of an existing cache folder (one with manifest.json), or your own activations: an (N, d) float array in a .npy, .safetensors (the tensor 'acts', or its only 2-D tensor) or .pt file (torch.load weights_only) or a folder of such shards (same width, in name order), memory-mapped, shuffled, the last 5% of the rows held out."""

    out: str = ""
    """Output folder (checkpoints, metrics.jsonl, sae/, summary.json). Empty: runs/<acts>-<arch>-n<n>-k<k>-seed<seed>. Rerunning with the same folder resumes."""

    eval_tokens: int = valid(65_536, ">= 1")
    """Held-out tokens used for the final nMSE / L0 / dead-fraction report."""

    threads: int = valid(0, "[0, 1024]")
    """Torch CPU threads; 0 = torch's default."""

    def __post_init__(self) -> None:
        check_valid(self)


@dataclass
class TrainCommand:
    """Train a sparse autoencoder (TopK by default) on language-model activations."""

    run: RunConfig = field(default_factory=RunConfig)
    sae: SAEConfig = field(default_factory=SAEConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    activations: ActivationConfig = field(default_factory=ActivationConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig, metadata={"prefix": "synth"})
    dist: DistConfig = field(default_factory=DistConfig)

    def __post_init__(self) -> None:
        check_consistent(self)


def changed(cfg: Any, prefix: str = "") -> list[str]:
    """The options of dataclass ``cfg`` set to something other than their default (``--<prefix><name>``)."""
    return [f"--{prefix}{name.replace('_', '-')}" for name in non_default(cfg)]


SHORT_JUMPRELU_STEPS = 20_000  # below this, JumpReLU's thresholds barely move at the paper's learning rate


def check_consistent(cmd: TrainCommand) -> None:
    """Refuse options that contradict each other (naming both); warn once about a setting the run ignores."""
    acts, model_opts, synth_opts = cmd.run.acts, changed(cmd.activations), changed(cmd.synthetic, "synth-")
    if acts == "synthetic" and model_opts:
        opt = model_opts[0]
        raise SaescaleError(f"{opt} sets model activations, but --acts synthetic trains on planted synthetic data: "
                            f"drop {opt}, or use --acts cache / stream")
    if acts != "synthetic" and synth_opts:
        opt = synth_opts[0]
        raise SaescaleError(f"{opt} applies to --acts synthetic only, not --acts {acts}: drop {opt} or use --acts synthetic")
    if not cmd.activations.target_hook:
        for name in ("skip", "target_scale"):
            if getattr(cmd.sae, name) != getattr(SAEConfig(), name):
                opt = f"--{name.replace('_', '-')}"
                raise SaescaleError(f"{opt} applies to transcoders only: add --target-hook (e.g. --hook layers.20.mlp.input "
                                    f"--target-hook layers.20.mlp), or drop {opt}")
    else:
        check_transcoder(cmd.sae)  # before any harvest: the architecture, the normalisation
    arch, train_default = cmd.sae.arch, TrainConfig()
    if arch != "topk" and cmd.train.multi_topk:
        raise SaescaleError(f"--multi-topk is the TopK SAE's loss and --arch {arch} does not train with it: "
                            "drop one of them")
    if arch not in TOPK_ARCHS and cmd.sae.k != SAEConfig().k:
        print(f"warning: --k {cmd.sae.k} is unused by --arch {arch} (it has no top-k)", file=sys.stderr)
    if arch == "jumprelu" and cmd.train.threshold_lr_mult == 1.0 and cmd.train.steps < SHORT_JUMPRELU_STEPS:
        print(f"warning: --arch jumprelu for {cmd.train.steps:,} steps: Adam moves log θ by about the learning rate "
              "per step, so the thresholds will barely leave their start (a ReLU-like SAE); the paper trains "
              "100k+ steps. Pass --threshold-lr-mult 100 for a short run (docs/architectures.md)", file=sys.stderr)
    for name, archs in (("l1_coef", L1_ARCHS), ("l0_coef", ("jumprelu",)), ("threshold_lr_mult", ("jumprelu",)), ("k_aux", TOPK_ARCHS),
                        ("aux_coef", TOPK_ARCHS), ("balance_coef", ("switch",))):
        if arch not in archs and getattr(cmd.train, name) != getattr(train_default, name):
            print(f"warning: --{name.replace('_', '-')} is unused by --arch {arch} (only {', '.join(archs)})",
                  file=sys.stderr)


def train_sources(cmd: TrainCommand, show: bool = False) -> tuple[BatchSource, BatchSource, dict[str, Any]]:
    """(train source, held-out source, provenance recorded with the SAE) for ``--acts``; ``show``: a
    progress bar and a summary line if the cache is built now."""
    bar = ProgressBar(desc="cache", enabled=show)
    try:
        return activation_sources(cmd.run.acts, cmd.activations, cmd.synthetic, cmd.train.seed, bar,
                                  bar.write if show else None)
    finally:
        bar.close()


def default_out(cmd: TrainCommand) -> Path:
    acts = cmd.run.acts
    name = acts if acts in ("cache", "stream", "synthetic") else (Path(acts).stem or "acts") if is_array_path(acts) \
        else "cache"
    return Path("runs") / f"{name}-{cmd.sae.arch}-n{cmd.sae.n}-k{cmd.sae.k}-seed{cmd.train.seed}"


def check_width(cmd: TrainCommand, d: int, out: Path) -> None:
    """Before anything is written: one-line error when --d, or the run already in ``out``, has another
    width than the data (``d``)."""
    if cmd.sae.d is not None and cmd.sae.d != d:
        raise SaescaleError(f"--d {cmd.sae.d} does not match the width {d} of --acts {cmd.run.acts}: drop --d")
    try:
        recorded = json.loads((out / "run.json").read_text())["resolved"]["sae"]["d"]
    except (OSError, ValueError, KeyError, TypeError):  # no run there yet (a damaged run.json is reported later)
        return
    if isinstance(recorded, int) and recorded != d:
        raise SaescaleError(f"{out} holds a run trained on width-{recorded} activations, but --acts {cmd.run.acts} "
                            f"has width {d}: resume it on its own activations, or use another --out")


def run_train(cmd: TrainCommand) -> dict[str, float]:
    """Train as this process's rank (rank 0 of 1 without torchrun), then print and return held-out
    metrics (and the recovered-feature score on synthetic data) on rank 0."""
    if cmd.run.threads > 0:
        torch.set_num_threads(cmd.run.threads)
    out = Path(cmd.run.out) if cmd.run.out else default_out(cmd)
    rank, world, local_rank = env_ranks()
    try:
        layout = check_layout(world, cmd.dist.latent_shards, cmd.sae.n, cmd.train.batch_size, cmd.sae.arch)
        device = train_device(cmd.train.device, local_rank, world)
        cfg = dataclasses.replace(cmd.train, device=str(device))
        if world > 1 and cmd.run.acts == "cache":  # open the built cache; never harvest in several processes
            from saescale.activations.cache import built_cache

            cmd = dataclasses.replace(cmd, run=dataclasses.replace(cmd.run, acts=str(built_cache(cmd.activations))))
        with rank_output(rank), stop_on_sigterm(rank, world):
            fits = lambda d: check_fits(cmd.sae.n, d, cfg.batch_size, device, cfg.ema > 0, layout.latent_shards,  # noqa: E731
                                        layout.data_shards)
            fits(cmd.sae.d or (cmd.synthetic.d if cmd.run.acts == "synthetic" else None))  # before any harvest
            src, held, extra = train_sources(cmd, show=cfg.progress and rank == 0)
            check_width(cmd, src.d - (getattr(src, "d_target", None) or 0), out)
            fits(src.d)
            mesh = init_mesh(layout, rank, cmd.dist, device)
            bar = ProgressBar(cfg.steps * cfg.batch_size, enabled=cfg.progress and rank == 0)
            try:
                result = train_sae(cmd.sae, cfg, src, out, extra, mesh, [bar], log=bar.write)
            finally:
                bar.close()
                close_mesh(mesh)
            return heldout_report(cmd, result, src, held, out) if result.sae is not None else {}
    except SaescaleError as e:
        if world > 1 and not str(e).startswith("rank "):
            raise type(e)(f"rank {rank} of {world}: {e}") from None
        raise
    finally:
        sys.stdout.flush()


def heldout_report(cmd: TrainCommand, result: TrainResult, src: BatchSource, held: BatchSource,
                   out: Path) -> dict[str, float]:
    """Held-out nMSE / L0 / never-fired fraction of a trained SAE, the paper's dead fraction over the last W
    training tokens (+ recovered features on synthetic data), printed and written to OUT/eval.json."""
    sae = result.sae
    report = reconstruction_metrics(sae, heldout_batches(held, cmd.run.eval_tokens, cmd.train.batch_size))
    report.update(dead_frac=result.metrics.get("dead_frac"), dead_window_tokens=result.cfg.dead_tokens)
    if isinstance(src, SyntheticSource):
        mmc, frac = feature_recovery(sae.W_dec.detach().cpu(), src.features)
        report.update(mean_max_cos=mmc, recovered_frac=frac)
    atomic_write_json(out / "eval.json", {"heldout": report, "eval_tokens": report["tokens"], "seed": cmd.train.seed})
    line = (f"held-out nMSE {report['nmse']:.4f} | L0 {report['l0']:.1f} | never fired on {report['tokens']:,} "
            f"held-out tokens {report['never_fired_frac']:.2%} | dead (no fire in the last "
            f"{report['dead_window_tokens']:,} training tokens) {report['dead_frac']:.2%}")
    if "mean_max_cos" in report:
        line += f" | recovered features {report['recovered_frac']:.1%} (mean-max cos {report['mean_max_cos']:.3f})"
    print(line)
    print(f"saved SAE to {out / 'sae'}")
    return report
