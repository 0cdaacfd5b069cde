"""The architecture comparison of docs/architectures.md: frontiers of nMSE and ΔCE against L0.

Usage (after the three sweeps of this folder have finished):

    python examples/architectures/report.py [--contexts 48] [--out docs/architectures]

Reads every member of runs/arch-topk-family, runs/arch-l1-family and runs/arch-jumprelu (results.jsonl:
held-out nMSE and L0 on the cache's validation split), splices each member's reconstruction into the
default model on the same ``--contexts`` held-out contexts (the first of ``saescale eval``'s seeded sample,
so ΔCE is the figure ``saescale eval`` prints; the model's own forward pass and activations are computed
once for all members), and writes ``results.json``, ``frontier_nmse.png`` and ``frontier_dce.png`` to
``--out``. Prints the table and, for each baseline (relu, gated, prolu, jumprelu) point inside TopK's L0
range, TopK's nMSE and ΔCE at that L0 (linear in log L0 between TopK's points), the paper's comparison.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from saescale.atomic import atomic_write_json  # noqa: E402
from saescale.eval.downstream import kl_div, next_token_ce, sae_replacement  # noqa: E402
from saescale.eval.evalset import load_eval_set  # noqa: E402
from saescale.eval.splice import Splicer  # noqa: E402
from saescale.sae.io import load_sae  # noqa: E402

SWEEPS = ("runs/arch-topk-family", "runs/arch-l1-family", "runs/arch-jumprelu")
ORDER = ("topk", "batchtopk", "matryoshka", "relu", "gated", "prolu", "jumprelu")


def members() -> list[dict]:
    rows = []
    for sweep in SWEEPS:
        path = Path(sweep, "results.jsonl")
        if not path.is_file():
            print(f"{path} not found (sweep not run or not finished yet): its members are left out")
            continue
        for line in path.read_text().splitlines():
            r = json.loads(line)
            train = r["settings"]["train"]
            r["coef"] = {"relu": train.get("l1_coef"), "gated": train.get("l1_coef"), "prolu": train.get("l1_coef"),
                         "jumprelu": train.get("l0_coef")}.get(r["arch"])
            r["sae_dir"] = str(Path(sweep, r["id"], "sae"))
            rows.append(r)
    return sorted(rows, key=lambda r: (ORDER.index(r["arch"]), r["l0"]))


@torch.no_grad()
def downstream(rows: list[dict], contexts: int, batch: int = 16) -> None:
    """ΔCE and KL of each member's splice, on the same contexts, into ``rows`` (in place)."""
    es = load_eval_set(rows[0]["sae_dir"], contexts, seed=0)
    splicer, tokens, positions = Splicer(es.model, es.hook), es.tokens[:contexts], es.positions
    scored = positions[positions <= tokens.shape[1] - 2]
    saes = [load_sae(r["sae_dir"]).eval() for r in rows]
    ce_orig, ce = 0.0, [0.0] * len(rows)
    kl = [0.0] * len(rows)
    count = 0
    for i in range(0, len(tokens), batch):
        ids = tokens[i : i + batch]
        logits, h = splicer.forward_with_capture(ids)
        ce_orig += next_token_ce(logits, ids, scored).double().sum().item()
        for j, sae in enumerate(saes):
            spliced = splicer.forward_from_hook(ids, sae_replacement(sae, h, positions))
            ce[j] += next_token_ce(spliced, ids, scored).double().sum().item()
            kl[j] += kl_div(logits, spliced, scored).double().sum().item()
        count += ids.shape[0] * len(scored)
        print(f"  downstream: {min(i + batch, len(tokens))}/{len(tokens)} contexts", flush=True)
    for r, c, k in zip(rows, ce, kl):
        r.update(delta_ce=(c - ce_orig) / count, kl=k / count, ce_orig=ce_orig / count, scored_tokens=count)


def at_l0(topk: list[dict], l0: float, key: str) -> float | None:
    """TopK's ``key`` at ``l0``, linear in log L0 between its points; None outside their range."""
    pts = sorted((math.log(r["l0"]), r[key]) for r in topk)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x = math.log(l0)
    return float(np.interp(x, xs, ys)) if xs[0] <= x <= xs[-1] else None


def plot(rows: list[dict], key: str, label: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for arch in ORDER:
        pts = sorted((r["l0"], r[key]) for r in rows if r["arch"] == arch)
        if pts:
            ax.plot(*zip(*pts), marker="o", label=arch)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("L0 (mean active latents per token, held out)")
    ax.set_ylabel(label)
    ax.set_title(f"{label} vs L0, n = {rows[0]['n']}, SmolLM2-135M block 20")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--contexts", type=int, default=48, help="held-out contexts spliced per SAE (saescale eval's default)")
    p.add_argument("--out", default="docs/architectures")
    args = p.parse_args()
    rows = members()
    downstream(rows, args.contexts)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    keep = ("id", "arch", "n", "k", "coef", "l0", "loss", "delta_ce", "kl", "dead_frac", "never_fired_frac", "tokens",
            "ce_orig", "scored_tokens")
    atomic_write_json(out / "results.json", {"contexts": args.contexts, "members": [{k: r.get(k) for k in keep} for r in rows]})
    plot(rows, "loss", "held-out nMSE", out / "frontier_nmse.png")
    plot(rows, "delta_ce", "ΔCE (nats)", out / "frontier_dce.png")
    print("| arch | k or λ | L0 | nMSE | ΔCE (nats) | KL | dead |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        setting = f"k = {r['k']}" if r["coef"] is None else f"λ = {r['coef']:g}"
        print(f"| {r['arch']} | {setting} | {r['l0']:.1f} | {r['loss']:.3f} | {r['delta_ce']:.3f} | {r['kl']:.3f} | "
              f"{r['dead_frac']:.1%} |")
    topk = [r for r in rows if r["arch"] == "topk"]
    if not topk:
        return
    print("\nAgainst TopK at the same L0 (linear in log L0 between TopK's points):")
    for r in rows:
        if r["arch"] in ("topk",):
            continue
        m, c = at_l0(topk, r["l0"], "loss"), at_l0(topk, r["l0"], "delta_ce")
        if m is None:
            print(f"  {r['arch']} {r['id']}: L0 {r['l0']:.1f} outside TopK's range")
            continue
        print(f"  {r['arch']} {r['id']}: L0 {r['l0']:.1f}: nMSE {r['loss']:.3f} vs TopK {m:.3f} "
              f"({'TopK lower' if m < r['loss'] else 'TopK higher'}); ΔCE {r['delta_ce']:.3f} vs TopK {c:.3f} "
              f"({'TopK lower' if c < r['delta_ce'] else 'TopK higher'})")


if __name__ == "__main__":
    main()
