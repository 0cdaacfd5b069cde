"""Switch SAE (Mudide, Engels, Michaud, Tegmark, Schroeder de Witt 2024, arXiv 2410.08201).

E experts, each a TopK SAE of m = n / E latents: expert e owns latents [e m, (e + 1) m) of the shared
W_enc (n, d), b_enc (n,), W_dec (n, d); b_pre (d,) is shared. A router, W_router (E, d) and b_router (d,),
sends each token to one expert. For x_n (B, d):

    p      = softmax((x_n - b_router) W_router^T)                   (B, E)  router probabilities
    e*     = argmax_e p                                             (B,)    the token's expert (no gradient)
    g      = p[b, e*_b]                                             (B,)    its probability (the gate)
    pre_e* = W_enc[e* m : (e* + 1) m] (x_n - b_pre) + b_enc[...]     (B, m)  the token's expert only
    v, i   = top-k of pre_e* per token, i global (e* m + local)      (B, k)
    z      = g ReLU(v)                                              (B, k)  the code (gate folded in)
    x̂_n   = sum_j z_j W_dec[i_j] + b_pre                           (B, d)

so x̂_n = p_e*(x) decode_e*(TopK_k(encode_e*(x))) + b_pre: the factor g is what trains the router through
the reconstruction. The saved code holds z with the gate folded in, so decoding is the base class's.

    f_e    = |{b : e*_b = e}| / B      P_e = mean_b p[b, e]       (E,)
    L_bal  = E sum_e f_e P_e            (Switch Transformers; minimal, 1, at uniform routing)
    loss   = scale ||x_n - x̂_n||^2 / B + alpha_aux L_aux + alpha_bal L_bal

(alpha_bal = TrainConfig.balance_coef.) AuxK inside experts: each token's residual e = x_n - x̂_n is
reconstructed (without the gate) from the top-k_aux_t pre-activations among the *dead latents of its own
expert*, k_aux_t = min(k_aux, that expert's dead count); then exactly TopK's L_aux (target e + sg(b_pre),
reconstruction ê + b_pre, denominator the batch's ||e - mean e||^2). Codes are padded to the widest
expert's k_aux_t with zeros. The router gets no AuxK gradient.

Fast path (default): the loss is a sum over tokens, so it is computed on the batch put in expert order
(one stable argsort; x̂ and the code are returned in the caller's order). Each expert's rows times its m rows
of W_enc go into one (B, m) buffer (one ``addmm`` per expert: ≈ 1/E of dense TopK's encoder FLOPs, plus
E d per token for the router) and one ``topk`` over it selects every token's k
(:mod:`saescale.kernels.expert_encode`; an expert wider than a chunk uses the chunked
:func:`~saescale.kernels.select.select_topk`); the selected values get the dense encoder's sparse backward
(B (k + k_aux) pairs), the code the sparse decoder (each expert's decoder rows read by consecutive tokens);
router, gate and L_bal are one autograd function (:mod:`saescale.kernels.router`). Reference
(``SAESCALE_KERNELS=reference``): dense (B, n) pre-activations masked to each token's expert, ``sort``,
``embedding_bag``, autograd. One process only (saescale.distributed.mesh.check_layout).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saescale import losses
from saescale.distributed.sharded_topk import stable_topk
from saescale.errors import SaescaleError
from saescale.kernels import fast_kernels, sparse_decode
from saescale.kernels.expert_encode import expert_encode
from saescale.kernels.router import router_gate
from saescale.kernels.select import Selection
from saescale.sae.base import LossContext, SparseAutoencoder, SparseCode, StepOutput
from saescale.sae.config import DEFAULT_EXPERTS, SAEConfig
from saescale.sae.registry import register
from saescale.threads import one_thread

ROUTER_INIT_SPREAD = 1.0  # std of the initial router logits over the init sample


class Routing:
    """A batch's routing: probabilities p (B, E), expert e* (B,), gate g = p[b, e*] (B,), and the
    tokens grouped by expert: ``order`` (B,) (stable argsort of e*) and ``bounds`` [E + 1] (group e is
    order[bounds[e]:bounds[e + 1]])."""

    def __init__(self, probs: Tensor):
        self.probs = probs
        with one_thread():  # (B, E) and (B,) bookkeeping
            self.expert = probs.detach().argmax(dim=1)
            self.gate = probs.gather(1, self.expert[:, None])[:, 0]
            self.counts = torch.bincount(self.expert, minlength=probs.shape[1])
            self.order = torch.argsort(self.expert, stable=True)
            self.grouped = bool((self.expert[1:] >= self.expert[:-1]).all())  # already in expert order
        self.bounds = [0] + torch.cumsum(self.counts, 0).tolist()

    def grouped_batch(self, x_n: Tensor) -> tuple[Tensor, "Routing", Tensor]:
        """The batch in expert order: x_n[order] (B, d), its routing (``grouped``: every expert's tokens
        contiguous) and ``pos`` (B,), where each original token went (row b of the batch is row pos[b])."""
        with one_thread():  # (B,) and (B, E): small
            pos = torch.empty_like(self.order).index_copy_(0, self.order, torch.arange(self.order.numel(),
                                                                                       device=self.order.device))
            probs = self.probs.index_select(0, self.order)
        return x_n.index_select(0, self.order), Routing(probs), pos

    def load(self) -> Tensor:
        """f_e: fraction of the batch's tokens routed to each expert, (E,)."""
        return self.counts.to(self.probs.dtype) / max(self.expert.numel(), 1)


