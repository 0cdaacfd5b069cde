"""Training-step throughput against the encoder-matmul bound, in one process.

Usage: python benchmarks/train_step.py [--arch topk] [--experts 8] [--n 16384] [--k 32] [--d 576] [--batch 4096] [--steps 5] [--threads 2]

With ``--arch NAME`` other than topk: that architecture's ``Trainer.step`` and the TopK step at the same
shape, timed alternately in this process, and their ratio as the last line (issue 16's targets: batchtopk
and matryoshka <= 1.3, jumprelu and gated <= 2). The L1/L0 architectures are timed at a trained-like
sparsity: their biases (gated, prolu) or thresholds (jumprelu) are set from a batch so that about k
latents per token are active, as after training (at init most latents are active, and the dense path runs).
``--arch switch --experts E``: the Switch step (router rows random unit directions, so the random tokens
spread over the experts) against the dense TopK step of the same n, k and batch; the last line is
``switch step: X.Xx faster than dense TopK`` (X = TopK best step time / Switch best step time; issue 17: >= 4).

Measures, on random inputs of width d, for B = --batch tokens and n latents:
  * the encoder matmul x (B, d) @ W_enc^T (d, n) + b_enc: GFLOP/s and its bound B / time;
    one ``F.linear`` when the (B, n) result fits in 2 GB, else in 16384-latent blocks into a reused buffer;
    with one ``F.linear`` (which page-faults a fresh (B, n) output each call), also, for reference,
    the same matmul in the step's own blocks into a reused buffer, and our step's ratio to that;
  * our full step, ``Trainer.step`` (forward + AuxK when latents are dead + backward + Adam + decoder-norm
    maintenance), with whatever ``SAESCALE_KERNELS`` selects (fast by default);
  * a naive dense reference step in plain PyTorch (dense pre-activations, topk, dense decode,
    autograd, Adam, projection and renormalisation), skipped when its (B, n) tensors would not fit.
Times are the best over --steps steps after the first (warm-up), medians alongside (the machine is
shared: the best is the estimate least disturbed by other processes). The last line is the ratio of our
step's tokens/s to the bound; when the naive step is skipped for memory (large n) the last line
is the peak RSS instead (``resource.getrusage``), which is also printed otherwise.
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import time

import torch
import torch.nn.functional as F

from saescale.kernels.select import DEFAULT_CHUNK
from saescale.sae.config import SAEConfig
from saescale.sae.registry import build_sae
from saescale.train.config import TrainConfig, resolve_precision
from saescale.train.trainer import Trainer

DENSE_LIMIT_BYTES = 2 * 1024**3  # a (B, n) float32 tensor larger than this is not materialised
MATMUL_BLOCK = 16384


def timed(fn, reps: int, device: str = "cpu") -> list[float]:
    """Wall times of ``reps`` calls of fn (on CUDA, synchronised before and after each)."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    out = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t0)
    return out


def encoder_matmul(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor):
    """A closure computing pre = x W^T + b, whole or in blocks into one reused (B, block) buffer."""
    B, n = x.shape[0], W.shape[0]
    if B * n * 4 <= DENSE_LIMIT_BYTES:
        return lambda: F.linear(x, W, b)
    return blocked_matmul(x, W, b, MATMUL_BLOCK)


def blocked_matmul(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, block: int):
    """A closure computing x W^T + b in ``block``-latent column blocks into one reused (B, block) buffer."""
    B, n = x.shape[0], W.shape[0]
    buf = x.new_empty(B, block)

    def blocked() -> None:
        for s in range(0, n, block):
            e = min(s + block, n)
            torch.addmm(b[s:e], x, W[s:e].T, out=buf[:, : e - s])

    return blocked


@torch.no_grad()
def random_unit_rows(n: int, d: int, g: torch.Generator, device: str = "cpu") -> torch.Tensor:
    """(n, d) Gaussian rows scaled to unit norm, in place (no second (n, d) buffer)."""
    W = torch.randn(n, d, generator=g).to(device)
    return W.div_(torch.linalg.vector_norm(W, dim=1, keepdim=True))


