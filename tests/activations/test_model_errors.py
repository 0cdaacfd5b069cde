"""A model folder transformers cannot read, or a hub id with no network: one line, fast, no transformers
warning first (issue 14)."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from saescale.activations.lm import load_model
from saescale.errors import SaescaleError


def _copy(tiny_lm_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_lm_dir, folder)
    return folder


def test_unknown_model_type_is_one_line_without_a_transformers_warning(tiny_lm_dir, tmp_path, capsys):
    folder = _copy(tiny_lm_dir, tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "bogus"}))
    with pytest.raises(SaescaleError, match="model_type 'bogus' in .*config.json is not known to transformers"):
        load_model(str(folder))
    out = capsys.readouterr()
    assert out.err == "" and out.out == ""


@pytest.mark.parametrize("damage,needle", [("[1]", "is not a JSON object"), ("{", "is not a JSON object"),
                                           (None, "has no config.json")])
def test_damaged_config(tiny_lm_dir, tmp_path, damage, needle):
    folder = _copy(tiny_lm_dir, tmp_path)
    if damage is None:
        (folder / "config.json").unlink()
    else:
        (folder / "config.json").write_text(damage)
    with pytest.raises(SaescaleError, match=needle):
        load_model(str(folder))


def test_damaged_weights(tiny_lm_dir, tmp_path):
    folder = _copy(tiny_lm_dir, tmp_path)
    (folder / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(SaescaleError, match="not found or unreadable"):
        load_model(str(folder))


def test_hub_id_without_network_fails_before_transformers_retries(monkeypatch):
    """Refused by one connection attempt, before transformers (and its ~50 s of retries) is reached."""
    import saescale.activations.lm as lm

    def reached(*a, **kw):
        raise AssertionError("transformers was asked to fetch the model")

    monkeypatch.setattr(lm.AutoConfig, "from_pretrained", reached)
    monkeypatch.setattr(lm.AutoTokenizer, "from_pretrained", reached)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")  # never resolves, here or in CI
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(SaescaleError, match="offline or unknown model .*cannot be reached from here"):
        load_model("nobody/no-such-model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SaescaleError, match="HF_HUB_OFFLINE is set"):
        load_model("nobody/no-such-model")


def test_cli_refuses_an_unreachable_hub_id_before_importing_torch(tmp_path):
    """`--model org/name` with no hub and no cached copy: one line saying "offline or unknown model", answered
    before torch and transformers are imported (their ~4 s of imports would otherwise come first)."""
    import subprocess
    import sys

    code = ("import sys; from saescale.cli import main; "
            f"rc = main(['train', '--model', 'nobody/no-such-model', '--out', {str(tmp_path / 'run')!r}]); "
            "print(rc, 'torch' in sys.modules, 'transformers' in sys.modules)")
    env = {**os.environ, "HF_ENDPOINT": "https://hub.invalid", "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_HUB_OFFLINE", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.split() == ["2", "False", "False"], out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: offline or unknown model 'nobody/no-such-model'"), lines
    assert not (tmp_path / "run").exists()
