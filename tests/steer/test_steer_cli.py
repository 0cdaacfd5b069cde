"""``saescale steer`` on the tiny random-weight llama (an SAE folder recording that model), and the
side-by-side display."""

from __future__ import annotations

import pytest

from saescale.cli import main
from saescale.steer.display import side_by_side, wrap
from tests.eval.eval_helpers import save_for_model
from tests.helpers import make_sae

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_sae_dir(tiny_lm_dir, tmp_path_factory):
    """A random layernorm SAE (n = 48) on the tiny llama's residual stream after block 3."""
    sae = make_sae(n=48, k=6, d=32, normalize="layernorm", seed=2)
    return save_for_model(sae, tmp_path_factory.mktemp("tiny_steer") / "sae", str(tiny_lm_dir), hook="layers.3")


def run(capsys, *args):
    code = main(["steer", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_prints_both_continuations_in_labelled_columns(tiny_sae_dir, capsys):
    code, out, err = run(capsys, tiny_sae_dir, "--latent", 3, "--scale", 60, "--prompt", "hello", "--tokens", 12,
                         "--width", 90)
    assert code == 0, err
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("unsteered"))
    assert "| steered: latent 3 x +60" in header
    assert "hook layers.3" in out and "prompt: 'hello'" in out
    assert all(len(line) <= 90 for line in lines)
    assert "the continuations differ from new token" in out or "identical" in out


def test_scale_zero_prints_identical_continuations_and_clamp_is_labelled(tiny_sae_dir, capsys):
    code, out, _ = run(capsys, tiny_sae_dir, "--latent", 3, "--scale", 0, "--prompt", "hello", "--tokens", 6)
    assert code == 0 and "the continuations are identical (same token ids)" in out
    code, out, _ = run(capsys, tiny_sae_dir, "--latent", 3, "--clamp", 2, "--prompt", "hello", "--tokens", 4,
                       "--width", 40)
    assert code == 0 and "unsteered:" in out and "steered: latent 3 clamped to 2:" in out  # narrow: two blocks


@pytest.mark.parametrize("args,message", [
    (["--latent", 48, "--scale", 1, "--prompt", "hi"], "latent 48 is out of range: the SAE has 48 latents"),
    (["--latent", 0, "--prompt", "hi"], "neither of --scale and --clamp given"),
    (["--latent", 0, "--scale", 1, "--clamp", 1, "--prompt", "hi"], "both of --scale and --clamp given"),
    (["--latent", 0, "--scale", 1, "--prompt", " "], "the prompt is empty"),
    (["--latent", 0, "--scale", 1, "--prompt", "hi", "--tokens", 0], "--tokens must be >= 1, got 0"),
    (["--latent", 0, "--scale", 1, "--prompt", "hi", "--hook", "layers.9"], "unknown hook point 'layers.9'"),
    (["--latent", 0, "--scale", 1, "--prompt", "hi", "--hook", "layers.2.mlp.gate_proj"],
     "hook point 'layers.2.mlp.gate_proj' has width 64 but the SAE reads width 32"),
    (["--scale", 1, "--prompt", "hi"], "--latent is required"),
])
def test_bad_input_is_one_line(tiny_sae_dir, capsys, args, message):
    code, out, err = run(capsys, tiny_sae_dir, *args)
    assert code == 2 and message in err and err.count("\n") == 1 and err.startswith("error: "), err


def test_no_sae_folder_and_a_synthetic_sae_are_one_line(tmp_path, capsys):
    code, _, err = run(capsys, "--latent", 0, "--scale", 1, "--prompt", "hi")
    assert code == 2 and "no SAE folder given" in err and err.count("\n") == 1
    code, _, err = run(capsys, tmp_path / "nowhere", "--latent", 0, "--scale", 1, "--prompt", "hi")
    assert code == 2 and "not found" in err and err.count("\n") == 1
    from saescale.sae.io import save_sae

    save_sae(make_sae(n=8, k=2, d=32), tmp_path / "synth", extra={"source": "synthetic"})
    code, _, err = run(capsys, tmp_path / "synth", "--latent", 0, "--scale", 1, "--prompt", "hi")
    assert code == 2 and "records no language model" in err and "--model" in err and err.count("\n") == 1


def test_side_by_side_columns_and_blocks():
    text = side_by_side("left", "one two three four five six seven eight nine ten", "right", "a\n\nb", 61)
    lines = text.splitlines()
    assert lines[0] == f"{'left':<29} | right" and lines[1] == f"{'-' * 29} | {'-' * 29}"
    assert all(len(line) <= 61 for line in lines) and lines[2].endswith("| a") and lines[4].endswith("| b")
    narrow = side_by_side("left", "x y", "right", "z", 58).splitlines()
    assert narrow == ["left:", "x y", "", "right:", "z"]
    assert wrap("", 10) == [""] and wrap("aaaa bbbb cccc", 9) == ["aaaa bbbb", "cccc"]


def test_steers_with_an_openai_state_dict(tiny_lm_dir, tmp_path, capsys):
    """Every format load_sae reads works here: an OpenAI-style .pt (no record of model or hook: both given)."""
    import torch

    g = torch.Generator().manual_seed(0)
    dec = torch.randn(32, 48, generator=g)
    torch.save({"pre_bias": torch.zeros(32), "latent_bias": torch.zeros(48), "encoder.weight": dec.T.clone(),
                "decoder.weight": dec / dec.norm(dim=0), "activation": "TopK",
                "activation_state_dict": {"k": 6, "postact_fn": "ReLU"}}, tmp_path / "ae.pt")
    code, out, err = run(capsys, tmp_path / "ae.pt", "--latent", 3, "--scale", 4, "--prompt", "hello there",
                         "--tokens", 4, "--model", tiny_lm_dir, "--hook", "layers.3")
    assert code == 0, err
    assert "steered: latent 3 x +4" in out and "unsteered" in out
