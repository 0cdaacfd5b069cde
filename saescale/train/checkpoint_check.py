"""Every field of a training checkpoint checked against the run that resumes it, before any of it is used.

A checkpoint (layout: :mod:`saescale.train.checkpoint`) is read whole, then checked; only then does
anything build an SAE, an optimiser or a generator from it. A damaged or forged field would otherwise
give a traceback (a missing key), a bogus "training diverged" (a NaN moment or loss scale), memory
corruption (fused Adam on a moment of the wrong shape, ``torch.set_rng_state`` on a forged state) or
an early checkpoint saved as the final SAE (a step count past the real one: the loop sees nothing
left to train). What is checked, for the run's SAE config (n, d, arch, k, normalisation) and
training settings (steps = tokens // batch size, batch size, EMA on or off):

- ``state.json``: exactly the keys the trainer writes, each of the right JSON type; ``step`` in
  [1, steps] and equal to the folder's name (and latest.json's step); ``tokens_seen`` = step x batch
  size; ``loss_scale`` finite and > 0; ``ema_t`` = step with EMA, 0 without. A distributed (DCP)
  checkpoint's also its ``format``, its ``sae`` config and the ``layout`` that wrote it.
- ``cfg.json`` (or the DCP's ``sae``): every SAEConfig field, of its type, equal to the run's.
- every tensor (``sae.safetensors``, ``state.safetensors``, or the DCP metadata): present, none
  unknown, the shape and dtype the code writes (float32 weights, moments, EMA and Adam step counts,
  int64 dead-latent counters, the uint8 RNG state of torch's exact size); then the values: finite,
  second moments >= 0, decoder rows of unit norm, Adam's step counts = step, counters multiples of
  the batch size in [0, tokens_seen], and the RNG state one that the Mersenne Twister can resume.

Each problem is one :class:`~saescale.errors.SaescaleError` line: the folder, the file and field,
what was found against what was expected, and the fix (delete the folder and latest.json to resume
from the checkpoint before it, or use a new --out).
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import torch

from saescale.configs import config_from_dict, config_to_dict, unwrap_optional
from saescale.errors import SaescaleError
from saescale.sae.config import SAEConfig, upgrade_sae_record
from saescale.sae.registry import sae_class
from saescale.train.config import TrainConfig, upgrade_train_record

DIST_FORMAT = "saescale-dcp-v1"
META_KEYS = ("step", "tokens_seen", "loss_scale", "ema_t")  # what Trainer.checkpoint writes
DIST_META_KEYS = ("format", "sae", "layout")  # what a distributed run's rank 0 adds
MOMENTS = ("exp_avg", "exp_avg_sq")
MT_STATE_N = 624  # words of the Mersenne Twister state behind torch.get_rng_state()
TensorSpec = tuple[tuple[int, ...], torch.dtype]  # (global shape, dtype)


@dataclass(frozen=True)
class RunSettings:
    """What a checkpoint of the resuming run must match: the SAE config as given (d and norm_scale may
    be unset: from the data), the training settings, and the SAE config the run resolved when it
    started (run.json's ``resolved.sae``; None for runs that predate it)."""

    sae: SAEConfig
    train: TrainConfig
    resolved_sae: dict[str, Any] | None = None


def _section(record: Any, key: str, f: Path) -> dict[str, Any]:
    """The settings object ``key`` ('sae', 'train') of run.json ``f``'s ``record``."""
    part = record.get(key) if isinstance(record, dict) else None
    if not isinstance(part, dict):
        raise SaescaleError(f"{f}: no '{key}' settings; restore run.json or start a new --out")
    return part


def read_run_settings(out: Path, sae: SAEConfig | None = None, train: TrainConfig | None = None) -> RunSettings:
    """What a checkpoint of the run in folder ``out`` must match: ``sae`` and ``train`` as given (unset: as
    its run.json records them), and the SAE config run.json records as resolved (absent in older runs)."""
    f = out / "run.json"
    try:
        record = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise SaescaleError(f"{f} cannot be read ({' '.join(str(e).split())}); a checkpoint is checked against "
                            "its run's settings: restore run.json or start a new --out") from None
    if sae is None:
        sae = config_from_dict(SAEConfig, upgrade_sae_record(_section(record, "sae", f)), what=f"{f} sae")
    if train is None:
        train = config_from_dict(TrainConfig, upgrade_train_record(_section(record, "train", f)), what=f"{f} train")
    resolved = record.get("resolved") if isinstance(record, dict) else None
    resolved_sae = resolved.get("sae") if isinstance(resolved, dict) else None
    return RunSettings(sae, train, resolved_sae if isinstance(resolved_sae, dict) else None)


def step_folder(step: int) -> str:
    """The name of the checkpoint folder of ``step``."""
    return f"step-{step:09d}"


def damaged(folder: Path, what: str, issue: str) -> SaescaleError:
    """The one-line error for field ``what`` (e.g. "state.json field 'step'") of checkpoint ``folder``."""
    ptr = folder.parent / "latest.json"
    return SaescaleError(f"checkpoint {folder}: {what} {issue}; delete {folder} and {ptr} to resume from the "
                         "checkpoint before it (or from the start), or use a new --out")


# ---- state.json ---------------------------------------------------------------------------
def check_keys(folder: Path, what: str, found: typing.Iterable[str], expected: typing.Iterable[str],
               quote: bool = True) -> None:
    """Every expected key present, no other: ``what`` names the container ("state.json field"); JSON
    keys are quoted in the message, tensor names (``quote`` False) are not, as load_sae says them."""
    found, expected = set(found), list(expected)
    name = (lambda k: f"'{k}'") if quote else str
    for key in expected:
        if key not in found:
            raise damaged(folder, f"{what} {name(key)}", "is missing")
    unknown = sorted(found - set(expected))
    if unknown:
        raise damaged(folder, f"{what} {name(unknown[0])}",
                      f"is not one saescale writes (expected only {', '.join(expected)})")


def _int(folder: Path, what: str, v: Any) -> int:
    if type(v) is not int:
        raise damaged(folder, what, f"is {v!r} ({type(v).__name__}), expected an integer")
    return v


def _number(folder: Path, what: str, v: Any) -> float:
    if type(v) not in (int, float):
        raise damaged(folder, what, f"is {v!r} ({type(v).__name__}), expected a number")
    return float(v)


def check_meta(folder: Path, run: RunSettings, meta: Any, dist: bool) -> SAEConfig | None:
    """Check state.json (``meta``) against the run and the folder's name; returns a DCP checkpoint's SAE config."""
    if not isinstance(meta, dict):
        raise damaged(folder, "state.json", f"holds a JSON {type(meta).__name__}, expected an object")
    check_keys(folder, "state.json field", meta, META_KEYS + (DIST_META_KEYS if dist else ()))
    cfg, steps = run.train, run.train.steps
    step = _int(folder, "state.json field 'step'", meta["step"])
    if not 1 <= step <= steps:
        raise damaged(folder, "state.json field 'step'", f"is {step}, expected 1 to {steps} (this run's steps: "
                                                         f"{cfg.tokens} tokens // batch size {cfg.batch_size})")
    if folder.name != step_folder(step):
        raise damaged(folder, "state.json field 'step'", f"is {step} but the folder is {folder.name} "
                                                         f"(expected {step_folder(step)})")
    tokens = _int(folder, "state.json field 'tokens_seen'", meta["tokens_seen"])
    if tokens != step * cfg.batch_size:
        raise damaged(folder, "state.json field 'tokens_seen'",
                      f"is {tokens}, expected step {step} x batch size {cfg.batch_size} = {step * cfg.batch_size}")
    scale = _number(folder, "state.json field 'loss_scale'", meta["loss_scale"])
    if not (math.isfinite(scale) and scale > 0):
        raise damaged(folder, "state.json field 'loss_scale'", f"is {scale}, expected a finite number > 0")
    ema_t, want = _int(folder, "state.json field 'ema_t'", meta["ema_t"]), step if cfg.ema > 0 else 0
    if ema_t != want:
        raise damaged(folder, "state.json field 'ema_t'",
                      f"is {ema_t}, expected {want} ({'EMA updates, one per step' if cfg.ema > 0 else 'EMA is off'})")
    if not dist:
        return None
    if meta["format"] != DIST_FORMAT:
        raise damaged(folder, "state.json field 'format'", f"is {meta['format']!r}, expected {DIST_FORMAT!r}")
    sae = check_sae_record(folder, run, meta["sae"], "state.json field 'sae'")
    check_layout_record(folder, run, sae, meta["layout"])
    return sae


def check_layout_record(folder: Path, run: RunSettings, sae: SAEConfig, layout: Any) -> None:
    """The layout a DCP checkpoint says wrote it: W >= 2 processes, L latent shards dividing W and n,
    W / L data replicas dividing the batch size."""
    what = "state.json field 'layout'"
    if not isinstance(layout, dict):
        raise damaged(folder, what, f"is {layout!r}, expected an object {{world, latent_shards}}")
    check_keys(folder, f"{what} key", layout, ("world", "latent_shards"))
    world = _int(folder, f"{what} key 'world'", layout["world"])
    shards = _int(folder, f"{what} key 'latent_shards'", layout["latent_shards"])
    if world < 2 or shards < 1 or world % shards or sae.n % shards or run.train.batch_size % (world // shards):
        raise damaged(folder, what, f"is {layout}, not a layout that can write this run (world >= 2, latent_shards "
                                    f"dividing world and n={sae.n}, world / latent_shards dividing batch size "
                                    f"{run.train.batch_size})")


# ---- the SAE config -------------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    """A config field type as a message says it: 'int', 'float or null', "one of ['topk', 'relu']"."""
    base, optional = unwrap_optional(tp)
    name = f"one of {list(get_args(base))}" if get_origin(base) is Literal else base.__name__
    return f"{name} or null" if optional else name


def _json_type_ok(v: Any, tp: Any) -> bool:
    """Whether JSON value ``v`` is of config field type ``tp`` (int, float, str, a Literal, a tuple or list of
    one of those, or optional)."""
    base, optional = unwrap_optional(tp)
    if v is None:
        return optional
    if get_origin(base) is Literal:
        return v in get_args(base)
    if base is float:
        return type(v) in (int, float)
    if get_origin(base) in (tuple, list):  # tuple[int, ...] / list[int]: a JSON list of those
        item = get_args(base)[0]
        return type(v) is list and all(_json_type_ok(x, item) for x in v)
    return type(v) is base


def check_sae_record(folder: Path, run: RunSettings, record: Any, what: str) -> SAEConfig:
    """An SAE config record (cfg.json without format/extra, or a DCP's state.json 'sae'): every field of
    its type and equal to the run's (as resolved, or as given where run.json predates that), valid and
    complete (d set; norm_scale for mean_sq) -> SAEConfig."""
    if not isinstance(record, dict):
        raise damaged(folder, what, f"holds {record!r}, expected an object of SAE settings")
    rec, hints = upgrade_sae_record(record), typing.get_type_hints(SAEConfig)
    names = [f.name for f in dataclasses.fields(SAEConfig)]
    check_keys(folder, f"{what} field", rec, names)
    for name in names:
        if not _json_type_ok(rec[name], hints[name]):
            raise damaged(folder, f"{what} field '{name}'", f"is {rec[name]!r}, expected {_type_name(hints[name])}")
    resolved = run.resolved_sae is not None
    want = upgrade_sae_record(run.resolved_sae) if resolved else config_to_dict(run.sae)
    for name in names:
        if name in want and (resolved or want[name] is not None) and rec[name] != want[name]:
            raise damaged(folder, f"{what} field '{name}'", f"is {rec[name]!r}, this run has {name}={want[name]!r}")
    try:
        cfg = SAEConfig(**rec)
    except SaescaleError as e:
        raise damaged(folder, what, f"holds invalid SAE settings ({e})") from None
    if cfg.d is None or (cfg.normalize == "mean_sq" and cfg.norm_scale is None):
        unset = "d" if cfg.d is None else "norm_scale"
        raise damaged(folder, f"{what} field '{unset}'", "is unset (null), expected the value the run resolved")
    return cfg


def check_cfg_json(folder: Path, run: RunSettings, record: Any, sae_format: str) -> SAEConfig:
    """cfg.json of a checkpoint's SAE: its format tag, its extra (an object) and its SAE config."""
    if not isinstance(record, dict):
        raise damaged(folder, "cfg.json", f"holds a JSON {type(record).__name__}, expected an object")
    for key in ("format", "extra"):
        if key not in record:
            raise damaged(folder, f"cfg.json field '{key}'", "is missing")
    rec = dict(record)
    if rec.pop("format") != sae_format:
        raise damaged(folder, "cfg.json field 'format'", f"is {record['format']!r}, expected {sae_format!r}")
    if not isinstance(rec.pop("extra"), dict):
        raise damaged(folder, "cfg.json field 'extra'", f"is {record['extra']!r}, expected an object")
    return check_sae_record(folder, run, rec, "cfg.json")


# ---- tensors ----------------------------------------------------------------------------------
def rng_state_size() -> int:
    """Bytes of torch's CPU generator state (torch.get_rng_state())."""
    return torch.get_rng_state().numel()


def param_specs(cfg: SAEConfig) -> dict[str, TensorSpec]:
    """The SAE's stored tensors as sae.safetensors (and a DCP checkpoint) hold them: whole, float32."""
    shapes = sae_class(cfg).stored_shapes(cfg.n, cfg.d, cfg)
    return {name: (shape, torch.float32) for name, shape in shapes.items()}


def state_specs(cfg: SAEConfig, ema: bool) -> dict[str, TensorSpec]:
    """Every tensor of Trainer.state_tensors, whole: dead-latent counters, RNG, Adam's step count and
    moments per parameter, the EMA (with ``ema``)."""
    specs: dict[str, TensorSpec] = {"since_fired": ((cfg.n,), torch.int64),
                                    "rng.torch": ((rng_state_size(),), torch.uint8)}
    trained = {k: v for k, v in param_specs(cfg).items() if k in sae_class(cfg).param_names()}
    for name, (shape, dtype) in trained.items():
        specs[f"opt.{name}.step"] = ((1,), torch.float32)
        specs.update({f"opt.{name}.{m}": (shape, dtype) for m in MOMENTS})
    if ema:
        specs.update({f"ema.{name}": spec for name, spec in trained.items()})
    return specs


def check_tensor_specs(folder: Path, what: str, found: dict[str, TensorSpec | None],
                       expected: dict[str, TensorSpec]) -> None:
    """Tensors ``found`` (name -> (shape, dtype); None: not a tensor) are exactly ``expected``."""
    check_keys(folder, f"{what} tensor", found, expected, quote=False)
    for key, (shape, dtype) in expected.items():
        got = found[key]
        if got is None:
            raise damaged(folder, f"{what} tensor {key}", "is not a tensor")
        if tuple(got[0]) != shape:
            raise damaged(folder, f"{what} tensor {key}", f"has shape {tuple(got[0])}, expected {shape}")
        if got[1] != dtype:
            raise damaged(folder, f"{what} tensor {key}", f"has dtype {got[1]}, expected {dtype}")


def specs_of(tensors: dict[str, torch.Tensor]) -> dict[str, TensorSpec]:
    return {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()}


def all_finite(t: torch.Tensor) -> bool:
    """No NaN/inf in float tensor t: one sum (finite when every entry is), the entrywise test only if not."""
    return bool(torch.isfinite(t.sum(dtype=torch.float64)) or torch.isfinite(t).all())


def rng_state_problem(t: torch.Tensor) -> str | None:
    """What is wrong with a CPU generator state (uint8, torch's size), or None. Its header (seed: u64,
    left: int, seeded: int, next: u64) must be a state the Mersenne Twister reaches: seeded, and
    (left, next) = (1, 0) or 1 <= left <= 624 with left + next = 625; else the next draw reads outside it."""
    _, left, seeded, nxt = struct.unpack_from("@QiiQ", t.contiguous().numpy().tobytes(), 0)
    if seeded != 1 or not 1 <= left <= MT_STATE_N or left + nxt not in (1, MT_STATE_N + 1):
        return f"is not a Mersenne Twister state torch can resume (seeded {seeded}, left {left}, next {nxt})"
    return None


def tensor_problem(key: str, t: torch.Tensor, meta: dict[str, Any], batch_size: int) -> str | None:
    """What is wrong with the values of checkpoint tensor ``key`` (shape and dtype already checked), or None."""
    if key == "rng.torch":
        return rng_state_problem(t.cpu())
    if key == "since_fired":
        tokens = meta["tokens_seen"]
        if t.numel() and (t.min() < 0 or t.max() > tokens or (t % batch_size).any()):
            return (f"holds values in [{t.min().item()}, {t.max().item()}], expected multiples of the batch size "
                    f"{batch_size} in [0, tokens_seen {tokens}]")
        return None
    if not all_finite(t):
        return "contains NaN/inf"
    if key.endswith(".step") and t.item() != float(torch.tensor(meta["step"], dtype=t.dtype)):
        return f"is {t.item():g}, expected the checkpoint's step {meta['step']} (one Adam update per step)"
    if key.endswith(".exp_avg_sq") and t.numel() and t.min() < 0:
        return f"has a negative entry ({t.min().item():g}); second moments are >= 0"
    if key == "W_dec" and t.numel():
        norms = torch.linalg.vector_norm(t, dim=1)
        if not norms.any():
            return "is all zero (training keeps every decoder row at unit norm)"
        if (norms - 1).abs().max() > 1e-3:
            return f"has rows of norm {norms.min().item():.4g} to {norms.max().item():.4g}, expected unit rows"
    return None


def check_tensor_values(folder: Path, what: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                        run: RunSettings) -> None:
    """The values of every tensor (whole, or this rank's rows of a DCP checkpoint), meta already checked."""
    for key, t in tensors.items():
        issue = tensor_problem(key, t, meta, run.train.batch_size)
        if issue:
            raise damaged(folder, f"{what} tensor {key}", issue)


# ---- whole checkpoints -------------------------------------------------------------------------
def validate_checkpoint(folder: Path, run: RunSettings, meta: Any, cfg_record: Any, sae_format: str,
                        weights: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> SAEConfig:
    """Check every field of a single-process checkpoint read into memory (state.json ``meta``, cfg.json
    ``cfg_record``, sae.safetensors ``weights``, state.safetensors ``state``) against ``run`` -> its SAE config."""
    check_meta(folder, run, meta, dist=False)
    cfg = check_cfg_json(folder, run, cfg_record, sae_format)
    check_tensor_specs(folder, "sae.safetensors", specs_of(weights), param_specs(cfg))
    check_tensor_specs(folder, "state.safetensors", specs_of(state), state_specs(cfg, run.train.ema > 0))
    check_tensor_values(folder, "sae.safetensors", weights, meta, run)
    check_tensor_values(folder, "state.safetensors", state, meta, run)
    return cfg


def validate_dcp_checkpoint(folder: Path, run: RunSettings, meta: Any,
                            saved: dict[str, TensorSpec | None]) -> SAEConfig:
    """Check a distributed checkpoint before reading its shards: state.json ``meta`` (with its SAE
    config and layout) and the DCP metadata ``saved`` (name -> global shape, dtype) -> its SAE config.
    The values follow with :func:`check_tensor_values` on each rank's part once read."""
    cfg = check_meta(folder, run, meta, dist=True)
    assert cfg is not None
    check_tensor_specs(folder, "DCP", saved, {**param_specs(cfg), **state_specs(cfg, run.train.ema > 0)})
    return cfg
