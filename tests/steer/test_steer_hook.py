"""The steering context manager on a tiny random-weight llama (d = 32) with small random SAEs: the exact
raw-space maths of --scale and --clamp for every normalisation, bit-identity at scale 0, hook removal,
tuple outputs, and the one-line errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.helpers import make_sae
from saescale.activations.hooks import capture, resolve_hook
from saescale.errors import SaescaleError
from saescale.sae.base import SparseCode
from saescale.steer import greedy, latent_activation, prompt_ids, steer

pytestmark = pytest.mark.usefixtures("one_thread")
KINDS = ("none", "mean_sq", "layernorm", "std")
HOOK = "layers.3"


def tiny_sae(tiny_lm, normalize: str = "layernorm", n: int = 48, k: int = 6):
    model, _ = tiny_lm
    sae = make_sae(n=n, k=k, d=model.config.hidden_size, normalize=normalize, seed=1)
    if normalize == "mean_sq":
        sae.cfg = dataclasses.replace(sae.cfg, norm_scale=0.37)  # a scale that is not 1, so 1/s shows
    return sae


def ids_of(tiny_lm, text: str = "steering a tiny llama") -> torch.Tensor:
    return prompt_ids(tiny_lm[1], text)


def recon_shift(sae, h: torch.Tensor, i: int, amount: torch.Tensor) -> torch.Tensor:
    """ĥ(z with z_i + amount) - ĥ(z) in the raw space, for h (N, d) and amount (N,): what changing latent
    i's activation by ``amount`` changes the SAE's reconstruction by (decoded, not from the formula)."""
    with torch.no_grad():
        _, stats = sae.normalize(h)
        code = sae.encode(h)
        more = SparseCode(torch.cat([code.values, amount[:, None]], 1),
                          torch.cat([code.indices, torch.full_like(code.indices[:, :1], i)], 1))
        return sae.decode(more, stats) - sae.decode(code, stats)


@pytest.mark.parametrize("normalize", KINDS)
def test_scale_adds_what_the_latent_firing_at_s_adds_to_the_reconstruction(tiny_lm, normalize):
    model, _ = tiny_lm
    sae, ids, i, s = tiny_sae(tiny_lm, normalize), ids_of(tiny_lm), 5, 2.5
    h = capture(model, [HOOK], ids)[HOOK][0]
    with steer(model, sae, HOOK, i, scale=s):
        steered = capture(model, [HOOK], ids)[HOOK][0]  # registered after the steering hook: sees its output
    torch.testing.assert_close(steered, h + recon_shift(sae, h, i, torch.full((len(h),), s)), rtol=1e-5, atol=1e-5)
    if normalize in ("none", "mean_sq"):  # a fixed direction: W_dec[i], and W_dec[i] / s for mean_sq
        unit = 1.0 if normalize == "none" else 1 / 0.37
        torch.testing.assert_close(steered - h, (s * unit * sae.W_dec[i].detach()).expand_as(h), rtol=1e-4, atol=1e-5)
    else:  # per token: proportional to the token's own spread, the same fraction of every token
        ratio = (steered - h).norm(dim=-1) / (h - h.mean(-1, keepdim=True)).norm(dim=-1)
        torch.testing.assert_close(ratio, ratio[:1].expand_as(ratio), rtol=1e-4, atol=0)


@pytest.mark.parametrize("normalize", KINDS)
def test_clamp_replaces_the_latents_contribution_and_keeps_the_sae_error(tiny_lm, normalize):
    """h' = h + ĥ(z with z_i := V) - ĥ(z): the reconstruction with latent i at V, plus the same error h - ĥ."""
    model, _ = tiny_lm
    sae, ids, v = tiny_sae(tiny_lm, normalize), ids_of(tiny_lm), 0.9
    h = capture(model, [HOOK], ids)[HOOK][0]
    i = int(sae.encode(h).indices[-1, 0])  # a latent that fires at the last token (and maybe elsewhere)
    z_i = latent_activation(sae, i, h)
    assert z_i[-1] > 0
    with steer(model, sae, HOOK, i, clamp=v):
        steered = capture(model, [HOOK], ids)[HOOK][0]
    with torch.no_grad():
        recon = sae(h)
    recon_v = recon + recon_shift(sae, h, i, v - z_i)  # latent i at V instead of z_i, every other as it was
    torch.testing.assert_close(steered - recon_v, h - recon, rtol=1e-5, atol=1e-5)  # the SAE error is untouched


