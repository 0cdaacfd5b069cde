"""One pass over an activation cache: every latent's statistics and example contexts, in bounded memory.

The cache's token stream is context after context (the kept positions of each), so the pass groups
rows into contexts, encodes ``batch`` contexts at a time with the SAE and, per latent i, keeps:

- ``fires[i]`` (tokens with z_i > 0, :func:`~saescale.sae.base.fires`), ``act_sum[i]`` (sum of z_i) and
  ``max[i]``;
- ``hist[i]``: counts of its firing activations in log2 bins of a quarter octave (:data:`EDGES`,
  2^-16 .. 2^12; values outside fall into the first / last bin), so ``hist[i].sum() == fires[i]``;
- ``top``: its ``top`` contexts by their highest activation of z_i (one example per context, as N2G's
  ``top_examples``), with z_i at every position of each (a merge of the kept and the batch's
  candidates by ``topk``: the per-latent heap, vectorised);
- ``sample``: per octave bin (4 histogram bins) one firing token drawn uniformly from all its firing
  tokens in that octave (each firing token gets an iid U(0,1) key; the largest key wins: a reservoir
  of size 1), with z_i along its context;
- ``rand``: ``rand`` contexts drawn uniformly (the same max-key rule) with their sparse codes: N2G's
  negative sample.

- ``codes``: every context's firing latents per position (the n-gram explanations' held-out test,
  :mod:`saescale.dashboard.ngram`).

Memory: O(n * (top + octaves) * T') floats, whatever the cache size; the contexts' token ids and firing
latent ids are kept (4 (k + 1) bytes a token: 5.3 MB for 40,000 tokens at k = 32). The statistics are exact; the samples depend only on ``seed`` and the cache.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from saescale.sae.base import SparseAutoencoder, fires
from saescale.threads import one_thread

STEP = 4  # histogram bins per octave
LO, HI = -16, 12  # octaves covered: 2^LO .. 2^HI
H = (HI - LO) * STEP  # histogram bins
OCTAVES = HI - LO  # sample bins (one octave each)
EDGES = [2.0 ** (LO + j / STEP) for j in range(H + 1)]
"""Histogram bin edges: bin b holds values in [EDGES[b], EDGES[b+1]) (the first and last bins also
hold the values below / above the range)."""


def fine_bin(v: Tensor) -> Tensor:
    """Histogram bin of positive values ``v``."""
    return ((torch.log2(v) - LO) * STEP).floor().clamp(0, H - 1).long()


@dataclass
class Collected:
    """What one pass found (see module docstring); T' = ``width`` kept positions per context."""

    n_tokens: int
    width: int
    fires: Tensor  # (n,) int64
    act_sum: Tensor  # (n,) float64
    max: Tensor  # (n,) float32
    hist: Tensor  # (n, H) int64
    top_val: Tensor  # (n, K) float32, descending; 0 = empty slot
    top_ctx: Tensor  # (n, K) int64 context id, -1 = empty
    top_rows: Tensor  # (n, K, T') float32: z_i along the context
    s_key: Tensor  # (n, OCTAVES) float32 reservoir key, -1 = empty
    s_ctx: Tensor  # (n, OCTAVES) int64
    s_pos: Tensor  # (n, OCTAVES) int64 column of the sampled token
    s_val: Tensor  # (n, OCTAVES) float32
    s_rows: Tensor  # (n, OCTAVES, T') float32
    rand_ctx: Tensor  # (R,) int64 random context ids (-1 = empty)
    rand_key: Tensor  # (R,)
    rand_values: Tensor  # (R, T', k) sparse code values of the random contexts
    rand_indices: Tensor  # (R, T', k)
    tokens: dict[int, np.ndarray] = field(default_factory=dict)  # context id -> (T',) token ids (-1: not in the cache)
    docs: dict[int, int] = field(default_factory=dict)  # context id -> document index
    codes: dict[int, np.ndarray] = field(default_factory=dict)  # context id -> (T', k) int32 firing latents (-1: none)

    @property
    def n(self) -> int:
        return len(self.fires)


