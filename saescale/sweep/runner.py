"""Run a sweep: every unfinished member trained together on one pass over the activations.

Layout of the output folder OUT::

    OUT/spec.toml              a copy of the spec last run
    OUT/<member>/              a ``saescale train`` run folder (run.json, checkpoints/, metrics.jsonl, sae/)
    OUT/<member>/curve.jsonl   held-out nMSE at log-spaced token counts
    OUT/<member>/result.json   written last, atomically: the member is finished
    OUT/results.jsonl          one line per finished member, in spec order (the input of ``saescale fit``)

Resumption, member by member: a member with result.json is skipped; the others resume from
their own last checkpoint. Batch i of the shared stream goes to every member whose next step is
i, so a member resumed at a later step than another waits for the stream to reach it, and each
member gets exactly the weights it would get in an uninterrupted sweep.

Before anything is written, every member's recorded settings are compared with the spec
(:func:`saescale.sweep.records.check_rerun`): a spec edited since (more tokens, another lr,
other data) is refused in one line instead of skipping or resuming stale members.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch

from saescale.activations.sources import activation_sources, heldout_batches, is_array_path
from saescale.atomic import atomic_write_json, atomic_write_text
from saescale.data.arrays import ArraySource
from saescale.data.source import BatchSource
from saescale.errors import SaescaleError
from saescale.eval.recon import reconstruction_metrics
from saescale.sweep.records import check_rerun
from saescale.sweep.spec import Member, SweepSpec, member_record
from saescale.train.run import Log, finish_run, open_run, refuse_foreign_folder, resolved_record
from saescale.train.trainer import Callback, MetricsLog, Trainer


@dataclass
class _Run:
    member: Member
    trainer: Trainer
    folder: Path
    log: MetricsLog | None
    curve: MetricsLog
    curve_steps: set[int]
    last: dict[str, float]


def curve_steps(steps: int, points: int) -> set[int]:
    """Steps at which a curve point is taken: ``points`` log-spaced steps in [1, steps], the last = steps,
    and (with 2 or more points) steps // 2, for the convergence test over the last doubling of tokens."""
    if points <= 1 or steps <= 1:
        return {steps}
    return {max(1, round(steps ** (i / (points - 1)))) for i in range(points)} | {max(1, steps // 2)}


def last_doubling(curve: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The convergence test: the relative held-out loss change over the last doubling of tokens,
    (L(T/2) - L(T)) / L(T), from the curve point nearest T/2 (T = the last point's tokens); None without one.

    Near 0: converged at this budget; e.g. 0.05: doubling the tokens once more would still lower the loss ~5 %."""
    if len(curve) < 2:
        return None
    last = curve[-1]
    half = min(curve[:-1], key=lambda c: abs(c["tokens"] - last["tokens"] / 2))
    return {"tokens_from": half["tokens"], "tokens_to": last["tokens"],
            "rel_change": (half["loss"] - last["loss"]) / last["loss"]}


def flops_per_token(d: int, n: int) -> int:
    """Training FLOPs per token of an SAE with n latents on width d: 12 d n, so compute is C = 12 d n · tokens.

    The dense-training rule C ≈ 6 N per token (2 N forward, 4 N backward) with N = 2 d n, the weights
    of W_enc and W_dec: forward 2 d n (encoder) + 2 d n (decoder) = 4 d n, backward twice the forward =
    8 d n. Biases, the TopK selection and AuxK are not counted, and every latent is counted as active:
    an upper bound for TopK, whose decoder and encoder gradient touch only k of the n latents per
    token. ../shared/PAPER.md fixes no constant; a constant factor moves only the prefactors of L(C)
    and n_opt(C), not their exponents. Results files written before this definition recorded 6 d n;
    ``saescale fit`` recomputes C from d and n (saescale.scaling.results)."""
    return 12 * d * n


class _Shared(NamedTuple):
    """What every member of one sweep run shares."""

    spec: SweepSpec
    held: list[torch.Tensor]  # held-out batches, float32
    extra: dict[str, Any]  # data provenance recorded with each SAE (as ``saescale train`` records it)
    model: dict[str, Any]  # subject model name and parameter count, for results.jsonl
    log: Log  # one line per finished member
    on_finish: Finisher | None = None  # more results of a saved member (run_sweep's on_finish)


def sources(spec: SweepSpec) -> tuple[BatchSource, BatchSource, dict[str, Any], dict[str, Any]]:
    """(train source, held-out source, provenance, model) for the spec's [sweep] source, built as
    ``saescale train --acts SOURCE`` builds them (one data order: [train] seed)."""
    train, held, extra = activation_sources(spec.settings.source, spec.activations, spec.synthetic, spec.train.seed)
    if extra["source"] == "synthetic":
        return train, held, extra, {"model": "synthetic", "model_params": None}
    if extra["source"] == "arrays":  # your own activations: no model known here, the path names the data
        return train, held, extra, {"model": f"arrays:{spec.settings.source}", "model_params": None}
    from saescale.activations.lm import parameter_count

    model = extra["activations"].get("model", "default")
    return train, held, extra, {"model": model, "model_params": parameter_count(model)}


def check_widths(spec: SweepSpec) -> None:
    """Before anything is written: one-line error when a member's [sae] d differs from the width of the
    activation files the spec's source names (other sources are checked when they are read)."""
    if not is_array_path(spec.settings.source):
        return
    d = ArraySource(spec.settings.source).d  # headers only
    for m in spec.members:
        if m.sae.d is not None and m.sae.d != d:
            raise SaescaleError(f"{spec.path}: member {m.id} sets d = {m.sae.d} but the activations "
                                f"{spec.settings.source} have width {d}: drop d from the spec")


def heldout_nmse(sae: torch.nn.Module, batches: list[torch.Tensor]) -> float:
    with torch.no_grad():
        return reconstruction_metrics(sae, batches)["nmse"]


Finisher = Callable[[Member, Path], dict[str, Any]]


def run_sweep(spec: SweepSpec, progress: Callback | None = None, log: Log | None = None,
              stop: Callable[[], bool] | None = None, on_finish: Finisher | None = None,
              select: Callable[[str], bool] | None = None) -> list[dict[str, Any]]:
    """Train every unfinished member, then return all members' results (spec order).

    ``progress`` gets {"tokens": tokens of the shared stream so far, "training": members still
    training} after every batch (once first with the starting point); ``log`` one line per event.
    ``stop`` is asked after every batch: when it says True, every member still training saves a
    checkpoint and the sweep returns the finished members' results (a rerun resumes the others).
    ``on_finish(member, sae_folder)`` runs when a member has been saved; what it returns is recorded
    in the member's result under ``extra`` (e.g. more metrics of the saved SAE).
    ``select(member_id)``, when given, picks the unfinished members this run trains; the others are left
    as they are (not started, or kept at their checkpoints) for a later run.
    """
    log = log or (lambda line: None)
    out = spec.out
    refuse_foreign_folder(out, "spec.toml", "sweep")
    check_rerun(spec)
    check_widths(spec)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "spec.toml", spec.path.read_text())
    batch = spec.train.batch_size
    unfinished = [m for m in spec.members if not (out / m.id / "result.json").exists()]
    pending = [m for m in unfinished if select is None or select(m.id)]
    log(f"sweep {out}: {len(spec.members) - len(unfinished)} of {len(spec.members)} members finished, "
        f"{len(pending)} to train" + (f" ({len(unfinished) - len(pending)} others not selected)"
                                      if len(pending) < len(unfinished) else ""))
    if pending:
        source, held, extra, model = sources(spec)
        held_batches = [x.float() for x in heldout_batches(held, spec.settings.heldout_tokens, batch)]
        shared = _Shared(spec, held_batches, extra, model, log, on_finish)
        runs = [_open(m, source, out, extra, spec.settings.curve_points, log) for m in pending]
        for r in [r for r in runs if r.trainer.state.step >= r.trainer.cfg.steps]:  # killed after training
            if r.trainer.state.step in r.curve_steps and not r.curve.at_resume:  # killed before its last curve point
                _curve_point(r, held_batches)
            _finish(r, shared)
        _train(shared, [r for r in runs if r.trainer.state.step < r.trainer.cfg.steps], source, progress, stop)
        for r in runs:
            r.trainer.close()
    return write_results(spec)


def _open(m: Member, source: BatchSource, out: Path, extra: dict[str, Any], points: int, log: Log) -> _Run:
    folder = out / m.id
    trainer = open_run(m.sae, m.train, source, folder, extra, log=log)
    log_ = trainer.open_log()
    return _Run(m, trainer, folder, log_, MetricsLog(folder, trainer.state.step, "curve.jsonl"),
                curve_steps(trainer.cfg.steps, points), dict(log_.at_resume) if log_ else {})


def _train(shared: _Shared, runs: list[_Run], source: BatchSource, progress: Callback | None,
           stop: Callable[[], bool] | None = None) -> None:
    if not runs:
        return
    held, batch = shared.held, shared.spec.train.batch_size
    start = min(r.trainer.state.step for r in runs)
    active = list(runs)
    report = progress or (lambda m: None)
    report({"tokens": start * batch, "training": len(active)})
    for i, x in enumerate(source.batches(batch, start=start), start=start):
        for r in list(active):
            t = r.trainer
            if t.state.step != i:  # resumed at a later step: waits for the stream
                continue
            r.last = t.advance(x, r.log)
            if t.state.step in r.curve_steps:
                _curve_point(r, held)
            if t.state.step >= t.cfg.steps:
                _finish(r, shared)
                active.remove(r)
        report({"tokens": (i + 1) * batch, "training": len(active)})
        if not active:  # before the stream reads a batch nobody needs
            break
        if stop is not None and stop():
            for r in active:
                r.trainer.checkpoint()
            shared.log(f"stopped at stream step {i + 1}: {len(active)} member(s) saved a checkpoint; rerun to resume them")
            break


def _curve_point(r: _Run, held: list[torch.Tensor]) -> None:
    """The member's held-out nMSE now, as a line of its curve.jsonl."""
    t = r.trainer
    r.curve.write({"step": t.state.step, "tokens": t.state.tokens_seen, "loss": heldout_nmse(t.sae, held)})


def _finish(r: _Run, shared: _Shared) -> None:
    """Save the member's SAE, evaluate it on the held-out tokens, write result.json and results.jsonl."""
    t, extra = r.trainer, shared.extra
    sae = finish_run(t, r.folder, extra, r.last)
    rep = reconstruction_metrics(sae, shared.held)
    curve = [{"tokens": c["tokens"], "loss": c["loss"]} for c in _read_jsonl(r.folder / "curve.jsonl")]
    cfg = sae.cfg
    result = {
        "id": r.member.id, "arch": cfg.arch, "n": cfg.n, "k": cfg.k, "d": cfg.d, "lr": t.cfg.lr,
        "tokens": t.state.tokens_seen, "seed": t.cfg.seed, "multi_topk": t.cfg.multi_topk,
        **shared.model,
        "hook": extra.get("activations", {}).get("hook"),
        "loss": rep["nmse"], "l0": rep["l0"], "never_fired_frac": rep["never_fired_frac"],
        "dead_frac": r.last.get("dead_frac"), "dead_window_tokens": t.cfg.dead_tokens, "heldout_tokens": rep["tokens"],
        "flops_per_token": flops_per_token(cfg.d, cfg.n), "curve": curve, "last_doubling": last_doubling(curve),
        "tokens_rule": shared.spec.settings.tokens_rule,
        "settings": {**member_record(r.member), "data": {k: extra[k] for k in ("source", "activations", "synthetic", "arrays")
                                                           if k in extra}},  # the data too, so fits never pool corpora
        "resolved": resolved_record(t),  # what ran: every unset setting filled in (lr, k_aux, W, precision), the runtime
    }
    if shared.on_finish is not None:
        result["extra"] = shared.on_finish(r.member, r.folder / "sae")
    atomic_write_json(r.folder / "result.json", result)
    shutil.rmtree(r.folder / "checkpoints", ignore_errors=True)  # the SAE is saved; its optimiser state is not needed
    write_results(shared.spec)
    shared.log(f"  {r.member.id}: held-out nMSE {rep['nmse']:.4f}, L0 {rep['l0']:.1f}, never fired on "
               f"{rep['tokens']:,} held-out tokens {rep['never_fired_frac']:.1%}, dead (no fire in the last "
               f"{t.cfg.dead_tokens:,} training tokens) {r.last.get('dead_frac', 0.0):.1%}, {t.state.tokens_seen:,} tokens"
               + (f"; loss change over the last doubling of tokens {-result['last_doubling']['rel_change']:+.2%}"
                  if result["last_doubling"] else ""))


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_results(spec: SweepSpec) -> list[dict[str, Any]]:
    """OUT/results.jsonl from every finished member's result.json, in spec order (atomic)."""
    results = []
    for m in spec.members:
        f = spec.out / m.id / "result.json"
        if f.exists():
            results.append(json.loads(f.read_text()))
    atomic_write_text(spec.out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in results))
    return results


