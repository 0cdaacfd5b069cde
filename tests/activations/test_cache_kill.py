"""SIGKILL a real ``saescale cache`` process mid-way, rerun it, and get exactly the uninterrupted cache."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tests.activations.test_cache import checksums, make_corpus, tiny_config

from saescale.activations.cache import CacheReader, build_cache

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]
OPTS = dict(n_tokens=3000, shard_tokens=30, val_fraction=0.25)  # 100 train + 25 val shards


def cli(cfg) -> list[str]:
    """The ``saescale cache`` command line for ``cfg``."""
    args = [sys.executable, "-m", "saescale", "cache"]
    for key in ("model", "corpus", "context_len", "n_tokens", "shard_tokens", "harvest_batch", "val_fraction", "cache_dir"):
        args += [f"--{key.replace('_', '-')}", str(getattr(cfg, key))]
    return args


def start_and_kill(cmd: list[str], cache: Path, rng: random.Random) -> int:
    """Start ``cmd``; once it has written a random number of train shards, SIGKILL it; its return code."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = rng.randint(2, 40)
    try:
        while proc.poll() is None:  # bounded by the process, not the clock
            if len(list((cache / "train").glob("shard_*.safetensors"))) >= target:
                time.sleep(rng.uniform(0, 0.01))  # land anywhere inside the next shard's write
                break
            time.sleep(0.002)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return proc.returncode


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0])
def test_sigkill_then_rerun_equals_uninterrupted(tmp_path, tiny_lm_dir, seed):
    lm, corpus = tiny_lm_dir, make_corpus(tmp_path / "corpus", n_docs=8)
    ref = build_cache(tiny_config(lm, corpus, **OPTS), tmp_path / "ref", progress=False)
    cfg = tiny_config(lm, corpus, tmp_path / "killed", **OPTS)
    killed = Path(cfg.cache_dir)

    assert start_and_kill(cli(cfg), killed, random.Random(seed)) == -signal.SIGKILL
    manifest = json.loads((killed / "manifest.json").read_text())
    assert not manifest["complete"] and any(manifest["splits"]["train"]["shards"])

    rerun = subprocess.run(cli(cfg), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "verified" in rerun.stdout
    assert checksums(killed) == checksums(ref)
    assert json.loads((killed / "manifest.json").read_text()) == json.loads((ref / "manifest.json").read_text())
    assert not list(killed.rglob("*.tmp"))
    for split in ("train", "val"):
        reader = CacheReader(killed, split)
        reader.verify()
        assert torch.equal(reader.read_all()["acts"], CacheReader(ref, split).read_all()["acts"])