def contexts(shards: Iterator[dict[str, Tensor]], first_pos: int, width: int, batch: int
             ) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor, Tensor]]:
    """Batches of whole contexts from a cache split's shards (rows context after context; a context may
    span two shards): (ctx ids (C,), docs (C,), tokens (C, T') (-1 where absent), acts (C, T', d), valid (C, T'))."""

    def grid(rows: dict[str, Tensor], groups: Tensor, starts: Tensor):
        c = len(starts)
        d = rows["acts"].shape[1]
        col = rows["pos"] - first_pos
        acts = torch.zeros(c, width, d)
        toks = torch.full((c, width), -1, dtype=torch.long)
        valid = torch.zeros(c, width, dtype=torch.bool)
        acts[groups, col] = rows["acts"]
        toks[groups, col] = rows["tokens"]
        valid[groups, col] = True
        return rows["ctx"][starts], rows["doc"][starts], toks, acts, valid

    def cut(rows: dict[str, Tensor], final: bool):
        ctx = rows["ctx"]
        change = torch.ones(len(ctx), dtype=torch.bool)
        change[1:] = ctx[1:] != ctx[:-1]
        starts = change.nonzero().flatten()
        n_ctx = len(starts) if final else len(starts) - 1  # the last context may continue in the next shard
        for a in range(0, n_ctx, batch):
            b = min(a + batch, n_ctx)
            lo, hi = int(starts[a]), int(starts[b]) if b < len(starts) else len(ctx)
            part = {k: v[lo:hi] for k, v in rows.items()}
            groups = torch.cumsum(change[lo:hi].long(), 0) - 1
            yield grid(part, groups, starts[a:b] - lo)
        rest = len(ctx) if final or n_ctx == len(starts) else int(starts[n_ctx])
        return {k: v[rest:] for k, v in rows.items()}

    carry = None
    for shard in shards:
        rows = shard if carry is None else {k: torch.cat([carry[k], shard[k]]) for k in shard}
        carry = yield from cut(rows, final=False)
    if carry is not None and len(carry["ctx"]):
        yield from cut(carry, final=True)