def build_trainer(args: argparse.Namespace, g: torch.Generator, arch: str = "topk",
                  x: torch.Tensor | None = None) -> Trainer:
    """An SAE with tied init (W_enc = W_dec, b_enc = 0, b_pre = 0) and the default trainer settings; for
    gated, prolu and jumprelu, biases or thresholds set on ``x`` so that about k latents per token fire."""
    extra = {"bandwidth": 1e-4} if arch == "jumprelu" else {"experts": args.experts} if arch == "switch" else {}
    sae = build_sae(SAEConfig(arch=arch, n=args.n, k=args.k, d=args.d, normalize="layernorm", **extra))
    with torch.no_grad():
        sae.W_dec.copy_(random_unit_rows(args.n, args.d, g))
        sae.W_enc.copy_(sae.W_dec)
        if arch == "switch":
            sae.W_router.copy_(random_unit_rows(args.experts, args.d, g))
        if arch in ("gated", "prolu", "jumprelu"):
            x_n, _ = sae.normalize(x[:1024].cpu())  # the SAE's own input normalisation
            pre = torch.nn.functional.linear(x_n, sae.W_enc)  # (1024, n)
            cut = pre.quantile(1 - args.k / args.n, dim=0) if args.n <= 65536 else pre.sort(0).values[-1 - 1024 * args.k // args.n]
            if arch == "jumprelu":
                sae.log_threshold.copy_(cut.clamp_min(1e-6).log())
            else:
                sae.b_enc.copy_(-cut)
    cfg = TrainConfig(batch_size=args.batch, tokens=args.batch * 1000, progress=False, multi_topk=args.multi_topk,
                      device=args.device, precision=args.precision)
    return Trainer(sae, cfg, loss_scale=1.0)


def naive_step_fn(args: argparse.Namespace, g: torch.Generator, x: torch.Tensor):
    """The plain dense PyTorch step: pre (B, n), topk, dense z (B, n), x̂ = z W_dec + b_pre, Adam."""
    W_dec = random_unit_rows(args.n, args.d, g, args.device).requires_grad_(True)
    W_enc = W_dec.detach().clone().requires_grad_(True)
    b_enc = torch.zeros(args.n, device=args.device, requires_grad=True)
    b_pre = torch.zeros(args.d, device=args.device, requires_grad=True)
    opt = torch.optim.Adam([W_enc, b_enc, W_dec, b_pre], lr=1e-4)
    x_n = F.layer_norm(x, (args.d,))

    def step() -> None:
        pre = F.linear(x_n - b_pre, W_enc, b_enc)
        v, i = pre.topk(args.k, dim=-1)
        z = torch.zeros_like(pre).scatter(1, i, F.relu(v))
        loss = (z @ W_dec + b_pre - x_n).pow(2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        with torch.no_grad():
            W_dec.grad -= (W_dec.grad * W_dec).sum(-1, keepdim=True) * W_dec
            opt.step()
            W_dec.div_(W_dec.norm(dim=-1, keepdim=True))

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="topk", help="architecture to time (others: against the TopK step)")
    p.add_argument("--n", type=int, default=16384)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--d", type=int, default=576)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--steps", type=int, default=5, help="steps per measured path; the first is a warm-up")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--multi-topk", action="store_true", help="train with Multi-TopK (top-4k as well)")
    p.add_argument("--experts", type=int, default=8, help="--arch switch: the number of experts E")
    p.add_argument("--device", default="cpu", help="cpu or cuda (CUDA times are synchronised)")
    p.add_argument("--precision", default="auto", choices=["auto", "float32", "bfloat16", "autocast"],
                   help="the step's selection precision (TrainConfig.precision; auto = bfloat16 where bf16 matmuls "
                        "are fast); the bound stays one float32 F.linear")
    args = p.parse_args()
    cuda = args.device.startswith("cuda")
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    B = args.batch
    x = torch.randn(B, args.d, generator=g).to(args.device)
    gflop = 2 * B * args.d * args.n / 1e9
    precision = resolve_precision(args.precision, args.device)
    print(f"B={B} d={args.d} n={args.n} k={args.k} multi_topk={args.multi_topk} threads={args.threads} "
          f"precision={precision} "
          f"torch {torch.__version__} {torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine()}")

    if args.arch != "topk":
        compare_arch(args, g, x)
        return
    trainer = build_trainer(args, g)
    matmul = encoder_matmul(x, trainer.sae.W_enc.detach(), trainer.sae.b_enc.detach())
    blocked = args.batch * args.n * 4 > DENSE_LIMIT_BYTES  # long blocked matmul: one call, no warm-up
    reps = 1 if blocked else max(2, min(args.steps, 5))
    t_mm = timed(matmul, reps + (not blocked), args.device)[(not blocked):]
    metrics: dict = {}
    ours = timed(lambda: metrics.update(trainer.step(x)), args.steps, args.device)
    t_mm += timed(matmul, reps, args.device)  # before and after our steps: the machine is shared
    ours = ours[1:] if len(ours) > 1 else ours
    mm, step = min(t_mm), min(ours)
    bound = B / mm
    print(f"encoder matmul: best {mm * 1e3:.0f} ms (median {statistics.median(t_mm) * 1e3:.0f}), "
          f"{gflop / mm:.1f} GFLOP/s, bound {bound:,.0f} tokens/s")
    if not blocked and not cuda:  # the same flops the way our step runs them: no fresh (B, n) output
        blocks = timed(blocked_matmul(x, trainer.sae.W_enc.detach(), trainer.sae.b_enc.detach(), DEFAULT_CHUNK),
                       reps + 1)[1:]
        print(f"  (for reference, not the bound: the same matmul in {DEFAULT_CHUNK}-latent blocks into one reused "
              f"buffer, as our step runs it, best {min(blocks) * 1e3:.0f} ms; our step is "
              f"{min(blocks) / step:.2f} of that rate)")
    print(f"our step (Trainer.step): best {step * 1e3:.0f} ms (median {statistics.median(ours) * 1e3:.0f}), "
          f"{B / step:,.0f} tokens/s  (timed steps: {', '.join(f'{t * 1e3:.0f}' for t in ours)} ms)"
          + (f", rows redone in float32 {metrics['bf16_fallback_frac']:.1%}" if "bf16_fallback_frac" in metrics else ""))
    naive_fits = 4 * B * args.n * 4 <= (32 if cuda else 8) * 1024**3
    if naive_fits:
        del trainer
        naive = timed(naive_step_fn(args, g, x), args.steps, args.device)
        t_naive = min(naive[1:] if len(naive) > 1 else naive)
        print(f"naive dense step: best {t_naive * 1e3:.0f} ms, {B / t_naive:,.0f} tokens/s, "
              f"ours is {t_naive / step:.2f}x faster")
    else:
        print("naive dense step: skipped (its (B, n) tensors would not fit in memory)")
    rss = f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9:.1f} GB"
    if cuda:
        rss = f"peak CUDA memory: {torch.cuda.max_memory_allocated() / 1e9:.1f} GB, " + rss
    ratio = f"ratio to {'fp32 ' if precision != 'float32' else ''}encoder-matmul bound: {(B / step) / bound:.2f}"
    print(*((rss, ratio) if naive_fits else (ratio, rss)), sep="\n")


