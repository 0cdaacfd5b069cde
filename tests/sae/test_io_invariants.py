"""load_sae refuses weights that break the SAE's invariants (issue 14), in one line naming file, tensor and fix.

Before: ``eval`` reported metrics for an SAE whose weights were integer-typed or whose decoder was all zero."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from saescale.cli import main
from saescale.errors import SaescaleError
from saescale.sae.io import load_sae, save_sae
from tests.helpers import make_sae


def saved(folder: Path, extra: dict | None = None) -> Path:
    save_sae(make_sae("topk", 64, 4, 16), folder, extra=extra)
    return folder


def edit(folder: Path, change) -> Path:
    """Rewrite folder/sae.safetensors with ``change(tensors)`` applied (in place)."""
    f = folder / "sae.safetensors"
    tensors = load_file(f)
    change(tensors)
    save_file(tensors, f)
    return f


def zero_rows(rows):
    def change(t):
        t["W_dec"][rows] = 0.0
    return change


CASES = [
    ("integer W_enc", lambda t: t.update(W_enc=t["W_enc"].round().to(torch.int32)), "W_enc has dtype int32"),
    ("integer b_pre", lambda t: t.update(b_pre=t["b_pre"].to(torch.int64)), "b_pre has dtype int64"),
    ("bool b_enc", lambda t: t.update(b_enc=t["b_enc"] > 0), "b_enc has dtype bool"),
    ("all-zero decoder", lambda t: t["W_dec"].zero_(), "W_dec is all zero"),
    ("zero decoder rows", zero_rows([3, 40]), "W_dec has 2 of 64 rows of zero norm (rows 3, 40"),
    ("tiny decoder row", lambda t: t["W_dec"][5].mul_(1e-14), "1 of 64 rows of zero norm (rows 5;"),
    ("inf", lambda t: t["b_enc"].__setitem__(2, float("inf")), "b_enc contains NaN/inf"),
    ("extra tensor", lambda t: t.update(W_skip=torch.zeros(3)), "unknown tensor(s) W_skip"),
    ("missing tensor", lambda t: t.pop("b_enc"), "tensor b_enc is missing"),
    ("wrong shape", lambda t: t.update(b_pre=torch.zeros(17)), "b_pre has shape (17,), but cfg.json implies (16,)"),
    ("transposed decoder", lambda t: t.update(W_dec=t["W_dec"].T.contiguous()), "W_dec has shape (16, 64)"),
]


@pytest.mark.parametrize("what,change,needle", CASES, ids=[c[0] for c in CASES])
def test_broken_invariants_are_refused_in_one_line(tmp_path, what, change, needle):
    f = edit(saved(tmp_path / "sae"), change)
    with pytest.raises(SaescaleError) as e:
        load_sae(tmp_path / "sae")
    msg = str(e.value)
    assert needle in msg and msg.startswith((f"{f}: tensor", f"{f}: unknown")), msg
    assert "\n" not in msg and "retrain" in msg, msg


def test_valid_weights_still_load_in_other_float_dtypes_and_scaled_rows(tmp_path):
    """Unit decoder norm is what training keeps, not what load_sae demands: a hand-built SAE may scale rows."""
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        edit(saved(tmp_path / str(dtype)), lambda t, dt=dtype: t.update({k: v.to(dt) for k, v in t.items()}))
        assert load_sae(tmp_path / str(dtype)).W_dec.dtype == torch.float32
    edit(saved(tmp_path / "scaled"), lambda t: t["W_dec"].mul_(torch.linspace(0.1, 3.0, 64)[:, None]))
    load_sae(tmp_path / "scaled")


@pytest.mark.parametrize("change,needle", [(CASES[0][1], "W_enc has dtype int32"), (CASES[3][1], "W_dec is all zero")])
def test_eval_refuses_before_loading_any_model(tmp_path, capsys, change, needle):
    """The SAE is checked before eval loads its model: the recorded model does not exist, and is never reached."""
    folder = saved(tmp_path / "sae", extra={"source": "cache", "activations": {"model": str(tmp_path / "no-model")}})
    edit(folder, change)
    assert main(["eval", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {folder / 'sae.safetensors'}: tensor") and needle in err and err.count("\n") == 1, err
    assert not (tmp_path / "metrics.json").exists()
    save_sae(  # the same folder with valid weights gets as far as the (missing) model
        make_sae("topk", 64, 4, 16), folder, extra={"source": "cache", "activations": {"model": str(tmp_path / "no-model")}})
    assert main(["eval", str(folder)]) == 2
    assert "no-model" in capsys.readouterr().err
