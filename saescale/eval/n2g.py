"""N2G explainability (Gao et al. 2024, sec. 4.4): build a trie explanation per latent, score it on held-out text.

Per sampled latent i, from its top-activating eval tokens (one per context, highest first;
shuffled with the seed, then :class:`N2GConfig` ``build`` to build and ``test`` to test):

1. cut the context after the activating token: prefix = text tokens up to and including it;
2. keep the shortest suffix s (tried in growing lengths, batched) with a_i(s) >= frac * a_i(context);
   lengths stop at ``max_len`` (our default 12, for CPU cost; the last 12 tokens are kept if none qualifies);
3. replace each token of s in turn by the padding token; it becomes a wildcard if the
   activation stays >= frac * a_i(context) (each replacement tested on its own);
4. add the pattern to the latent's trie (:mod:`saescale.eval.n2g_trie`).

a_i(s) is latent i's activation at the last token of BOS + s (BOS when the model uses one),
sequences left-padded and run in batches up to the hook point with an attention mask and
position ids that give every real token its unpadded position (first real token at 0), so a
padded sequence has the activations it has alone -- for absolute-position models (GPT-2) too,
not only RoPE ones (:func:`left_pad`).
Held-out tokens: every kept position of the test contexts plus ``negatives`` random eval
tokens outside the build contexts (the negative sample for precision). "Fires" is
:func:`saescale.sae.base.fires` (z > 0), the one definition that L0, eval's latent density and
training's dead-latent counters use. Reported: mean precision and recall over latents (latents
with nothing predicted are left out of the precision mean and counted), and each latent's
explanation string.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from saescale.configs import check_valid, valid
from saescale.activations.hooks import resolve_hook
from saescale.errors import SaescaleError
from saescale.eval.n2g_trie import WILD, Trie, precision_recall, predict
from saescale.sae.base import SparseAutoencoder, SparseCode, fires

ActFn = Callable[[list[list[int]], int], Tensor]  # (text-token sequences, latent) -> (B,) activation at last token
LENGTH_CHUNKS = (4, 8, 16, 32, 64, 128, 256)  # suffix lengths are tried up to these bounds, one batch per chunk


@dataclass(frozen=True)
class N2GConfig:
    """N2G explanations: a trie of patterns per sampled latent, scored on held-out tokens."""

    latents: int = valid(32, ">= 1")
    """Latents sampled (among those firing on the eval tokens) for N2G explanations."""

    build: int = valid(16, ">= 1")
    """Top-activating examples used to build each explanation."""

    test: int = valid(16, ">= 1")
    """Top-activating held-out examples used to test each explanation."""

    negatives: int = valid(1024, ">= 0")
    """Random eval tokens added to the test set (negative sample for precision)."""

    frac: float = valid(0.5, "(0, 1]")
    """Fraction of the original activation a suffix / wildcard must keep (paper: 0.5)."""

    max_len: int = valid(12, ">= 1")
    """Longest suffix (tokens) tried when shortening an example; bounds N2G's cost (the paper gives no limit)."""

    def __post_init__(self) -> None:
        check_valid(self, "n2g-")


def latent_values(code: SparseCode, latent: int) -> Tensor:
    """Latent ``latent``'s value in each row of a sparse code (B, k) -> (B,)."""
    return (code.values * (code.indices == latent)).sum(-1)


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """Left-pad sequences to the longest, W tokens: (ids, attention mask, position ids), each (B, W).

        mask[b, t] = 1 on real tokens;  pos[b, t] = max(0, sum_{u <= t} mask[b, u] - 1)

    so each real token has the position it has unpadded (an absolute-position model such as GPT-2
    reads it; RoPE models would be shift-invariant anyway); padding sits at 0 and is masked out.
    """
    width = max(len(s) for s in seqs)
    ids = torch.tensor([[pad_id] * (width - len(s)) + s for s in seqs], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], dtype=torch.long)
    return ids, mask, (mask.cumsum(-1) - 1).clamp_min(0)


class _HookRan(Exception):
    """Stops a forward pass once the hook point has run (never escapes :func:`padded_hook_output`)."""


@torch.no_grad()
def padded_hook_output(model, hook: str, seqs: list[list[int]], pad_id: int) -> Tensor:
    """Hook output (B, W, d) float32 (CPU) of left-padded ``seqs`` (:func:`left_pad`); the forward pass
    stops right after the hooked module."""
    ids, mask, pos = (t.to(next(model.parameters()).device) for t in left_pad(seqs, pad_id))
    seen: list[Tensor] = []

    def record(_module, _inputs, output):
        seen.append((output[0] if isinstance(output, tuple) else output).detach())
        raise _HookRan

    handle = resolve_hook(model, hook).register_forward_hook(record)
    try:
        model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
    except _HookRan:
        pass
    finally:
        handle.remove()
    if not seen:
        raise SaescaleError(f"hook point {hook!r} never ran in the forward pass; pick a module the model uses")
    return seen[0].float().cpu()


def model_act_fn(model, hook: str, sae: SparseAutoencoder, bos: int | None, pad_id: int, batch: int = 64) -> ActFn:
    """An :data:`ActFn` running ``model`` up to ``hook`` on left-padded [BOS +] sequences, ``batch`` at a time."""

    @torch.no_grad()
    def act(seqs: list[list[int]], latent: int) -> Tensor:
        order = sorted(range(len(seqs)), key=lambda j: len(seqs[j]))  # similar lengths share a batch: less padding
        out = torch.zeros(len(seqs))
        for a in range(0, len(seqs), batch):
            idx = order[a : a + batch]
            chunk = [([bos] if bos is not None else []) + seqs[j] for j in idx]
            h = padded_hook_output(model, hook, chunk, pad_id)[:, -1]  # (B, d) at each sequence's last token
            out[idx] = latent_values(sae.encode(h), latent)
        return out

    return act


