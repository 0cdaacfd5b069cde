"""Shared by the dashboard tests: a tiny cache + SAE on the tiny llama, a dashboard built from them, and a
headless Chromium (or a skip that says what is missing and how to install it)."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest
import torch

from saescale.activations.cache import build_cache
from saescale.activations.config import ActivationConfig
from saescale.configs import config_to_dict
from saescale.sae.config import SAEConfig
from saescale.sae.io import save_sae
from saescale.sae.registry import build_sae

WORDS = ["alpha", "beta", "gamma", "delta", "river", "stone", "cloud", "seven", "eight", "nine", "red", "green", "blue", "the", "of", "and", "quick", "brown", "fox", "jumps", "over", "lazy", "dog"]


def write_corpus(path: Path, n_docs: int = 60, words: int = 40, seed: int = 0) -> str:
    """A JSONL corpus of ``n_docs`` documents of random words (titles t0, t1, ...)."""
    rng = random.Random(seed)
    rows = [{"text": " ".join(rng.choice(WORDS) for _ in range(words)), "title": f"t{i}"} for i in range(n_docs)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return str(path)


def tiny_setup(root: Path, lm_dir: Path, lm=None, n: int = 64, k: int = 4, n_tokens: int = 3007,
               shard_tokens: int = 1000) -> tuple[Path, Path]:
    """(SAE folder, cache folder): a cache of the tiny llama at its default hook (several shards, so contexts
    span shard boundaries) and a random TopK SAE (layernorm input) that records it like a trained one."""
    acts = ActivationConfig(model=str(lm_dir), corpus=write_corpus(root / "corpus.jsonl"), context_len=16,
                            n_tokens=n_tokens, shard_tokens=shard_tokens, val_fraction=0.2,
                            cache_dir=str(root / "cache"))
    cache = build_cache(acts, lm=lm)
    hook = json.loads((cache / "manifest.json").read_text())["hook"]
    torch.manual_seed(0)
    sae = build_sae(SAEConfig(arch="topk", n=n, k=k, d=32, normalize="layernorm"))
    with torch.no_grad():  # random unit decoder rows, tied encoder: distinct, continuous activations
        sae.W_dec.copy_(torch.nn.functional.normalize(torch.randn(n, 32), dim=1))
        sae.W_enc.copy_(sae.W_dec)
        sae.b_enc.copy_(0.05 * torch.randn(n))
    record = dict(config_to_dict(acts), hook=hook)
    record.pop("cache_dir", None)
    sae_dir = save_sae(sae, root / "run" / "sae", extra={"source": "cache", "activations": record, "cache": str(cache)})
    return sae_dir, cache


def artifacts_dir(tmp_path: Path) -> Path:
    """Where screenshots go: $SAESCALE_TEST_ARTIFACTS when set (kept after the run), else the test's tmp folder."""
    root = os.environ.get("SAESCALE_TEST_ARTIFACTS")
    out = Path(root) / "dashboard" if root else tmp_path / "artifacts"
    out.mkdir(parents=True, exist_ok=True)
    return out


INSTALL = ("install them with `apt-get install -y chromium chromium-driver` (Debian) and "
           "`pip install selenium` (or run `make test`, which does both)")


def chrome_driver(width: int = 1280, height: int = 1000):
    """A headless Chromium under selenium, or pytest.skip naming what is missing and how to install it."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip(f"the browser tests need the selenium package: {INSTALL}")
    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    driver = shutil.which("chromedriver") or next((p for p in ("/usr/lib/chromium/chromedriver",) if Path(p).is_file()), None)
    if browser is None or driver is None:
        missing = " and ".join(m for m, have in (("chromium", browser), ("chromedriver", driver)) if not have)
        pytest.skip(f"the browser tests need {missing}: {INSTALL}")
    opts = Options()
    opts.binary_location = browser
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              f"--window-size={width},{height}", "--allow-file-access-from-files"):
        opts.add_argument(a)
    try:
        return webdriver.Chrome(options=opts, service=Service(driver))
    except Exception as e:  # noqa: BLE001 - a browser that cannot start is a missing browser here
        pytest.skip(f"headless chromium did not start ({str(e).splitlines()[0][:200]}): {INSTALL}")
