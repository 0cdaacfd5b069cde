"""``saescale eval`` on an SAE trained on the user's activation files (``--acts FILE``): the files record no
model or hook point, so eval asks for --model and --hook in one line, and with them evaluates on the corpus."""

from __future__ import annotations

import json

import numpy as np
import pytest

from saescale.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def test_an_sae_trained_on_files_is_evaluated_with_the_model_and_hook_given(tiny_lm_dir, tmp_path, capsys):
    np.save(tmp_path / "acts.npy", np.random.default_rng(0).standard_normal((2048, 32)).astype(np.float32))
    run = tmp_path / "run"
    assert main(["train", "--acts", str(tmp_path / "acts.npy"), "--n", "64", "--k", "4", "--tokens", "2048",
                 "--batch-size", "256", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["eval", str(run / "sae"), "--metrics", "recon", "--out", str(tmp_path / "no")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was trained on activation files (--acts FILE)" in err
    assert "give --model and --hook" in err and not (tmp_path / "no").exists()
    assert main(["eval", str(run / "sae"), "--metrics", "recon", "--model", str(tiny_lm_dir), "--hook", "layers.3",
                 "--eval-contexts", "6", "--out", str(tmp_path / "ev")]) == 0
    doc = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert doc["settings"]["hook"] == "layers.3" and doc["settings"]["model"] == str(tiny_lm_dir)
    assert doc["settings"]["split"] == "all" and doc["metrics"]["recon"]["nmse"] > 0