class Collector:
    """Feed batches of contexts (:meth:`add`), then read :attr:`result`."""

    def __init__(self, sae: SparseAutoencoder, width: int, top: int, rand: int = 64, seed: int = 0):
        n, self.sae, self.K, self.R, self.T = sae.cfg.n, sae, top, rand, width
        self.g = torch.Generator().manual_seed(seed)
        k = 1
        self.res = Collected(
            n_tokens=0, width=width, fires=torch.zeros(n, dtype=torch.long), act_sum=torch.zeros(n, dtype=torch.float64),
            max=torch.zeros(n), hist=torch.zeros(n, H, dtype=torch.long), top_val=torch.zeros(n, top),
            top_ctx=torch.full((n, top), -1, dtype=torch.long), top_rows=torch.zeros(n, top, width),
            s_key=torch.full((n, OCTAVES), -1.0), s_ctx=torch.full((n, OCTAVES), -1, dtype=torch.long),
            s_pos=torch.zeros(n, OCTAVES, dtype=torch.long), s_val=torch.zeros(n, OCTAVES),
            s_rows=torch.zeros(n, OCTAVES, width), rand_ctx=torch.full((rand,), -1, dtype=torch.long),
            rand_key=torch.full((rand,), -1.0), rand_values=torch.zeros(rand, width, k),
            rand_indices=torch.zeros(rand, width, k, dtype=torch.long))

    @torch.no_grad()
    def add(self, ctx: Tensor, docs: Tensor, tokens: Tensor, acts: Tensor, valid: Tensor) -> None:
        """One batch of C contexts: ids (C,), docs (C,), tokens (C, T'), raw acts (C, T', d), valid (C, T')."""
        r, n, T = self.res, self.res.n, self.T
        C = len(ctx)
        for c, t, dc in zip(ctx.tolist(), tokens.numpy().astype(np.int32), docs.tolist()):
            r.tokens[c], r.docs[c] = t, dc
        code = self.sae.encode(acts.reshape(C * T, -1))
        values = torch.where(fires(code.values) & valid.reshape(-1, 1), code.values, torch.zeros(()))
        indices = code.indices
        r.n_tokens += int(valid.sum())
        on = values > 0
        firing = torch.where(on, indices, torch.full((), -1)).to(torch.int32).view(C, T, -1).numpy()
        for j, c in enumerate(ctx.tolist()):
            r.codes[c] = firing[j]
        lat, val = indices[on], values[on]
        r.fires += torch.bincount(lat, minlength=n)
        r.act_sum += torch.bincount(lat, weights=val.double(), minlength=n)
        b = fine_bin(val)
        r.hist += torch.bincount(lat * H + b, minlength=n * H).view(n, H)
        with one_thread():  # bookkeeping: many mid-sized ops, faster on one thread of a shared machine
            flat_rows = torch.arange(C * T).repeat_interleave(indices.shape[1])
            dense = torch.zeros(n, C * T).index_put_((indices.reshape(-1), flat_rows), values.reshape(-1),
                                                     accumulate=True).view(n, C, T)  # z_i along each context
            ctx_max = dense.amax(2)  # (n, C)
            r.max = torch.maximum(r.max, ctx_max.amax(1))
            self._top(dense, ctx_max, ctx)
            self._sample(dense, ctx, on, lat, val, b)
            self._rand(ctx, values.view(C, T, -1), indices.view(C, T, -1))

    def _top(self, dense: Tensor, ctx_max: Tensor, ctx: Tensor) -> None:
        r, K = self.res, self.K
        cand = torch.cat([r.top_val, ctx_max], 1)  # (n, K + C)
        new_val, sel = cand.topk(K, dim=1)
        from_batch = sel >= K
        if not bool(from_batch.any()):
            return
        lat = torch.arange(r.n)[:, None]
        old = sel.clamp(max=K - 1)
        new = (sel - K).clamp(min=0)
        r.top_ctx = torch.where(from_batch, ctx[new], r.top_ctx.gather(1, old))
        rows = r.top_rows[lat, old]
        l, s = from_batch.nonzero(as_tuple=True)
        rows[l, s] = dense[l, new[l, s]]
        r.top_rows, r.top_val = rows, new_val
        r.top_ctx[new_val <= 0] = -1

    def _sample(self, dense: Tensor, ctx: Tensor, on: Tensor, lat: Tensor, val: Tensor, fine: Tensor) -> None:
        r, T = self.res, self.T
        if not len(lat):
            return
        row = on.nonzero()[:, 0]  # flat token row of each firing entry
        octave = (fine // STEP).clamp(max=OCTAVES - 1)
        group = lat * OCTAVES + octave
        key = torch.rand(len(lat), generator=self.g)
        best = torch.full((r.n * OCTAVES,), -1.0).scatter_reduce(0, group, key, "amax")
        win = (key == best[group]) & (key > r.s_key.view(-1)[group])
        if not bool(win.any()):
            return
        g, l, o, rw = group[win], lat[win], octave[win], row[win]
        r.s_key.view(-1)[g] = key[win]
        r.s_ctx.view(-1)[g] = ctx[rw // T]
        r.s_pos.view(-1)[g] = rw % T
        r.s_val.view(-1)[g] = val[win]
        r.s_rows[l, o] = dense[l, rw // T]

    def _rand(self, ctx: Tensor, values: Tensor, indices: Tensor) -> None:
        r = self.res
        if r.rand_values.shape[-1] != values.shape[-1]:  # first batch: the code width k
            r.rand_values = torch.zeros(self.R, self.T, values.shape[-1])
            r.rand_indices = torch.zeros(self.R, self.T, values.shape[-1], dtype=torch.long)
        key = torch.rand(len(ctx), generator=self.g)
        keys = torch.cat([r.rand_key, key])
        top, sel = keys.topk(min(self.R, len(keys)))
        old, new = sel < self.R, (sel - self.R).clamp(min=0)
        o = sel.clamp(max=self.R - 1)
        m = old[:, None, None]
        r.rand_values = torch.where(m, r.rand_values[o], values[new])
        r.rand_indices = torch.where(m, r.rand_indices[o], indices[new])
        r.rand_ctx = torch.where(old, r.rand_ctx[o], ctx[new])
        r.rand_key = top
        r.rand_ctx[top < 0] = -1

    @property
    def result(self) -> Collected:
        return self.res


def collect(sae: SparseAutoencoder, shards: Iterator[dict[str, Tensor]], first_pos: int, width: int, top: int,
            batch: int = 32, rand: int = 64, seed: int = 0, advance: Callable[[int], None] | None = None) -> Collected:
    """The one pass: :class:`Collected` of ``sae`` over a cache split's ``shards`` (``CacheReader.iter_shards()``);
    ``advance(tokens)`` after each batch."""
    col = Collector(sae, width, top, rand, seed)
    for ctx, docs, toks, acts, valid in contexts(shards, first_pos, width, batch):
        col.add(ctx, docs, toks, acts, valid)
        if advance:
            advance(int(valid.sum()))
    return col.result
