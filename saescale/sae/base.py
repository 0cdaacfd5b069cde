"""Shared parts of every SAE architecture.

Parameters (n latents, input width d), with decoder rows as latent directions:

    W_enc: (n, d)   b_enc: (n,)   W_dec: (n, d), rows of unit norm   b_pre: (d,)

    pre  = W_enc (x_n - b_pre) + b_enc                       (B, n)
    z    = act(pre)          architecture-specific, sparse   (B, n)
    x̂_n = W_dec^T z + b_pre = sum_j z_j W_dec[j] + b_pre    (B, d)

x_n is the normalised input (see :mod:`saescale.sae.normalize`). Codes are kept
sparse as :class:`SparseCode` (values, indices), each (B, k); decoding is a
gather-sum over the k active decoder rows (``F.embedding_bag``), so neither the
forward nor the gradient ever forms a dense (B, n) code.

Every SAE lives on a :class:`~saescale.distributed.mesh.Mesh` (one process: ``Mesh.single()``).
Latent rank l of L holds rows [lo, hi) = [l n_L, (l+1) n_L), n_L = n / L, of the row-split
parameters (:data:`SHARDED`) and b_pre whole; in one process that is all n rows. The
architectures' losses are written once for any mesh (see :mod:`saescale.sae.topk`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saescale.distributed.mesh import Mesh
from saescale.errors import SaescaleError
from saescale.kernels.decoder import SparseCode
from saescale.kernels.precision import PRECISIONS
from saescale.kernels.select import CUDA_CHUNK, DEFAULT_CHUNK
from saescale.sae.config import SAEConfig
from saescale.sae.normalize import NormStats, denormalize, normalize
from saescale.threads import one_thread

ROW_BLOCK = 2048  # decoder rows per block of the gradient projection
PARAMS = ("W_enc", "b_enc", "W_dec", "b_pre")
SHARDED = ("W_enc", "b_enc", "W_dec")  # split by latent (rows) over a mesh's latent group; b_pre is replicated

__all__ = ["PARAMS", "SHARDED", "LossContext", "SparseAutoencoder", "SparseCode", "StepOutput", "decode_sparse",
           "dense_to_code", "fires"]


def fires(values: Tensor) -> Tensor:
    """Where a latent *fires*: its activation z > 0 (the paper's definition; the released code counts
    z > 1e-3). The one meaning everywhere: L0 counts firing latents, training's dead-latent counters
    reset when a latent fires, and eval's latent density, never-fired fraction and N2G use it too.

    A latent is *dead* (the paper's dead fraction) when it has not fired in the last W training
    tokens (``TrainConfig.dead_tokens``); eval reports separately the fraction that never fired on
    its M held-out tokens."""
    return values > 0


def dense_to_code(z: Tensor) -> SparseCode:
    """Dense non-negative z (B, n) -> SparseCode padded to the row with most non-zeros (B, m)."""
    m = max(int((z > 0).sum(-1).max()), 1) if z.numel() else 1
    values, indices = z.topk(m, dim=-1)
    return SparseCode(values, indices)


def decode_sparse(code: SparseCode, W_dec: Tensor, b_pre: Tensor) -> Tensor:
    """x̂_n = sum_j values[:, j] * W_dec[indices[:, j]] + b_pre -> (B, d)."""
    out = F.embedding_bag(code.indices, W_dec, per_sample_weights=code.values, mode="sum")
    return out + b_pre


class SparseAutoencoder(nn.Module):
    """Base class: parameters, normalisation, decoding, decoder-norm maintenance.

    Subclasses implement :meth:`encode_normalized` (the activation function) and
    :meth:`loss_terms` (which pure loss functions of :mod:`saescale.losses` they train with).
    """

    arch: str = ""
    extra_params: tuple[str, ...] = ()
    """Trained parameters besides :data:`PARAMS`, each one value per latent (n,), e.g. Gated's r_mag."""
    buffers: tuple[str, ...] = ()
    """Saved tensors that are not trained by gradient (n,), e.g. BatchTopK's inference threshold."""
    threshold_params: tuple[str, ...] = ()
    """Those of :attr:`extra_params` trained at ``TrainConfig.threshold_lr_mult`` times the learning rate (JumpReLU's log θ)."""
    lr_rule: str = "topk"
    """The default learning-rate rule (``saescale.train.config.default_lr``): 'topk' for SAEs sparse by
    selection, 'penalty' for those sparse by an L1 or L0 penalty (dense codes early in training)."""
    selection_precisions: tuple[str, ...] = PRECISIONS
    """The top-k selection precisions its fast path honours (``TrainConfig.precision``,
    :mod:`saescale.kernels.precision`); an architecture sparse by a penalty selects no top-k: float32 only."""
    kernel_chunk: int | None = None  # latents per encoder matmul block of the chunked kernels; None: by device
    transcoder: bool = False  # reconstructs another module's output (saescale.sae.transcoder)

    def __init__(self, cfg: SAEConfig, mesh: Mesh | None = None):
        super().__init__()
        if not cfg.d:
            raise SaescaleError("SAEConfig.d must be set (the input width) before building an SAE")
        self.cfg, self.mesh = cfg, mesh or Mesh.single()
        self.shard = self.mesh.shard(cfg.n)  # latents [lo, hi) held here
        n, d = self.shard.size, cfg.d
        self.W_enc = nn.Parameter(torch.zeros(n, d))
        self.b_enc = nn.Parameter(torch.zeros(n))
        self.W_dec = nn.Parameter(torch.zeros(n, d))
        self.b_pre = nn.Parameter(torch.zeros(d))
        for name in self.extra_params:
            self.register_parameter(name, nn.Parameter(torch.zeros(n)))
        for name in self.buffers:
            self.register_buffer(name, torch.zeros(n))

    @classmethod
    def param_names(cls) -> tuple[str, ...]:
        """The parameters the optimiser trains: :data:`PARAMS` and the architecture's own."""
        return PARAMS + cls.extra_params

    @classmethod
    def stored_names(cls) -> tuple[str, ...]:
        """Every tensor of the SAE that sae.safetensors and checkpoints hold."""
        return PARAMS + cls.extra_params + cls.buffers

    @classmethod
    def stored_shapes(cls, n: int, d: int, cfg: SAEConfig | None = None) -> dict[str, tuple[int, ...]]:
        """The shape of each stored tensor of a whole SAE of n latents on width d (``cfg``: its whole config,
        for an architecture whose own tensors are not one value per latent, e.g. Switch's router)."""
        return {"W_enc": (n, d), "b_enc": (n,), "W_dec": (n, d), "b_pre": (d,),
                **{name: (n,) for name in cls.extra_params + cls.buffers}}

    def chunk_for(self, x: Tensor) -> int:
        """Latents per block of the chunked selection kernels for a batch on ``x``'s device."""
        if self.kernel_chunk is not None:
            return self.kernel_chunk
        return CUDA_CHUNK if x.is_cuda else DEFAULT_CHUNK

    def aux_latents(self, ctx: "LossContext") -> int:
        """Latents used by AuxK this step: min(k_aux, dead count over all shards), 0 when AuxK is off."""
        if ctx.aux_coef <= 0 or ctx.k_aux <= 0:
            return 0
        return min(ctx.k_aux, int(self.mesh.all_reduce(ctx.dead.sum(), "latent")))

    @torch.no_grad()
    def init_extra(self, x_n: Tensor) -> None:
        """Initialise the architecture's own tensors from a normalised sample x_n (N, d); zeros by default."""

    @torch.no_grad()
    def after_step(self) -> None:
        """Called by the trainer after each optimiser step (BatchTopK updates its threshold here)."""

    def step_metrics(self) -> dict[str, float]:
        """The architecture's own metrics of the last :meth:`loss_terms` call, logged with the trainer's
        (Switch: expert load); none by default."""
        return {}

    # ---- normalisation -------------------------------------------------
    def normalize(self, x: Tensor) -> tuple[Tensor, NormStats]:
        """Raw x (B, d) -> normalised x_n (B, d) and the stats to undo it."""
        self.check_input(x)
        return normalize(x.to(self.W_enc.dtype), self.cfg.normalize, self.cfg.norm_scale)

    @property
    def row_width(self) -> int:
        """Width of a training row: d (a transcoder's rows also hold its target)."""
        return self.cfg.d

    def target(self, x_n: Tensor) -> Tensor:
        """What the SAE reconstructs from normalised rows x_n (B, d): x_n itself (a transcoder: its target part)."""
        return x_n

    def check_input(self, x: Tensor) -> None:
        """One-line errors for a batch of the wrong shape or with NaN/inf."""
        if x.ndim != 2 or x.shape[1] != self.cfg.d:
            raise SaescaleError(
                f"activation batch has shape {tuple(x.shape)}, expected (batch, {self.cfg.d}); "
                "check the hook point / model the SAE was trained on"
            )
        self.check_finite(x)

    def check_finite(self, x: Tensor) -> None:
        """One-line error for a batch (B, w) with NaN/inf."""
        # a sum is finite when every entry is (NaN and inf propagate): one pass, no (B, d) mask;
        # only a non-finite sum (or a float32 overflow of huge entries) needs the entrywise check
        total = x.sum(dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
        if not torch.isfinite(total) and not torch.isfinite(x).all():
            bad = (~torch.isfinite(x)).any(dim=1).nonzero()[:, 0].tolist()
            raise SaescaleError(
                f"activation batch contains NaN/inf in {len(bad)} row(s) (first: {bad[:5]}); "
                "clean the input or rebuild the activation cache"
            )

    # ---- encoding / decoding -------------------------------------------
    def pre_acts(self, x_n: Tensor) -> Tensor:
        """pre = W_enc (x_n - b_pre) + b_enc : (B, d) -> (B, n)."""
        return F.linear(x_n - self.b_pre, self.W_enc, self.b_enc)

    def encode_normalized(self, x_n: Tensor) -> SparseCode:
        raise NotImplementedError

    def decode_normalized(self, code: SparseCode) -> Tensor:
        """SparseCode (B, k) -> x̂_n (B, d) in the normalised space."""
        return decode_sparse(code, self.W_dec, self.b_pre)

    def encode(self, x: Tensor) -> SparseCode:
        """Raw activations (B, d) -> sparse code (values, indices), each (B, k)."""
        x_n, _ = self.normalize(x)
        return self.encode_normalized(x_n)

    def decode(self, code: SparseCode, stats: NormStats | None = None) -> Tensor:
        """Sparse code -> reconstruction (B, d): normalised space, or raw space when ``stats`` is given."""
        x_hat = self.decode_normalized(code)
        return x_hat if stats is None else denormalize(x_hat, stats)

    def output_normalized(self, x_n: Tensor, code: SparseCode) -> Tensor:
        """The normalised-space output for rows x_n and their code: x̂_n (a skip transcoder adds W_skip x_n)."""
        return self.decode_normalized(code)

    def forward(self, x: Tensor) -> Tensor:
        """Raw x (B, d) -> reconstruction in the raw space (B, d) (a transcoder: its output, (B, d_out))."""
        x_n, stats = self.normalize(x)
        return denormalize(self.output_normalized(x_n, self.encode_normalized(x_n)), stats)

    def latent_contribution(self, x: Tensor, i: int) -> Tensor:
        """Raw-space contribution z_i W_dec[i] s (d,) of latent i to the reconstruction of one raw x (1, d),
        s the token's normalisation scale: what ablating the latent removes."""
        x_n, stats = self.normalize(x)
        code = self.encode_normalized(x_n)
        z = (code.values * (code.indices == i)).sum()
        return z * self.W_dec[i] * stats.scale.reshape(-1)[0]

    def loss_terms(self, x_n: Tensor, ctx: "LossContext") -> "StepOutput":
        """The training losses for a normalised batch; key 'loss' is minimised."""
        raise NotImplementedError

    # ---- decoder unit norm ----------------------------------------------
    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Remove from each decoder row's gradient its component along the row: g_i -= (d_i . g_i) d_i."""
        g, W = self.W_dec.grad, self.W_dec
        if g is not None:
            # row dots in blocks of rows: no (n, d) temporary (2.4 GB at n = 2^20), ~3x faster than bmm
            dots = g.new_empty(g.shape[0], 1)  # (n, 1)
            with one_thread():  # many small blocks: no waiting on a second thread per block
                for s in range(0, g.shape[0], ROW_BLOCK):
                    torch.sum(g[s : s + ROW_BLOCK] * W[s : s + ROW_BLOCK], dim=1, keepdim=True,
                              out=dots[s : s + ROW_BLOCK])
            g.addcmul_(dots, W, value=-1.0)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale each decoder row to unit L2 norm."""
        self.W_dec.div_(torch.linalg.vector_norm(self.W_dec, dim=-1, keepdim=True).clamp_min_(1e-12))


class LossContext(NamedTuple):
    """What the trainer passes to :meth:`SparseAutoencoder.loss_terms` besides the batch."""

    dead: Tensor  # (n_L,) bool, this shard's latents currently counted as dead
    k_aux: int  # latents used by the AuxK loss (at most the dead count over all shards)
    aux_coef: float  # alpha of the AuxK loss (paper: 1/32)
    loss_scale: float  # 1 / E||x_n - E x_n||^2 from a data sample (fixed, not per batch)
    multi_topk: bool  # add L(4k)/8 (Multi-TopK)
    l1_coef: float  # lambda of the L1 penalty (relu, gated, prolu)
    batch: int | None = None  # B, the global batch over the data-parallel ranks; None: this batch
    l0_coef: float = 0.0  # lambda of JumpReLU's L0 penalty
    balance_coef: float = 0.0  # alpha of Switch's load-balancing loss


class StepOutput(NamedTuple):
    """Outputs of :meth:`SparseAutoencoder.loss_terms` for a batch of B_r tokens (this rank's rows)."""

    loss: Tensor  # () total loss to minimise (this rank's share of the global batch's loss)
    x_hat: Tensor  # (B_r, d) reconstruction in the normalised space
    code: SparseCode  # (B_r, c) this shard's part of the main sparse code (zeros allowed), local indices
    aux_loss: Tensor  # () AuxK loss (topk) or L1 penalty (relu), for logging
