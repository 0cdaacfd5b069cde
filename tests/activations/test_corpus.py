"""Corpus loading (shipped, .txt, .jsonl, .jsonl.gz), errors, context cutting and splitting."""

from __future__ import annotations

import gzip
import json

import pytest
import torch

from saescale.activations.corpus import Document, load_documents, split_documents, tokenize_contexts
from saescale.errors import SaescaleError


def test_default_corpus_labels():
    docs = load_documents()
    sotu = [d for d in docs if d.meta["source"] == "sotu"]
    moby = [d for d in docs if d.meta["source"] == "moby-dick"]
    assert len(sotu) == 233 and len(moby) == 135 and len(docs) == 368
    assert sotu[0].meta["year"] == 1790 and sotu[0].meta["president"] == "George Washington"
    assert sotu[-1].meta == {"source": "sotu", "year": 2021, "president": "Joseph R Biden", "party": "Democratic"}
    assert {"Republican", "Democratic", "Whig", "Federalist"} <= {d.meta["party"] for d in sotu}
    assert moby[0].text.startswith("Call me Ishmael") and [d.meta["chapter"] for d in moby] == list(range(1, 136))


def test_local_files(tmp_path):
    (tmp_path / "a.txt").write_text("First document.\n\nStill the first.")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "two", "label": 1}) + "\n\n" + json.dumps({"text": "three"}) + "\n")
    with gzip.open(tmp_path / "c.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": "four", "label": 0}) + "\n")
    spec = ",".join(str(tmp_path / n) for n in ["a.txt", "b.jsonl", "c.jsonl.gz"])
    docs = load_documents(spec)
    assert [d.text for d in docs] == ["First document.\n\nStill the first.", "two", "three", "four"]
    assert docs[1].meta == {"label": 1} and docs[3].meta == {"label": 0}


def test_corpus_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(SaescaleError, match="corpus '.*empty.txt' has no non-empty documents"):
        load_documents(str(tmp_path / "empty.txt"))
    with pytest.raises(SaescaleError, match="corpus file '.*missing.txt' not found: give existing"):
        load_documents(str(tmp_path / "missing.txt"))
    (tmp_path / "bad.jsonl").write_text('{"txt": "no text field"}\n')
    with pytest.raises(SaescaleError, match=r"bad.jsonl:1: not a JSON object with a 'text' field"):
        load_documents(str(tmp_path / "bad.jsonl"))
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(SaescaleError, match="unknown type"):
        load_documents(str(tmp_path / "x.csv"))
    with pytest.raises(SaescaleError, match="hf:some/dataset"):
        load_documents("hf:some/dataset")  # no datasets package, or no hub: one line either way


def test_hf_corpus_without_a_hub_fails_at_once(monkeypatch):
    """With the datasets package (sae-lens brings it) and no hub, 'hf:NAME' is refused before datasets' retries."""
    pytest.importorskip("datasets")
    import datasets

    def reached(*a, **kw):
        raise AssertionError("datasets was asked to fetch the dataset")

    monkeypatch.setattr(datasets, "load_dataset", reached)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(SaescaleError, match="offline or unknown dataset: corpus 'hf:some/dataset'"):
        load_documents("hf:some/dataset")


def test_parquet(tmp_path):
    path = tmp_path / "d.parquet"
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        path.write_bytes(b"PAR1")
        with pytest.raises(SaescaleError, match="needs pyarrow: pip install pyarrow"):
            load_documents(str(path))
        return
    pq.write_table(pa.table({"text": ["one", "two"], "label": [0, 1]}), path)
    assert [(d.text, d.meta) for d in load_documents(str(path))] == [("one", {"label": 0}), ("two", {"label": 1})]


def test_tokenize_contexts_layout(tiny_lm):
    _, tok = tiny_lm  # byte-level: one token per byte, BOS '<s>'
    texts = ["abcdefghij", "xyz", "0123456789012"]
    ctx = tokenize_contexts([Document(t) for t in texts], tok, context_len=5, prepend_bos=True)
    bos = tok.bos_token_id
    assert ctx.tokens.shape == (2 + 0 + 3, 5) and (ctx.tokens[:, 0] == bos).all()
    assert ctx.doc.tolist() == [0, 0, 2, 2, 2] and ctx.start.tolist() == [0, 4, 0, 4, 8]
    assert tok.decode(ctx.tokens[1, 1:]) == "efgh" and tok.decode(ctx.tokens[4, 1:]) == "8901"
    plain = tokenize_contexts([Document(t) for t in texts], tok, context_len=5, prepend_bos=False)
    assert plain.doc.tolist() == [0, 0, 2, 2] and plain.start.tolist() == [0, 5, 0, 5]
    assert tok.decode(plain.tokens[1]) == "fghij"
    with pytest.raises(SaescaleError, match="no document has 5 tokens"):
        tokenize_contexts([Document("abc")], tok, context_len=5, prepend_bos=False)


def test_split_documents():
    train, val = split_documents(100, 0.1, seed=3)
    assert len(val) == 10 and sorted(train + val) == list(range(100)) and val == sorted(val)
    assert (train, val) == split_documents(100, 0.1, seed=3) and val != split_documents(100, 0.1, seed=4)[1]
    assert split_documents(5, 0.0)[1] == [] and len(split_documents(5, 0.01)[1]) == 1


def test_tokenize_is_deterministic(tiny_lm):
    _, tok = tiny_lm
    docs = load_documents()[200:203]
    a, b = (tokenize_contexts(docs, tok, 64) for _ in range(2))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.start, b.start)
