"""Live activation stream: shapes, determinism, exact cheap resume, epoch coverage, split handling."""

from __future__ import annotations

import json
import random
from itertools import islice

import pytest
import torch

from saescale.activations.config import ActivationConfig
from saescale.activations.corpus import load_documents, tokenize_contexts
from saescale.activations.harvest import harvest_contexts
from saescale.activations.stream import StreamSource
from saescale.errors import SaescaleError

WORDS = "the whale sea ship captain ahab white harpoon boat crew ocean union nation congress".split()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    """10 .txt documents of 25 random words, as a comma-separated corpus spec."""
    folder, rng = tmp_path_factory.mktemp("corpus"), random.Random(0)
    paths = []
    for i in range(10):
        (folder / f"d{i}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(25)))
        paths.append(str(folder / f"d{i}.txt"))
    return ",".join(paths)


def source(tiny_lm, tiny_lm_dir, corpus, seed=0, buffer_tokens=100, **kw) -> StreamSource:
    opts = dict(context_len=16, harvest_batch=4, val_fraction=0.2) | kw
    cfg = ActivationConfig(model=str(tiny_lm_dir), corpus=corpus, **opts)
    return StreamSource(cfg, seed=seed, lm=tiny_lm, buffer_tokens=buffer_tokens)


def take(src: StreamSource, bs: int, n: int, start: int = 0) -> torch.Tensor:
    return torch.stack(list(islice(src.batches(bs, start), n)))  # (n, bs, d)


def test_shapes_and_determinism(tiny_lm, tiny_lm_dir, corpus):
    src = source(tiny_lm, tiny_lm_dir, corpus)
    assert src.d == 32 and src.hook == "layers.4"
    a = take(src, 7, 5)
    assert a.shape == (5, 7, 32) and a.dtype == torch.float32
    assert torch.equal(a, take(source(tiny_lm, tiny_lm_dir, corpus), 7, 5))
    assert not torch.equal(a, take(source(tiny_lm, tiny_lm_dir, corpus, seed=1), 7, 5))


def test_start_is_exact_across_blocks_and_epochs(tiny_lm, tiny_lm_dir, corpus):
    src = source(tiny_lm, tiny_lm_dir, corpus)
    n = 2 * src.tokens_per_epoch // 7 + 3  # past the end of the second epoch
    full = take(src, 7, n)
    for start in (1, 5, src.tokens_per_epoch // 7, n - 4):
        torch.testing.assert_close(take(src, 7, n - start, start), full[start:], rtol=0, atol=0)


def test_skipping_runs_no_forward_for_skipped_blocks(tiny_lm, tiny_lm_dir, corpus):
    src = source(tiny_lm, tiny_lm_dir, corpus)
    model = tiny_lm[0]
    calls = []
    handle = model.model.embed_tokens.register_forward_hook(lambda *a: calls.append(1))
    try:
        next(src.batches(7, start=3 * src.tokens_per_epoch // 7))
    finally:
        handle.remove()
    assert 0 < len(calls) <= 2 * -(-src.buffer_contexts // src.harvest_batch)  # at most two blocks harvested


def test_epoch_covers_each_context_once(tiny_lm, tiny_lm_dir, corpus):
    src = source(tiny_lm, tiny_lm_dir, corpus, keep_first=True)
    rows = take(src, src.tokens_per_epoch, 1)[0]  # exactly one epoch
    expected = harvest_contexts(tiny_lm[0], src.hook, src.tokens, keep_first=True)
    key = lambda x: x[torch.argsort(x[:, 0])]  # noqa: E731 - order rows by their first channel
    torch.testing.assert_close(key(rows), key(expected), rtol=0, atol=0)


def test_val_split_and_errors(tiny_lm, tiny_lm_dir, corpus):
    train = source(tiny_lm, tiny_lm_dir, corpus)
    cfg = ActivationConfig(model=str(tiny_lm_dir), corpus=corpus, context_len=16, val_fraction=0.2)
    val = StreamSource(cfg, split="val", lm=tiny_lm)
    tok = tiny_lm[1]
    assert len(val.tokens) + len(train.tokens) == len(tokenize_contexts(load_documents(corpus), tok, 16))
    assert not any(torch.equal(v, t) for v in val.tokens for t in train.tokens)
    with pytest.raises(SaescaleError, match="val split .* has no contexts"):
        StreamSource(ActivationConfig(model=str(tiny_lm_dir), corpus=corpus, val_fraction=0.0), split="val", lm=tiny_lm)
    with pytest.raises(SaescaleError, match="unknown split 'test'"):
        StreamSource(cfg, split="test", lm=tiny_lm)


@pytest.mark.real
def test_real_model_stream(real_model, tmp_path):
    docs = load_documents()[-3:]  # three Moby-Dick chapters: tokenising the whole corpus takes ~10 s here
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": d.text}) + "\n" for d in docs))
    cfg = ActivationConfig(corpus=str(tmp_path / "c.jsonl"), harvest_batch=5, val_fraction=0.0)
    src = StreamSource(cfg, lm=real_model, buffer_tokens=300)
    batch = next(src.batches(200))  # one block: 4 contexts x 63 rows
    assert src.hook == "layers.20" and batch.shape == (200, 576) and torch.isfinite(batch).all()
