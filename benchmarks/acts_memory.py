"""Peak memory of ``saescale train --acts FILE.npy`` on a 10 GB activation file (issue 15).

    python benchmarks/acts_memory.py [--rows 4500000] [--d 576] [--tokens 1228800] [--keep]

Writes an (N, d) float32 .npy of N(0, 1) values under /tmp in 64k-row chunks (the header first, then
the rows: never the whole array in memory), trains a TopK SAE (n 4096, k 32, batch 4096) on it with the
CLI in a child process, and prints the child's peak RSS (``os.wait4``'s ru_maxrss) beside the SAE's own
parameter, gradient and Adam-moment bytes. For contrast, a second child reads the same number of
shuffled 4096-row batches from the same file with plain memory-mapped fancy indexing (no pages handed
back) and prints its peak RSS. The file is deleted afterwards (unless --keep, which also reuses a file of the right size left by an earlier --keep run).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 65_536

NAIVE = """
import sys, numpy as np
path, n_batches, bs, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), 0
a = np.load(path, mmap_mode="r")
perm = np.random.default_rng([seed, 0]).permutation(len(a))
total = 0.0
for b in range(n_batches):
    total += float(a[np.sort(perm[b * bs:(b + 1) * bs])].sum())
print(total)
"""


def write_npy(path: Path, rows: int, d: int) -> float:
    """An (rows, d) float32 .npy of N(0, 1) values written chunk by chunk; seconds taken."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    with path.open("wb") as f:
        np.lib.format.write_array_header_2_0(f, {"descr": "<f4", "fortran_order": False, "shape": (rows, d)})
        for lo in range(0, rows, CHUNK):
            f.write(rng.standard_normal((min(CHUNK, rows - lo), d), dtype=np.float32).tobytes())
    return time.perf_counter() - t0


def run_child(argv: list[str]) -> tuple[int, float, float, str]:
    """(exit status, peak RSS in GiB, seconds, last output line) of a child process."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    lines = [line for line in out.splitlines() if line.strip()]
    return p.returncode, usage.ru_maxrss / 2**20, time.perf_counter() - t0, "\n".join(lines[-3:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=4_500_000)
    ap.add_argument("--d", type=int, default=576)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--tokens", type=int, default=200 * 4096)
    ap.add_argument("--dir", default="/tmp/saescale-acts-memory")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "acts.npy"
    try:
        expected = 128 + args.rows * args.d * 4  # the 2.0 header is padded to 128 bytes here
        reuse = args.keep and path.is_file() and path.stat().st_size == expected
        secs = 0.0 if reuse else write_npy(path, args.rows, args.d)
        size = path.stat().st_size
        shutil.rmtree(folder / "run", ignore_errors=True)  # a fresh run each time
        print(f"{'reused' if reuse else 'wrote'} {path}: ({args.rows:,}, {args.d}) float32, {size / 1e9:.2f} GB in {secs:.0f} s", flush=True)
        bs = 4096
        argv = [sys.executable, "-m", "saescale", "train", "--acts", str(path), "--n", str(args.n), "--k", "32",
                "--tokens", str(args.tokens), "--batch-size", str(bs), "--threads", "2", "--no-progress",
                "--checkpoint-every", "0", "--out", str(folder / "run")]
        code, rss, secs, tail = run_child(argv)
        print(" ".join(argv[1:]), f"\n-> exit {code}, {secs:.0f} s\n{tail}")
        params = args.n * args.d * 2 + args.n + 2 * args.d  # W_enc, W_dec, b_enc, b_pre (+ the decoder bias)
        sae_bytes = 4 * params * 4  # float32 parameters, gradients, Adam's two moments
        print(f"peak RSS of the training process: {rss:.2f} GiB; SAE parameters + gradients + Adam moments: "
              f"{sae_bytes / 2**20:.0f} MiB; bound 3 GiB + that = {3 + sae_bytes / 2**30:.2f} GiB; "
              f"file {size / 2**30:.2f} GiB", flush=True)
        steps = args.tokens // bs
        code2, rss2, secs2, _ = run_child([sys.executable, "-c", NAIVE, str(path), str(steps), str(bs)])
        print(f"contrast: {steps} shuffled {bs}-row batches by plain memmap fancy indexing (no pages handed back): "
              f"peak RSS {rss2:.2f} GiB (exit {code2}, {secs2:.0f} s)")
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
