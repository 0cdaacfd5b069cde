"""--model-dtype: the probe behind 'auto', the option's checks, bf16 harvests, manifests and cache reuse."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from conftest import single_thread
from test_cache import make_corpus, tiny_config

from saescale.activations.cache import CacheReader, build_cache, default_cache_dir
from saescale.activations.config import ActivationConfig
from saescale.activations.harvest import harvest_contexts
from saescale.activations.hooks import default_hook
from saescale.activations.lm import load_model
from saescale.activations.lm_text import in_dtype
from saescale.activations.manifest import IDENTITY, MANIFEST, read_header, read_manifest, sha256_file
from saescale.activations.precision import (
    FORCE_ENV, cpu_has_fast_bf16, cuda_has_fast_bf16, fast_bf16, resolve_model_dtype,
)
from saescale.activations.sources import activation_sources, cache_provenance
from saescale.cli import main as cli_main
from saescale.data.synthetic import SyntheticConfig
from saescale.errors import SaescaleError

pytestmark = pytest.mark.usefixtures("one_thread")

AVX2 = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma f16c\nbugs\t\t: sysret_ss_attrs\n"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def test_probe_reads_cpu_flags():
    assert not cpu_has_fast_bf16(AVX2)
    assert cpu_has_fast_bf16(AVX2.replace("avx2", "avx2 avx512f avx512_bf16"))
    assert cpu_has_fast_bf16(AVX2.replace("avx2", "avx2 amx_tile amx_bf16"))
    assert not cpu_has_fast_bf16(AVX2.replace("avx2", "avx2 avx512_bf16x"))  # whole flag names only
    assert not cpu_has_fast_bf16("bugs: avx512_bf16\n")  # only the flags line counts


def test_probe_reads_cuda_capability():
    assert cuda_has_fast_bf16((8, 0)) and cuda_has_fast_bf16((9, 0)) and cuda_has_fast_bf16((8, 6))
    assert not cuda_has_fast_bf16((7, 5)) and not cuda_has_fast_bf16((6, 1))


def test_auto_follows_the_forced_probe_both_ways(monkeypatch):
    monkeypatch.setenv(FORCE_ENV, "1")
    assert fast_bf16() and resolve_model_dtype("auto") == "bfloat16"
    assert resolve_model_dtype("float32") == "float32"  # an explicit choice is never overridden
    monkeypatch.setenv(FORCE_ENV, "0")
    assert not fast_bf16() and resolve_model_dtype("auto") == "float32"
    assert resolve_model_dtype("bfloat16") == "bfloat16"
    monkeypatch.setenv(FORCE_ENV, "yes")
    with pytest.raises(SaescaleError, match=FORCE_ENV):
        resolve_model_dtype("auto")


def test_unforced_auto_is_the_hardware_answer(monkeypatch):
    monkeypatch.delenv(FORCE_ENV, raising=False)
    want = cpu_has_fast_bf16(Path("/proc/cpuinfo").read_text()) if Path("/proc/cpuinfo").is_file() else False
    assert resolve_model_dtype("auto") == ("bfloat16" if want else "float32")


def test_option_is_validated(capsys):
    with pytest.raises(SaescaleError, match="--model-dtype"):
        ActivationConfig(model_dtype="float16")
    assert cli_main(["cache", "--model-dtype", "float16"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "float16" in err and err.count("\n") == 1


def test_bf16_harvest_records_bfloat16_and_stores_cache_dtype(tiny_lm_dir, corpus, tmp_path, monkeypatch):
    monkeypatch.setenv(FORCE_ENV, "1")  # 'auto' must resolve to bfloat16 and be recorded as such
    cfg = tiny_config(tiny_lm_dir, corpus, cache_dtype="float32")
    assert cfg.model_dtype == "auto"
    with single_thread():
        cache = build_cache(cfg, tmp_path / "bf16", progress=False)
    manifest = read_manifest(cache)
    assert manifest["config"]["model_dtype"] == "bfloat16" and manifest["dtype"] == "float32"
    table, _ = read_header(cache / manifest["splits"]["train"]["shards"][0]["file"])
    assert table["acts"]["dtype"] == "F32"
    got = CacheReader(cache, "train").read_all()
    model32, tokenizer = load_model(str(tiny_lm_dir))
    model16 = in_dtype(model32, torch.bfloat16)
    assert next(model32.parameters()).dtype == torch.float32  # the caller's model is not cast
    bos = torch.full((4, 1), tokenizer.bos_token_id)
    contexts = torch.cat([bos, got["tokens"][:60].view(4, 15)], dim=1)  # the first forward batch (4 contexts)
    hook = default_hook(model32)
    live16 = harvest_contexts(model16, hook, contexts, False)
    live32 = harvest_contexts(model32, hook, contexts, False)
    assert torch.equal(got["acts"][:60], live16)  # the bf16 model's values, widened exactly
    assert not torch.allclose(got["acts"][:60], live32, rtol=1e-4, atol=1e-5)  # it really ran in bf16


def test_bf16_model_into_float16_cache(tiny_lm_dir, corpus, tmp_path):
    cfg = tiny_config(tiny_lm_dir, corpus, model_dtype="bfloat16", n_tokens=120, shard_tokens=60)
    with single_thread():
        cache = build_cache(cfg, tmp_path / "c", progress=False)
    reader = CacheReader(cache)
    assert reader.dtype == torch.float16 and reader.manifest["config"]["model_dtype"] == "bfloat16"
    assert cache_provenance(reader)["activations"]["model_dtype"] == "bfloat16"


def test_fp32_cache_is_not_reused_for_bf16(tiny_lm_dir, corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("SAESCALE_HOME", str(tmp_path / "home"))
    fp32 = tiny_config(tiny_lm_dir, corpus, model_dtype="float32", n_tokens=120, shard_tokens=60)
    bf16 = tiny_config(tiny_lm_dir, corpus, model_dtype="bfloat16", n_tokens=120, shard_tokens=60)
    with single_thread():
        cache = build_cache(fp32, tmp_path / "c", progress=False)
    before = {p.name: sha256_file(p) for p in cache.rglob("*.safetensors")}
    with pytest.raises(SaescaleError, match="built with a float32 model, not bfloat16") as e:
        build_cache(bf16, cache, progress=False)
    assert "\n" not in str(e.value)
    assert {p.name: sha256_file(p) for p in cache.rglob("*.safetensors")} == before  # nothing overwritten
    # at the default location the two are different caches; the float32 folder is the one older code named
    assert default_cache_dir(bf16) != default_cache_dir(fp32)
    old_ident = json.dumps({k: getattr(fp32, k) for k in ("model", "hook", *IDENTITY)}, sort_keys=True)
    assert default_cache_dir(fp32).name.endswith(hashlib.sha256(old_ident.encode()).hexdigest()[:8])
    monkeypatch.setenv(FORCE_ENV, "1")  # auto on a fast-bf16 machine means bf16: refused too
    with pytest.raises(SaescaleError, match="not bfloat16"):
        build_cache(tiny_config(tiny_lm_dir, corpus, n_tokens=120, shard_tokens=60), cache, progress=False)


def test_cache_without_recorded_dtype_counts_as_float32(tiny_lm_dir, corpus, tmp_path, capsys):
    fp32 = tiny_config(tiny_lm_dir, corpus, model_dtype="float32", n_tokens=120, shard_tokens=60)
    with single_thread():
        cache = build_cache(fp32, tmp_path / "c", progress=False)
    manifest = json.loads((cache / MANIFEST).read_text())
    del manifest["config"]["model_dtype"]  # as written before the option existed
    (cache / MANIFEST).write_text(json.dumps(manifest))
    build_cache(fp32, cache, progress=False, log=print)
    assert "nothing to do" in capsys.readouterr().out
    assert cache_provenance(CacheReader(cache))["activations"]["model_dtype"] == "float32"
    with pytest.raises(SaescaleError, match="built with a float32 model"):
        build_cache(tiny_config(tiny_lm_dir, corpus, model_dtype="bfloat16", n_tokens=120, shard_tokens=60),
                    cache, progress=False)


def test_stream_provenance_records_the_resolved_dtype(tiny_lm_dir, corpus, monkeypatch):
    monkeypatch.setenv(FORCE_ENV, "1")
    cfg = tiny_config(tiny_lm_dir, corpus)
    train, _, extra = activation_sources("stream", cfg, SyntheticConfig(), seed=0)
    assert extra["activations"]["model_dtype"] == "bfloat16"
    assert next(train.model.parameters()).dtype == torch.bfloat16
    assert next(iter(train.batches(8))).dtype == torch.float32


@pytest.mark.real
@pytest.mark.slow
def test_real_bf16_activations_close_to_fp32(real_model):
    """Per-token ‖a_bf16 − a_fp32‖ / ‖a_fp32‖ at layers.20 on 8 contexts of the default corpus.

    Measured (benchmarks/README.md, "Harvest throughput"): median 0.011, 99th percentile 0.033 on 2,016 tokens;
    the bounds leave a 2x margin, and the floor shows the bf16 model really ran.
    """
    from saescale.activations.corpus import load_documents, tokenize_contexts

    model, tokenizer = real_model
    tokens = tokenize_contexts(load_documents()[:3], tokenizer, 64).tokens[:8]
    a32 = harvest_contexts(model, "layers.20", tokens, False)
    a16 = harvest_contexts(in_dtype(model, torch.bfloat16), "layers.20", tokens, False)
    rel = (a16 - a32).norm(dim=1) / a32.norm(dim=1)
    assert 1e-3 < rel.median() < 0.03 and rel.quantile(0.99) < 0.06
