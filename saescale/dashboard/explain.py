"""N2G explanations of dashboard latents, built and scored by :func:`saescale.eval.n2g.explain_latent`
on the contexts the one pass kept: the latent's top contexts (the same "best token per context,
highest first" examples N2G takes) plus the pass's random contexts (outside those) as the negatives."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from saescale.dashboard.collect import Collected
from saescale.eval.n2g import N2GConfig, explain_latent, latent_values
from saescale.sae.base import SparseCode


def full_tokens(col: Collected, ctx: list[int], lead: int | None, pad_id: int) -> Tensor:
    """(M, T) token ids of contexts ``ctx``: the kept positions, after ``lead`` (the position-0 token the
    cache does not keep: BOS, else ``pad_id``) when not None; tokens the cache lacks become ``pad_id``."""
    rows = torch.stack([torch.from_numpy(col.tokens[c]).long() for c in ctx])
    rows = torch.where(rows < 0, torch.full_like(rows, pad_id), rows)
    if lead is not None:
        rows = torch.cat([torch.full((len(rows), 1), lead, dtype=torch.long), rows], 1)
    return rows


def n2g_inputs(col: Collected, i: int, lead: int | None, pad_id: int) -> tuple[Tensor, Tensor]:
    """(tokens (M, T), z_i (M, T')) of latent i's top contexts followed by the random contexts not among them."""
    keep = col.top_ctx[i] >= 0
    top = col.top_ctx[i][keep].tolist()
    seen = set(top)
    rand = [(j, c) for j, c in enumerate(col.rand_ctx.tolist()) if c >= 0 and c not in seen]
    values = [col.top_rows[i][keep]]
    if rand:
        js = torch.tensor([j for j, _ in rand])
        k = col.rand_values.shape[-1]
        code = SparseCode(col.rand_values[js].reshape(-1, k), col.rand_indices[js].reshape(-1, k))
        values.append(latent_values(code, i).view(len(js), col.width))
    return full_tokens(col, top + [c for _, c in rand], lead, pad_id), torch.cat(values)


def explain(act_fn, col: Collected, i: int, positions: Tensor, lead: int | None, pad_id: int, text_start: int,
            seed: int, cfg: N2GConfig, decode) -> dict | None:
    """Latent i's N2G explanation: text (``Trie.describe``), patterns (token ids, -1 = wildcard), precision,
    recall (null when NaN), predicted, firing; None with fewer than 2 firing contexts."""
    tokens, values = n2g_inputs(col, i, lead, pad_id)
    r = explain_latent(act_fn, tokens, values, positions, i, pad_id, text_start, seed, cfg)
    if r is None:
        return None
    trie = r.pop("trie")

    def number(v: float) -> float | None:  # NaN (nothing predicted / nothing firing) -> null in JSON
        return None if math.isnan(v) else v

    return {"text": trie.describe(decode), "patterns": [list(p) for p in trie.patterns],
            "precision": number(r["precision"]), "recall": number(r["recall"]), "predicted": r["predicted"],
            "firing": r["firing"]}
