"""Model-free n-gram explanations of every latent, from what the one pass kept, and their held-out
precision / recall, for all latents at once.

Building (per latent i, from its kept top contexts ``col.top_ctx[i]``: one example per context, its
highest-z position p, as N2G's examples): group the contexts by their activating token ``x[p]``; the
patterns are the activating tokens of at most :data:`MAX_PATTERNS` groups, largest group first (ties:
the group whose best context ranks highest), taking every group of >= 2 contexts, or the largest group
when none has 2. A pattern is extended backwards by the token before it, then the one before that (up
to 3 tokens), while every context of its group (>= 2 of them) has the same token there: a unigram when
the contexts disagree on the preceding token, a longer n-gram when they agree. Patterns are
:class:`~saescale.eval.n2g_trie.Trie` patterns (no wildcards) and read as ``Trie.describe`` does.

Testing: the held-out positions of latent i are every kept position of every context of the split that
is *not* one of i's top contexts (the building examples). ``predicted(t)``: some pattern of i equals the
tokens ending at t (inside t's context; tokens the cache lacks match nothing); ``fires(t)``: z_i(t) > 0
from the pass's codes (:func:`~saescale.sae.base.fires`). precision = |predicted ∧ fires| / |predicted|,
recall = |predicted ∧ fires| / |fires| over those positions (None when the denominator is 0).

One hashed pass for all latents: each position's 1-, 2- and 3-gram ending there is an exact integer key
(tokens + 1 in base V + 1, so lengths cannot collide), joined by ``searchsorted`` with the sorted keys of
all latents' patterns; the matched (position, latent) pairs are counted against the firing pairs.
"""

from __future__ import annotations

import numpy as np

from saescale.dashboard.collect import Collected
from saescale.eval.n2g_trie import Trie

MAX_PATTERNS = 3
MAX_LEN = 3


def build_patterns(col: Collected, i: int) -> list[tuple[int, ...]]:
    """Latent i's n-gram patterns (text order) from its top contexts (module docstring); [] when it has none."""
    groups: dict[int, list[tuple[np.ndarray, int]]] = {}
    rows = col.top_rows[i]
    for s in (col.top_ctx[i] >= 0).nonzero().flatten().tolist():
        toks = col.tokens[int(col.top_ctx[i, s])]
        p = int(rows[s].argmax())
        if toks[p] >= 0:
            groups.setdefault(int(toks[p]), []).append((toks, p))  # dict order = rank of the group's best context
    if not groups:
        return []
    order = sorted(groups, key=lambda u: -len(groups[u]))  # stable: ties keep the best-context order
    chosen = [u for u in order if len(groups[u]) >= 2][:MAX_PATTERNS] or order[:1]
    out = []
    for u in chosen:
        pattern = (u,)
        ex = groups[u]
        while len(ex) >= 2 and len(pattern) < MAX_LEN:
            j = len(pattern)
            prev = {int(t[p - j]) if p - j >= 0 else -1 for t, p in ex}
            if len(prev) != 1 or -1 in prev:
                break
            pattern = (prev.pop(),) + pattern
        out.append(pattern)
    return out


def _keys(tok: np.ndarray, base: int) -> list[np.ndarray]:
    """(C, T') int64 keys of the L-gram ending at each position, L = 1..MAX_LEN (-1: none there)."""
    x = tok.astype(np.int64) + 1  # 0 = absent
    out, key, ok = [], np.zeros_like(x), np.ones(x.shape, dtype=bool)
    for L in range(1, MAX_LEN + 1):
        shifted = np.zeros_like(x)
        shifted[:, L - 1 :] = x[:, : x.shape[1] - L + 1]  # token at t - (L-1)
        ok &= shifted > 0
        key = key + shifted * base ** (L - 1)
        out.append(np.where(ok, key, -1))
    return out


def pattern_key(p: tuple[int, ...], base: int) -> int:
    return sum((t + 1) * base**j for j, t in enumerate(reversed(p)))


def ngram_explanations(col: Collected, latents: list[int], decode) -> dict[int, dict]:
    """Latent -> n-gram explanation (text, patterns, precision, recall, predicted, firing, held_out) for every
    latent of ``latents`` with patterns; latents without (never fired) are left out."""
    ctx_ids = np.array(sorted(col.tokens), dtype=np.int64)
    n = col.n
    if not len(ctx_ids):
        return {}
    tok = np.stack([col.tokens[c] for c in ctx_ids.tolist()])  # (C, T')
    C, T = tok.shape
    pats = {i: build_patterns(col, i) for i in latents}
    base = int(max(int(tok.max()), max((t for ps in pats.values() for p in ps for t in p), default=0))) + 2
    # the patterns' keys, sorted, and their latents
    pk = np.array([pattern_key(p, base) for i in latents for p in pats[i]], dtype=np.int64)
    pl = np.array([i for i in latents for p in pats[i]], dtype=np.int64)
    order = np.argsort(pk, kind="stable")
    pk, pl = pk[order], pl[order]
    # every (position, latent) pair some pattern predicts
    pos_all, lat_all = [], []
    for keys in _keys(tok, base):
        flat = keys.reshape(-1)
        lo = np.searchsorted(pk, flat, "left")
        hi = np.searchsorted(pk, flat, "right")
        cnt = np.where(flat >= 0, hi - lo, 0)
        pos = np.repeat(np.arange(C * T, dtype=np.int64), cnt)
        first = np.cumsum(cnt) - cnt  # where each position's matches start in ``pos``
        lat_all.append(pl[np.repeat(lo, cnt) + np.arange(len(pos)) - np.repeat(first, cnt)])
        pos_all.append(pos)
    pred = np.unique(np.concatenate(pos_all) * n + np.concatenate(lat_all))
    # firing (position, latent) pairs from the pass's codes
    codes = np.stack([col.codes[c] for c in ctx_ids.tolist()]).reshape(C * T, -1)  # (C*T', k), -1 = not firing
    r, c = np.nonzero(codes >= 0)
    fire = np.unique(r.astype(np.int64) * n + codes[r, c].astype(np.int64))
    # building examples: (context row, latent) pairs of the top contexts, excluded
    top = col.top_ctx.numpy()
    tl, ts = np.nonzero(top >= 0)
    crow = np.searchsorted(ctx_ids, top[tl, ts])
    building = np.unique(crow * n + tl)

    def held(pairs: np.ndarray) -> np.ndarray:
        return pairs[~np.isin((pairs // n) // T * n + pairs % n, building)]

    pred, fire = held(pred), held(fire)
    hit = pred[np.isin(pred, fire, assume_unique=True)]
    n_pred = np.bincount(pred % n, minlength=n)
    n_fire = np.bincount(fire % n, minlength=n)
    n_hit = np.bincount(hit % n, minlength=n)
    n_top = np.bincount(tl, minlength=n)
    out = {}
    for i in latents:
        if not pats[i]:
            continue
        trie = Trie()
        for p in pats[i]:
            trie.add(p)
        out[i] = {"text": trie.describe(decode), "patterns": [list(p) for p in trie.patterns],
                  "precision": float(n_hit[i] / n_pred[i]) if n_pred[i] else None,
                  "recall": float(n_hit[i] / n_fire[i]) if n_fire[i] else None,
                  "predicted": int(n_pred[i]), "firing": int(n_fire[i]),
                  "held_out_contexts": int(C - n_top[i]), "building_contexts": int(n_top[i])}
    return out
