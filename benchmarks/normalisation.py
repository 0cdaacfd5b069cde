"""The four input normalisations compared where they can be: ΔCE and KL at equal L0 on the default
model (nMSE is measured in each normalisation's own space, so it cannot compare them), and planted-
dictionary recovery on data with a dataset-wide mean offset.

    python benchmarks/normalisation.py [--tokens 400000] [--only real|synthetic]

Real: TopK n = 4096, k = 32 (L0 = 32 for every normalisation) on the default model's default hook
(the main job's 40k-token cache), then ``saescale eval --metrics recon,downstream``. Synthetic: the
planted dictionary of ``--acts synthetic`` plus a constant offset of norm 0 and 5 (a token's own
part has norm ~2.5), n = 256 (one latent per planted feature), k = 8, batch 1024, lr 1e-2, 1M tokens (the
settings of the recovery test in tests/train/test_train_synthetic.py); mean-max cosine and features recovered at >= 0.9.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from saescale.activations.cache import CacheReader, build_cache
from saescale.activations.config import ActivationConfig
from saescale.activations.sources import cache_provenance
from saescale.cli import main as cli
from saescale.data.synthetic import SyntheticConfig, SyntheticSource, feature_recovery
from saescale.sae.config import SAEConfig
from saescale.train.config import TrainConfig
from saescale.train.run import train_sae

KINDS = ("layernorm", "std", "mean_sq", "none")


def real(tokens: int, out: Path) -> list[str]:
    path = build_cache(ActivationConfig(n_tokens=40_000))
    train = CacheReader(path, "train", 0)
    rows = []
    for kind in KINDS:
        t0 = time.perf_counter()
        train_sae(SAEConfig(n=4096, k=32, normalize=kind), TrainConfig(tokens=tokens, progress=False), train,
                  out / kind, cache_provenance(train))
        assert cli(["eval", str(out / kind / "sae"), "--metrics", "recon,downstream", "--threads", "2"]) == 0
        m = json.loads((out / kind / "metrics.json").read_text())["metrics"]
        d, r = m["downstream"], m["recon"]
        rows.append(f"| {kind} | {r['l0']:.1f} | {r['nmse']:.4f} | {d['delta_ce_sae']:.4f} | {d['kl_sae']:.4f} | "
                    f"{d['loss_recovered_vs_zero']:.4f} |")
        print(rows[-1], f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return ["| normalisation | L0 | nMSE (own space) | ΔCE (nats) | KL (nats) | loss recovered vs zero |",
            "|---|---|---|---|---|---|", *rows]


def synthetic() -> list[str]:
    rows = []
    for offset in (0.0, 5.0):
        src = SyntheticSource(SyntheticConfig(offset=offset))
        for kind in KINDS:
            cfg = TrainConfig(tokens=1_000_000, batch_size=1024, lr=1e-2, progress=False)
            sae = train_sae(SAEConfig(n=256, k=8, normalize=kind), cfg, src).sae
            mmc, frac = feature_recovery(sae.W_dec.detach(), src.features)
            rows.append(f"| {offset:g} | {kind} | {mmc:.3f} | {frac:.1%} |")
            print(rows[-1], flush=True)
    return ["| offset norm | normalisation | mean-max cos | recovered (cos >= 0.9) |", "|---|---|---|---|", *rows]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=400_000)
    p.add_argument("--only", choices=["real", "synthetic"])
    a = p.parse_args()
    tables = []
    with tempfile.TemporaryDirectory() as tmp:
        if a.only != "synthetic":
            tables.append(real(a.tokens, Path(tmp)))
        if a.only != "real":
            tables.append(synthetic())
    for t in tables:
        print("\n" + "\n".join(t))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
