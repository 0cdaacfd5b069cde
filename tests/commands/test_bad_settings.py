"""Options that contradict each other, devices that are not there, sizes that cannot fit, a damaged
run.json: each refused in one line before anything is written (issue 14)."""

from __future__ import annotations

import json

import pytest
import torch

from saescale.cli import main
from saescale.cliargs import parse_config
from saescale.commands.eval import EvalCommand
from saescale.commands.train import TrainCommand
from saescale.distributed.launch import check_device
from saescale.errors import SaescaleError
from saescale.train.memory import check_fits, min_train_bytes
from tests.commands.cli_helpers import TRAIN, snapshot


@pytest.mark.parametrize("argv,names", [
    (["--acts", "synthetic", "--model", "x/y"], ["--model", "--acts synthetic"]),
    (["--acts", "synthetic", "--corpus", "a.txt"], ["--corpus", "--acts synthetic"]),
    (["--acts", "synthetic", "--n-tokens", "5000"], ["--n-tokens", "--acts synthetic"]),
    (["--synth-d", "8"], ["--synth-d", "--acts cache"]),
    (["--acts", "stream", "--synth-noise", "0.5"], ["--synth-noise", "--acts stream"]),
    (["--arch", "relu", "--multi-topk"], ["--multi-topk", "--arch relu"]),
])
def test_contradictory_options_are_refused_naming_both(argv, names):
    with pytest.raises(SaescaleError) as e:
        parse_config(TrainCommand, argv, "t")
    assert all(n in str(e.value) for n in names), str(e.value)


def test_unused_option_warns_once(capsys):
    parse_config(TrainCommand, ["--acts", "synthetic", "--arch", "relu", "--k", "7"], "t")
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "--k 7 is unused by --arch relu" in err


@pytest.mark.parametrize("argv,said", [
    (["--arch", "gated", "--l0-coef", "0.1"], "--l0-coef is unused by --arch gated"),
    (["--arch", "jumprelu", "--l1-coef", "0.1", "--threshold-lr-mult", "50"], "--l1-coef is unused by --arch jumprelu"),
    (["--arch", "topk", "--threshold-lr-mult", "50"], "--threshold-lr-mult is unused by --arch topk"),
    (["--arch", "relu", "--aux-coef", "0.5"], "--aux-coef is unused by --arch relu"),
    (["--arch", "jumprelu"], "thresholds will barely leave their start"),  # 341 steps at the paper's rate
])
def test_other_architectures_settings_warn_once(capsys, argv, said):
    parse_config(TrainCommand, ["--acts", "synthetic", *argv], "t")
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and said in err, err


def test_a_long_or_fast_jumprelu_run_does_not_warn(capsys):
    parse_config(TrainCommand, ["--acts", "synthetic", "--arch", "jumprelu", "--threshold-lr-mult", "100"], "t")
    parse_config(TrainCommand, ["--acts", "synthetic", "--arch", "jumprelu", "--tokens", "100000000"], "t")
    assert "warning" not in capsys.readouterr().err


def test_eval_downstream_contexts_above_eval_contexts():
    with pytest.raises(SaescaleError, match="--downstream-contexts 64 is more than --eval-contexts 32"):
        parse_config(EvalCommand, ["x/sae", "--eval-contexts", "32", "--downstream-contexts", "64"], "e")
    parse_config(EvalCommand, ["x/sae", "--eval-contexts", "32", "--downstream-contexts", "64", "--metrics", "recon"], "e")


def test_acts_path_with_other_activation_options(tmp_path, tiny_lm_dir, capsys):
    cache = tmp_path / "cache"
    assert main(["cache", "--model", str(tiny_lm_dir), "--cache-dir", str(cache), "--n-tokens", "1500",
                 "--context-len", "32", "--val-fraction", "0.25"]) == 0
    capsys.readouterr()
    base = ["train", "--acts", str(cache), "--n", "64", "--k", "4", "--tokens", "1024", "--batch-size", "256",
            "--no-progress", "--out", str(tmp_path / "run")]
    for extra, name in [(["--hook", "layers.1"], "--hook"), (["--n-tokens", "9999"], "--n-tokens"),
                        (["--context-len", "16"], "--context-len")]:
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert name in err and str(cache) in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()
    assert main(base + ["--hook", "layers.4", "--context-len", "32"]) == 0  # what the cache was built with: fine


def test_devices_that_are_not_there():
    assert check_device("cpu") == torch.device("cpu")
    for bad, needle in [("bogus", "is not a torch device"), ("cpu:x", "is not a torch device"),
                        ("meta", "'cpu', 'cuda' or 'mps' only")]:
        with pytest.raises(SaescaleError, match=needle):
            check_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(SaescaleError, match="no usable CUDA device.*use --device cpu"):
            check_device("cuda")
    else:
        with pytest.raises(SaescaleError, match="there are only"):
            check_device(f"cuda:{torch.cuda.device_count()}")


def test_sizes_that_cannot_fit_are_refused_before_allocating(tmp_path, capsys):
    assert 13e9 < min_train_bytes(2**20, 576, 4096) < 17.9e9  # a lower bound of the n = 2^20 benchmark's 17.9 GB peak
    assert min_train_bytes(2**20, 576, 4096, latent_shards=4) < min_train_bytes(2**20, 576, 4096) / 3.9
    check_fits(4096, 576, 4096, torch.device("cpu"))
    for extra in (["--n", "1000000000000"], ["--batch-size", "1000000000000"]):
        assert main(["train", *TRAIN, *extra, "--out", str(tmp_path / "big")]) == 2
        err = capsys.readouterr().err
        assert "GiB" in err and "--n or --batch-size" in err and err.count("\n") == 1, err
    assert not (tmp_path / "big").exists()


@pytest.mark.parametrize("damage", [b"\xff\xfe", b"{not json", b"[1, 2]", b'{"sae": {}}'])
def test_damaged_run_json(tmp_path, capsys, damage):
    out = tmp_path / "run"
    assert main(["train", *TRAIN, "--tokens", "2048", "--out", str(out)]) == 0
    capsys.readouterr()
    (out / "run.json").write_bytes(damage)
    before = snapshot(out)
    assert main(["train", *TRAIN, "--tokens", "2048", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "run.json is damaged" in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert snapshot(out) == before


def test_run_json_without_checkpoint_is_still_checked(tmp_path, capsys):
    """A run killed before its first checkpoint has run.json only: other settings are refused, not restarted over."""
    out = tmp_path / "run"
    assert main(["train", *TRAIN, "--tokens", "2048", "--out", str(out)]) == 0
    capsys.readouterr()
    import shutil

    shutil.rmtree(out / "checkpoints")
    (out / "summary.json").unlink()
    record = json.loads((out / "run.json").read_text())
    before = snapshot(out)
    assert main(["train", *TRAIN, "--tokens", "2048", "--n", "32", "--out", str(out)]) == 2
    assert "different settings (sae.n)" in capsys.readouterr().err
    assert snapshot(out) == before and json.loads((out / "run.json").read_text()) == record


def test_metrics_log_that_is_not_utf8(tmp_path, capsys):
    from tests.commands.cli_helpers import interrupted_run

    out = tmp_path / "run"
    interrupted_run(out, 7)
    (out / "metrics.jsonl").write_bytes(b"\xff\xfe{")
    before = snapshot(out)
    assert main(["train", *TRAIN, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "metrics.jsonl is not UTF-8 text" in err and err.count("\n") == 1, err
    assert snapshot(out) == before
