"""--precision: 'auto' resolves by the machine, the run records what ran, and the exact bf16 selection trains
the same SAE as float32."""

import dataclasses
import json

import pytest

from saescale.cli import main
from saescale.data.synthetic import SyntheticConfig, SyntheticSource
from saescale.sae.config import SAEConfig
from saescale.train.config import TrainConfig, resolve_precision
from saescale.train.run import train_sae

pytestmark = pytest.mark.usefixtures("one_thread")

SRC = SyntheticConfig(d=32, features=256, k=4)
SAE = SAEConfig(n=512, k=8)


def cfg(precision: str) -> TrainConfig:
    return TrainConfig(tokens=256 * 24, batch_size=256, log_every=4, init_tokens=512, progress=False,
                       precision=precision, dead_tokens=256 * 4, lr=3e-3)


@pytest.mark.parametrize("fast,want", [("1", "bfloat16"), ("0", "float32")])
def test_auto_follows_the_bf16_probe_and_explicit_values_stay(monkeypatch, fast, want):
    monkeypatch.setenv("SAESCALE_FAST_BF16", fast)
    assert resolve_precision("auto") == want
    assert TrainConfig(precision="auto").resolved(64, 16).precision == want
    assert {resolve_precision(p) for p in ("float32", "bfloat16", "autocast")} == {"float32", "bfloat16", "autocast"}


@pytest.mark.parametrize("sae", [SAE, SAEConfig(arch="switch", n=512, k=8, experts=4)], ids=["topk", "switch"])
def test_exact_bf16_trains_the_float32_sae_and_records_it(tmp_path, sae):
    """Same data, seed and steps: the bf16 run's selection is float32's, so the weights agree to float32 rounding
    (an autocast run, approximate, drifts further), and run.json / metrics.jsonl say which ran. The Switch SAE's
    experts (128 latents each, narrower than a chunk) take the bf16 selection too."""
    logs: list[str] = []
    runs = {}
    for p in ("float32", "bfloat16", "autocast"):
        res = train_sae(sae, cfg(p), SyntheticSource(SRC), tmp_path / p, log=logs.append)
        runs[p] = res.sae.state_dict()
    diff = {p: max((runs[p][k] - runs["float32"][k]).abs().max().item() for k in runs["float32"]) for p in runs}
    assert diff["bfloat16"] < 1e-4, diff
    assert diff["autocast"] > 10 * diff["bfloat16"], diff  # the approximate mode does change the run
    run = json.loads((tmp_path / "bfloat16" / "run.json").read_text())
    assert run["resolved"]["train"]["precision"] == "bfloat16" and run["resolved"]["runtime"]["precision"] == "bfloat16"
    lines = [json.loads(x) for x in (tmp_path / "bfloat16" / "metrics.jsonl").read_text().splitlines()]
    fallback = [x["bf16_fallback_frac"] for x in lines if "bf16_fallback_frac" in x]
    assert fallback and all(0 <= f <= 1 for f in fallback)
    assert not any("bf16_fallback_frac" in json.loads(x) for x in
                   (tmp_path / "float32" / "metrics.jsonl").read_text().splitlines())
    assert sum("encoder selection: bfloat16, exact" in x for x in logs) == 1
    assert sum(x == "encoder selection: float32" for x in logs) == 1


@pytest.mark.parametrize("asked", ["auto", "bfloat16", "autocast"])
def test_an_architecture_without_a_top_k_selection_records_the_float32_it_runs(tmp_path, monkeypatch, asked):
    """ReLU (an L1 penalty) selects no top-k: on a machine with fast bf16 its run records and prints float32, and an
    explicit bf16 request says in the same line that it does not apply."""
    monkeypatch.setenv("SAESCALE_FAST_BF16", "1")
    logs: list[str] = []
    relu = SAEConfig(arch="relu", n=128, k=8)
    train_sae(relu, dataclasses.replace(cfg(asked), tokens=256 * 4, l1_coef=1e-3), SyntheticSource(SRC), tmp_path,
              log=logs.append)
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["resolved"]["train"]["precision"] == "float32" and run["resolved"]["runtime"]["precision"] == "float32"
    line = next(x for x in logs if x.startswith("encoder selection"))
    assert line.startswith("encoder selection: float32")
    assert ("does not apply" in line) == (asked != "auto") and (asked in line) == (asked != "auto")
    assert resolve_precision(asked, precisions=("float32",)) == "float32"


def test_cli_option_prints_the_precision_and_refuses_an_unknown_one(tmp_path, capsys):
    args = ["train", "--acts", "synthetic", "--synth-d", "16", "--synth-features", "64", "--n", "128", "--k", "4",
            "--tokens", "2048", "--batch-size", "256", "--init-tokens", "256", "--no-progress"]
    assert main(args + ["--precision", "bfloat16", "--out", str(tmp_path / "a")]) == 0
    assert "encoder selection: bfloat16, exact" in capsys.readouterr().out
    assert main(args + ["--precision", "fp8", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "--precision" in err and "Traceback" not in err
