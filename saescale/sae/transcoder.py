"""Transcoders (Dunefsky, Chlenski, Nanda 2024) and skip transcoders (Paulo, Shabalin, Belrose 2025).

A transcoder reads the input x of one module (width d, e.g. an MLP's input after its layer norm) and
reconstructs the output y of another (width d_out, e.g. that MLP's output). Its batch rows are the two
side by side, [x | y] (B, d + d_out), so every shuffle and split of the data path keeps each token's
pair together; at inference it reads x alone, (B, d) (a whole row is accepted too, its x used).

    x_n  = s_x x,  y_n = s_y y                  scalars (--normalize mean_sq: E||x_n||^2 = d and
                                                E||y_n||^2 = d_out, or none: 1), so ŷ needs no statistic of y
    pre  = W_enc x_n + b_enc                    (B, n)      no input bias, as SAELens and sparsify
    z    = ReLU(TopK_k(pre))  (topk)  |  ReLU(pre)  (relu)
    ŷ_n = W_dec^T z + b_pre [+ W_skip x_n]     (B, d_out)  b_pre here is the *output* bias (SAELens's b_dec);
                                                W_skip (d_out, d) with --skip, initialised to zero
    ŷ   = ŷ_n / s_y

Parameters: W_enc (n, d), b_enc (n,), W_dec (n, d_out) with unit-norm rows, b_pre (d_out,) [W_skip (d_out, d)].
Losses are the SAE's with the target in place of the input: scale ||y_n - ŷ_n||^2 / B with scale =
1 / E||y_n - E y_n||^2 (nMSE against the target), plus AuxK on the residual e = y_n - ŷ_n (topk; its
reconstruction ê + b_pre, target e + sg(b_pre), as TopK's) or the decoder-norm-weighted L1 (relu).
The encoder is the plain dense reference (pre (B, n) in one matmul, ``torch.topk``) on one process.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saescale import losses
from saescale.errors import SaescaleError
from saescale.sae.base import PARAMS, LossContext, SparseAutoencoder, SparseCode, StepOutput, decode_sparse, dense_to_code
from saescale.sae.config import SAEConfig
from saescale.sae.normalize import NormStats
from saescale.sae.relu import ReluSAE
from saescale.sae.topk import TopKSAE

TRANSCODERS: dict[tuple[str, bool], type[SparseAutoencoder]] = {}
"""(arch, skip) -> class; :func:`saescale.sae.registry.sae_class` picks from it when cfg.d_out is set."""


def _transcoder(arch: str, skip: bool):
    def wrap(cls):
        cls.arch = arch
        TRANSCODERS[(arch, skip)] = cls
        return cls

    return wrap


class Transcoder(SparseAutoencoder):
    """Shared parts of the transcoders: shapes, the two normalisations, the skip path, init."""

    transcoder = True
    skip_params: tuple[str, ...] = ()  # ("W_skip",) for skip transcoders

    def __init__(self, cfg: SAEConfig, mesh=None):
        super().__init__(cfg, mesh)
        if self.mesh.world > 1:
            raise SaescaleError("transcoders train on one process; drop torchrun / --latent-shards")
        n, d, d_out = cfg.n, cfg.d, cfg.d_out
        self.W_dec = nn.Parameter(torch.zeros(n, d_out))
        self.b_pre = nn.Parameter(torch.zeros(d_out))
        if self.skip_params:
            self.W_skip = nn.Parameter(torch.zeros(d_out, d))

    @classmethod
    def param_names(cls) -> tuple[str, ...]:
        return PARAMS + cls.skip_params

    @classmethod
    def stored_names(cls) -> tuple[str, ...]:
        return PARAMS + cls.skip_params

    @classmethod
    def stored_shapes(cls, n: int, d: int, cfg: SAEConfig | None = None) -> dict[str, tuple[int, ...]]:
        d_out = cfg.d_out
        return {"W_enc": (n, d), "b_enc": (n,), "W_dec": (n, d_out), "b_pre": (d_out,),
                **({"W_skip": (d_out, d)} if cls.skip_params else {})}

    @property
    def row_width(self) -> int:
        """Width of a training row [x | y]."""
        return self.cfg.d + self.cfg.d_out

    # ---- normalisation -------------------------------------------------
    def check_input(self, x: Tensor) -> None:
        d, wide = self.cfg.d, self.row_width
        if x.ndim != 2 or x.shape[1] not in (d, wide):
            raise SaescaleError(f"activation batch has shape {tuple(x.shape)}, expected (batch, {d}) inputs or "
                                f"(batch, {wide}) input|target rows; check the hook points the transcoder was trained on")
        self.check_finite(x)

    def normalize(self, x: Tensor) -> tuple[Tensor, NormStats]:
        """Raw x (B, d) or [x | y] (B, d + d_out) -> the same normalised, and the stats that undo the *output*'s."""
        self.check_input(x)
        x = x.to(self.W_enc.dtype)
        s_x = self.cfg.norm_scale if self.cfg.normalize == "mean_sq" else 1.0
        s_y = self.cfg.target_scale or 1.0
        d = self.cfg.d
        x_n = x * s_x if x.shape[1] == d else torch.cat([x[:, :d] * s_x, x[:, d:] * s_y], dim=1)
        return x_n, NormStats(x.new_zeros(()), x.new_tensor(1.0 / s_y))

    def inputs(self, x_n: Tensor) -> Tensor:
        """The input part x_n (B, d) of normalised rows."""
        return x_n[:, : self.cfg.d]

    def target(self, x_n: Tensor) -> Tensor:
        """The target part y_n (B, d_out) of normalised [x | y] rows."""
        if x_n.shape[1] != self.row_width:
            raise SaescaleError(f"rows of width {x_n.shape[1]} hold no target (a transcoder's rows are input|target, "
                                f"width {self.row_width}); evaluate it on activations with its --target-hook")
        return x_n[:, self.cfg.d :]

    # ---- encoding / decoding -------------------------------------------
    def pre_acts(self, x_n: Tensor) -> Tensor:
        """pre = W_enc x_n + b_enc : (B, d) or (B, d + d_out) rows -> (B, n)."""
        return F.linear(self.inputs(x_n), self.W_enc, self.b_enc)

    def skip_out(self, x_n: Tensor) -> Tensor | float:
        """W_skip x_n (B, d_out), or 0 without the skip connection."""
        return F.linear(self.inputs(x_n), self.W_skip) if self.skip_params else 0.0

    def output_normalized(self, x_n: Tensor, code: SparseCode) -> Tensor:
        """ŷ_n = W_dec^T z + b_pre [+ W_skip x_n] (B, d_out)."""
        return decode_sparse(code, self.W_dec, self.b_pre) + self.skip_out(x_n)

    @torch.no_grad()
    def init_transcoder(self, rows: Tensor, generator: torch.Generator, tied: bool = True) -> float:
        """Init from raw rows [x | y] (N, d + d_out); returns the loss scale 1 / E||y_n - E y_n||^2.

        W_dec rows v_i: uniformly random unit directions of the output space (n, d_out); b_enc = 0; b_pre =
        the mean of y_n (the best constant output); W_skip = 0 (the skip transcoder starts as a plain one).
        W_enc rows, ``tied`` (the default): the tied init carried across the two spaces by the best linear
        map of the sample, A = C_yx (C_xx + λ I)^-1 (d_out, d) on centred x_n, y_n (λ = 1e-4 tr C_xx / d),

            W_enc_i = A^T v_i / ||A^T v_i|| = argmax_{||w|| = 1} v_i · (A w)          (n, d)

        so latent i starts by reading the input direction whose predicted output moves most along what it
        writes, v_i; with A = I (an SAE) this is the tied init W_enc = W_dec. A latent firing on x then
        meets a residual that correlates with its own row, as a tied SAE's does; with independent random
        rows about half the latents are pushed down on their first tokens and die (64 % dead against 18 %
        at n = 4096 on SmolLM2's layers.20 MLP, docs/architectures.md). ``tied=False``: W_enc rows are
        independent random unit directions. (Writing W_dec_i = A w_i for random w_i instead left 29 % dead.)"""
        rows_n, _ = self.normalize(rows.float())
        x_n, y_n = self.inputs(rows_n).double(), self.target(rows_n).double()
        W = torch.randn(self.cfg.n, self.cfg.d_out, generator=generator)
        W = W / W.norm(dim=-1, keepdim=True)
        V = torch.randn(self.cfg.n, self.cfg.d, generator=generator)
        if tied:
            xc, yc = x_n - x_n.mean(0), y_n - y_n.mean(0)
            cxx, cyx = xc.T @ xc / len(xc), yc.T @ xc / len(xc)  # (d, d), (d_out, d)
            lam = 1e-4 * float(torch.diagonal(cxx).sum()) / self.cfg.d + 1e-12
            A = torch.linalg.solve(cxx + lam * torch.eye(self.cfg.d, dtype=cxx.dtype), cyx.T).T  # (d_out, d)
            read = W.double() @ A  # (n, d): rows A^T v_i
            norms = read.norm(dim=-1, keepdim=True)
            ok = norms.squeeze(-1) > 1e-8 * float(norms.max().clamp_min(1e-30))  # A^T v_i = 0: keep a random row
            V = torch.where(ok[:, None], read / norms.clamp_min(1e-30), V.double()).float()
        self.W_dec.copy_(W)
        self.W_enc.copy_(V / V.norm(dim=-1, keepdim=True))
        self.b_enc.zero_()
        self.b_pre.copy_(y_n.mean(0).float())
        if self.skip_params:
            self.W_skip.zero_()
        var = (y_n - y_n.mean(0)).pow(2).sum(-1).mean().item()
        return 1.0 / max(var, 1e-30)


