"""The model-free n-gram explanations equal a plain brute-force reference on a tiny cache (patterns,
precision, recall of every latent, held out from the building contexts); a latent planted to fire on
one token gets that token with precision and recall 1."""

from __future__ import annotations

import pytest
import torch

from saescale.activations.cache_read import CacheReader
from saescale.dashboard.collect import Collector, collect
from saescale.dashboard.ngram import ngram_explanations
from saescale.eval.n2g_trie import Trie, precision_recall
from saescale.sae.base import SparseCode
from saescale.sae.io import load_sae
from tests.dashboard.dash_helpers import tiny_setup

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tiny_lm_dir, tiny_lm, tmp_path_factory):
    sae_dir, cache = tiny_setup(tmp_path_factory.mktemp("dash_ngram"), tiny_lm_dir, tiny_lm)
    sae = load_sae(sae_dir).eval()
    reader = CacheReader(cache)
    col = collect(sae, reader.iter_shards(), first_pos=1, width=reader.manifest["tokens_per_context"], top=6, batch=5,
                  seed=1)
    return sae, reader, col


def reference_patterns(tokens: dict, z_rows: list[tuple[int, torch.Tensor]]) -> list[tuple[int, ...]]:
    """Brute force: group the top contexts by activating token; take up to 3 groups (largest first, ties by
    best context; groups of >= 2, else the largest); each grows backwards to the longest suffix all its
    contexts (>= 2) share, at most 3 tokens."""
    groups: list[tuple[int, list[list[int]]]] = []
    for c, z in z_rows:
        p = int(z.argmax())
        t = [int(x) for x in tokens[c][: p + 1]]
        if t[-1] < 0:
            continue
        g = next((g for g in groups if g[0] == t[-1]), None)
        if g is None:
            groups.append((t[-1], [t]))
        else:
            g[1].append(t)
    ranked = sorted(groups, key=lambda g: -len(g[1]))
    chosen = [g for g in ranked if len(g[1]) >= 2][:3] or ranked[:1]
    out = []
    for u, ts in chosen:
        best = (u,)
        for L in (2, 3):
            if len(ts) < 2 or any(len(t) < L for t in ts):
                break
            suffixes = {tuple(t[-L:]) for t in ts}
            if len(suffixes) != 1 or -1 in next(iter(suffixes)):
                break
            best = next(iter(suffixes))
        out.append(best)
    return out


def test_ngram_explanations_equal_brute_force(tiny):
    sae, reader, col = tiny
    rows = reader.read_all()
    with torch.no_grad():
        code = sae.encode(rows["acts"])
    z = torch.zeros(len(rows["acts"]), sae.cfg.n).scatter_add_(1, code.indices, code.values.clamp_min(0))
    ctx, pos = rows["ctx"], rows["pos"]
    got = ngram_explanations(col, list(range(sae.cfg.n)), lambda t: f"t{t}")
    ids = sorted(col.tokens)
    checked = 0
    for i in range(sae.cfg.n):
        top = [c for c in col.top_ctx[i].tolist() if c >= 0]
        if not top:
            assert int(col.fires[i]) == 0 and i not in got
            continue
        z_rows = []
        for c in top:
            row = torch.zeros(col.width)
            row[pos[ctx == c] - 1] = z[ctx == c, i]
            z_rows.append((c, row))
        want = reference_patterns(col.tokens, z_rows)
        assert got[i]["patterns"] == [list(p) for p in want], i
        trie = Trie()
        for p in want:
            trie.add(p)
        # held out: every kept position of every context outside the latent's top contexts
        held = torch.tensor([c not in set(top) for c in ctx.tolist()])
        seq = {c: [int(x) for x in col.tokens[c]] for c in ids}
        predicted = torch.tensor([trie.matches(seq[c], int(p) - 1) for c, p in zip(ctx[held].tolist(), pos[held].tolist())],
                                 dtype=torch.bool)
        prec, rec, n_pred, n_fire = precision_recall(predicted, z[held, i] > 0)
        e = got[i]
        assert (e["predicted"], e["firing"]) == (n_pred, n_fire), i
        assert e["precision"] == (None if n_pred == 0 else pytest.approx(prec)), i
        assert e["recall"] == (None if n_fire == 0 else pytest.approx(rec)), i
        assert e["text"] == trie.describe(lambda t: f"t{t}")
        checked += e["predicted"] > 0 and e["firing"] > 0
    assert checked >= 10  # most latents get a real held-out test


class Planted:
    """A stub SAE (n = 3, k = 1): latent 1 fires on token 7 (z = 1 + 0.01 * column), nothing else fires."""

    class cfg:
        n = 3

    def encode(self, acts):
        v = acts[:, 0]
        return SparseCode(v[:, None], torch.ones(len(v), 1, dtype=torch.long))


def test_a_latent_planted_on_one_token_gets_it_with_precision_and_recall_one():
    g = torch.Generator().manual_seed(0)
    C, T = 60, 12
    tokens = torch.randint(0, 40, (C, T), generator=g)
    tokens[torch.rand(C, T, generator=g) < 0.08] = 7
    tokens[::3, 5] = 7  # every third context has one for sure
    acts = ((tokens == 7).float() * (1 + 0.01 * torch.arange(T)))[..., None]
    col = Collector(Planted(), T, top=4)
    for a in range(0, C, 16):
        sl = slice(a, a + 16)
        n = len(tokens[sl])
        col.add(torch.arange(a, a + n), torch.arange(a, a + n), tokens[sl], acts[sl], torch.ones(n, T, dtype=torch.bool))
    res = col.result
    got = ngram_explanations(res, [0, 1, 2], lambda t: f"tok{t}")
    assert set(got) == {1}  # latents 0 and 2 never fire: no explanation
    e = got[1]
    assert e["patterns"] == [[7]] and e["text"] == "[tok7]"
    assert e["precision"] == 1.0 and e["recall"] == 1.0
    assert e["firing"] == int((tokens == 7).sum()) - sum(int((tokens[c] == 7).sum()) for c in res.top_ctx[1].tolist())
    assert e["building_contexts"] == 4 and e["held_out_contexts"] == C - 4
