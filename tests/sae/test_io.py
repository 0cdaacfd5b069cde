"""Saving and loading SAEs: round trip, damaged files, nothing valid overwritten."""

import json
import shutil

import pytest
import torch

from saescale.errors import SaescaleError
from saescale.sae.io import load_sae, save_sae
from tests.helpers import make_sae


@pytest.mark.parametrize("arch,norm", [("topk", "layernorm"), ("relu", "mean_sq")])
def test_save_load_round_trip_gives_identical_outputs(tmp_path, arch, norm):
    sae = make_sae(arch, 64, 4, 16, normalize=norm)
    save_sae(sae, tmp_path / "sae", extra={"note": "x"})
    assert sorted(p.name for p in (tmp_path / "sae").iterdir()) == ["cfg.json", "sae.safetensors"]
    back = load_sae(tmp_path / "sae")
    assert back.cfg == sae.cfg and type(back) is type(sae)
    x = torch.randn(50, 16) * 4
    assert torch.equal(back(x), sae(x))
    code, code2 = sae.encode(x), back.encode(x)
    assert torch.equal(code.values, code2.values) and torch.equal(code.indices, code2.indices)
    assert json.loads((tmp_path / "sae" / "cfg.json").read_text())["arch"] == arch


def _saved(tmp_path):
    sae = make_sae("topk", 64, 4, 16)
    save_sae(sae, tmp_path / "sae")
    return tmp_path / "sae"


def test_truncated_weights_give_one_clear_error(tmp_path):
    path = _saved(tmp_path)
    f = path / "sae.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(SaescaleError, match="corrupt or truncated"):
        load_sae(path)


def test_corrupted_header_gives_one_clear_error(tmp_path):
    path = _saved(tmp_path)
    f = path / "sae.safetensors"
    data = bytearray(f.read_bytes())
    data[10:20] = b"\xff" * 10
    f.write_bytes(bytes(data))
    with pytest.raises(SaescaleError) as e:
        load_sae(path)
    assert "\n" not in str(e.value)


def test_nan_weights_are_refused(tmp_path):
    sae = make_sae("topk", 64, 4, 16)
    with torch.no_grad():
        sae.W_dec[3, 3] = float("nan")
    save_sae(sae, tmp_path / "sae")
    with pytest.raises(SaescaleError, match="NaN"):
        load_sae(tmp_path / "sae")


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda c: c.pop("n"), "missing required field 'n'"),
        (lambda c: c.update(n="many"), "expected int"),
        (lambda c: c.update(arch="sparsemax"), "unknown SAE architecture"),
        (lambda c: c.update(normalize="zscore"), "is not one of"),
        (lambda c: c.update(banana=1), "unknown field"),
        (lambda c: c.pop("format"), "format"),
        (lambda c: c.update(d=17), "do not match cfg.json"),
    ],
)
def test_bad_cfg_json_gives_one_clear_error(tmp_path, edit, match):
    path = _saved(tmp_path)
    cfg = json.loads((path / "cfg.json").read_text())
    edit(cfg)
    (path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SaescaleError) as e:
        load_sae(path)
    assert "\n" not in str(e.value)
    if match:
        assert match in str(e.value)


def test_cfg_json_that_is_not_json(tmp_path):
    path = _saved(tmp_path)
    (path / "cfg.json").write_text("{not json")
    with pytest.raises(SaescaleError, match="not valid JSON"):
        load_sae(path)


def test_missing_folder(tmp_path):
    with pytest.raises(SaescaleError, match="not found"):
        load_sae(tmp_path / "nope")


def test_overwriting_replaces_whole_folder_atomically(tmp_path):
    a, b = make_sae("topk", 64, 4, 16, seed=1), make_sae("topk", 64, 4, 16, seed=2)
    save_sae(a, tmp_path / "sae")
    save_sae(b, tmp_path / "sae")
    assert torch.equal(load_sae(tmp_path / "sae").W_dec, b.W_dec)
    assert [p.name for p in tmp_path.iterdir()] == ["sae"]  # no temp or backup folders left
    shutil.rmtree(tmp_path / "sae")