def compare_arch(args: argparse.Namespace, g: torch.Generator, x: torch.Tensor) -> None:
    """Time ``args.arch``'s step and the TopK step alternately (the machine is shared); print their ratio."""
    ours = build_trainer(args, g, args.arch, x)
    topk = build_trainer(args, g, "topk")
    t_arch, t_topk, metrics = [], [], {}
    for _ in range(args.steps):
        t_arch += timed(lambda: metrics.update(ours.step(x)), 1, args.device)
        t_topk += timed(lambda: topk.step(x), 1, args.device)
    l0 = metrics["l0"]
    a, b = min(t_arch[1:] or t_arch), min(t_topk[1:] or t_topk)
    print(f"{args.arch} step: best {a * 1e3:.0f} ms (median {statistics.median(t_arch) * 1e3:.0f}), L0 {l0:.1f}, "
          f"selection {ours.cfg.precision}")
    print(f"topk step: best {b * 1e3:.0f} ms (median {statistics.median(t_topk) * 1e3:.0f}), selection {topk.cfg.precision}")
    if args.arch == "switch":
        load = ", ".join(f"{f:.3f}" for f in metrics["expert_load"])
        print(f"expert load (fraction of tokens per expert): {load}")
        print(f"switch step: {b / a:.1f}x faster than dense TopK")
        return
    print(f"step time ratio {args.arch}/topk: {a / b:.2f}")


if __name__ == "__main__":
    main()
