"""Encoder scaling at init (TrainConfig.init_encoder_scale) against none, on short and long runs,
planted (synthetic) and real (default model, default hook) activations: held-out nMSE of each.

    python benchmarks/init_scale.py [--real-cache-tokens 40000] [--only synthetic|real]

Prints one line per run and the table for benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from saescale.activations.cache import CacheReader, build_cache
from saescale.activations.config import ActivationConfig
from saescale.activations.sources import heldout_batches
from saescale.data.synthetic import SyntheticConfig, SyntheticSource
from saescale.eval.recon import reconstruction_metrics
from saescale.sae.config import SAEConfig
from saescale.train.config import TrainConfig
from saescale.train.run import train_sae


def run(name, sae_cfg, cfg, src, held, tokens, scale):
    t0 = time.perf_counter()
    res = train_sae(sae_cfg, dataclasses.replace(cfg, tokens=tokens, init_encoder_scale=scale), src)
    rep = reconstruction_metrics(res.sae, held)
    print(f"{name:9s} tokens {tokens:>9,}  init scaling {'on ' if scale else 'off'}  held-out nMSE {rep['nmse']:.4f}  "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return rep["nmse"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--real-cache-tokens", type=int, default=40_000)
    p.add_argument("--only", choices=["synthetic", "real"])
    a = p.parse_args()
    rows = []
    if a.only != "real":  # the issue's case: --acts synthetic --n 4096 --k 16, 200k and 2M tokens
        src = SyntheticSource(SyntheticConfig())
        held = [x for _, x in zip(range(4), src.heldout().batches(4096))]
        cfg = TrainConfig(progress=False)
        for tokens in (200_000, 2_000_000):
            rows.append(("synthetic", tokens, *(run("synthetic", SAEConfig(n=4096, k=16), cfg, src, held, tokens, s)
                                                for s in (False, True))))
    if a.only != "synthetic":  # the main job: default model and hook, n 4096, k 32; 400k (make demo) and 1.4M tokens
        path = build_cache(ActivationConfig(n_tokens=a.real_cache_tokens))
        src, val = CacheReader(path, "train", 0), CacheReader(path, "val", 0)
        held = [x.float() for x in heldout_batches(val, 65_536, 4096)]
        cfg = TrainConfig(progress=False)
        for tokens in (400_000, 1_400_000):
            rows.append(("real", tokens, *(run("real", SAEConfig(n=4096, k=32), cfg, src, held, tokens, s)
                                           for s in (False, True))))
    print("\n| data | tokens | nMSE, no scaling | nMSE, encoder scaling |\n|---|---|---|---|")
    for data, tokens, off, on in rows:
        print(f"| {data} | {tokens:,} | {off:.4f} | {on:.4f} |")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