class TopKTranscoderBase(Transcoder, TopKSAE):
    """TopK transcoder: z = ReLU(TopK_k(W_enc x_n + b_enc)); Multi-TopK and AuxK as the TopK SAE's."""

    def encode_k(self, x_n: Tensor, k: int) -> SparseCode:
        values, indices = self.pre_acts(x_n).topk(min(k, self.cfg.n), dim=-1)
        return SparseCode(F.relu(values), indices)

    def encode_normalized(self, x_n: Tensor) -> SparseCode:
        return self.encode_k(x_n, self.cfg.k)

    def loss_terms(self, x_n: Tensor, ctx: LossContext) -> StepOutput:
        """Main (+ Multi-TopK) + alpha AuxK loss against the target y_n of rows x_n (B, d + d_out)."""
        k, n, W = self.cfg.k, self.cfg.n, self.W_dec
        y = self.target(x_n)
        pre = self.pre_acts(x_n)  # (B, n)
        m = min(4 * k, n) if ctx.multi_topk else k
        values, indices = pre.topk(m, dim=-1)
        top = F.relu(values)
        code = SparseCode(top[:, :k], indices[:, :k])
        y_hat = self.output_normalized(x_n, code)
        batch = ctx.batch or x_n.shape[0]
        loss = main = losses.scaled_mse(y_hat, y, ctx.loss_scale, batch)
        if ctx.multi_topk:
            rest = F.embedding_bag(indices[:, k:], W, per_sample_weights=top[:, k:], mode="sum")
            loss = losses.multi_topk_loss(main, losses.scaled_mse(y_hat + rest, y, ctx.loss_scale, batch))
        aux = x_n.new_zeros(())
        k_aux = self.aux_latents(ctx)
        if k_aux:
            av, ai = pre.masked_fill(~ctx.dead, float("-inf")).topk(k_aux, dim=-1)
            e_hat = F.embedding_bag(ai, W, per_sample_weights=F.relu(av), mode="sum")
            e = y - y_hat
            aux = losses.auxk_loss(e_hat + self.b_pre, e + self.b_pre.detach())
            loss = loss + ctx.aux_coef * aux
        return StepOutput(loss=loss, x_hat=y_hat, code=code, aux_loss=aux)


