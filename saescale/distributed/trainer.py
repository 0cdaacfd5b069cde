"""The training step of one rank: a :class:`~saescale.train.trainer.Trainer` of a latent shard.

The loop, schedule, logging cadence and early decoder step are the Trainer's; what changes:

    forward     ShardedTopK.loss_terms: global top-k across the latent group, partial decodes summed
    gradients   summed over the data group (each rank's loss is its share of the global loss);
                W_dec's inside backward, before its early Adam step, as in one process
    clipping    global norm: squared norms of the row shards summed over the latent group, + b_pre's
    dead stats  fired counts summed over the data group, so every replica of a shard keeps the
                same since_fired (n_L,) and the same dead set; the global dead count (for k_aux)
                summed over the latent group
    metrics     loss, AuxK, nMSE over the global batch (data group); L0 over all ranks
    checkpoint  torch.distributed.checkpoint, every rank writes its shard (distributed.checkpoint)
    final SAE   rows gathered on global rank 0
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from saescale.distributed.checkpoint import save_dist_checkpoint
from saescale.distributed.mesh import Mesh
from saescale.distributed.sharded_sae import SHARDED, ShardContext, ShardedTopK
from saescale.errors import SaescaleError
from saescale.sae.base import SparseAutoencoder
from saescale.sae.registry import build_sae
from saescale.threads import one_thread
from saescale.train.config import TrainConfig
from saescale.train.trainer import MetricsLog, Trainer


class DistTrainer(Trainer):
    """Train this rank's shard ``sae`` on its rows of each global batch, in step with the other ranks."""

    def __init__(self, sae: ShardedTopK, cfg: TrainConfig, loss_scale: float, out_dir: Path | None, mesh: Mesh):
        self.mesh = mesh
        if mesh.rank != 0:
            cfg = dataclasses.replace(cfg, progress=False)  # one progress bar: rank 0's
        super().__init__(sae, cfg, loss_scale, out_dir)
        self.state.since_fired = torch.zeros(sae.shard.size, dtype=torch.long, device=cfg.device)  # (n_L,)
        self.dead_total = 0  # dead latents over all shards (the same on every rank)

    def step(self, x: torch.Tensor) -> dict[str, float]:
        """One optimiser step on this rank's rows x (B_r, d) of the global batch (B = B_r D rows)."""
        cfg, sae, mesh = self.cfg, self.sae, self.mesh
        x_n, _ = sae.normalize(x.to(cfg.device, non_blocking=True))
        batch = x.shape[0] * mesh.data_shards
        k_aux = min(self.k_aux, self.dead_total) if self.dead_total > 0 and cfg.aux_coef > 0 else 0
        ctx = ShardContext(self.dead, k_aux, cfg.aux_coef, self.state.loss_scale, cfg.multi_topk, batch)
        out = sae.loss_terms(x_n, ctx, mesh)
        totals = self._batch_totals(out.loss, out.aux_loss, out.x_hat, x_n)
        if not torch.isfinite(totals[0]):  # the same verdict on every rank
            raise SaescaleError(
                f"training diverged at step {self.state.step} (loss {totals[0].item()}); lower --lr or check the data"
            )
        lr = self.optimise(out.loss)  # without clipping W_dec is reduced and stepped inside: _step_decoder_early
        fired = self._update_dead(out.values, out.indices, batch)
        l0 = mesh.all_reduce((out.values > 0).sum().double(), "world").item() / batch
        return {"loss": totals[0].item(), "nmse": self._nmse(totals, batch), "l0": l0,
                "aux_loss": totals[1].item(), "dead_frac": self.dead_total / self.sae.cfg.n,
                "fired_frac": fired, "lr": lr}

    @torch.no_grad()
    def _batch_totals(self, loss: torch.Tensor, aux: torch.Tensor, x_hat: torch.Tensor, x_n: torch.Tensor) -> torch.Tensor:
        """Sums over the data group, float64: [loss, aux, sum ||x - x̂||^2, sum ||x||^2, sum x (d)]."""
        parts = [loss.reshape(1), aux.reshape(1), (x_n - x_hat).pow(2).sum().reshape(1),
                 x_n.pow(2).sum().reshape(1), x_n.sum(0)]
        return self.mesh.all_reduce(torch.cat([p.double() for p in parts]), "data")

    @staticmethod
    def _nmse(totals: torch.Tensor, batch: int) -> float:
        """nMSE over the global batch: sum ||x - x̂||^2 / (sum ||x||^2 - ||sum x||^2 / B)."""
        return (totals[2] / (totals[3] - totals[4:].pow(2).sum() / batch)).item()

    def reduce_grads(self) -> None:
        """Sum the gradients over the data-parallel replicas (W_dec's already, when stepped early)."""
        for p in self._params().values():
            if p.grad is not None:
                self.mesh.all_reduce(p.grad, "data")

    @torch.no_grad()
    def clip(self, max_norm: float) -> None:
        """Scale all gradients by min(1, max_norm / (global norm + 1e-6)), as clip_grad_norm_ in one process."""
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
        """Sum W_dec's gradient over the data group, then the Trainer's early projection + Adam step."""
        if self._in_backward and W_dec.grad is not None:
            self.mesh.all_reduce(W_dec.grad, "data")
        super()._step_decoder_early(W_dec)

    @torch.no_grad()
    def _update_dead(self, values: torch.Tensor, indices: torch.Tensor, batch: int) -> float:
        """since_fired of this shard from the fired counts of every data replica; returns the global fired fraction."""
        with one_thread():
            hits = (values > self.cfg.fire_threshold).reshape(-1).to(values.dtype)
            counts = torch.bincount(indices.reshape(-1), weights=hits, minlength=self.state.since_fired.numel())
        fired = self.mesh.all_reduce(counts, "data") > 0
        self.state.since_fired.add_(batch).masked_fill_(fired, 0)
        both = self.mesh.all_reduce(torch.stack([fired.sum(), self.dead.sum()]), "latent")
        self.dead_total = int(both[1])
        self.state.step += 1
        self.state.tokens_seen += batch
        return both[0].item() / self.sae.cfg.n

    # ---- the loop (Trainer.fit): one progress bar and one log (rank 0's); every rank checkpoints ----
    def batch_tokens(self, x: torch.Tensor) -> int:
        """This rank holds 1 / data_shards of the global batch."""
        return x.shape[0] * self.mesh.data_shards

    def open_log(self) -> MetricsLog | None:
        if self.mesh.rank == 0:
            return super().open_log()
        self._clock = (time.perf_counter(), self.state.tokens_seen)
        return None

    # ---- state --------------------------------------------------------------------------
    def checkpoint(self) -> Path:
        """Every rank writes its shard of the state (collective); rank 0 the meta and latest.json."""
        assert self.out_dir is not None
        meta = {"step": self.state.step, "tokens_seen": self.state.tokens_seen, "data_position": self.state.step,
                "loss_scale": self.state.loss_scale, "ema_t": self.ema.t if self.ema else 0}
        tensors = {**{k: p.detach() for k, p in self._params().items()}, **self.state_tensors()}
        return save_dist_checkpoint(self.out_dir, self.mesh, self.sae.cfg, tensors, meta, self.cfg.keep_checkpoints)

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Restore this shard's parameters, optimiser moments, counters and EMA (local tensors)."""
        with torch.no_grad():
            for name, p in self._params().items():
                p.copy_(tensors[name])
        super().load_state(tensors, meta)
        self.dead_total = int(self.mesh.all_reduce(self.dead.sum(), "latent"))

    def final_sae(self) -> SparseAutoencoder | None:
        """The whole trained SAE (EMA weights when on) on global rank 0, gathered from the shards; None elsewhere."""
        if self.mesh.data_rank != 0:
            return None
        params = self.ema.averaged() if self.ema is not None else {k: p.detach() for k, p in self._params().items()}
        whole = {k: self.mesh.gather_rows(v) if k in SHARDED else v for k, v in params.items()}
        if self.mesh.rank != 0:
            return None
        sae = build_sae(self.sae.cfg).to(self.sae.W_enc)
        sae.load_state_dict(whole)
        if self.ema is not None:
            sae.normalize_decoder()
        return sae
