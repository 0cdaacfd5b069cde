"""`saescale cache` + `saescale train` end to end on a tiny language model: from a cache folder and streaming."""

import json
import subprocess
import sys

from tests.activations.test_cache import make_corpus

COMMON = ["--context-len", "16", "--val-fraction", "0.2", "--harvest-batch", "4"]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "saescale", *args], capture_output=True, text=True, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": "/tmp"})


def test_cache_then_train_on_the_cache_folder(tmp_path, tiny_lm_dir):
    corpus = make_corpus(tmp_path / "corpus")
    cache = tmp_path / "cache"
    r = cli("cache", "--model", str(tiny_lm_dir), "--corpus", corpus, "--n-tokens", "1200", "--cache-dir", str(cache), *COMMON)
    assert r.returncode == 0, r.stderr
    assert "verified" in r.stdout
    r = cli("train", "--acts", str(cache), "--n", "64", "--k", "4", "--tokens", "4096", "--batch-size", "256",
            "--no-progress", "--out", str(tmp_path / "run"), "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert "held-out nMSE" in r.stdout
    held = json.loads((tmp_path / "run" / "eval.json").read_text())["heldout"]
    assert held["tokens"] == 240 and held["l0"] == 4.0  # every val token once, k active
    cfg = json.loads((tmp_path / "run" / "sae" / "cfg.json").read_text())
    assert cfg["d"] == 32 and cfg["extra"]["cache"] == str(cache)


def test_train_streaming_from_the_model(tmp_path, tiny_lm_dir):
    corpus = make_corpus(tmp_path / "corpus")
    r = cli("train", "--acts", "stream", "--model", str(tiny_lm_dir), "--corpus", corpus, *COMMON,
            "--n", "64", "--k", "4", "--tokens", "2048", "--batch-size", "256", "--eval-tokens", "512",
            "--no-progress", "--out", str(tmp_path / "run"), "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert "held-out nMSE" in r.stdout
    assert json.loads((tmp_path / "run" / "sae" / "cfg.json").read_text())["extra"]["source"] == "stream"
    assert not (tmp_path / "cache").exists()


def test_bad_hook_and_missing_model_are_one_line_errors(tmp_path, tiny_lm_dir):
    corpus = make_corpus(tmp_path / "corpus", n_docs=2)
    r = cli("cache", "--model", str(tiny_lm_dir), "--corpus", corpus, "--hook", "layers.99", "--n-tokens", "500",
            "--cache-dir", str(tmp_path / "c"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "layers.99" in r.stderr and "layers.0..5" in r.stderr
    r = cli("cache", "--model", str(tmp_path / "no-model"), "--corpus", corpus, "--cache-dir", str(tmp_path / "c2"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no-model" in r.stderr
