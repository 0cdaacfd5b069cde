"""Opening a cache checks every shard's sha256 once, then only files changed since (issue 14).

Before: training on a cache checked sizes and headers only, so a shard whose values were changed
but kept the same size trained silently."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import single_thread

from saescale.activations import manifest as manifest_module
from saescale.activations.cache import CacheReader, build_cache
from saescale.activations.manifest import VERIFIED, open_shard
from saescale.cli import main as cli_main
from saescale.errors import SaescaleError
from tests.activations.test_cache import make_corpus, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_lm_dir):
    """(tiny model folder, corpus spec, folder of a complete cache: 10 train + 2 val shards) never opened for reading."""
    corpus = make_corpus(tmp_path_factory.mktemp("corpus"))
    with single_thread():
        cache = build_cache(tiny_config(tiny_lm_dir, corpus), tmp_path_factory.mktemp("built") / "cache", progress=False)
    assert not (cache / VERIFIED).exists()  # building writes no verified.json: the first reader hashes it all
    return tiny_lm_dir, corpus, cache


@pytest.fixture
def cache(built, tmp_path):
    """A private copy of the cache, free to damage."""
    return Path(shutil.copytree(built[2], tmp_path / "cache"))


@pytest.fixture
def hashed(monkeypatch):
    """The files whose sha256 the code computes, in order (the real hash, counted)."""
    files: list[str] = []
    real = manifest_module.sha256_file

    def counting(path: Path) -> str:
        files.append(f"{path.parent.name}/{path.name}")
        return real(path)

    monkeypatch.setattr(manifest_module, "sha256_file", counting)
    return files


def flip_value(shard: Path) -> None:
    """Change one activation value of ``shard`` in place: same size, valid header, other contents."""
    acts = open_shard(shard)["acts"]
    offset = acts.offset + 5 * acts.strides[0]
    del acts
    data = bytearray(shard.read_bytes())
    data[offset] ^= 0x40
    shard.write_bytes(bytes(data))


def test_first_open_hashes_every_file_once_and_later_opens_none(cache, hashed):
    CacheReader(cache, "train")
    assert sorted(hashed) == sorted([f"train/shard_{i:05d}.safetensors" for i in range(10)] + ["cache/stats.safetensors"])
    record = json.loads((cache / VERIFIED).read_text())
    assert record["format"] == 1 and len(record["files"]) == 11
    entry = record["files"]["train/shard_00000.safetensors"]
    stat = (cache / "train" / "shard_00000.safetensors").stat()
    assert entry["bytes"] == stat.st_size and entry["mtime_ns"] == stat.st_mtime_ns
    hashed.clear()
    assert CacheReader(cache, "val").hashed == 2 and hashed == ["val/shard_00000.safetensors", "val/shard_00001.safetensors"]
    sidecar = (cache / VERIFIED).read_bytes()
    hashed.clear()
    for split in ("train", "val", "train"):
        assert CacheReader(cache, split).hashed == 0
    assert hashed == [] and (cache / VERIFIED).read_bytes() == sidecar  # not rewritten either


@pytest.mark.parametrize("restore_mtime", [False, True])
def test_changed_value_of_the_same_size_is_refused(cache, hashed, restore_mtime):
    CacheReader(cache, "train")  # verified once
    shard = cache / "train" / "shard_00004.safetensors"
    before = shard.stat()
    flip_value(shard)
    if restore_mtime:  # size and mtime as verified: the ctime still tells
        os.utime(shard, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert shard.stat().st_size == before.st_size
    hashed.clear()
    with pytest.raises(SaescaleError) as err:
        CacheReader(cache, "train")
    msg = str(err.value)
    assert msg == (f"cache shard {shard} fails its sha256 checksum (its contents changed since the cache was built); "
                   "run 'saescale cache' with the same options to rebuild damaged shards")
    assert hashed == ["train/shard_00004.safetensors"]  # only the changed file was read


def test_training_on_a_damaged_cache_is_refused(cache, tmp_path, capsys):
    """Never opened before (no verified.json): the first use hashes every shard."""
    flip_value(cache / "val" / "shard_00001.safetensors")
    args = ["train", "--acts", str(cache), "--n", "64", "--k", "4", "--tokens", "256", "--batch-size", "64",
            "--init-tokens", "64", "--out", str(tmp_path / "run"), "--no-progress", "--threads", "1"]
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cache shard ") and "val/shard_00001.safetensors fails its sha256" in err
    assert "rebuild damaged shards" in err and err.count("\n") == 1
    assert not (tmp_path / "run" / "sae").exists()


def test_saescale_cache_repairs_and_the_next_open_hashes_only_the_rebuilt_files(cache, built, hashed, capsys):
    CacheReader(cache, "train")
    flip_value(cache / "train" / "shard_00002.safetensors")
    lm, corpus, _ = built
    assert cli_main(["cache", "--model", str(lm), "--corpus", corpus, "--context-len", "16", "--n-tokens", "600",
                     "--shard-tokens", "64", "--harvest-batch", "4", "--val-fraction", "0.2",
                     "--cache-dir", str(cache)]) == 0
    capsys.readouterr()
    hashed.clear()
    assert CacheReader(cache, "train").hashed == 2
    assert sorted(hashed) == ["cache/stats.safetensors", "train/shard_00002.safetensors"]  # stats are recomputed too


def test_read_only_cache_is_verified_on_every_open_without_a_record(cache, hashed, monkeypatch, capsys):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("saescale.atomic.tempfile.mkstemp", read_only)
    for _ in range(2):
        hashed.clear()
        assert CacheReader(cache, "train").hashed == 11 and len(hashed) == 11
    assert not (cache / VERIFIED).exists()
    assert capsys.readouterr().err == ""


def test_unreadable_record_is_rebuilt(cache, hashed):
    (cache / VERIFIED).write_bytes(b"\xff{not json")
    assert CacheReader(cache, "val").hashed == 3
    assert len(json.loads((cache / VERIFIED).read_text())["files"]) == 3
