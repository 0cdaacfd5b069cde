"""The training loop. It consumes a :class:`~saescale.data.source.BatchSource` of
(B, d) activation batches and knows nothing about language models.

One step, for this rank's raw rows x (B_r, d) of a global batch of B = B_r D rows:

    x_n      = normalise(x)                         (B_r, d)
    out      = sae.loss_terms(x_n, ctx)             loss (this rank's share), x̂_n, code, aux
    backward; sum gradients over the data group; project decoder-row gradients; clip (global
               norm); Adam step; renormalise rows; EMA
               (without clipping, W_dec's reduction, projection and Adam step run inside
               backward, as soon as its gradient is complete, so two (n, d) gradients are never
               held at once)
    since_fired[j] = 0 if latent j fired anywhere in the global batch else since_fired[j] + B
    dead     = since_fired >= dead_tokens           (n_L,) bool, used by AuxK next step

The SAE's mesh (:class:`~saescale.distributed.mesh.Mesh`, one process: ``Mesh.single()``)
says which rows of which batch this process holds; every collective is a no-op on a group
of one, so one process runs exactly this code. "Fires": :func:`saescale.sae.base.fires`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from saescale import losses
from saescale.errors import SaescaleError
from saescale.kernels import precision, workspace
from saescale.sae.base import SHARDED, LossContext, SparseAutoencoder, fires
from saescale.sae.registry import build_sae
from saescale.threads import one_thread
from saescale.train.checkpoint import save_checkpoint
from saescale.train.config import TrainConfig
from saescale.train.optim import EMA, lr_at, make_optimizer, set_lr

Callback = Callable[[dict[str, float]], None]


@dataclass
class TrainState:
    """Everything besides weights and optimiser moments that a resumed run needs."""

    step: int
    tokens_seen: int
    since_fired: torch.Tensor  # (n_L,) int64 tokens since each latent last fired
    loss_scale: float


class Trainer:
    """Train one SAE (this rank's shard of it) with Adam on a stream of activation batches.

    ``cfg`` is resolved on the way in (:meth:`TrainConfig.resolved`): ``self.cfg.lr`` is the
    learning rate actually used. ``callbacks`` are called once as ``fit`` starts with ``step``
    and ``tokens`` only, then after every step with its metrics (``step``, ``tokens`` and, on
    logged steps, ``tokens_per_s`` included): progress bars and printing belong to the caller. Call :meth:`close` when done (``fit`` does): it removes
    the trainer's hook from the SAE and frees its buffers.
    """

    def __init__(self, sae: SparseAutoencoder, cfg: TrainConfig, loss_scale: float, out_dir: Path | None = None):
        self.sae, self.mesh, self.out_dir = sae.to(cfg.device), sae.mesh, out_dir
        self.cfg = cfg.resolved(sae.cfg.n, sae.cfg.d, type(sae).lr_rule, type(sae).selection_precisions)
        self.opt = make_optimizer(self._param_groups(), self.cfg)
        self.ema = EMA(self._params(), cfg.ema) if cfg.ema > 0 else None
        self.state = TrainState(0, 0, torch.zeros(sae.shard.size, dtype=torch.long, device=cfg.device), loss_scale)
        self.dead_total = 0  # dead latents over all shards
        self.callbacks: list[Callback] = []
        self.workspace = workspace.Workspace()  # the kernels' reused memory, this trainer's own
        self._in_backward = False  # the early decoder step acts only inside this trainer's own backward
        self._clock = (time.perf_counter(), 0)  # (time, tokens_seen) the tokens/s figure counts from: open_log
        self._hook = None
        if cfg.grad_clip == 0:  # clipping needs every gradient at once
            self._hook = sae.W_dec.register_post_accumulate_grad_hook(self._step_decoder_early)

    def _params(self) -> dict[str, torch.nn.Parameter]:
        """The trained parameters: PARAMS and the architecture's own (SparseAutoencoder.param_names)."""
        return {name: getattr(self.sae, name) for name in self.sae.param_names()}

    def _param_groups(self) -> list[dict]:
        """The optimiser's groups: the architecture's thresholds (``SparseAutoencoder.threshold_params``,
        JumpReLU's log θ) on their own at ``threshold_lr_mult`` times the learning rate, the rest at the
        learning rate. Their order, :meth:`_opt_names`, is how the optimiser numbers the parameters."""
        params, own = self._params(), self.sae.threshold_params
        groups = [{"params": [p for name, p in params.items() if name not in own]}]
        if own:
            groups.append({"params": [params[name] for name in own], "lr_mult": self.cfg.threshold_lr_mult})
        return groups

    def _opt_names(self) -> list[str]:
        """The trained parameters' names in the optimiser's order (the groups' order of :meth:`_param_groups`)."""
        own = self.sae.threshold_params
        return [name for name in self._params() if name not in own] + list(own)

    @property
    def dead(self) -> torch.Tensor:
        """(n_L,) bool: latents that have not fired in the last ``dead_tokens`` tokens."""
        return self.state.since_fired >= self.cfg.dead_tokens

    def step(self, x: torch.Tensor) -> dict[str, float]:
        """One optimiser step on this rank's raw rows x (B_r, d); returns the step's metrics (global batch)."""
        cfg, sae, mesh = self.cfg, self.sae, self.mesh
        batch = x.shape[0] * mesh.data_shards
        with workspace.using(self.workspace), precision.using(cfg.precision) as selection:
            x_n, _ = sae.normalize(x.to(cfg.device, non_blocking=True))
            ctx = LossContext(self.dead, cfg.k_aux, cfg.aux_coef, self.state.loss_scale, cfg.multi_topk, cfg.l1_coef,
                              batch, cfg.l0_coef, cfg.balance_coef)
            out = sae.loss_terms(x_n, ctx)
            totals = self._batch_totals(out.loss, out.aux_loss, out.x_hat, sae.target(x_n))  # nMSE vs the target
            if not torch.isfinite(totals[0]):  # the same verdict on every rank
                raise SaescaleError(
                    f"training diverged at step {self.state.step} (loss {totals[0].item()}); lower --lr or check the data"
                )
            lr = self.optimise(out.loss)
            sae.after_step()
        fired = self._update_dead(out.code.values, out.code.indices, batch)
        l0 = mesh.all_reduce(fires(out.code.values).sum().double(), "world").item() / batch
        redone = {"bf16_fallback_frac": selection.fallback_rows / selection.rows} if selection.rows else {}
        return {"loss": totals[0].item(), "nmse": self._nmse(totals, batch), "l0": l0, "aux_loss": totals[1].item(),
                "dead_frac": self.dead_total / sae.cfg.n, "fired_frac": fired, "lr": lr, **redone, **sae.step_metrics()}

    @torch.no_grad()
    def _batch_totals(self, loss: torch.Tensor, aux: torch.Tensor, x_hat: torch.Tensor, x_n: torch.Tensor) -> torch.Tensor:
        """Sums over the data group, float64: [loss, aux, sum ||x - x̂||^2, sum ||x||^2, sum x (d)]."""
        flat = x_n.reshape(-1)  # one fused pass each, no (B, d) temporaries
        parts = [loss.reshape(1), aux.reshape(1), losses.squared_error(x_hat, x_n).reshape(1),
                 torch.dot(flat, flat).reshape(1), x_n.sum(0)]
        return self.mesh.all_reduce(torch.cat([p.double() for p in parts]), "data")

    @staticmethod
    def _nmse(totals: torch.Tensor, batch: int) -> float:
        """nMSE over the global batch: sum ||x - x̂||^2 / (sum ||x||^2 - ||sum x||^2 / B)."""
        return (totals[2] / (totals[3] - totals[4:].pow(2).sum() / batch)).item()

    def optimise(self, loss: torch.Tensor) -> float:
        """Backward and the update: lr schedule, backward (without clipping W_dec is stepped inside it:
        see :meth:`_step_decoder_early`), gradient sum over the data group, projection, clipping,
        Adam, renormalisation, EMA. Returns the learning rate used."""
        cfg, sae = self.cfg, self.sae
        lr = lr_at(self.state.step, cfg)
        set_lr(self.opt, lr)
        self.drop_grads()
        self._in_backward = True
        try:
            loss.backward()
        finally:
            self._in_backward = False
        for p in self._params().values():  # W_dec's is already summed (and gone) when stepped early
            if p.grad is not None:
                self.mesh.all_reduce(p.grad, "data")
        sae.project_decoder_grad()
        if cfg.grad_clip > 0:
            self.clip(cfg.grad_clip)
        self.opt.step()
        sae.normalize_decoder()
        if self.ema is not None:
            self.ema.update(self._params())
        return lr

    def drop_grads(self) -> None:
        """Set every gradient to None, giving the tensors back to the trainer's workspace
        (:mod:`saescale.kernels.workspace`): the next backward writes its (n, d) gradients into
        them instead of page-faulting fresh memory (~12 ms each at n = 16384 on CPU). They are
        the trainer's own: autograd stored the kernels' outputs as ``.grad`` without copying."""
        for p in self._params().values():
            self.workspace.recycle(p.grad)
            p.grad = None

    @torch.no_grad()
    def clip(self, max_norm: float) -> None:
        """Scale all gradients by min(1, max_norm / (global norm + 1e-6)), as ``clip_grad_norm_``: the
        squared norms of the row shards are summed over the latent group, b_pre's (replicated) added once."""
        params = self._params()
        sq = torch.zeros((), dtype=torch.float64, device=self.cfg.device)
        for name in SHARDED:
            if params[name].grad is not None:
                sq += params[name].grad.double().pow(2).sum()
        self.mesh.all_reduce(sq, "latent")
        if params["b_pre"].grad is not None:
            sq += params["b_pre"].grad.double().pow(2).sum()
        coef = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
        for p in params.values():
            if p.grad is not None:
                p.grad.mul_(coef.to(p.grad.dtype))

    @torch.no_grad()
    def _step_decoder_early(self, W_dec: torch.Tensor) -> None:
        """Hook run as soon as W_dec's gradient is complete: sum it over the data group, project it,
        Adam-step W_dec alone, free it.

        The same arithmetic as stepping all parameters together (Adam is elementwise), but the
        (n, d) decoder and encoder gradients never coexist: at n = 2^20, d = 576 that is 2.4 GB
        less peak memory. The renormalisation of the rows still follows the full step. Outside
        :meth:`step` (e.g. a user's own backward through the trained SAE) the hook does nothing.
        """
        if not self._in_backward:
            return
        if W_dec.grad is not None:
            self.mesh.all_reduce(W_dec.grad, "data")
        others = {p: p.grad for p in self._params().values() if p is not W_dec and p.grad is not None}
        for p in others:
            p.grad = None
        self.sae.project_decoder_grad()
        self.opt.step()
        self.workspace.recycle(W_dec.grad)  # the encoder's backward, next, writes its gradient into it
        W_dec.grad = None
        for p, g in others.items():
            p.grad = g

    @torch.no_grad()
    def _update_dead(self, values: torch.Tensor, indices: torch.Tensor, batch: int) -> float:
        """since_fired from the fired counts of every data replica; returns the global fired fraction."""
        with one_thread():  # (n_L,) and (B, k) bookkeeping
            hits = fires(values).reshape(-1).to(values.dtype)
            counts = torch.bincount(indices.reshape(-1), weights=hits, minlength=self.state.since_fired.numel())
            fired = self.mesh.all_reduce(counts, "data") > 0
            self.state.since_fired.add_(batch).masked_fill_(fired, 0)
            both = self.mesh.all_reduce(torch.stack([fired.sum(), self.dead.sum()]), "latent")
        self.dead_total = int(both[1])
        self.state.step += 1
        self.state.tokens_seen += batch
        return both[0].item() / self.sae.cfg.n

    # ---- the loop -----------------------------------------------------------
    def fit(self, batches: Iterator[torch.Tensor]) -> dict[str, float]:
        """Run until cfg.steps; ``batches`` (this rank's rows) must start at batch number ``self.state.step``."""
        log = self.open_log()
        last: dict[str, float] = {}
        for cb in self.callbacks:  # where this session starts (a resumed run part-way)
            cb({"step": self.state.step, "tokens": self.state.tokens_seen})
        if log and self.state.step >= self.cfg.steps:  # killed after the last checkpoint: its logged metrics
            last = dict(log.at_resume)
        try:
            while self.state.step < self.cfg.steps:
                last = self.advance(next(batches), log)
            if self.out_dir:
                self.checkpoint()
        finally:
            self.close()
        return last

    def open_log(self) -> "MetricsLog | None":
        """OUT/metrics.jsonl cut back to the current step (None without an output folder, or on ranks
        other than 0); starts the speed clock."""
        self._clock = (time.perf_counter(), self.state.tokens_seen)
        return MetricsLog(self.out_dir, self.state.step) if self.out_dir and self.mesh.rank == 0 else None

    def advance(self, x: torch.Tensor, log: "MetricsLog | None") -> dict[str, float]:
        """One step, then the loop's bookkeeping: ``step`` and ``tokens`` added to the metrics,
        ``tokens_per_s`` too and a metrics.jsonl line every ``log_every`` steps, the callbacks,
        and a checkpoint every ``checkpoint_every``."""
        cfg = self.cfg
        metrics = self.step(x)
        metrics.update(step=self.state.step, tokens=self.state.tokens_seen)
        if self.state.step % cfg.log_every == 0 or self.state.step == cfg.steps:
            t0, tok0 = self._clock
            metrics["tokens_per_s"] = (self.state.tokens_seen - tok0) / max(time.perf_counter() - t0, 1e-9)
            if log:
                log.write(metrics)
        for cb in self.callbacks:
            cb(metrics)
        if self.out_dir and cfg.checkpoint_every and self.state.step % cfg.checkpoint_every == 0:
            self.checkpoint()
        return metrics

    def close(self) -> None:
        """Remove the early-decoder-step hook from the SAE, drop its gradients and free the workspace
        (idempotent): the SAE then holds no reference to the trainer or its optimiser."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        for p in self._params().values():
            p.grad = None
        self.workspace.release()

    # ---- checkpoints ------------------------------------------------------------
    def checkpoint(self) -> Path:
        """Save the resumable state: one process writes safetensors, a distributed run its shards (DCP)."""
        assert self.out_dir is not None
        meta = {"step": self.state.step, "tokens_seen": self.state.tokens_seen,
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
        """Restore optimiser moments, counters, EMA and RNG saved by :meth:`state_tensors` (this shard's), as
        :func:`~saescale.train.checkpoint.load_checkpoint` returns them: every key, shape, dtype and value
        checked against this run first (an unchecked tensor can corrupt memory in fused Adam or
        ``torch.set_rng_state``)."""
        dev = self.cfg.device
        self.state = TrainState(meta["step"], meta["tokens_seen"], tensors["since_fired"].to(dev), meta["loss_scale"])
        opt_state = {}
        for i, name in enumerate(self._opt_names()):
            s = {k.split(".")[-1]: v.to(dev) for k, v in tensors.items() if k.startswith(f"opt.{name}.")}
            if s:
                s["step"] = s["step"].reshape(())
                opt_state[i] = s
        sd = self.opt.state_dict()
        self.opt.load_state_dict({"state": opt_state, "param_groups": sd["param_groups"]})
        if self.ema is not None:
            self.ema.t = meta["ema_t"]
            self.ema.avg = {k: tensors[f"ema.{k}"].to(dev) for k in self._params()}
        torch.set_rng_state(tensors["rng.torch"])
        self.dead_total = int(self.mesh.all_reduce(self.dead.sum(), "latent"))

    def final_sae(self) -> SparseAutoencoder | None:
        """The whole trained SAE (EMA weights, decoder rows renormalised, when EMA is on) on global
        rank 0, its rows gathered from the shards; None on the other ranks."""
        if self.ema is None and self.mesh.world == 1:
            return self.sae
        if self.mesh.data_rank != 0:
            return None
        params = self.ema.averaged() if self.ema is not None else {k: p.detach() for k, p in self._params().items()}
        whole = {k: self.mesh.gather_rows(v) if k in SHARDED else v for k, v in params.items()}
        if self.mesh.rank != 0:
            return None
        sae = build_sae(self.sae.cfg).to(self.sae.W_enc)
        whole.update({k: getattr(self.sae, k).detach() for k in self.sae.buffers})  # not averaged
        sae.load_state_dict(whole)
        if self.ema is not None:
            sae.normalize_decoder()
        return sae


class MetricsLog:
    """A JSON-lines log (metrics.jsonl): one object per logged step. On resume, lines past the checkpoint are dropped."""

    def __init__(self, out_dir: Path, resume_step: int, name: str = "metrics.jsonl"):
        self.path = out_dir / name
        self.at_resume: dict[str, float] = {}  # the line of the resume step itself, if logged
        kept = []
        if self.path.exists():
            try:
                text = self.path.read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                raise SaescaleError(f"{self.path} is not UTF-8 text (byte {e.start}), so it is not this run's log: "
                                    "restore it, or use another --out to start a new run") from None
            for line in text.splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    break  # a line cut by a kill
                if rec.get("step", 0) > resume_step:
                    break
                kept.append(line)
                self.at_resume = rec if rec.get("step") == resume_step else {}
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, float]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
