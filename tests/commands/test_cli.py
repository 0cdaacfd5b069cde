"""The command line: help text from field docstrings, one-line errors, a real end-to-end run."""

import subprocess
import sys

import pytest

from saescale.cliargs import build_parser, field_docs, parse_config
from saescale.commands.train import TrainCommand
from saescale.errors import SaescaleError
from saescale.sae.config import SAEConfig


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "saescale", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("command", ["train", "cache", "eval"])
def test_every_option_has_help_text(command):
    from saescale.cli import _commands

    parser = build_parser(_commands()[command][1], f"saescale {command}")
    for action in parser._actions:
        if action.dest != "help":
            assert action.help and len(action.help) > 10, action.dest


def test_help_shows_field_docstrings():
    r = cli("train", "--help")
    assert r.returncode == 0
    assert "Active latents per token: exactly k for 'topk'" in " ".join(r.stdout.split())
    assert field_docs(SAEConfig)["k"].startswith("Active latents per token")
    top = cli("--help")
    assert "train" in top.stdout and "cache" in top.stdout


@pytest.mark.parametrize(
    "args,needle",
    [
        (["train", "--bogus", "1"], "unrecognized arguments: --bogus"),
        (["train", "--k", "0"], "--k must be >= 1, got 0"),
        (["train", "--lr", "fast"], "invalid float value: 'fast'"),
        (["train", "--normalize", "zscore"], "invalid choice: 'zscore'"),
        (["train", "--acts", "/no/such/cache"], "not found"),
        (["frobnicate"], "unknown command 'frobnicate'"),
        (["cache", "--context-len", "1"], "--context-len must be >= 2, got 1"),
    ],
)
def test_bad_options_give_one_line_errors(args, needle):
    r = cli(*args)
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert needle in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_parse_config_builds_nested_configs():
    cmd = parse_config(TrainCommand, ["--n", "512", "--no-tied-init", "--acts", "synthetic", "--lr-decay", "cosine"], "t")
    assert cmd.sae.n == 512 and cmd.train.tied_init is False and cmd.run.acts == "synthetic"
    assert cmd.train.lr_decay == "cosine" and cmd.sae.k == SAEConfig().k
    with pytest.raises(SaescaleError):
        parse_config(TrainCommand, ["--n"], "t")


def test_positionals_prefixes_and_their_option_forms():
    from saescale.commands.eval import EvalCommand
    from saescale.commands.fit import FitConfig
    from saescale.commands.sweep import SweepConfig

    a = parse_config(EvalCommand, ["runs/x/sae", "--n2g-latents", "3", "--probe-tasks", "has_digit"], "e")
    b = parse_config(EvalCommand, ["--n2g-latents", "3", "--sae", "runs/x/sae", "--probe-tasks", "has_digit"], "e")
    assert a == b and a.sae == "runs/x/sae" and a.n2g.latents == 3 and a.probes.tasks == "has_digit"
    assert parse_config(FitConfig, ["--bootstrap", "0", "a", "b"], "f").paths == ["a", "b"]
    assert parse_config(FitConfig, ["a", "--results", "b,c"], "f").paths == ["b", "c", "a"]
    assert parse_config(SweepConfig, ["--no-fit", "s.toml"], "s").spec == "s.toml"
    assert parse_config(TrainCommand, ["--acts", "synthetic", "--synth-d", "8", "--synth-k", "2"], "t").synthetic.d == 8
    with pytest.raises(SaescaleError, match="required: SAE \\(or --sae\\)"):
        parse_config(EvalCommand, ["--seed", "1"], "e")
    r = cli("eval", "--help")
    assert r.returncode == 0 and "SAE folder" in r.stdout and "--n2g-latents" in r.stdout


def test_train_on_synthetic_end_to_end(tmp_path):
    r = cli("train", "--acts", "synthetic", "--n", "256", "--k", "8", "--normalize", "none", "--lr", "0.01",
            "--tokens", "200000", "--batch-size", "1024", "--threads", "1", "--no-progress", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "recovered features" in r.stdout and "held-out nMSE" in r.stdout
    for f in ("sae/cfg.json", "sae/sae.safetensors", "metrics.jsonl", "summary.json", "eval.json", "run.json"):
        assert (tmp_path / f).is_file(), f
