"""Planted-dictionary recovery through ``saescale train --acts data.npy`` against sparsify's SparseCoder,
at equal tokens, n and k, on the same rows in the same order (issue 15).

    python benchmarks/acts_vs_sparsify.py [--tokens 1000000] [--n 256] [--k 8] [--batch 1024] [--saescale-args "..."]

Data: the planted dictionary of ``--acts synthetic`` / tests/train (d = 64, 256 unit-norm directions,
k = 8 active per token, power-law frequencies alpha 0.5, magnitudes U(0.5, 1.5), noise 0.01), ``--tokens``
rows written to data.npy. saescale: the CLI with --n, --k, --tokens, --batch-size and ``--saescale-args``
(default ``--lr 0.01 --normalize none``, the recipe of the planted-dictionary tests; at the paper's lr rule,
1.6e-3 for n = 256, and 73 steps of 4096 it recovered 0% against sparsify's 66%: measured, README).
sparsify (eai-sparsify, its defaults of SparseCoderConfig and TrainConfig): TopK SparseCoder, encoder
init ~ nn.Linear, W_dec = W_enc unit-normed, b_dec = the first batch's mean, decoder re-normed before
every step, gradient parallel to decoder rows removed, the FVU loss, AuxK off (auxk_alpha = 0),
ScheduleFreeWrapper(SignSGD, momentum 0.95) at lr 5e-3 / sqrt(n / 2^14), weights read in the optimiser's
eval mode (as sparsify saves them): its Trainer's loop replicated (the Trainer itself needs an HF model).
Both read the same training rows in the same order (saescale's ArraySource of data.npy, seed 0). Batch:
the same number of tokens per step for both (sparsify's own default is 32 sequences of its context length).
Printed for each: mean-max cosine (for each true direction, its best cosine with a decoder row,
averaged) and the fraction recovered at cosine >= 0.9.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from itertools import islice
from pathlib import Path

import numpy as np
import torch

from saescale.cli import main as cli
from saescale.data.arrays import ArraySource
from saescale.data.synthetic import SyntheticConfig, SyntheticSource, feature_recovery
from saescale.sae.io import load_sae


def train_sparsify(src: ArraySource, n: int, k: int, tokens: int, batch: int, seed: int = 0) -> torch.Tensor:
    """The decoder (n, d) of a sparsify SparseCoder trained as its Trainer trains (fvu loss, defaults)."""
    from schedulefree import ScheduleFreeWrapper
    from sparsify import SparseCoder, SparseCoderConfig
    from sparsify.config import TrainConfig
    from sparsify.sign_sgd import SignSGD

    defaults = TrainConfig(SparseCoderConfig())
    assert defaults.optimizer == "signum" and defaults.auxk_alpha == 0.0 and defaults.loss_fn == "fvu"
    torch.manual_seed(seed)
    sae = SparseCoder(src.d, SparseCoderConfig(num_latents=n, k=k), "cpu", dtype=torch.float32)
    opt = ScheduleFreeWrapper(SignSGD([dict(params=sae.parameters(), lr=5e-3 / (n / 2**14) ** 0.5)]), momentum=0.95)
    opt.train()
    for step, x in enumerate(islice(src.batches(batch), tokens // batch)):
        if step == 0:
            sae.b_dec.data = x.mean(0)
        sae.set_decoder_norm_to_unit_norm()
        out = sae(x=x, y=x, dead_mask=None, total_variance=(x - x.mean(0)).pow(2).sum())
        (out.fvu + out.multi_topk_fvu / 8).backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
    opt.eval()  # the averaged weights, as sparsify saves them
    return sae.W_dec.detach().clone()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--n", default="256")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--saescale-args", default="--lr 0.01 --normalize none",
                    help="more options of saescale train (default: the recipe of tests/train/test_train_synthetic.py)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    planted = SyntheticSource(SyntheticConfig())  # d 64, 256 features, k 8
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.npy"
        np.save(data, torch.cat([planted.batch(65_536, i) for i in range(-(-args.tokens // 65_536))])[: args.tokens].numpy())
        print(f"data.npy: {args.tokens:,} rows x d {planted.d}, {planted.cfg.features} planted directions, "
              f"k {planted.cfg.k}; training rows {ArraySource(data).n_tokens:,} (5% held out)")
        for n in (int(v) for v in args.n.split(",")):
            out = Path(tmp) / f"saescale-n{n}"
            argv = ["train", "--acts", str(data), "--n", str(n), "--k", str(args.k), "--tokens", str(args.tokens),
                    "--batch-size", str(args.batch), "--no-progress", "--threads", "2", "--out", str(out),
                    *args.saescale_args.split()]
            t0 = time.perf_counter()
            assert cli(argv) == 0
            ours = feature_recovery(load_sae(out / "sae").W_dec.detach(), planted.features)
            t1 = time.perf_counter()
            theirs = feature_recovery(train_sparsify(ArraySource(data), n, args.k, args.tokens, args.batch),
                                      planted.features)
            t2 = time.perf_counter()
            print(f"n {n} k {args.k}, {args.tokens:,} tokens, batch {args.batch}: "
                  f"saescale mean-max cos {ours[0]:.3f}, recovered {ours[1]:.1%} ({t1 - t0:.0f} s) | "
                  f"sparsify mean-max cos {theirs[0]:.3f}, recovered {theirs[1]:.1%} ({t2 - t1:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
