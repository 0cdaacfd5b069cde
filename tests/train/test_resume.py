"""A run killed with SIGKILL resumes to bit-identical weights; bad data mid-run loses nothing saved."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saescale.data.synthetic import SyntheticConfig, SyntheticSource
from saescale.errors import SaescaleError
from saescale.sae.config import SAEConfig
from saescale.train.config import TrainConfig
from saescale.train.run import train_sae

ARGS = ["--acts", "synthetic", "--n", "256", "--k", "8", "--normalize", "none", "--tokens", "300000",
        "--batch-size", "512", "--checkpoint-every", "25", "--log-every", "5", "--ema", "0.99",
        "--dead-tokens", "20000", "--threads", "1", "--no-progress", "--eval-tokens", "2048"]


def run_cli(out: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "saescale", "train", *ARGS, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, **kw)


def latest_step(out: Path) -> int:
    try:
        return json.loads((out / "checkpoints" / "latest.json").read_text())["step"]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(tmp_path):
    ref = run_cli(tmp_path / "ref")
    assert ref.wait(timeout=300) == 0, ref.stdout.read()

    out = tmp_path / "killed"
    proc = run_cli(out)
    while latest_step(out) < 50 and proc.poll() is None:  # bounded by the process, not the clock
        time.sleep(0.05)
    time.sleep(random.Random(7).uniform(0.0, 0.5))  # kill at an arbitrary point between checkpoints
    assert proc.poll() is None, "run finished before it could be killed; raise --tokens"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = latest_step(out)
    assert 0 < killed_at < 585

    again = run_cli(out)
    text = again.communicate(timeout=300)[0]
    assert again.returncode == 0, text
    assert f"resuming {out} from step {killed_at}" in text

    a = load_file(str(tmp_path / "ref" / "sae" / "sae.safetensors"))
    b = load_file(str(out / "sae" / "sae.safetensors"))
    for name in a:
        assert torch.equal(a[name], b[name]), name
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 585  # no duplicated or lost log lines


class _PoisonedSource(SyntheticSource):
    """Synthetic data with a NaN in batch ``bad``."""

    bad = 30

    def batch(self, batch_size, index):
        x = super().batch(batch_size, index)
        if index == self.bad:
            x[0, 0] = float("nan")
        return x


def test_nan_batch_stops_with_clear_error_and_keeps_checkpoint(tmp_path):
    src = _PoisonedSource(SyntheticConfig(d=16, features=32, k=2))
    cfg = TrainConfig(tokens=64 * 60, batch_size=64, checkpoint_every=10, progress=False, init_tokens=64)
    sae_cfg = SAEConfig(n=32, k=2, normalize="none")
    with pytest.raises(SaescaleError, match="NaN/inf") as e:
        train_sae(sae_cfg, cfg, src, tmp_path)
    assert "\n" not in str(e.value)
    ck = tmp_path / "checkpoints"
    assert json.loads((ck / "latest.json").read_text())["step"] == 30
    before = {p: p.read_bytes() for p in (ck / "step-000000030").iterdir()}
    with pytest.raises(SaescaleError):  # retrying hits the same batch and still leaves the checkpoint alone
        train_sae(sae_cfg, cfg, src, tmp_path)
    assert {p: p.read_bytes() for p in (ck / "step-000000030").iterdir()} == before
    assert not (tmp_path / "sae").exists()


def test_changed_settings_refuse_to_resume(tmp_path):
    src = SyntheticSource(SyntheticConfig(d=16, features=32, k=2))
    cfg = TrainConfig(tokens=64 * 10, batch_size=64, checkpoint_every=5, progress=False, init_tokens=64)
    train_sae(SAEConfig(n=32, k=2, normalize="none"), cfg, src, tmp_path)
    with pytest.raises(SaescaleError, match="sae.k") as e:
        train_sae(SAEConfig(n=32, k=3, normalize="none"), cfg, src, tmp_path)
    assert "another --out" in str(e.value)
