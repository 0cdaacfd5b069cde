"""Data-parallel training of every architecture besides TopK (TopK's layouts: test_distributed.py).

2 and 4 gloo CPU processes train the tiny SAEs of tests/distributed/dist_workers.py (d=16, n=128, batch 64,
4 steps) from the same seed and data as one process, each rank on its rows of every global batch; the
weights (BatchTopK's inference threshold included) and the logged metrics must match one process to 1e-5.
BatchTopK and Matryoshka select the global batch's top-(B k) across the replicas, with the fast kernels
and with the dense reference. Latent sharding of these architectures is refused with one line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saescale.distributed.mesh import check_layout
from saescale.errors import SaescaleError
from saescale.train.run import train_sae
from tests.distributed import dist_workers as W

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

RTOL = 1e-5
RUNS = [(2, "fast"), (4, "fast"), (2, "reference")]


def rel_err(ref: torch.Tensor, got: torch.Tensor) -> float:
    return ((got.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30)).item()


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("dist-archs")
    for arch in W.ARCHS:
        train_sae(W.ARCH_SAE[arch], W.ARCH_TRAIN[arch], W.source(), tmp / f"{arch}-single")
    for world, kernels in RUNS:
        W.launch(world, "train_archs", str(tmp), kernels)
    return tmp


@pytest.mark.parametrize("world,kernels", RUNS)
@pytest.mark.parametrize("arch", W.ARCHS)
def test_data_parallel_matches_one_process(runs, arch, world, kernels):
    ref, run = runs / f"{arch}-single", runs / f"{arch}-w{world}-{kernels}"
    a, b = load_file(str(ref / "sae" / "sae.safetensors")), load_file(str(run / "sae" / "sae.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert rel_err(a[k], b[k]) <= RTOL, k
    for ma, mb in zip(metrics(ref), metrics(run), strict=True):
        for key in ("loss", "nmse", "l0", "aux_loss", "dead_frac", "fired_frac"):
            assert mb[key] == pytest.approx(ma[key], rel=1e-4, abs=1e-6), (ma["step"], key)
    assert json.loads((run / "sae" / "cfg.json").read_text())["extra"]["distributed"] == {"world": world,
                                                                                        "latent_shards": 1}


def test_the_runs_move_what_distribution_could_get_wrong(runs):
    """The settings exercise what a replica could compute on its own rows only: BatchTopK's per-token L0
    varies (the cut is batch-wide), AuxK fires, the inference threshold is set, JumpReLU's thresholds move."""
    bt = metrics(runs / "batchtopk-single")
    assert any(m["aux_loss"] > 0 for m in bt)
    thr = load_file(str(runs / "batchtopk-single" / "sae" / "sae.safetensors"))["threshold"]
    assert (thr > 0).all()
    jr = load_file(str(runs / "jumprelu-single" / "sae" / "sae.safetensors"))["log_threshold"]
    assert jr.std() > 0  # thresholds moved apart from their common initial value


@pytest.mark.parametrize("arch", W.ARCHS)
def test_latent_sharding_is_refused_in_one_line(arch):
    with pytest.raises(SaescaleError, match=f"latent sharding .* supports --arch topk only, got '{arch}'"):
        check_layout(2, 2, W.N, W.BATCH, arch)
    assert check_layout(2, 1, W.N, W.BATCH, arch).data_shards == 2