def test_clamp_to_the_current_activation_changes_nothing_where_the_latent_is_off(tiny_lm):
    """clamp=0 ablates: positions where latent i is silent are left exactly as they were."""
    model, _ = tiny_lm
    sae, ids, i = tiny_sae(tiny_lm), ids_of(tiny_lm), 7
    h = capture(model, [HOOK], ids)[HOOK][0]
    off = latent_activation(sae, i, h) == 0
    assert off.any()
    with steer(model, sae, HOOK, i, clamp=0.0):
        steered = capture(model, [HOOK], ids)[HOOK][0]
    assert torch.equal(steered[off], h[off])


def test_scale_zero_is_bit_identical_in_generation(tiny_lm):
    model, tok = tiny_lm
    sae, ids = tiny_sae(tiny_lm), ids_of(tiny_lm)
    kwargs = dict(max_new_tokens=8, do_sample=False, return_dict_in_generate=True, output_logits=True,
                  pad_token_id=tok.eos_token_id)
    plain = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
    with steer(model, sae, HOOK, 3, scale=0.0):
        steered = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
    assert torch.equal(plain.sequences, steered.sequences)
    assert all(torch.equal(a, b) for a, b in zip(plain.logits, steered.logits, strict=True))


def test_steering_changes_generation_and_the_hook_is_removed_on_exit_and_on_error(tiny_lm):
    model, _ = tiny_lm
    sae, ids = tiny_sae(tiny_lm), ids_of(tiny_lm)
    module = resolve_hook(model, HOOK)
    before = model(ids).logits
    hooks = dict(module._forward_hooks)
    with steer(model, sae, HOOK, 3, scale=40.0) as hooked:
        assert hooked is module and len(module._forward_hooks) == len(hooks) + 1
        assert not torch.equal(model(ids).logits, before)
    assert dict(module._forward_hooks) == hooks and torch.equal(model(ids).logits, before)
    with pytest.raises(RuntimeError, match="inside the block"):
        with steer(model, sae, HOOK, 3, clamp=5.0):
            greedy(model, ids, 2)
            raise RuntimeError("inside the block")
    assert dict(module._forward_hooks) == hooks and torch.equal(model(ids).logits, before)


def test_a_module_with_tuple_output_is_steered_in_its_first_element(tiny_lm):
    """Attention returns (output, weights): the output is steered, the rest passes through."""
    model, _ = tiny_lm
    sae, ids, hook = tiny_sae(tiny_lm, "none"), ids_of(tiny_lm), "layers.2.self_attn"
    seen = []
    handle_mod = resolve_hook(model, hook)
    h = capture(model, [hook], ids)[hook][0]
    with steer(model, sae, hook, 4, scale=1.5):
        handle = handle_mod.register_forward_hook(lambda _m, _i, out: seen.append(out))
        try:
            model(ids)
        finally:
            handle.remove()
    assert isinstance(seen[0], tuple)
    torch.testing.assert_close(seen[0][0][0], h + 1.5 * sae.W_dec[4].detach())


def one_line(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    return text


def test_bad_input_is_one_line(tiny_lm):
    model, _ = tiny_lm
    sae, ids = tiny_sae(tiny_lm, n=48), ids_of(tiny_lm)
    for latent in (48, -1, 2.0, True):
        with pytest.raises(SaescaleError) as e:
            with steer(model, sae, HOOK, latent, scale=1.0):
                pass
        assert "out of range" in one_line(e) and "0..47" in one_line(e)
    with pytest.raises(SaescaleError, match="both of --scale and --clamp"):
        with steer(model, sae, HOOK, 0, scale=1.0, clamp=1.0):
            pass
    with pytest.raises(SaescaleError, match="neither of --scale and --clamp"):
        with steer(model, sae, HOOK, 0):
            pass
    with pytest.raises(SaescaleError, match="finite"):
        with steer(model, sae, HOOK, 0, scale=float("nan")):
            pass
    with pytest.raises(SaescaleError) as e:
        with steer(model, sae, "layers.99", 0, scale=1.0):
            pass
    assert "unknown hook point 'layers.99'" in one_line(e)
    narrow = make_sae(n=16, k=2, d=16)
    module = resolve_hook(model, HOOK)
    hooks = dict(module._forward_hooks)  # transformers may keep its own output-capturing hooks on a block
    with pytest.raises(SaescaleError) as e:
        with steer(model, narrow, HOOK, 0, scale=1.0):
            model(ids)
    assert "width 32 but the SAE reads width 16" in one_line(e)
    assert dict(module._forward_hooks) == hooks  # removed although the forward failed inside the hook
    with pytest.raises(SaescaleError, match="prompt is empty"):
        prompt_ids(tiny_lm[1], "  \n")
    with pytest.raises(SaescaleError, match="--tokens must be >= 1"):
        greedy(model, ids, 0)
