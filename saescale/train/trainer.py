"""The training loop. It consumes a :class:`~saescale.data.source.BatchSource` of
(B, d) activation batches and knows nothing about language models.

One step, for a raw batch x (B, d):

    x_n      = normalise(x)                         (B, d)
    out      = sae.loss_terms(x_n, ctx)             loss, x̂_n, code (B, k), aux
    backward; project decoder-row gradients; clip; Adam step; renormalise rows; EMA
               (without clipping, W_dec's projection + Adam step run inside backward, as soon
               as its gradient is complete, so two (n, d) gradients are never held at once)
    since_fired[j] = 0 if latent j fired in the batch else since_fired[j] + B
    dead     = since_fired >= dead_tokens           (n,) bool, used by AuxK next step
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from tqdm.auto import tqdm

from saescale import losses
from saescale.errors import SaescaleError
from saescale.kernels import workspace
from saescale.threads import one_thread
from saescale.sae.base import LossContext, SparseAutoencoder
from saescale.train.checkpoint import save_checkpoint
from saescale.train.config import TrainConfig
from saescale.train.optim import EMA, lr_at, make_optimizer

PARAMS = ("W_enc", "b_enc", "W_dec", "b_pre")


@dataclass
class TrainState:
    """Everything besides weights and optimiser moments that a resumed run needs."""

    step: int
    tokens_seen: int
    since_fired: torch.Tensor  # (n,) int64 tokens since each latent last fired
    loss_scale: float


class Trainer:
    """Train one SAE with Adam on a stream of activation batches."""

    def __init__(self, sae: SparseAutoencoder, cfg: TrainConfig, loss_scale: float, out_dir: Path | None = None):
        self.cfg, self.out_dir = cfg, out_dir
        self.sae = sae.to(cfg.device)
        n, d = sae.cfg.n, sae.cfg.d
        self.base_lr = cfg.resolved_lr(n)
        self.opt = make_optimizer(list(self._params().values()), cfg, self.base_lr)
        self.ema = EMA(self._params(), cfg.ema) if cfg.ema > 0 else None
        self.state = TrainState(0, 0, torch.zeros(n, dtype=torch.long, device=cfg.device), loss_scale)
        self.k_aux, self.dead_tokens = cfg.resolved_k_aux(d, n), cfg.resolved_dead_tokens()
        self.callbacks: list[Callable[[dict[str, Any]], None]] = []
        self._in_backward = False  # the early decoder step acts only inside this trainer's own backward
        self._clock = (time.perf_counter(), 0)  # (time, tokens_seen) the tokens/s figure counts from: open_log
        if cfg.grad_clip == 0:  # clipping needs every gradient at once
            sae.W_dec.register_post_accumulate_grad_hook(self._step_decoder_early)

    def _params(self) -> dict[str, torch.nn.Parameter]:
        return {name: getattr(self.sae, name) for name in PARAMS}

    @property
    def dead(self) -> torch.Tensor:
        """(n,) bool: latents that have not fired in the last ``dead_tokens`` tokens."""
        return self.state.since_fired >= self.dead_tokens

    def step(self, x: torch.Tensor) -> dict[str, float]:
        """One optimiser step on a raw batch x (B, d); returns the step's metrics."""
        cfg, sae = self.cfg, self.sae
        x_n, _ = sae.normalize(x.to(cfg.device, non_blocking=True))
        ctx = LossContext(self.dead, self.k_aux, cfg.aux_coef, self.state.loss_scale, cfg.multi_topk, cfg.l1_coef)
        out = sae.loss_terms(x_n, ctx)
        if not torch.isfinite(out.loss):
            raise SaescaleError(
                f"training diverged at step {self.state.step} (loss {out.loss.item()}); lower --lr or check the data"
            )
        lr = self.optimise(out.loss)
        fired = self._update_dead(out.code.values, out.code.indices, x.shape[0])
        with torch.no_grad():
            return {
                "loss": out.loss.item(),
                "nmse": losses.normalized_mse(out.x_hat, x_n).item(),
                "l0": (out.code.values > 0).sum(-1).float().mean().item(),
                "aux_loss": out.aux_loss.item(),
                "dead_frac": self.dead.float().mean().item(),
                "fired_frac": fired,
                "lr": lr,
            }

    def optimise(self, loss: torch.Tensor) -> float:
        """Backward and the update: lr schedule, backward (without clipping W_dec is stepped inside it:
        see :meth:`_step_decoder_early`), gradient reduction hook, projection, clipping, Adam,
        renormalisation, EMA. Returns the learning rate used."""
        cfg, sae = self.cfg, self.sae
        lr = lr_at(self.state.step, cfg, self.base_lr)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.drop_grads()
        self._in_backward = True
        try:
            loss.backward()
        finally:
            self._in_backward = False
        self.reduce_grads()
        sae.project_decoder_grad()
        if cfg.grad_clip > 0:
            self.clip(cfg.grad_clip)
        self.opt.step()
        sae.normalize_decoder()
        if self.ema is not None:
            self.ema.update(self._params())
        return lr

    def drop_grads(self) -> None:
        """Set every gradient to None, giving the tensors back to the kernels' pool
        (:mod:`saescale.kernels.workspace`): the next backward writes its (n, d) gradients into
        them instead of page-faulting fresh memory (~12 ms each at n = 16384 on CPU). They are
        the trainer's own: autograd stored the kernels' outputs as ``.grad`` without copying."""
        for p in self._params().values():
            workspace.recycle(p.grad)
            p.grad = None

    def reduce_grads(self) -> None:
        """Combine gradients across processes (none in one process; see the distributed trainer)."""

    def clip(self, max_norm: float) -> None:
        """Scale all gradients so their global L2 norm is at most max_norm."""
        torch.nn.utils.clip_grad_norm_(self.sae.parameters(), max_norm)

    @torch.no_grad()
    def _step_decoder_early(self, W_dec: torch.Tensor) -> None:
        """Hook run as soon as W_dec's gradient is complete: project it, Adam-step W_dec alone, free it.

        The same arithmetic as stepping all parameters together (Adam is elementwise), but the
        (n, d) decoder and encoder gradients never coexist: at n = 2^20, d = 576 that is 2.4 GB
        less peak memory. The renormalisation of the rows still follows the full step. Outside
        :meth:`step` (e.g. a user's own backward through the trained SAE) the hook does nothing.
        """
        if not self._in_backward:
            return
        others = {p: p.grad for p in self._params().values() if p is not W_dec and p.grad is not None}
        for p in others:
            p.grad = None
        self.sae.project_decoder_grad()
        self.opt.step()
        workspace.recycle(W_dec.grad)  # the encoder's backward, next, writes its gradient into it
        W_dec.grad = None
        for p, g in others.items():
            p.grad = g

    @torch.no_grad()
    def _update_dead(self, values: torch.Tensor, indices: torch.Tensor, batch: int) -> float:
        with one_thread():  # (n,) and (B, k) bookkeeping
            hits = (values > self.cfg.fire_threshold).reshape(-1).to(values.dtype)
            fired = torch.bincount(indices.reshape(-1), weights=hits, minlength=self.state.since_fired.numel()) > 0
            self.state.since_fired.add_(batch).masked_fill_(fired, 0)
        self.state.step += 1
        self.state.tokens_seen += batch
        return fired.float().mean().item()

    # ---- the loop -----------------------------------------------------------
    def fit(self, batches: Iterator[torch.Tensor]) -> dict[str, float]:
        """Run until cfg.steps; ``batches`` must start at batch number ``self.state.step``."""
        cfg = self.cfg
        log = self.open_log()
        bar = tqdm(total=cfg.steps * cfg.batch_size, initial=self.state.tokens_seen, unit="tok",
                   unit_scale=True, disable=not cfg.progress, dynamic_ncols=True, desc="train")
        last: dict[str, float] = {}
        try:
            while self.state.step < cfg.steps:
                x = next(batches)
                last = self.advance(x, log)
                bar.update(self.batch_tokens(x))
                if "step" in last:
                    bar.set_postfix(nmse=f"{last['nmse']:.3f}", l0=f"{last['l0']:.1f}", dead=f"{last['dead_frac']:.3f}")
        finally:
            bar.close()
        if self.out_dir:
            self.checkpoint()
        return last

    def batch_tokens(self, x: torch.Tensor) -> int:
        """Tokens of the whole step whose batch (or share of it) is x, for the progress bar."""
        return x.shape[0]

    def open_log(self) -> "MetricsLog | None":
        """OUT/metrics.jsonl cut back to the current step (None without an output folder); starts the speed clock."""
        self._clock = (time.perf_counter(), self.state.tokens_seen)
        return MetricsLog(self.out_dir, self.state.step) if self.out_dir else None

    def advance(self, x: torch.Tensor, log: "MetricsLog | None") -> dict[str, float]:
        """One step, then the loop's bookkeeping: metrics logged every ``log_every`` steps (with
        ``step``, ``tokens``, ``tokens_per_s`` added) and a checkpoint every ``checkpoint_every``."""
        cfg = self.cfg
        metrics = self.step(x)
        if self.state.step % cfg.log_every == 0 or self.state.step == cfg.steps:
            t0, tok0 = self._clock
            dt = time.perf_counter() - t0
            metrics.update(step=self.state.step, tokens=self.state.tokens_seen,
                           tokens_per_s=(self.state.tokens_seen - tok0) / max(dt, 1e-9))
            if log:
                log.write(metrics)
            for cb in self.callbacks:
                cb(metrics)
        if self.out_dir and cfg.checkpoint_every and self.state.step % cfg.checkpoint_every == 0:
            self.checkpoint()
        return metrics

    # ---- checkpoints ------------------------------------------------------------
    def checkpoint(self) -> Path:
        assert self.out_dir is not None
        meta = {"step": self.state.step, "tokens_seen": self.state.tokens_seen,
                "data_position": self.state.step,  # batches consumed: the source restarts at this batch
                "loss_scale": self.state.loss_scale, "ema_t": self.ema.t if self.ema else 0}
        return save_checkpoint(self.out_dir, self.sae, self.state_tensors(), meta, self.cfg.keep_checkpoints)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        t: dict[str, torch.Tensor] = {"since_fired": self.state.since_fired, "rng.torch": torch.get_rng_state()}
        for name, p in self._params().items():
            for key, v in self.opt.state.get(p, {}).items():
                t[f"opt.{name}.{key}"] = v.reshape(-1) if v.ndim == 0 else v
        if self.ema is not None:
            t.update({f"ema.{k}": v for k, v in self.ema.avg.items()})
        return t

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Restore optimiser moments, counters, EMA and RNG saved by :meth:`state_tensors`."""
        dev = self.cfg.device
        self.state = TrainState(meta["step"], meta["tokens_seen"], tensors["since_fired"].to(dev), meta["loss_scale"])
        opt_state = {}
        for i, name in enumerate(PARAMS):
            s = {k.split(".")[-1]: v.to(dev) for k, v in tensors.items() if k.startswith(f"opt.{name}.")}
            if s:
                s["step"] = s["step"].reshape(())
                opt_state[i] = s
        sd = self.opt.state_dict()
        self.opt.load_state_dict({"state": opt_state, "param_groups": sd["param_groups"]})
        if self.ema is not None:
            self.ema.t = meta["ema_t"]
            self.ema.avg = {k: tensors[f"ema.{k}"].to(dev) for k in PARAMS}
        torch.set_rng_state(tensors["rng.torch"])

    def final_sae(self) -> SparseAutoencoder:
        """The trained SAE: with EMA weights (decoder rows renormalised) when EMA is on."""
        if self.ema is None:
            return self.sae
        from saescale.sae.registry import build_sae

        sae = build_sae(self.sae.cfg)
        sae.load_state_dict(self.ema.averaged())
        sae.normalize_decoder()
        return sae


class MetricsLog:
    """A JSON-lines log (metrics.jsonl): one object per logged step. On resume, lines past the checkpoint are dropped."""

    def __init__(self, out_dir: Path, resume_step: int, name: str = "metrics.jsonl"):
        self.path = out_dir / name
        kept = []
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    break  # a line cut by a kill
                if rec.get("step", 0) > resume_step:
                    break
                kept.append(line)
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, float]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
