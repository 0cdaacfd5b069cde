"""Activation cache: writer, reader, corruption handling, resume, CLI; the tiny random llama + local text."""

from __future__ import annotations

import json
import math
import random
import shutil
from itertools import islice
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import save_tiny_llama, single_thread

from saescale.activations.cache import CacheReader, build_cache, default_cache_dir
from saescale.activations.config import ActivationConfig
from saescale.activations.corpus import load_documents, tokenize_contexts
from saescale.activations.harvest import harvest_contexts
from saescale.activations.lm import load_model
from saescale.activations.manifest import locked, sha256_file
from saescale.cli import main as cli_main
from saescale.data.source import BatchSource
from saescale.errors import SaescaleError

WORDS = "the whale sea ship captain ahab white harpoon boat crew ocean wind sail deck union nation".split()


def make_corpus(folder: Path, n_docs: int = 12, n_words: int = 300) -> str:
    """``n_docs`` .txt files of random words; their comma-joined paths (a corpus spec)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    paths = []
    for i in range(n_docs):
        path = folder / f"doc{i:02d}.txt"
        path.write_text(" ".join(rng.choice(WORDS) for _ in range(n_words)))
        paths.append(str(path))
    return ",".join(paths)


def tiny_config(lm: Path, corpus: str, cache_dir: Path | str = "", **kw) -> ActivationConfig:
    """600 train + 120 val tokens of 15 per context, 64-token shards (10 + 2 shards)."""
    opts = dict(context_len=16, n_tokens=600, shard_tokens=64, harvest_batch=4, val_fraction=0.2)
    opts.update(kw)
    return ActivationConfig(model=str(lm), corpus=corpus, cache_dir=str(cache_dir), **opts)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_lm_dir):
    """(tiny model folder, corpus spec, folder of a complete cache built from them)."""
    corpus = make_corpus(tmp_path_factory.mktemp("corpus"))
    with single_thread():
        cache = build_cache(tiny_config(tiny_lm_dir, corpus), tmp_path_factory.mktemp("tiny") / "cache", progress=False)
    return tiny_lm_dir, corpus, cache


@pytest.fixture
def cache_copy(tiny, tmp_path):
    """A private copy of the tiny cache, free to damage."""
    return Path(shutil.copytree(tiny[2], tmp_path / "cache"))


def checksums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*.safetensors"))}


def test_writes_shards_manifest_and_stats(tiny):
    lm, corpus, cache = tiny
    m = json.loads((cache / "manifest.json").read_text())
    assert m["complete"] and m["hook"] == "layers.4" and m["d_model"] == 32 and m["dtype"] == "float16"
    assert m["config"]["corpus"] == corpus and m["config"]["context_len"] == 16 and m["seed"] == 0
    assert m["model_fingerprint"].startswith("folder=")
    assert [m["splits"][s]["n_tokens"] for s in ("train", "val")] == [600, math.ceil(0.2 * 600)]
    assert [len(m["splits"][s]["shards"]) for s in ("train", "val")] == [10, 2]
    for entry in m["splits"]["train"]["shards"] + m["splits"]["val"]["shards"]:
        path = cache / entry["file"]
        assert path.stat().st_size == entry["bytes"] and sha256_file(path) == entry["sha256"]
        shard = load_file(path)
        assert shard["acts"].dtype == torch.float16 and shard["acts"].shape == (entry["n_tokens"], 32)
        assert all(shard[k].dtype == torch.int32 for k in ("tokens", "doc", "pos", "ctx"))
    assert not list(cache.rglob("*.tmp"))


def test_metadata_points_at_the_right_tokens(tiny):
    lm, corpus, cache = tiny
    contexts = tokenize_contexts(load_documents(corpus), load_model(str(lm))[1], 16)
    train, val = CacheReader(cache).read_all(), CacheReader(cache, "val").read_all()
    for part in (train, val):
        assert torch.equal(contexts.tokens[part["ctx"], part["pos"]], part["tokens"])
        assert torch.equal(contexts.doc[part["ctx"]], part["doc"])
        assert int(part["pos"].min()) == 1  # position 0 (BOS) dropped by default
        assert len(set(zip(part["ctx"].tolist(), part["pos"].tolist()))) == len(part["ctx"])  # no token twice
    assert not set(train["doc"].tolist()) & set(val["doc"].tolist())  # split by document


def live_acts(lm: Path, corpus: str, ctx: torch.Tensor, keep_first: bool = False, prepend_bos: bool = True) -> torch.Tensor:
    """Float32 activations at layers.4 for contexts ``ctx`` (C,), harvested live in batches of 4 (as the tiny caches do)."""
    model, tokenizer = load_model(str(lm))
    tokens = tokenize_contexts(load_documents(corpus), tokenizer, 16, prepend_bos).tokens[ctx]
    return torch.cat([harvest_contexts(model, "layers.4", tokens[i : i + 4], keep_first) for i in range(0, len(ctx), 4)])


def test_acts_equal_live_harvest_after_rounding(tiny):
    got = CacheReader(tiny[2]).read_all()
    live = live_acts(tiny[0], tiny[1], got["ctx"][::15])  # 15 kept positions per context, in harvest order
    assert torch.equal(got["acts"], live[:600].to(torch.float16).float())


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_other_dtypes_keep_first_no_bos(tiny, tmp_path, dtype):
    cfg = tiny_config(tiny[0], tiny[1], n_tokens=160, cache_dtype=dtype, keep_first=True, prepend_bos=False)
    reader = CacheReader(build_cache(cfg, tmp_path / dtype, progress=False))
    got = reader.read_all()
    assert reader.dtype == getattr(torch, dtype) and got["pos"][:16].tolist() == list(range(16))
    live = live_acts(tiny[0], tiny[1], got["ctx"][::16], keep_first=True, prepend_bos=False)
    assert torch.equal(got["acts"], live.to(reader.dtype).float())
    assert next(reader.batches(32)).shape == (32, 32) and reader.sample(20).dtype == torch.float32


def test_stats_are_float64_moments_of_train_split(tiny):
    reader = CacheReader(tiny[2])
    x = reader.read_all()["acts"].double()
    stats, channel = reader.stats, reader.channel_stats()
    assert stats["n_tokens"] == 600
    assert stats["mean_sq_norm"] == pytest.approx((x * x).sum(1).mean().item(), rel=1e-12)
    assert stats["mean_norm"] == pytest.approx(x.norm(dim=1).mean().item(), rel=1e-12)
    assert torch.allclose(channel["mean"], x.mean(0), rtol=1e-12, atol=1e-15)
    assert torch.allclose(channel["var"], x.var(0, unbiased=False), rtol=1e-9, atol=1e-15)
    assert stats["centered_mean_sq_norm"] == pytest.approx(((x - x.mean(0)) ** 2).sum(1).mean().item(), rel=1e-9)


def test_rerun_on_complete_cache_does_nothing(tiny, capsys):
    lm, corpus, cache = tiny
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
    lines = []
    assert build_cache(tiny_config(lm, corpus), cache, log=lines.append) == cache
    assert "nothing to do" in "\n".join(lines) and capsys.readouterr().out == ""  # the library prints nothing
    assert before == {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}


def test_batches_deterministic_and_start_skips_exactly(tiny):
    reader = CacheReader(tiny[2], seed=3)
    assert isinstance(reader, BatchSource)  # what the trainer consumes
    for bs in (50, 64, 1000):  # divides an epoch / spans windows / spans epochs
        ref = list(islice(reader.batches(bs), 14))
        assert all(b.shape == (bs, 32) and b.dtype == torch.float32 for b in ref)
        assert all(torch.equal(a, b) for a, b in zip(ref, islice(CacheReader(tiny[2], seed=3).batches(bs), 14)))
        for start in (1, 5, 11):
            got = list(islice(reader.batches(bs, start=start), 14 - start))
            assert all(torch.equal(a, b) for a, b in zip(got, ref[start:]))
    assert not torch.equal(next(CacheReader(tiny[2], seed=4).batches(50)), next(reader.batches(50)))


def test_every_token_once_per_epoch_in_new_order(tiny):
    reader = CacheReader(tiny[2], buffer_shards=3)
    rows = lambda x: sorted(map(tuple, x.tolist()))  # noqa: E731
    everything = rows(reader.read_all()["acts"])
    epochs = list(islice(reader.batches(40), 30))  # 600 / 40 = 15 batches per epoch
    first, second = torch.cat(epochs[:15]), torch.cat(epochs[15:])
    assert rows(first) == everything and rows(second) == everything
    assert not torch.equal(first, second)


def test_memory_is_bounded_by_the_window(tiny):
    for k in (1, 2, 4):
        reader = CacheReader(tiny[2], buffer_shards=k)
        for _ in islice(reader.batches(48), 40):  # 3+ epochs
            pass
        assert 0 < reader.max_buffer_tokens <= k * 64
    skipper = CacheReader(tiny[2], buffer_shards=2)
    next(skipper.batches(50, start=10**6))  # jumping far ahead loads one window only
    assert skipper.max_buffer_tokens <= 128


def test_sample_and_read_all(tiny):
    reader = CacheReader(tiny[2])
    everything = reader.read_all()
    sample = reader.sample(100, seed=1)
    assert sample.shape == (100, 32) and torch.equal(sample, reader.sample(100, seed=1))
    known = set(map(tuple, everything["acts"].tolist()))
    assert all(tuple(row) in known for row in sample.tolist())
    assert len(set(map(tuple, sample.tolist()))) == 100
    head = reader.read_all(max_tokens=100)
    assert all(torch.equal(head[k], everything[k][:100]) for k in everything)
    with pytest.raises(SaescaleError, match="cannot sample"):
        reader.sample(601)


def test_truncated_shard_is_reported_then_repaired(cache_copy, tiny):
    shard = cache_copy / "train" / "shard_00003.safetensors"
    good = checksums(cache_copy)
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(SaescaleError, match=r"shard_00003.*truncated.*saescale cache"):
        CacheReader(cache_copy)
    assert (cache_copy / "train" / "shard_00002.safetensors").exists()
    build_cache(tiny_config(tiny[0], tiny[1]), cache_copy, progress=False)
    assert checksums(cache_copy) == good


def test_corrupted_byte_found_by_verify_and_repaired(cache_copy, tiny):
    shard = cache_copy / "train" / "shard_00007.safetensors"
    good = checksums(cache_copy)
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(SaescaleError, match=r"shard_00007.*sha256.*saescale cache"):
        CacheReader(cache_copy)  # sizes and header look fine; opening checks the sha256 too
    assert cli_main(["cache", "--model", str(tiny[0]), "--corpus", tiny[1], "--context-len", "16", "--n-tokens", "600",
                     "--shard-tokens", "64", "--val-fraction", "0.2", "--cache-dir", str(cache_copy)]) == 0
    assert checksums(cache_copy) == good


@pytest.mark.parametrize("damage", ["missing manifest", "corrupt manifest", "missing shard", "bad header"])
def test_damage_gives_one_line_error_and_keeps_files(cache_copy, damage):
    manifest, shard = cache_copy / "manifest.json", cache_copy / "val" / "shard_00001.safetensors"
    if damage == "missing manifest":
        manifest.unlink()
    elif damage == "corrupt manifest":
        manifest.write_text(manifest.read_text()[:200])
    elif damage == "missing shard":
        shard.unlink()
    else:
        shard.write_bytes(b"\xff" * shard.stat().st_size)
    before = checksums(cache_copy)
    with pytest.raises(SaescaleError) as err:
        CacheReader(cache_copy, "val")
    msg = str(err.value)
    assert "\n" not in msg and "saescale cache" in msg
    assert ("manifest.json" in msg) if "manifest" in damage else ("shard_00001" in msg)
    assert checksums(cache_copy) == before


def test_config_mismatch_never_overwrites(cache_copy, tiny, tmp_path):
    lm, corpus, _ = tiny
    before = {p: p.stat().st_mtime_ns for p in cache_copy.rglob("*") if p.is_file()}
    other_lm = save_tiny_llama(tmp_path / "other", seed=1)
    for cfg, needle in [
        (tiny_config(lm, corpus, context_len=32), "--context-len"),
        (tiny_config(lm, corpus, keep_first=True), "--keep-first"),
        (tiny_config(lm, corpus, hook="layers.1"), "hook"),
        (tiny_config(other_lm, corpus), "model"),
    ]:
        with pytest.raises(SaescaleError, match=needle):
            build_cache(cfg, cache_copy, progress=False)
    assert before == {p: p.stat().st_mtime_ns for p in cache_copy.rglob("*") if p.is_file()}
    stranger = tmp_path / "mine"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("keep me")
    with pytest.raises(SaescaleError, match="not an activation cache"):
        build_cache(tiny_config(lm, corpus), stranger, progress=False)
    assert (stranger / "notes.txt").read_text() == "keep me"


def test_second_writer_is_refused(cache_copy, tiny):
    with locked(cache_copy):
        with pytest.raises(SaescaleError, match="another process is writing"):
            build_cache(tiny_config(tiny[0], tiny[1]), cache_copy, progress=False)


def test_resume_from_partial_cache_is_identical(cache_copy, tiny):
    good = checksums(cache_copy)
    manifest = json.loads((cache_copy / "manifest.json").read_text())
    for entry in manifest["splits"]["train"]["shards"][6:] + manifest["splits"]["val"]["shards"]:
        (cache_copy / entry["file"]).unlink()
    manifest["splits"]["train"]["shards"][6:] = [None] * 4
    manifest["splits"]["val"]["shards"] = [None, None]
    manifest["complete"], manifest["stats"] = False, None
    (cache_copy / "manifest.json").write_text(json.dumps(manifest))
    (cache_copy / "stats.safetensors").unlink()
    leftover = cache_copy / "train" / ".shard_00006.safetensors.x1y2.tmp"
    leftover.write_bytes(b"half a shard")
    with pytest.raises(SaescaleError, match="incomplete"):
        CacheReader(cache_copy)
    build_cache(tiny_config(tiny[0], tiny[1]), cache_copy, progress=False)
    assert checksums(cache_copy) == good and not leftover.exists()
    assert json.loads((cache_copy / "manifest.json").read_text())["stats"] == CacheReader(tiny[2]).stats


def test_small_corpus_caches_what_there_is_and_warns(tiny, tmp_path, capsys):
    corpus = make_corpus(tmp_path / "small", n_docs=3, n_words=60)
    cfg = tiny_config(tiny[0], corpus, n_tokens=5_000, val_fraction=0.34)
    cache = build_cache(cfg, tmp_path / "big", progress=False)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and "train tokens" in warnings[0] and "val tokens" in warnings[1]
    for split in ("train", "val"):
        reader = CacheReader(cache, split)
        assert reader.n_tokens == reader.manifest["splits"][split]["n_contexts"] * 15  # every context once
        everything = reader.read_all()
        assert len(set(zip(everything["ctx"].tolist(), everything["pos"].tolist()))) == reader.n_tokens  # no cycling
    assert CacheReader(cache).n_tokens < 5_000


def test_default_cache_dir_names_the_options(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("SAESCALE_HOME", str(tmp_path / "home"))
    lm, corpus, _ = tiny
    path = default_cache_dir(tiny_config(lm, corpus))
    assert path.parent == tmp_path / "home" / "acts"
    assert path.name.startswith(f"{lm.name}-auto-doc00.txt+11-ctx16-600-float16-")
    assert default_cache_dir(tiny_config(lm, corpus, keep_first=True)) != path
    assert default_cache_dir(tiny_config(lm, corpus, harvest_batch=8)) == path


def test_cli_prints_summary_and_one_line_errors(tiny, capsys):
    lm, corpus, cache = tiny
    args = ["--model", str(lm), "--corpus", corpus, "--context-len", "16", "--n-tokens", "600",
            "--shard-tokens", "64", "--val-fraction", "0.2", "--cache-dir", str(cache)]
    assert cli_main(["cache", *args]) == 0
    out = capsys.readouterr().out
    assert "600 train + 120 val tokens" in out and "verified" in out
    assert cli_main(["cache", *args[:-4], "--n-tokens", "700", "--cache-dir", str(cache)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--n-tokens" in err and err.count("\n") == 1


@pytest.mark.real
def test_real_model_cache_matches_live_harvest(real_model, tmp_path):
    """2 train + 1 val contexts of the default corpus at the default hook, read back bit for bit."""
    model, tokenizer = real_model
    cfg = ActivationConfig(n_tokens=2 * 63, harvest_batch=4, val_fraction=0.05)
    cache = build_cache(cfg, tmp_path / "real", progress=False, lm=real_model)
    reader = CacheReader(cache)
    got = reader.read_all()
    assert reader.d == 576 and reader.manifest["hook"] == "layers.20" and reader.n_tokens == 126
    contexts = torch.cat([torch.full((2, 1), tokenizer.bos_token_id), got["tokens"].view(2, 63)], dim=1)
    live = harvest_contexts(model, "layers.20", contexts, False)  # the same single forward batch
    assert torch.equal(got["acts"], live.to(torch.float16).float())
