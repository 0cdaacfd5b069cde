"""N2G: an explanation that matches a synthetic latent exactly scores precision = recall = 1; trie semantics."""

import pytest
import torch

from saescale.eval.n2g import N2GConfig, build_explanation, explain_latent
from saescale.eval.n2g_trie import WILD, Trie, precision_recall

pytestmark = pytest.mark.usefixtures("one_thread")

A, B, PAD = 7, 9, 0


def bigram_act(seqs, latent):
    """A synthetic latent: fires (2.0) exactly when the text ends with tokens A, B."""
    return torch.tensor([2.0 if s[-2:] == [A, B] else 0.0 for s in seqs])


def skip_act(seqs, latent):
    """Fires when the text ends with A, <any>, B."""
    return torch.tensor([1.0 if len(s) >= 3 and s[-3] == A and s[-1] == B else 0.0 for s in seqs])


def synthetic_contexts(m=80, t=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, 6, (m, t), generator=g)  # background tokens never A or B
    for c in range(0, m, 2):  # plant A B in half the contexts; stray A's and B's elsewhere
        p = int(torch.randint(1, t - 2, (1,), generator=g))
        tokens[c, p], tokens[c, p + 1] = A, B
        tokens[c + 1, p] = B if c % 4 else A
    return tokens


def test_trie_matching_with_wildcards():
    trie = Trie()
    trie.add((A, WILD, B))
    trie.add((WILD, 3))
    assert trie.patterns == [(A, WILD, B), (3,)]
    assert trie.matches([1, A, 4, B], 3) and not trie.matches([1, A, B], 2)
    assert trie.matches([3], 0) and not trie.matches([A], 0)
    assert "[a]*[b]" in trie.describe(lambda t: {A: "a", B: "b"}.get(t, str(t)))


def test_exact_explanation_scores_one():
    tokens = synthetic_contexts()
    positions = torch.arange(1, tokens.shape[1])
    values = torch.stack([bigram_act([row[: p + 1].tolist() for p in positions.tolist()], 0) for row in tokens])
    res = explain_latent(bigram_act, tokens, values, positions, 0, PAD, text_start=1, seed=0,
                         cfg=N2GConfig(build=16, test=16, negatives=500))
    assert res["trie"].patterns == [(A, B)]
    assert res["precision"] == 1.0 and res["recall"] == 1.0 and res["firing"] >= 16


def test_wildcard_is_found():
    prefixes = [[1, 2, A, k, B] for k in (3, 4, 5)]
    trie = build_explanation(skip_act, prefixes, torch.ones(3), 0, PAD)
    assert trie.patterns == [(A, WILD, B)]


def test_precision_recall_counts():
    pred = torch.tensor([True, True, False, False])
    fires = torch.tensor([True, False, True, False])
    assert precision_recall(pred, fires) == (0.5, 0.5, 2, 2)
    p, r, _, _ = precision_recall(torch.zeros(3, dtype=torch.bool), torch.tensor([True, False, False]))
    assert p != p and r == 0.0  # nothing predicted: precision undefined (NaN)
