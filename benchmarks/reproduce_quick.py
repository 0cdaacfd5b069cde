"""Wall time of ``saescale reproduce --quick`` from scratch (issue 20: <= 15 min on 2 CPU cores).

Usage: python benchmarks/reproduce_quick.py [--keep-caches]

Runs the quick reproduction into a temporary report and work folder and prints its wall time and the
load average before and after. By default the two activation caches it needs (30k SmolLM2 and 12k
Gemma-3 tokens of the embedded corpus, under $SAESCALE_HOME/acts) are moved aside first, so the harvest
is timed as on a fresh machine, and put back afterwards; the converted models are reused (converting them
is ``make``'s one-time set-up).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from saescale.activations.config import ActivationConfig
from saescale.activations.manifest import default_cache_dir
from saescale.reproduce.profiles import QUICK


def quick_caches() -> list[Path]:
    return [default_cache_dir(ActivationConfig(model=m, corpus=QUICK.corpus, n_tokens=t)) for m, t in QUICK.cache_tokens.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep-caches", action="store_true", help="reuse existing activation caches (time training and eval only)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        aside = []
        if not args.keep_caches:
            for c in quick_caches():
                if c.exists():
                    aside.append((c, Path(tmp) / c.name))
                    shutil.move(str(c), str(aside[-1][1]))
        try:
            load0 = os.getloadavg()
            t0 = time.perf_counter()
            cmd = [sys.executable, "-m", "saescale", "reproduce", "--quick", "--no-progress", "--out", f"{tmp}/out",
                   "--work", f"{tmp}/work"]
            run = subprocess.run(cmd, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            load1 = os.getloadavg()
        finally:
            for c, moved in aside:
                if c.exists():
                    shutil.rmtree(moved)
                else:
                    shutil.move(str(moved), str(c))
        if run.returncode != 0:
            sys.exit(f"saescale reproduce --quick failed:\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}")
        verdicts = [line for line in run.stdout.splitlines() if line.split()[:1] and line.split()[0] in
                    ("frontier", "dead", "scaling", "progressive", "quality", "refine")]
        print("\n".join(verdicts))
        print(f"load average before {load0[0]:.1f}, after {load1[0]:.1f}; caches {'reused' if args.keep_caches else 'harvested'}")
        print(f"reproduce --quick: {wall / 60:.1f} min (target <= 15 min on 2 CPU cores)")


if __name__ == "__main__":
    main()