def shortest_suffixes(act_fn: ActFn, prefixes: list[list[int]], targets: Tensor, latent: int, frac: float,
                      max_len: int) -> list[list[int]]:
    """Per example, the shortest suffix of its prefix with activation >= frac * target.

    Lengths are tried in growing chunks (one batch each) up to ``max_len``; an example with no such
    suffix keeps its last ``max_len`` tokens (the whole prefix when it is shorter: that is the
    original context, so it always qualifies).
    """
    found: list[list[int] | None] = [None] * len(prefixes)
    lo = 1
    for hi in LENGTH_CHUNKS + (max(len(p) for p in prefixes),):
        hi = min(hi, max_len)
        todo = [e for e, f in enumerate(found) if f is None and len(prefixes[e]) >= lo]
        if not todo or hi < lo:
            continue
        cand = [(e, L) for e in todo for L in range(lo, min(hi, len(prefixes[e])) + 1)]
        acts = act_fn([prefixes[e][-L:] for e, L in cand], latent)
        for (e, L), a in zip(cand, acts.tolist()):
            if found[e] is None and a >= frac * float(targets[e]):
                found[e] = prefixes[e][-L:]
        lo = hi + 1
    return [f if f is not None else p[-max_len:] for f, p in zip(found, prefixes)]


def with_wildcards(act_fn: ActFn, suffixes: list[list[int]], targets: Tensor, latent: int, frac: float,
                   pad_id: int) -> list[tuple[int, ...]]:
    """Patterns: each suffix token becomes WILD if padding it alone keeps activation >= frac * target."""
    cand = [(e, j) for e, s in enumerate(suffixes) for j in range(len(s))]
    seqs = [suffixes[e][:j] + [pad_id] + suffixes[e][j + 1 :] for e, j in cand]
    acts = act_fn(seqs, latent) if seqs else torch.zeros(0)
    pats = [list(s) for s in suffixes]
    for (e, j), a in zip(cand, acts.tolist()):
        if a >= frac * float(targets[e]):
            pats[e][j] = WILD
    return [tuple(p) for p in pats]


def build_explanation(act_fn: ActFn, prefixes: list[list[int]], targets: Tensor, latent: int, pad_id: int,
                      cfg: N2GConfig = N2GConfig()) -> Trie:
    """Trie of wildcard patterns from activating examples (prefixes end at the activating token)."""
    trie = Trie()
    suffixes = shortest_suffixes(act_fn, prefixes, targets, latent, cfg.frac, cfg.max_len)
    for pat in with_wildcards(act_fn, suffixes, targets, latent, cfg.frac, pad_id):
        trie.add(pat)
    return trie


def top_examples(values: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Best firing token (:func:`fires`) of each context (values (M, T')), top ``n`` contexts: (ctx idx, pos idx),
    highest first."""
    best, pos = values.max(1)
    order = best.argsort(descending=True)
    order = order[fires(best[order])][:n]
    return order, pos[order]


def explain_latent(act_fn: ActFn, tokens: Tensor, values: Tensor, positions: Tensor, latent: int, pad_id: int,
                   text_start: int, seed: int, cfg: N2GConfig = N2GConfig()) -> dict | None:
    """Build and score latent ``latent``'s explanation; tokens (M, T), its activations values (M, T'). None if < 2 examples."""
    g, n_build = torch.Generator().manual_seed(seed), cfg.build
    ctx, pos = top_examples(values, n_build + cfg.test)
    if len(ctx) < 2:
        return None
    perm = torch.randperm(len(ctx), generator=g)
    n_b = min(n_build, len(ctx) // 2) if len(ctx) < n_build + cfg.test else n_build
    build, test = perm[:n_b], perm[n_b:]
    prefixes = [tokens[c, text_start : positions[p] + 1].tolist() for c, p in zip(ctx[build], pos[build])]
    trie = build_explanation(act_fn, prefixes, values[ctx[build], pos[build]], latent, pad_id, cfg)
    test_ctx = ctx[test]
    others = torch.ones(len(tokens), dtype=torch.bool)
    others[ctx[build]] = False
    others[test_ctx] = False
    neg = others.nonzero()[:, 0].repeat_interleave(len(positions))
    neg_pos = torch.arange(len(positions)).repeat(int(others.sum()))
    pick = torch.randperm(len(neg), generator=g)[: cfg.negatives]
    pred = torch.cat([predict(trie, tokens[test_ctx], positions).reshape(-1),
                      torch.tensor([trie.matches(tokens[c].tolist(), int(positions[p])) for c, p in zip(neg[pick], neg_pos[pick])], dtype=torch.bool)])
    fired = fires(torch.cat([values[test_ctx].reshape(-1), values[neg[pick], neg_pos[pick]]]))
    prec, rec, n_pred, n_fire = precision_recall(pred, fired)
    return {"latent": latent, "precision": prec, "recall": rec, "predicted": n_pred, "firing": n_fire,
            "patterns": len(trie.patterns), "trie": trie}