class ReluTranscoderBase(Transcoder, ReluSAE):
    """ReLU + L1 transcoder (Dunefsky et al.'s): z = ReLU(W_enc x_n + b_enc), L1 weighted by decoder norms."""

    def encode_normalized(self, x_n: Tensor) -> SparseCode:
        return dense_to_code(F.relu(self.pre_acts(x_n)))

    def loss_terms(self, x_n: Tensor, ctx: LossContext) -> StepOutput:
        y = self.target(x_n)
        z = F.relu(self.pre_acts(x_n))  # (B, n)
        y_hat = z @ self.W_dec + self.b_pre + self.skip_out(x_n)
        batch = ctx.batch or x_n.shape[0]
        mse = losses.scaled_mse(y_hat, y, ctx.loss_scale, batch)
        l1 = losses.l1_penalty(z, self.W_dec.norm(dim=-1)) * (x_n.shape[0] / batch)
        return StepOutput(loss=mse + ctx.l1_coef * l1, x_hat=y_hat, code=dense_to_code(z.detach()), aux_loss=l1.detach())


@_transcoder("topk", False)
class TopKTranscoder(TopKTranscoderBase):
    """TopK transcoder."""


@_transcoder("topk", True)
class TopKSkipTranscoder(TopKTranscoderBase):
    """TopK skip transcoder."""

    skip_params = ("W_skip",)


@_transcoder("relu", False)
class ReluTranscoder(ReluTranscoderBase):
    """ReLU transcoder."""


@_transcoder("relu", True)
class ReluSkipTranscoder(ReluTranscoderBase):
    """ReLU skip transcoder."""

    skip_params = ("W_skip",)
