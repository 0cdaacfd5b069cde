"""What a run records: the settings it resolved, not 'auto' placeholders; older records still load and resume."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from saescale.data.synthetic import SyntheticConfig, SyntheticSource
from saescale.errors import SaescaleError
from saescale.sae.config import SAEConfig
from saescale.sae.io import load_sae
from saescale.train.config import TrainConfig, default_lr
from saescale.train.run import train_sae

pytestmark = pytest.mark.usefixtures("one_thread")

SRC = SyntheticConfig(d=16, features=32, k=2)
CFG = TrainConfig(tokens=64 * 8, batch_size=64, checkpoint_every=4, log_every=2, init_tokens=128, progress=False)
SAE = SAEConfig(n=64, k=4)


def test_cfg_json_and_run_json_record_the_resolved_settings(tmp_path):
    train_sae(SAE, CFG, SyntheticSource(SRC), tmp_path)
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    train = cfg["extra"]["train"]
    assert train["lr"] == pytest.approx(default_lr(64, 64)) and train["lr"] > 0
    assert train["warmup_steps"] == 0 and train["k_aux"] == 8 and train["dead_tokens"] == 640  # 8 steps, d=16, 10 batches
    assert cfg["d"] == 16 and cfg["norm_scale"] is None
    rt = cfg["extra"]["runtime"]
    assert rt["kernels"] == "fast" and rt["precision"] == "float32" and rt["threads"] == 1
    assert rt["torch"] == torch.__version__
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["train"]["lr"] is None  # as given ...
    assert run["resolved"]["train"] == train and run["resolved"]["sae"]["d"] == 16  # ... and as it ran
    assert run["resolved"]["runtime"]["kernels"] == "fast" and run["resolved"]["runtime"]["world"] == 1


def test_reference_kernels_are_recorded(tmp_path, monkeypatch):
    monkeypatch.setenv("SAESCALE_KERNELS", "reference")
    train_sae(SAE, CFG, SyntheticSource(SRC), tmp_path)
    assert json.loads((tmp_path / "run.json").read_text())["resolved"]["runtime"]["kernels"] == "reference"


def _as_legacy(record: dict) -> dict:
    """A record as saescale wrote it before unset settings were None."""
    sae = {**record["sae"], "d": record["sae"]["d"] or 0,
           "norm_scale": 1.0 if record["sae"]["norm_scale"] is None else record["sae"]["norm_scale"]}
    legacy = {"lr": 0.0, "warmup_steps": -1, "k_aux": 0, "dead_tokens": 0}
    train = {k: legacy[k] if k in legacy and v is None else v for k, v in record["train"].items()
             if k != "init_encoder_scale"}  # a later field: older records lack it
    train["fire_threshold"] = 1e-3  # an earlier field, then at its default
    synth = {f"synth_{k}": v for k, v in record["extra"].get("synthetic", {}).items() if k != "offset"}  # older names
    return {"sae": sae, "train": train, "extra": {**record["extra"], **({"synthetic": synth} if synth else {})}}


def test_an_older_run_resumes_and_an_older_sae_loads(tmp_path):
    whole = tmp_path / "whole"
    extra = {"source": "synthetic", "synthetic": SRC.__dict__}  # as saescale train records it
    train_sae(SAE, CFG, SyntheticSource(SRC), whole, extra)
    old = tmp_path / "old"
    shutil.copytree(whole, old)
    shutil.rmtree(old / "sae")
    shutil.rmtree(old / "checkpoints" / "step-000000008")
    (old / "checkpoints" / "latest.json").write_text(json.dumps({"folder": "step-000000004", "step": 4}))
    (old / "run.json").write_text(json.dumps(_as_legacy(json.loads((old / "run.json").read_text()))))
    cfg_json = old / "checkpoints" / "step-000000004" / "cfg.json"
    c = json.loads(cfg_json.read_text())
    cfg_json.write_text(json.dumps({**c, "norm_scale": 1.0, "extra": {"train": {"lr": 0.0}}}))
    assert load_sae(cfg_json.parent).cfg.norm_scale is None  # an older SAE folder loads
    assert "synth_d" in (old / "run.json").read_text()
    r = train_sae(SAE, CFG, SyntheticSource(SRC), old, extra)
    assert r.resumed_from == 4
    a, b = load_file(str(whole / "sae" / "sae.safetensors")), load_file(str(old / "sae" / "sae.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(SaescaleError, match=r"different settings \(train.lr\)"):  # a real change still refuses
        train_sae(SAE, TrainConfig(**{**CFG.__dict__, "lr": 1e-3}), SyntheticSource(SRC), old, extra)


def test_norm_scale_is_used_for_mean_sq_and_refused_elsewhere(tmp_path):
    r = train_sae(SAEConfig(n=64, k=4, normalize="mean_sq", norm_scale=0.5), CFG, SyntheticSource(SRC))
    assert r.sae.cfg.norm_scale == 0.5  # given: not re-estimated
    est = train_sae(SAEConfig(n=64, k=4, normalize="mean_sq"), CFG, SyntheticSource(SRC)).sae.cfg.norm_scale
    assert est is not None and est != 0.5
    with pytest.raises(SaescaleError, match="--norm-scale applies to --normalize mean_sq only"):
        SAEConfig(normalize="layernorm", norm_scale=2.0)


def test_rerunning_a_finished_run_leaves_its_files_as_they_were(tmp_path):
    """Before: the rerun trained nothing and rewrote summary.json with empty final_train_metrics."""
    first = train_sae(SAE, CFG, SyntheticSource(SRC), tmp_path)
    files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    lines = []
    again = train_sae(SAE, CFG, SyntheticSource(SRC), tmp_path, log=lines.append)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == files
    assert again.metrics == first.metrics and again.metrics["step"] == 8 and "already finished" in lines[-1]
    assert all(torch.equal(getattr(again.sae, k), getattr(first.sae, k)) for k in ("W_enc", "W_dec", "b_pre"))


def test_a_folder_with_other_files_is_never_trained_into(tmp_path, capsys):
    """Before: train --out wrote into any folder, over files that were not its own."""
    from saescale.cli import main

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SaescaleError, match="not empty and holds no saescale run"):
        train_sae(SAE, CFG, SyntheticSource(SRC), tmp_path)
    assert main(["train", "--acts", "synthetic", "--n", "64", "--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not empty" in err and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert (tmp_path / "notes.txt").read_text() == "mine"
