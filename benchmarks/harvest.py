"""Harvest throughput vs a full forward pass, and what a bfloat16 model changes (issue 13), in one process.

Usage: python benchmarks/harvest.py [--model default] [--hook ''] [--batch 16] [--context-len 64] [--repeats 3]
       [--error-contexts 32] [--sae runs/demo/sae] [--ce-contexts 16] [--cache-tokens 40000] [--train-tokens 400000]
       [--skip-quality]

1. Throughput. Harvesting at hook ``layers.H`` runs L = H + 1 of the model's N blocks (a sub-module hook
   of block H counts block H as run) and skips the final norm and LM head, so its speed-up over
   a full forward (all N blocks + LM head) should be at least N / L; the target allows 20 %
   overhead: 0.8 * N / L. The same harvest with the model's parameters in bfloat16 gives
   ``bf16 harvest speed-up over fp32: X`` (issue 13 asks X >= 2.5 on a CPU with AVX512-BF16).
   Timings alternate full forward, fp32 harvest and bf16 harvest and keep the best of ``--repeats``
   (the minimum is the estimate least disturbed by other processes on a shared machine).
2. Activation error: per held-out token, r = ||a_bf16 - a_fp32|| / ||a_fp32|| at the hook, over
   ``--error-contexts`` contexts of the validation documents; median and 99th percentile.
3. Downstream: ΔCE = CE(SAE spliced) - CE(original) and KL(original || spliced) of the SAE at ``--sae``
   (the main job's, ``make demo``), evaluated through ``saescale.eval`` with an fp32 and a bf16 model on
   the same first ``--ce-contexts`` eval contexts.
4. Training data: two SAEs with the main job's settings (n 4096, k 32, ``--train-tokens``), one trained
   on a cache harvested with the bf16 model and one on the fp32 model's cache (``--cache-tokens``
   each, same contexts), both scored by nMSE on the same fp32 held-out tokens (the val split of the
   fp32 40k-token main-job cache).
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

import torch

from saescale.activations.corpus import SPLIT_SEED, load_documents, split_documents, tokenize_contexts
from saescale.activations.harvest import harvest_contexts
from saescale.activations.hooks import default_hook, n_layers
from saescale.activations.lm import load_model
from saescale.activations.lm_text import in_dtype
from saescale.activations.precision import fast_bf16


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


def throughput(args, model, model16, tokens, hook: str) -> None:
    """Section 1: full fp32 forward, fp32 harvest, bf16 harvest; best of ``args.repeats``, alternating."""
    n, L = n_layers(model), blocks_run(hook)

    def full() -> None:
        with torch.no_grad():
            model(input_ids=tokens, use_cache=False)

    runs = {"full": full, "fp32": lambda: harvest_contexts(model, hook, tokens, True),
            "bf16": lambda: harvest_contexts(model16, hook, tokens, True)}
    for fn in runs.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.repeats):
        for k, fn in runs.items():
            times[k].append(seconds(fn))
    n_tok = tokens.numel()
    tps = {k: n_tok / min(v) for k, v in times.items()}
    print(f"model {args.model}: {n} blocks, {tokens.shape[0]} x {tokens.shape[1]} tokens, torch threads {torch.get_num_threads()}; "
          f"fast bf16 on this CPU (probe): {fast_bf16()}")
    print(f"best of {args.repeats}, alternating; median ratio {median_ratio(times['full'], times['fp32']):.2f}")
    print(f"full forward ({n} blocks + LM head): {tps['full']:,.0f} tokens/s")
    print(f"harvest at {hook} ({L} of {n} blocks):  {tps['fp32']:,.0f} tokens/s fp32, {tps['bf16']:,.0f} tokens/s bf16")
    print(f"harvest speed-up over full forward: {tps['fp32'] / tps['full']:.2f} (target ≥ {0.8 * n / L:.2f})")
    print(f"bf16 harvest speed-up over fp32: {tps['bf16'] / tps['fp32']:.2f}")


def activation_error(args, model, model16, tokenizer, hook: str) -> None:
    """Section 2: per-token relative error of bf16 activations against fp32 ones on held-out contexts."""
    docs = load_documents()
    val = split_documents(len(docs), 0.05, SPLIT_SEED)[1]
    ctx = tokenize_contexts([docs[i] for i in val], tokenizer, args.context_len)
    pick = torch.randperm(len(ctx), generator=torch.Generator().manual_seed(0))[: args.error_contexts]
    tokens = ctx.tokens[pick]
    a32 = torch.cat([harvest_contexts(model, hook, t, False) for t in tokens.split(args.batch)])
    a16 = torch.cat([harvest_contexts(model16, hook, t, False) for t in tokens.split(args.batch)])
    rel = ((a16 - a32).norm(dim=1) / a32.norm(dim=1)).double()
    print(f"bf16 vs fp32 activations at {hook}, {len(rel):,} held-out tokens: per-token relative error "
          f"median {rel.median():.4f}, 99th percentile {rel.quantile(0.99):.4f}, max {rel.max():.4f}")


def downstream(args, lm) -> None:
    """Section 3: ΔCE and KL of the SAE at ``args.sae`` with an fp32 and a bf16 model (same contexts)."""
    from saescale.eval.downstream import DownstreamConfig, downstream_metrics
    from saescale.eval.evalset import load_eval_set
    from saescale.eval.splice import Splicer

    if not Path(args.sae, "cfg.json").is_file():
        print(f"downstream: no SAE at {args.sae} (run `make demo` first); skipped")
        return
    out = {}
    for dtype in ("float32", "bfloat16"):
        es = load_eval_set(args.sae, args.ce_contexts, 0, lm=lm, model_dtype=dtype)
        m = downstream_metrics(Splicer(es.model, es.hook), es.sae, es.tokens, es.positions, es.flat_acts.mean(0),
                               DownstreamConfig(contexts=args.ce_contexts), batch=8)
        out[dtype] = m
        print(f"{dtype} model: CE original {m['ce_orig']:.4f} | ΔCE SAE {m['delta_ce_sae']:.4f} | "
              f"KL(orig || SAE) {m['kl_sae']:.4f} nats ({m['scored_tokens']:,} scored tokens of {args.ce_contexts} contexts)")
    d = out["bfloat16"]["delta_ce_sae"] - out["float32"]["delta_ce_sae"]
    print(f"ΔCE bf16 - fp32: {d:+.4f} nats; KL bf16 - fp32: {out['bfloat16']['kl_sae'] - out['float32']['kl_sae']:+.4f}")


def cache_sae_quality(args, lm) -> None:
    """Section 4: held-out nMSE of SAEs trained on a bf16-model cache and on an fp32-model cache."""
    from saescale.activations.cache import CacheReader, build_cache
    from saescale.activations.config import ActivationConfig
    from saescale.cli import main as cli_main
    from saescale.eval.recon import reconstruction_metrics
    from saescale.sae.io import load_sae

    held = CacheReader(build_cache(ActivationConfig(n_tokens=40_000, model_dtype="float32"), progress=False, lm=lm), "val")
    x_held = held.read_all()["acts"]
    nmse = {}
    for dtype in ("float32", "bfloat16"):
        start = time.perf_counter()
        cache = build_cache(ActivationConfig(n_tokens=args.cache_tokens, model_dtype=dtype), progress=False, lm=lm)
        harvest_s = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as out:
            code = cli_main(["train", "--acts", str(cache), "--n", "4096", "--k", "32", "--tokens", str(args.train_tokens),
                             "--out", out, "--no-progress"])
            if code:
                raise SystemExit(f"training on the {dtype} cache failed ({code})")
            sae = load_sae(Path(out) / "sae").eval()
            with torch.no_grad():
                nmse[dtype] = reconstruction_metrics(sae, x_held.split(4096))["nmse"]
        print(f"SAE on the {dtype}-model cache ({args.cache_tokens:,} tokens, harvested in {harvest_s:.0f} s): "
              f"held-out nMSE {nmse[dtype]:.4f} on {len(x_held):,} fp32 val tokens")
    rel = (nmse["bfloat16"] - nmse["float32"]) / nmse["float32"]
    print(f"held-out nMSE, bf16 cache vs fp32 cache: {nmse['bfloat16']:.4f} vs {nmse['float32']:.4f} ({rel:+.2%} relative)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--hook", default="", help="hook point (default: the model's default hook)")
    parser.add_argument("--batch", type=int, default=16, help="contexts per forward pass")
    parser.add_argument("--context-len", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--error-contexts", type=int, default=32, help="held-out contexts for the activation error")
    parser.add_argument("--sae", default="runs/demo/sae", help="SAE for the downstream comparison (the main job's)")
    parser.add_argument("--ce-contexts", type=int, default=16, help="contexts for ΔCE / KL")
    parser.add_argument("--cache-tokens", type=int, default=40_000, help="tokens of each training cache (main job: 40k)")
    parser.add_argument("--train-tokens", type=int, default=400_000, help="training tokens of each SAE (main job: 400k)")
    parser.add_argument("--skip-quality", action="store_true", help="only sections 1 and 2 (no eval, no training)")
    args = parser.parse_args()

    start = time.perf_counter()
    model, tokenizer = load_model(args.model)
    model16 = in_dtype(model, torch.bfloat16)
    hook = args.hook or default_hook(model)
    tokens = tokenize_contexts(load_documents()[:40], tokenizer, args.context_len).tokens[: args.batch]  # (B, T)
    throughput(args, model, model16, tokens, hook)
    activation_error(args, model, model16, tokenizer, hook)
    if not args.skip_quality:
        if args.model != "default" or args.hook:
            raise SystemExit("sections 3 and 4 use the main job's settings: the default model and hook")
        del model16
        downstream(args, (model, tokenizer))
        cache_sae_quality(args, (model, tokenizer))
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
