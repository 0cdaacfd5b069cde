"""``saescale eval`` on imported SAEs (tiny llama): an exported-then-imported SAELens folder gives the original's
metrics; a genuinely foreign one needs --model and --hook, named in one line."""

from __future__ import annotations

import json

import pytest
import torch
from sparsify import SparseCoder, SparseCoderConfig

from saescale.cli import main
from saescale.commands.eval import EvalCommand, run_eval
from saescale.errors import SaescaleError
from saescale.sae.formats.export import export_sae
from tests.eval.eval_helpers import save_for_model
from tests.helpers import make_sae

pytestmark = pytest.mark.usefixtures("one_thread")


def _eval(sae, out, lm, **kw):
    return run_eval(EvalCommand(sae=str(sae), out=str(out), metrics="recon", eval_contexts=6, batch=6, **kw), lm=lm)


def test_exported_saelens_folder_evaluates_like_the_original(tiny_lm_dir, tiny_lm, tmp_path):
    sae_dir = save_for_model(make_sae(n=64, k=4, d=32, normalize="layernorm"), tmp_path / "sae", str(tiny_lm_dir),
                             context_len=32)
    sl = export_sae(sae_dir, "saelens", tmp_path / "sl")
    a = _eval(sae_dir, tmp_path / "a", tiny_lm)
    b = _eval(sl, tmp_path / "b", tiny_lm)
    assert a["metrics"]["recon"] == b["metrics"]["recon"] and a["metrics"]["recon"]["nmse"] > 0
    assert a["settings"]["hook"] == b["settings"]["hook"] == "layers.4"


def test_foreign_sae_needs_model_and_hook(tiny_lm_dir, tiny_lm, tmp_path, capsys):
    torch.manual_seed(0)
    SparseCoder(32, SparseCoderConfig(num_latents=64, k=4)).save_to_disk(tmp_path / "run" / "layers.2")
    folder = tmp_path / "run" / "layers.2"
    assert main(["eval", str(folder), "--metrics", "recon", "--model", str(tiny_lm_dir)]) == 2
    err = capsys.readouterr().err
    assert "is a sparsify SAE with no saescale record" in err and "give --hook" in err and err.count("\n") == 1, err
    with pytest.raises(SaescaleError, match="give --model and --hook"):
        _eval(folder, tmp_path / "o", tiny_lm)
    doc = _eval(folder, tmp_path / "o", tiny_lm, model=str(tiny_lm_dir), hook="layers.2")
    on_disk = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert on_disk["settings"]["hook"] == "layers.2" and on_disk["settings"]["split"] == "all"
    assert doc["metrics"]["recon"]["nmse"] > 0
    assert sorted(p.name for p in folder.iterdir()) == ["cfg.json", "sae.safetensors"]  # nothing written beside it


def test_hook_is_refused_for_a_recorded_sae(tiny_lm_dir, tiny_lm, tmp_path):
    sae_dir = save_for_model(make_sae(n=64, k=4, d=32), tmp_path / "sae", str(tiny_lm_dir), hook="layers.4")
    with pytest.raises(SaescaleError, match="records its hook point 'layers.4'.*drop --hook"):
        _eval(sae_dir, tmp_path / "o", tiny_lm, hook="layers.2")
