"""Hook points: name resolution, early stop, agreement with output_hidden_states, harvest layout."""

from __future__ import annotations

import pytest
import torch

from saescale.activations.harvest import harvest_contexts, positions_kept
from saescale.activations.hooks import capture, default_hook, find_blocks, hook_width, resolve_hook
from saescale.errors import SaescaleError


def ids(model, batch: int = 3, length: int = 10) -> torch.Tensor:
    return torch.randint(0, model.config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(1))


def full_hidden(model, input_ids) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return model(input_ids, output_hidden_states=True).hidden_states  # (n+1) x (B, T, d)


def test_blocks_and_default_hook(tiny_lm):
    model, _ = tiny_lm
    name, blocks = find_blocks(model)
    assert name == "model.layers" and len(blocks) == 6
    assert default_hook(model) == "layers.4"  # round(2/3 * 6)
    assert resolve_hook(model, "layers.2.mlp") is model.model.layers[2].mlp
    assert resolve_hook(model, "model.norm") is model.model.norm


def test_residual_matches_hidden_states(tiny_lm):
    model, _ = tiny_lm
    x = ids(model)
    hidden = full_hidden(model, x)
    got = capture(model, ["layers.1", "layers.3"], x)
    # hidden_states[i + 1] is the output of block i (the last entry is after the final norm)
    torch.testing.assert_close(got["layers.1"], hidden[2], rtol=0, atol=0)
    torch.testing.assert_close(got["layers.3"], hidden[4], rtol=0, atol=0)


def test_forward_stops_after_last_hook(tiny_lm):
    model, _ = tiny_lm
    n_hooks = sum(len(m._forward_hooks) for m in model.modules())  # transformers adds some of its own
    calls = {"later_block": 0, "head": 0}
    handles = [
        model.model.layers[4].register_forward_hook(lambda *a: calls.__setitem__("later_block", calls["later_block"] + 1)),
        model.lm_head.register_forward_hook(lambda *a: calls.__setitem__("head", calls["head"] + 1)),
    ]
    try:
        out = capture(model, ["layers.3.self_attn", "layers.1.mlp"], ids(model))
        assert calls == {"later_block": 0, "head": 0}
        model(ids(model))
        assert calls == {"later_block": 1, "head": 1}  # the counting hooks do work
    finally:
        for h in handles:
            h.remove()
    assert out["layers.3.self_attn"].shape == (3, 10, 32) and out["layers.1.mlp"].shape == (3, 10, 32)
    assert sum(len(m._forward_hooks) for m in model.modules()) == n_hooks  # capture removed its hooks


def test_sub_module_outputs(tiny_lm):
    model, _ = tiny_lm
    x = ids(model)
    seen = {}
    handle = model.model.layers[2].mlp.register_forward_hook(lambda m, i, o: seen.setdefault("mlp", o.detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    torch.testing.assert_close(capture(model, ["layers.2.mlp"], x)["layers.2.mlp"], seen["mlp"], rtol=0, atol=0)


def test_bad_hook_names_list_valid_ones(tiny_lm):
    model, _ = tiny_lm
    for bad in ["layers.6", "layers.2.nope", "block.3", "layers.x"]:
        with pytest.raises(SaescaleError, match=r"unknown hook point .*layers\.0\.\.5, layers\.N\.mlp, layers\.N\.self_attn"):
            capture(model, [bad], ids(model))


def test_width_and_harvest_layout(tiny_lm):
    model, _ = tiny_lm
    assert hook_width(model, "layers.4") == 32
    x = ids(model, batch=2, length=8)
    full = capture(model, ["layers.4"], x)["layers.4"]  # (2, 8, 32)
    assert positions_kept(8, True).tolist() == list(range(8))
    assert positions_kept(8, False).tolist() == list(range(1, 8))
    for keep_first in (True, False):
        acts = harvest_contexts(model, "layers.4", x, keep_first)
        pos = positions_kept(8, keep_first)
        assert acts.dtype == torch.float32 and acts.shape == (2 * len(pos), 32)
        torch.testing.assert_close(acts.view(2, len(pos), 32), full[:, pos], rtol=0, atol=0)
