r"""The Switch SAE frontier of docs/architectures.md: held-out nMSE against training FLOPs per token, k = 32.

Usage (after ``saescale sweep examples/architectures/switch.toml`` and ``.../switch-dense.toml``):

    python examples/architectures/switch_report.py [--out docs/architectures]

and for the 4x budget (after ``.../switch-long.toml`` and ``.../switch-long-dense.toml``):

    python examples/architectures/switch_report.py --runs runs/arch-switch-long runs/arch-switch-long-dense \
        --name switch_long --corpus "large corpus"

Reads the two sweeps' results.jsonl (held-out nMSE and L0 on the cache's validation split) and writes
``NAME_results.json``, ``NAME_frontier.png`` and, when every run has a loss curve, ``NAME_curves.png`` to
``--out``; prints the table. FLOPs per token (what the fast paths compute): the encoder matmul 2 d n (dense
TopK) or 2 d n / E + 2 d E (Switch: the token's expert and the router), plus the sparse decoder and
backward, about 8 d k for both (decode 2 d k; decoder-weight, code and encoder-weight gradients 2 d k each).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from saescale.atomic import atomic_write_json  # noqa: E402

RUNS = ("runs/arch-switch", "runs/arch-switch-dense")


def flops_per_token(arch: str, d: int, n: int, k: int, experts: int | None) -> int:
    """Training FLOPs per token of the fast paths (module docstring)."""
    encoder = 2 * d * (n // experts + experts) if arch == "switch" else 2 * d * n
    return encoder + 8 * d * k


def rows(runs: list[str]) -> list[dict]:
    out = []
    for folder in runs:
        for line in (Path(folder) / "results.jsonl").read_text().splitlines():
            r = json.loads(line)
            E = r["settings"]["sae"].get("experts")
            out.append({"arch": r["arch"], "n": r["n"], "k": r["k"], "experts": E, "l0": r["l0"], "nmse": r["loss"],
                        "dead_frac": r["dead_frac"], "never_fired_frac": r["never_fired_frac"],
                        "tokens": r["tokens"], "flops_per_token": flops_per_token(r["arch"], r["d"], r["n"], r["k"], E),
                        "curve": [[c["tokens"], c["loss"]] for c in r.get("curve") or []]})
    return sorted(out, key=lambda r: (r["arch"], r["flops_per_token"]))


def plot(table: list[dict], path: Path, corpus: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    dense = [r for r in table if r["arch"] == "topk"]
    ax.plot([r["flops_per_token"] for r in dense], [r["nmse"] for r in dense], "o-", label="dense TopK")
    for r in dense:
        ax.annotate(f"n={r['n']}", (r["flops_per_token"], r["nmse"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    sw = [r for r in table if r["arch"] == "switch"]
    ax.plot([r["flops_per_token"] for r in sw], [r["nmse"] for r in sw], "s-", label=f"Switch, n={sw[0]['n'] if sw else ''}")
    for r in sw:
        ax.annotate(f"E={r['experts']}", (r["flops_per_token"], r["nmse"]), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs per token (encoder 2dn or 2dn/E + 2dE, + 8dk)")
    ax.set_ylabel("held-out nMSE")
    tokens = max(r["tokens"] for r in table)
    ax.set_title(f"k = 32, {tokens / 1e6:.1f}M tokens ({corpus}), SmolLM2-135M layers.20")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_curves(table: list[dict], path: Path, corpus: str) -> None:
    """Held-out nMSE along each run against the training FLOPs spent so far (tokens x FLOPs per token)."""
    def level(r: dict) -> int:  # a FLOPs-matched pair (the i-th cheapest of each arch) shares a colour
        return sorted(x["flops_per_token"] for x in table if x["arch"] == r["arch"]).index(r["flops_per_token"])

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in table:
        pts = [(t * r["flops_per_token"], loss) for t, loss in r["curve"] if t >= 100_000]
        label = f"Switch E={r['experts']}" if r["arch"] == "switch" else f"TopK n={r['n']}"
        ax.plot(*zip(*pts), "s-" if r["arch"] == "switch" else "o--", label=label, ms=3,
                color=f"C{level(r)}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training FLOPs so far (tokens x FLOPs per token)")
    ax.set_ylabel("held-out nMSE")
    ax.set_title(f"k = 32, along training ({corpus}), SmolLM2-135M", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/architectures")
    p.add_argument("--runs", nargs="+", default=list(RUNS), help="the sweeps' folders (Switch and dense TopK)")
    p.add_argument("--name", default="switch", help="file prefix: NAME_results.json, NAME_frontier.png")
    p.add_argument("--corpus", default="embedded corpus", help="the cache's corpus, for the plot's title")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = rows(args.runs)
    atomic_write_json(out / f"{args.name}_results.json", table)
    plot(table, out / f"{args.name}_frontier.png", args.corpus)
    if all(len(r["curve"]) > 1 for r in table):
        plot_curves(table, out / f"{args.name}_curves.png", args.corpus)
    print("| arch | n | E | FLOPs / token | held-out L0 | nMSE | dead | never fired |")
    print("|---|---|---|---|---|---|---|---|")
    for r in table:
        print(f"| {r['arch']} | {r['n']} | {r['experts'] or ''} | {r['flops_per_token'] / 1e6:.1f}M | {r['l0']:.1f} | "
              f"{r['nmse']:.3f} | {r['dead_frac']:.1%} | {r['never_fired_frac']:.1%} |")


if __name__ == "__main__":
    main()
