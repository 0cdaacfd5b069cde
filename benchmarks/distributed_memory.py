"""Per-rank memory of latent sharding: n = 2^18 latents, d = 576, on 1, 2 and 4 latent shards.

For each shard count L, L CPU processes (gloo, one thread each, one data replica) build their
shard of a TopK SAE (sharded initialisation: no rank ever holds a whole (n, d) matrix) and train
a few steps on synthetic activations. Each rank reports:

    params+Adam   bytes of its parameters and Adam moments (exact, from the tensors)
    RSS start     resident memory after the imports, before the SAE exists
    peak RSS      the process's high-water mark (ru_maxrss) after the steps
    peak - start  what the SAE, its gradients, Adam and the step's buffers added

Expected: params+Adam = 3 x 4 x (2 n d + n + d) / L bytes (+ the replicated b_pre), i.e. 3.6 GB,
1.8 GB, 0.9 GB; peak - start falls about as fast (the (n/L, d) gradient of W_enc, and the W_dec
gradient while it lives, are also per shard). The final gather of the whole SAE on rank 0 is not run.

    python benchmarks/distributed_memory.py [--n 262144] [--d 576] [--shards 1 2 4] [--steps 3] [--batch 256]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    from saescale.data.synthetic import SyntheticConfig, SyntheticSource
    from saescale.data.source import DataParallelSlice
    from saescale.distributed.mesh import DistConfig, check_layout, close_mesh, init_mesh
    from saescale.train.run import open_run
    from saescale.sae.config import SAEConfig
    from saescale.train.config import TrainConfig
    importlib.import_module("torch._dynamo")  # Adam imports it on first use: count it in the baseline

    start = rss_mb()
    layout = check_layout(world, world, args.n, args.batch, "topk")
    mesh = init_mesh(layout, rank, DistConfig(dist_timeout=600), torch.device("cpu"))
    src = SyntheticSource(SyntheticConfig(d=args.d, features=1024, k=32))
    cfg = TrainConfig(tokens=args.batch * args.steps, batch_size=args.batch, init_tokens=1024, progress=False)
    t0 = time.perf_counter()
    trainer = open_run(SAEConfig(n=args.n, k=args.k), cfg, src, None, {}, mesh)
    init_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    trainer.fit(DataParallelSlice(src, 0, 1).batches(args.batch))
    step_s = (time.perf_counter() - t0) / args.steps
    tensors = [*trainer._params().values(), *(v for s in trainer.opt.state.values() for v in s.values())]
    rec = {"rank": rank, "params_adam_mb": sum(t.numel() * t.element_size() for t in tensors) / 2**20,
           "start_mb": start, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "init_s": init_s, "step_s": step_s}
    with open(out, "a") as f:
        f.write(json.dumps(rec) + "\n")
    close_mesh(mesh)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=2**18)
    p.add_argument("--d", type=int, default=576)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4])
    args = p.parse_args()
    import torch.multiprocessing as mp

    print(f"n={args.n} d={args.d} k={args.k} batch={args.batch} steps={args.steps} gloo, 1 thread per rank, "
          f"torch {torch.__version__} {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"{'shards':>6} {'rank':>4} {'params+Adam MB':>14} {'RSS start MB':>12} {'peak RSS MB':>11} "
          f"{'peak-start MB':>13} {'init s':>6} {'step s':>6}")
    for shards in args.shards:
        with tempfile.TemporaryDirectory() as tmp:
            out = str(Path(tmp) / "ranks.jsonl")
            mp.start_processes(worker, args=(shards, free_port(), args, out), nprocs=shards, start_method="spawn")
            recs = sorted((json.loads(line) for line in Path(out).read_text().splitlines()), key=lambda r: r["rank"])
        for r in recs:
            print(f"{shards:>6} {r['rank']:>4} {r['params_adam_mb']:>14.0f} {r['start_mb']:>12.0f} {r['peak_mb']:>11.0f} "
                  f"{r['peak_mb'] - r['start_mb']:>13.0f} {r['init_s']:>6.1f} {r['step_s']:>6.1f}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
