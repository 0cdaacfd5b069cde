"""N2G explanations as tries of token n-grams with wildcards, and their precision / recall.

A pattern is a tuple of token ids (text order) ending at the token where the latent fires; the
wildcard :data:`WILD` matches any token. Patterns are stored reversed in a trie (last token at
the root), so "does some pattern match the text ending at position t?" is a walk backwards from t.

    predicted(t) = some pattern p of length L has p[L-1-j] in {tokens[t-j], WILD} for j < L
    recall    = |predicted ∧ fires| / |fires|
    precision = |predicted ∧ fires| / |predicted|      (NaN when nothing is predicted)
"""

from __future__ import annotations

from torch import Tensor

WILD = -1
_END = "end"


class Trie:
    """A set of n-gram patterns with wildcards (see module docstring)."""

    def __init__(self) -> None:
        self.root: dict = {}
        self.patterns: list[tuple[int, ...]] = []

    def add(self, pattern: tuple[int, ...]) -> None:
        """Add one pattern (text order); leading wildcards are dropped (they constrain nothing)."""
        while pattern and pattern[0] == WILD:
            pattern = pattern[1:]
        if pattern in self.patterns:
            return
        self.patterns.append(pattern)
        node = self.root
        for tok in reversed(pattern):
            node = node.setdefault(tok, {})
        node[_END] = True

    def matches(self, tokens: list[int], t: int) -> bool:
        """True if some pattern matches the text ``tokens[..t]`` ending at position ``t``."""
        return _walk(self.root, tokens, t)

    def describe(self, decode) -> str:
        """Readable explanation: patterns joined by ' | ', wildcards as '*', tokens via ``decode(id)``."""
        def one(p: tuple[int, ...]) -> str:
            return "".join("*" if tok == WILD else f"[{decode(tok)}]" for tok in p) or "<any>"

        return " | ".join(one(p) for p in self.patterns)


def _walk(node: dict, tokens: list[int], t: int) -> bool:
    if _END in node:
        return True
    if t < 0:
        return False
    for key in (tokens[t], WILD):
        child = node.get(key)
        if child is not None and _walk(child, tokens, t - 1):
            return True
    return False


def predict(trie: Trie, tokens: Tensor, positions: Tensor) -> Tensor:
    """(M, P) bool: does the explanation match at ``positions`` (P,) of each context ``tokens`` (M, T)?"""
    import torch

    rows = tokens.tolist()
    return torch.tensor([[trie.matches(r, int(t)) for t in positions] for r in rows], dtype=torch.bool)


def precision_recall(predicted: Tensor, fires: Tensor) -> tuple[float, float, int, int]:
    """(precision, recall, #predicted, #firing) from bool tensors of the same shape."""
    hit = int((predicted & fires).sum())
    n_pred, n_fire = int(predicted.sum()), int(fires.sum())
    prec = hit / n_pred if n_pred else float("nan")
    rec = hit / n_fire if n_fire else float("nan")
    return prec, rec, n_pred, n_fire
