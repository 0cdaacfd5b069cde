"""Eval contexts: a random sample of the whole validation split, in random order, with their documents named."""

import json

import pytest
import torch

from saescale.activations.config import ActivationConfig
from saescale.activations.corpus import SPLIT_SEED, load_documents, split_documents
from saescale.errors import SaescaleError
from saescale.eval.evalset import doc_title, other_corpus, val_contexts

pytestmark = pytest.mark.usefixtures("one_thread")


def _sources(sample, k: int) -> set[str]:
    """Corpus sources ('sotu', 'moby-dick') of the first ``k`` sampled contexts."""
    return {sample.doc_titles[i].split()[0] for i in sample.contexts.doc[:k].tolist()}


def test_default_corpus_sample_spans_both_books(tiny_lm):
    """The first 48 contexts (downstream) and the first ~4,096 tokens (refine) hold both sources; in corpus
    order (the old behaviour) they were all early State of the Union addresses."""
    _, tok = tiny_lm
    sample = val_contexts(ActivationConfig(), tok, 192, seed=0)
    assert sample.split == "val" and sample.split_docs == len(split_documents(368, 0.05, SPLIT_SEED)[1])
    assert _sources(sample, 48) == {"sotu", "moby-dick"}
    assert _sources(sample, -(-4096 // 63)) == {"sotu", "moby-dick"}
    val = set(split_documents(len(load_documents()), 0.05, SPLIT_SEED)[1])
    assert set(sample.contexts.doc.tolist()) <= val  # corpus indices of validation documents only


def _corpus(tmp_path, n_docs=200, chars=160):
    path = tmp_path / "c.jsonl"
    rows = [{"text": "".join("abcdefghij"[(i * 7 + j) % 10] for j in range(chars)), "title": f"t{i}"}
            for i in range(n_docs)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return str(path)


def test_prefix_of_the_sample_is_spread_over_the_split(tiny_lm, tmp_path):
    """A constructed corpus: the first 24 sampled contexts come from all over the 100 validation documents."""
    _, tok = tiny_lm
    cfg = ActivationConfig(corpus=_corpus(tmp_path), context_len=16, val_fraction=0.5)
    sample = val_contexts(cfg, tok, 48, seed=0)
    val = split_documents(200, 0.5, SPLIT_SEED)[1]
    rank = torch.tensor([val.index(i) for i in sample.contexts.doc[:24].tolist()], dtype=torch.float)
    assert rank.min() < 25 and rank.max() >= 75 and 30 < rank.mean() < 70
    assert not torch.equal(sample.contexts.doc, sample.contexts.doc.sort().values)  # random, not corpus, order
    assert sample.doc_titles[int(sample.contexts.doc[0])] == f"t{int(sample.contexts.doc[0])}"


def test_whole_corpus_is_the_split_for_another_corpus(tiny_lm, tmp_path):
    _, tok = tiny_lm
    cfg = ActivationConfig(corpus=_corpus(tmp_path), context_len=16, val_fraction=0.5)
    sample = val_contexts(cfg, tok, 400, seed=0, whole_corpus=True)
    train = set(split_documents(200, 0.5, SPLIT_SEED)[0])
    assert sample.split == "all" and sample.split_docs == 200
    assert train & set(sample.contexts.doc.tolist())  # training-split documents count too
    with pytest.raises(SaescaleError, match="corpus the SAE was trained on.*omit --corpus"):
        other_corpus("default", "default")


def test_doc_titles():
    docs = load_documents()
    assert doc_title(docs[0], 0) == "sotu 1790 George Washington"
    assert doc_title(docs[-1], 367).startswith("moby-dick 135 The Chase")
    assert doc_title(type(docs[0])("x", {}), 5) == "document 5"
