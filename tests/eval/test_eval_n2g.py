"""N2G: an explanation that matches a synthetic latent exactly scores precision = recall = 1; trie semantics;
the one 'fires' rule; left-padded batches keep each sequence's positions (GPT-2 and llama)."""

import pytest
import torch

from saescale.activations.hooks import capture
from saescale.eval import n2g
from saescale.eval.n2g import N2GConfig, build_explanation, explain_latent, model_act_fn, padded_hook_output
from saescale.eval.n2g_trie import WILD, Trie, precision_recall
from tests.eval.eval_helpers import identity_sae

pytestmark = pytest.mark.usefixtures("one_thread")

A, B, PAD = 7, 9, 0


def bigram_act(seqs, latent):
    """A synthetic latent: fires (2.0) exactly when the text ends with tokens A, B."""
    return torch.tensor([2.0 if s[-2:] == [A, B] else 0.0 for s in seqs])


def skip_act(seqs, latent):
    """Fires when the text ends with A, <any>, B."""
    return torch.tensor([1.0 if len(s) >= 3 and s[-3] == A and s[-1] == B else 0.0 for s in seqs])


def synthetic_contexts(m=80, t=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, 6, (m, t), generator=g)  # background tokens never A or B
    for c in range(0, m, 2):  # plant A B in half the contexts; stray A's and B's elsewhere
        p = int(torch.randint(1, t - 2, (1,), generator=g))
        tokens[c, p], tokens[c, p + 1] = A, B
        tokens[c + 1, p] = B if c % 4 else A
    return tokens


def test_trie_matching_with_wildcards():
    trie = Trie()
    trie.add((A, WILD, B))
    trie.add((WILD, 3))
    assert trie.patterns == [(A, WILD, B), (3,)]
    assert trie.matches([1, A, 4, B], 3) and not trie.matches([1, A, B], 2)
    assert trie.matches([3], 0) and not trie.matches([A], 0)
    assert "[a]*[b]" in trie.describe(lambda t: {A: "a", B: "b"}.get(t, str(t)))


def test_exact_explanation_scores_one():
    tokens = synthetic_contexts()
    positions = torch.arange(1, tokens.shape[1])
    values = torch.stack([bigram_act([row[: p + 1].tolist() for p in positions.tolist()], 0) for row in tokens])
    res = explain_latent(bigram_act, tokens, values, positions, 0, PAD, text_start=1, seed=0,
                         cfg=N2GConfig(build=16, test=16, negatives=500))
    assert res["trie"].patterns == [(A, B)]
    assert res["precision"] == 1.0 and res["recall"] == 1.0 and res["firing"] >= 16


def test_wildcard_is_found():
    prefixes = [[1, 2, A, k, B] for k in (3, 4, 5)]
    trie = build_explanation(skip_act, prefixes, torch.ones(3), 0, PAD)
    assert trie.patterns == [(A, WILD, B)]


def test_precision_recall_counts():
    pred = torch.tensor([True, True, False, False])
    fires = torch.tensor([True, False, True, False])
    assert precision_recall(pred, fires) == (0.5, 0.5, 2, 2)
    p, r, _, _ = precision_recall(torch.zeros(3, dtype=torch.bool), torch.tensor([True, False, False]))
    assert p != p and r == 0.0  # nothing predicted: precision undefined (NaN)


def test_n2g_uses_the_one_fires_rule(monkeypatch):
    """N2G counts firing tokens with saescale.sae.base.fires: change that rule and its counts follow."""
    tokens = synthetic_contexts()
    positions = torch.arange(1, tokens.shape[1])
    values = torch.stack([bigram_act([row[: p + 1].tolist() for p in positions.tolist()], 0) for row in tokens])
    values = values + 0.5 * (tokens[:, 1:] == 3)  # weak firing on token 3, which the explanation does not predict
    cfg = N2GConfig(build=16, test=16, negatives=500)
    base = explain_latent(bigram_act, tokens, values, positions, 0, PAD, text_start=1, seed=0, cfg=cfg)
    monkeypatch.setattr(n2g, "fires", lambda v: v > 1.0)
    strict = explain_latent(bigram_act, tokens, values, positions, 0, PAD, text_start=1, seed=0, cfg=cfg)
    assert base["recall"] < 1.0 and strict["recall"] == 1.0 and strict["firing"] < base["firing"]


def _tiny_gpt2(folder, tokenizer_dir):
    """A 3-block GPT-2 (learned absolute position embeddings, d=32, random weights) saved with the byte tokenizer."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=3, n_head=4,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_left_padded_sequence_has_its_unpadded_activations(arch, tiny_lm, tiny_lm_dir, tmp_path):
    """A sequence batched with a longer one (so left-padded) gives the hook output it gives alone."""
    from saescale.activations.lm import load_model

    model, tok = load_model(str(_tiny_gpt2(tmp_path, tiny_lm_dir))) if arch == "gpt2" else tiny_lm
    sae, bos, hook = identity_sae(32), tok.bos_token_id, "layers.1"  # latent j: relu(h_j); latent 32 + j: relu(-h_j)
    act = model_act_fn(model, hook, sae, bos, PAD)
    short, long = [40, 41, 42, 43, 44], list(range(50, 70))
    for latent in range(64):
        alone, padded = act([short], latent)[0], act([short, long], latent)[0]
        assert padded == pytest.approx(float(alone), abs=1e-5)
    if arch == "gpt2":  # the check has teeth: GPT-2's activations move when the positions shift
        ids = torch.tensor([[bos] + short])
        h0 = padded_hook_output(model, hook, [[bos] + short], PAD)
        shifted = capture(model, [hook], ids.new_tensor([[PAD] * 15 + [bos] + short]),
                          torch.tensor([[0] * 15 + [1] * 6]))[hook][:, -1]
        assert (shifted - h0[:, -1]).abs().max() > 1e-2


@pytest.mark.real
def test_real_model_left_padding_keeps_activations(real_model):
    """On SmolLM2 at its default hook: a short sequence batched with a long one has its unpadded hook output."""
    model, tok = real_model
    short = tok("The whale", add_special_tokens=False)["input_ids"]
    long = tok("Call me Ishmael. Some years ago, never mind how long precisely", add_special_tokens=False)["input_ids"]
    bos, pad = tok.bos_token_id, tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    alone = padded_hook_output(model, "layers.20", [[bos] + short], pad)[0, -1]
    batched = padded_hook_output(model, "layers.20", [[bos] + short, [bos] + long], pad)[0, -1]
    assert torch.allclose(batched, alone, rtol=0, atol=1e-5 * float(alone.abs().max()))
