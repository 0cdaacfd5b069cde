"""Quality of a TopK SAE on real activations of the embedded default model.

Harvests ~200k tokens of SmolLM2-135M residual-stream activations at the default
hook point (after block 20 of 30) from the embedded corpus, trains a TopK SAE
(n=4096, k=32, the paper's per-token layer-norm input normalisation) for 1.4M
tokens (several epochs over the cache), and reports held-out nMSE on the
validation documents and the dead fraction (latents that did not fire in the
last dead-window of training; also those that never fire on the held-out tokens).

    .venv/bin/python benchmarks/real_quality.py [--n 4096 --k 32 --tokens 1400000 --cache-tokens 200000]

Target (issue 'Real activations'): held-out nMSE <= 0.30 with <= 10% dead latents.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from saescale.activations.cache import CacheReader, build_cache
from saescale.activations.config import ActivationConfig
from saescale.activations.sources import cache_provenance, heldout_batches
from saescale.eval.recon import reconstruction_metrics
from saescale.sae.config import SAEConfig
from saescale.train.config import TrainConfig
from saescale.train.run import train_sae


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--tokens", type=int, default=1_400_000)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--lr", type=float, default=0.0, help="0 = the paper's rule 2e-4/sqrt(n/2^14)")
    p.add_argument("--cache-tokens", type=int, default=200_000)
    p.add_argument("--out", default="runs/bench-quality")
    a = p.parse_args()

    t0 = time.perf_counter()
    cache = build_cache(ActivationConfig(n_tokens=a.cache_tokens))
    train, val = CacheReader(cache, "train"), CacheReader(cache, "val")
    cfg = TrainConfig(tokens=a.tokens, batch_size=a.batch_size, lr=a.lr)
    res = train_sae(SAEConfig(n=a.n, k=a.k, normalize="layernorm"), cfg, train, Path(a.out) / f"n{a.n}-k{a.k}-lr{a.lr}",
                    extra=cache_provenance(train))
    held = reconstruction_metrics(res.sae, heldout_batches(val, val.n_tokens, a.batch_size))
    dead_window = res.metrics["dead_frac"]
    out = {"heldout": held, "train_dead_frac": dead_window, "train_tokens": a.tokens, "cache_tokens": train.n_tokens,
           "val_tokens": val.n_tokens, "n": a.n, "k": a.k, "lr": cfg.resolved_lr(a.n), "batch_size": a.batch_size,
           "dead_window_tokens": cfg.resolved_dead_tokens(), "seconds": time.perf_counter() - t0}
    print(json.dumps(out, indent=1))
    print(f"held-out L0 {held['l0']:.1f}; never fired on held-out tokens: {held['never_fired_frac']:.1%}")
    print(f"held-out nMSE: {held['nmse']:.4f} (target <= 0.30)")
    print(f"dead latents (no fire in last {cfg.resolved_dead_tokens():,} training tokens): {dead_window:.1%} (target <= 10%)")


if __name__ == "__main__":
    main()