def aux_widths(expert: Tensor, dead: Tensor, E: int, k_aux: int) -> tuple[Tensor, int]:
    """Per expert min(k_aux, its dead count) (E,) and the widest over the experts the batch uses."""
    per = dead.view(E, -1).sum(1).clamp(max=k_aux)
    used = torch.bincount(expert, minlength=E) > 0
    return per, int(per[used].max()) if k_aux and bool(used.any()) else 0


@register("switch")
class SwitchSAE(SparseAutoencoder):
    """Switch SAE: a softmax router sends each token to one of E TopK experts; see the module docstring."""

    extra_params = ("W_router", "b_router")

    def __init__(self, cfg: SAEConfig, mesh=None):
        super().__init__(cfg, mesh)
        if self.mesh.world > 1:
            raise SaescaleError("--arch switch trains in one process only (not under torchrun): launch it without torchrun")
        self.W_router = nn.Parameter(torch.zeros(cfg.experts, cfg.d))
        self.b_router = nn.Parameter(torch.zeros(cfg.d))
        self._last: dict[str, float] = {}

    @classmethod
    def stored_shapes(cls, n: int, d: int, cfg: SAEConfig | None = None) -> dict[str, tuple[int, ...]]:
        E = cfg.experts if cfg is not None and cfg.experts else DEFAULT_EXPERTS
        return {"W_enc": (n, d), "b_enc": (n,), "W_dec": (n, d), "b_pre": (d,), "W_router": (E, d), "b_router": (d,)}

    @property
    def experts(self) -> int:
        return self.cfg.experts

    @property
    def expert_size(self) -> int:
        return self.cfg.n // self.cfg.experts

    # ---- init ------------------------------------------------------------------
    @torch.no_grad()
    def init_extra(self, x_n: Tensor) -> None:
        """b_router = b_pre; router rows = the unit directions of E sample tokens (centred, spread evenly over
        the sample), scaled so that the logits' std over the sample is ``ROUTER_INIT_SPREAD``; then W_enc is
        divided by the mean gate g on the sample, so that the initial reconstruction g decode(...) has the
        scale of a tied-init TopK SAE's (at init p is far from one-hot: g is about 1 / E to 1 / 2)."""
        E = self.experts
        self.b_router.copy_(self.b_pre)
        x_c = (x_n - self.b_router).to(self.W_router)
        rows = x_c[torch.linspace(0, x_c.shape[0] - 1, E).round().long()]
        W = rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)
        spread = (x_c @ W.T).std().clamp_min(1e-12)
        self.W_router.copy_(W * (ROUTER_INIT_SPREAD / spread))
        gate = self.route(x_n.to(self.W_router)).gate.mean().clamp_min(1e-6)
        self.W_enc.div_(gate)

    # ---- routing and selection ---------------------------------------------------
    def route(self, x_n: Tensor, grad: bool = False) -> Routing:
        """Router probabilities (differentiable with ``grad``: the reference path; the fast path's gradient is
        :func:`~saescale.kernels.router.router_gate`'s) and the grouping of the tokens by expert."""
        with one_thread(), torch.set_grad_enabled(grad and torch.is_grad_enabled()):  # (B, d) x (d, E): small
            # x_n W_r^T - W_r b_router: the same logits, without a (B, d) gradient for b_router (x_n needs none)
            return Routing((F.linear(x_n, self.W_router) - torch.mv(self.W_router, self.b_router)).softmax(dim=1))

    def select(self, x_n: Tensor, r: Routing, k: int, dead: Tensor | None = None, k_aux: int = 0) -> Selection:
        """On a batch in expert order (``r.grouped``): the top-k pre-activations of each token inside its
        expert (values (B, k), global indices) and the top-k_aux_t among its expert's dead latents, padded with
        zeros to the widest. Values differentiable in W_enc, b_enc, b_pre (fast kernels or the reference)."""
        assert r.grouped, "select wants the batch in expert order (Routing.grouped_batch)"
        per, width = aux_widths(r.expert, dead, self.experts, k_aux) if dead is not None and k_aux else (None, 0)
        if fast_kernels():
            return expert_encode(x_n, self.b_pre, self.W_enc, self.b_enc, r.bounds, k, dead if width else None,
                                 per.tolist() if width else [], self.chunk_for(x_n))
        return self._select_dense(x_n, r, k, dead, per, width)

    def _select_dense(self, x_n: Tensor, r: Routing, k: int, dead: Tensor | None, per: Tensor | None,
                      width: int) -> Selection:
        """The reference: pre (B, n) dense, -inf outside the token's expert (and outside its dead latents)."""
        n = self.cfg.n
        pre = F.linear(x_n - self.b_pre, self.W_enc, self.b_enc)  # (B, n), differentiable
        own = (torch.arange(n, device=x_n.device) // self.expert_size)[None, :] == r.expert[:, None]  # (B, n)
        _, idx = stable_topk(pre.detach().masked_fill(~own, float("-inf")), k)
        if not width:
            empty = pre.new_zeros(pre.shape[0], 0)
            return Selection(pre.gather(1, idx), idx, empty, empty.long())
        _, aux_i = stable_topk(pre.detach().masked_fill(~(own & dead[None, :]), float("-inf")), width)
        valid = torch.arange(width, device=x_n.device)[None, :] < per[r.expert][:, None]
        return Selection(pre.gather(1, idx), idx, torch.where(valid, pre.gather(1, aux_i), 0.0), aux_i)

    # ---- inference -----------------------------------------------------------------
    def encode_normalized(self, x_n: Tensor) -> SparseCode:
        """x_n (B, d) -> SparseCode (B, k): z = g ReLU(TopK inside the token's expert), global indices."""
        with torch.no_grad():
            x_s, r, pos = self.route(x_n).grouped_batch(x_n)
            sel = self.select(x_s, r, self.cfg.k)
            z = r.gate[:, None] * F.relu(sel.values)
            return SparseCode(z.index_select(0, pos), sel.indices.index_select(0, pos))

    # ---- training --------------------------------------------------------------------
    def _decode(self, codes: list[SparseCode]) -> list[Tensor]:
        if fast_kernels():
            return sparse_decode(self.W_dec, codes)
        return [F.embedding_bag(c.indices, self.W_dec, per_sample_weights=c.values, mode="sum")
                if c.indices.shape[1] else self.W_dec.new_zeros(c.indices.shape[0], self.cfg.d) for c in codes]

    def loss_terms(self, x_in: Tensor, ctx: LossContext) -> StepOutput:
        """Reconstruction + alpha AuxK (inside experts) + balance_coef L_bal; see the module docstring.

        The loss is a sum over tokens, so it is computed on the batch put in expert order (each expert's
        decoder rows are then read by consecutive tokens: the sparse decode and its backward run about twice
        as fast as in token order); x̂ and the code are returned in the caller's order."""
        batch = ctx.batch or x_in.shape[0]
        k_aux = self.aux_latents(ctx)
        fast = fast_kernels()
        x_n, r, pos = self.route(x_in, grad=not fast).grouped_batch(x_in)
        sel = self.select(x_n, r, self.cfg.k, ctx.dead if k_aux else None, k_aux)
        v, v_aux = sel.values, sel.aux_values
        load = r.load()
        if fast:  # z = g ReLU(v) and L_bal with their gradients in one function, on one thread
            z, balance = router_gate(x_n, self.W_router, self.b_router, v, r.probs, r.expert, load)
        else:
            z, balance = r.gate[:, None] * F.relu(v), losses.switch_balance_loss(load, r.probs)
        code = SparseCode(z, sel.indices)
        width = sel.aux_indices.shape[1]
        codes = [code] + ([SparseCode(F.relu(v_aux), sel.aux_indices)] if width else [])  # pads: 0, no gradient
        decoded = self._decode(codes)
        x_hat = decoded[0] + self.b_pre
        loss = losses.scaled_mse(x_hat, x_n, ctx.loss_scale, batch)
        aux = x_n.new_zeros(())
        if width:
            e = x_n - x_hat  # as TopK: target e + sg(b_pre), reconstruction ê + b_pre
            aux = losses.auxk_loss(decoded[1] + self.b_pre, e + self.b_pre.detach())
            loss = loss + ctx.aux_coef * aux
        if ctx.balance_coef > 0:
            loss = loss + ctx.balance_coef * balance
        self._last = {"balance_loss": balance.item(), "expert_load_max": load.max().item(),
                      "expert_load": [round(f, 6) for f in load.tolist()]}
        with one_thread():  # back to the caller's token order
            code = SparseCode(code.values.detach().index_select(0, pos), code.indices.index_select(0, pos))
        x_hat = x_hat.index_select(0, pos)
        return StepOutput(loss=loss, x_hat=x_hat, code=code, aux_loss=aux)

    def step_metrics(self) -> dict[str, float]:
        """The last training batch's expert load: fraction of tokens per expert (a list of E), its maximum, L_bal."""
        return dict(self._last)

    @torch.no_grad()
    def expert_counts(self, x_n: Tensor) -> Tensor:
        """Tokens of x_n (B, d) routed to each expert, (E,) int64 (eval's expert load)."""
        return self.route(x_n).counts
