"""Harvest throughput vs a full forward pass, same model, same contexts, same run.

Usage: python benchmarks/harvest.py [--model default] [--hook ''] [--batch 16] [--context-len 64] [--repeats 7]

Harvesting at hook ``layers.H`` runs L = H + 1 of the model's N blocks (a sub-module hook
of block H counts block H as run) and skips the final norm and LM head, so its speed-up over
a full forward (all N blocks + LM head) should be at least N / L; the target allows 20 %
overhead: 0.8 * N / L. Timings alternate harvest and full forward and keep the best of
``--repeats`` (the minimum is the estimate least disturbed by other processes on a shared machine).
"""

from __future__ import annotations

import argparse
import re
import time

import torch

from saescale.activations.corpus import load_documents, tokenize_contexts
from saescale.activations.harvest import harvest_contexts
from saescale.activations.hooks import default_hook, n_layers
from saescale.activations.lm import load_model


def blocks_run(hook: str) -> int:
    """Blocks that run before the forward stops at ``hook`` (``layers.H[.sub]`` -> H + 1)."""
    m = re.match(r"layers\.(\d+)", hook)
    if m is None:
        raise SystemExit(f"benchmark needs a layers.N hook, got '{hook}'")
    return int(m.group(1)) + 1


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_ratio(t_full: list[float], t_harvest: list[float]) -> float:
    """Median over repeats of the per-repeat speed-up (full time / harvest time)."""
    ratios = sorted(f / h for f, h in zip(t_full, t_harvest))
    return ratios[len(ratios) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--hook", default="", help="hook point (default: the model's default hook)")
    parser.add_argument("--batch", type=int, default=16, help="contexts per forward pass")
    parser.add_argument("--context-len", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    model, tokenizer = load_model(args.model)
    hook = args.hook or default_hook(model)
    tokens = tokenize_contexts(load_documents()[:40], tokenizer, args.context_len).tokens[: args.batch]  # (B, T)
    n, L = n_layers(model), blocks_run(hook)

    def full() -> None:
        with torch.no_grad():
            model(input_ids=tokens, use_cache=False)

    def harvest() -> None:
        harvest_contexts(model, hook, tokens, keep_first=True)

    full(), harvest()  # warm-up
    t_full, t_harvest = [], []
    for _ in range(args.repeats):
        t_full.append(seconds(full))
        t_harvest.append(seconds(harvest))
    n_tok = tokens.numel()
    full_tps, harvest_tps = n_tok / min(t_full), n_tok / min(t_harvest)
    print(f"model {args.model}: {n} blocks, {tokens.shape[0]} x {tokens.shape[1]} tokens, torch threads {torch.get_num_threads()}")
    print(f"best of {args.repeats}, alternating; median ratio {median_ratio(t_full, t_harvest):.2f}")
    print(f"full forward ({n} blocks + LM head): {full_tps:,.0f} tokens/s")
    print(f"harvest at {hook} ({L} of {n} blocks):  {harvest_tps:,.0f} tokens/s")
    print(f"harvest speed-up over full forward: {harvest_tps / full_tps:.2f} (target ≥ {0.8 * n / L:.2f})")


if __name__ == "__main__":
    main()
