"""Distributed training (saescale.distributed) against one process.

Gloo process groups of 2 and 4 CPU processes train tiny SAEs (d=16, n=128, batch 64, 4 steps)
with latent sharding, data parallelism and both, from the same seed and data as one process;
the weights must match to 1e-5 relative. Checkpoints written under one layout are resumed under
another (and by one process). The exact sharded TopK is checked on near-ties. Launches are in a
module fixture (worker code: tests/distributed/dist_workers.py); the kill test launches torchrun. With a GPU,
two ranks also train on it (gloo; NCCL needs one GPU per rank).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from itertools import islice
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saescale.activations.cache import CacheReader, build_cache, built_cache
from saescale.activations.config import ActivationConfig
from saescale.cli import main as cli_main
from saescale.distributed.mesh import Mesh, check_layout
from saescale.distributed.sharded_topk import merge_candidates, stable_topk
from saescale.errors import SaescaleError
from saescale.train.run import train_sae
from tests.distributed import dist_workers as W

pytestmark = pytest.mark.usefixtures("one_thread")

RTOL = 1e-5
LAYOUTS = [(2, 2), (2, 1), (4, 1), (4, 4), (4, 2)]  # (world, latent shards): latent, data, data, latent, both
RESUMES = ["single-to-w2l2", "w4l2-to-w4l4", "w4l2-to-w1"]  # checkpoint written by -> resumed under


def rel_err(ref: torch.Tensor, got: torch.Tensor) -> float:
    return ((got.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


def final(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "sae" / "sae.safetensors"))


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Every run the tests compare, in one folder: <setting>-single (one process), <setting>-w<W>-l<L>,
    the resumed copies <setting>-<resume>, and topk-w<W>.safetensors."""
    tmp = tmp_path_factory.mktemp("dist")
    for name, cfg in W.TRAIN_CFGS.items():
        train_sae(W.SAE_CFG, cfg, W.source(), tmp / f"{name}-single")
        W.rewind(tmp / f"{name}-single", tmp / f"{name}-single-to-w2l2", step=2)
    W.launch(2, "train_layouts", str(tmp), [2, 1])
    W.launch(2, "train_reference", str(tmp))
    W.launch(2, "resume_layout", str(tmp), 2, [(name, f"{name}-single-to-w2l2") for name in W.TRAIN_CFGS])
    W.launch(4, "train_layouts", str(tmp), [1, 4, 2])
    for name in W.TRAIN_CFGS:
        W.rewind(tmp / f"{name}-w4-l2", tmp / f"{name}-w4l2-to-w4l4", step=2)
        W.rewind(tmp / f"{name}-w4-l2", tmp / f"{name}-w4l2-to-w1", step=2)
    W.launch(4, "resume_layout", str(tmp), 4, [(name, f"{name}-w4l2-to-w4l4") for name in W.TRAIN_CFGS])
    for name, cfg in W.TRAIN_CFGS.items():  # one process, no process group, reads the 4-rank checkpoint whole
        r = train_sae(W.SAE_CFG, cfg, W.source(), tmp / f"{name}-w4l2-to-w1", mesh=Mesh.single())
        (tmp / f"{name}-w4l2-to-w1" / "resumed.json").write_text(json.dumps({"from": r.resumed_from}))
    for world in (2, 4):
        W.launch(world, "topk_ties", str(tmp))
        W.launch(world, "sharded_grads", str(tmp))
    return tmp


# ---- exact sharded TopK --------------------------------------------------------------------
def simulated_sharded_topk(pre: torch.Tensor, m: int, shards: int) -> tuple[torch.Tensor, torch.Tensor]:
    """sharded_topk's candidates + merge, with the all-gather done by concatenation in one process."""
    n_l = pre.shape[1] // shards
    cand = [stable_topk(pre[:, s * n_l : (s + 1) * n_l], min(m, n_l)) for s in range(shards)]
    values = torch.cat([v for v, _ in cand], 1)
    indices = torch.cat([c + s * n_l for s, (_, c) in enumerate(cand)], 1)
    top = merge_candidates(values, indices, m)
    return values.gather(1, top), indices.gather(1, top)


def check_topk(pre: torch.Tensor, m: int, values: torch.Tensor, indices: torch.Tensor) -> None:
    """Near-tie rows (even): the set and values of torch.topk; exact-tie rows (odd): the (value desc, index asc) top-m."""
    ref_v, ref_i = pre.topk(m, dim=1)
    assert torch.equal(values, ref_v)  # sorted descending, exactly the top-m values
    assert torch.equal(values, pre.gather(1, indices))
    assert torch.equal(indices[0::2].sort(1).values, ref_i[0::2].sort(1).values)
    assert torch.equal(indices[1::2], stable_topk(pre[1::2], m)[1])


@pytest.mark.parametrize("shards", [1, 2, 4, 8])
def test_sharded_topk_is_exact_on_near_ties(shards):
    pre = W.tie_pre(B=64, seed=shards)
    pre[0, : W.N // shards] += 100.0  # row 0: every top entry on shard 0 (a capacity factor would drop most)
    for m in (1, W.K, 4 * W.K, min(W.N // shards + 3, W.N - 1)):  # the last: more than one shard holds
        ordered = pre[1::2].sort(1, descending=True).values
        assert (ordered[:, m - 1] == ordered[:, m]).float().mean() > 0.5  # exact ties straddle the boundary
        check_topk(pre, m, *simulated_sharded_topk(pre, m, shards))


@pytest.mark.parametrize("world", [2, 4])
def test_sharded_topk_across_processes(runs, world):
    got = load_file(str(runs / f"topk-w{world}.safetensors"))
    pre = W.tie_pre()
    for m in (1, W.K, 4 * W.K, W.N // world + 3):
        check_topk(pre, m, got[f"values{m}"], got[f"indices{m}"])


# ---- one step: the same loss and gradients as the unsharded model ----------------------------------
@pytest.mark.parametrize("world", [2, 4])
def test_sharded_step_gives_the_unsharded_gradients(runs, world):
    """Float64, Multi-TopK + AuxK with every dead latent on shard 0 (the other shards propose no AuxK
    candidate), under latent sharding (l<world>) and data parallelism (l1)."""
    from saescale.sae.base import LossContext
    from tests.helpers import make_sae

    sae = make_sae("topk", W.N, W.K, W.D, dtype=torch.float64, seed=5)
    x = torch.randn(W.BATCH, W.D, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    ref = sae.loss_terms(x, LossContext(torch.arange(W.N) < 20, 8, 1 / 32, 1.3, True, 0.0))
    ref.loss.backward()
    assert ref.aux_loss > 0
    got = load_file(str(runs / f"grads-w{world}.safetensors"))
    for shards in (world, 1):
        assert rel_err(ref.loss.detach(), got[f"l{shards}.loss"]) < 1e-12
        assert rel_err(ref.x_hat.detach(), got[f"l{shards}.x_hat"]) < 1e-12
        for name, p in sae.named_parameters():
            assert rel_err(p.grad, got[f"l{shards}.grad.{name}"]) < 1e-12, (shards, name)


# ---- training equals one process --------------------------------------------------------------
@pytest.mark.parametrize("name", list(W.TRAIN_CFGS))
@pytest.mark.parametrize("world,shards", LAYOUTS)
def test_layouts_match_one_process(runs, name, world, shards):
    ref, run = runs / f"{name}-single", runs / f"{name}-w{world}-l{shards}"
    a, b = final(ref), final(run)
    assert a.keys() == b.keys()
    for k in a:
        assert rel_err(a[k], b[k]) <= RTOL, k
    for ma, mb in zip(metrics(ref), metrics(run), strict=True):  # metrics combined over ranks
        for key in ("loss", "nmse", "l0", "aux_loss", "dead_frac", "fired_frac"):
            assert mb[key] == pytest.approx(ma[key], rel=1e-4, abs=1e-6), (ma["step"], key)
    layout = json.loads((run / "sae" / "cfg.json").read_text())["extra"]["distributed"]
    assert layout == {"world": world, "latent_shards": shards}
    ck = run / "checkpoints" / "step-000000004"
    assert len(list(ck.glob("*.distcp"))) == world  # every rank wrote its own file


@pytest.mark.parametrize("name", list(W.TRAIN_CFGS))
def test_dense_reference_path_matches_one_process(runs, name):
    """SAESCALE_KERNELS=reference under 2 latent shards (dense local pre-activations, stable top-k, embedding_bag)."""
    a, b = final(runs / f"{name}-single"), final(runs / f"{name}-w2-reference")
    for k in a:
        assert rel_err(a[k], b[k]) <= RTOL, k


def test_the_settings_exercise_auxk_and_clipping(runs):
    """The comparisons above are only worth something if AuxK ran and the clipping clipped."""
    for name in W.TRAIN_CFGS:
        assert any(m["aux_loss"] > 0 for m in metrics(runs / f"{name}-single")), name
    cfg = W.TRAIN_CFGS["clip-ema"]
    unclipped = train_sae(W.SAE_CFG, dataclasses.replace(cfg, grad_clip=0.0), W.source()).sae
    assert rel_err(final(runs / "clip-ema-single")["W_enc"], unclipped.W_enc.detach()) > 1e-3


@pytest.mark.parametrize("name", list(W.TRAIN_CFGS))
@pytest.mark.parametrize("resume", RESUMES)
def test_checkpoints_resume_under_another_layout(runs, name, resume):
    run = runs / f"{name}-{resume}"
    assert json.loads((run / "resumed.json").read_text())["from"] == 2
    a, b = final(runs / f"{name}-single"), final(run)
    for k in a:
        assert rel_err(a[k], b[k]) <= RTOL, k
    assert [m["step"] for m in metrics(run)] == [1, 2, 3, 4]  # the log cut back to the checkpoint, then continued


# ---- data: disjoint rows of an activation cache -------------------------------------------------
@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory, tiny_lm_dir) -> Path:
    """A cache of the tiny llama (d=32): 600 train tokens in 64-token shards."""
    from tests.activations.test_cache import make_corpus, tiny_config

    corpus = make_corpus(tmp_path_factory.mktemp("corpus"))
    return build_cache(tiny_config(tiny_lm_dir, corpus), tmp_path_factory.mktemp("cache") / "c", progress=False)


def test_cache_rows_are_the_stream(tiny_cache):
    reader, rows = CacheReader(tiny_cache, "train", seed=3), CacheReader(tiny_cache, "train", seed=3)
    for batch, ranks in [(64, 2), (100, 4)]:
        b = batch // ranks
        for i, x in enumerate(islice(reader.batches(batch), 14)):  # over two epochs
            for r in range(ranks):
                assert torch.equal(rows.rows(i * batch + r * b, b), x[r * b : (r + 1) * b]), (batch, i, r)
    assert reader.max_buffer_tokens > 0 and rows.max_buffer_tokens == 0  # rows() never loads a whole window


def test_distributed_runs_open_a_built_cache_and_never_build_one(tiny_cache, tmp_path):
    cfg = CacheReader(tiny_cache, "train").manifest["config"]
    acts = ActivationConfig(**{**cfg, "cache_dir": str(tiny_cache)})
    assert built_cache(acts) == tiny_cache
    with pytest.raises(SaescaleError, match="is not built yet; build it in one process first") as e:
        built_cache(dataclasses.replace(acts, cache_dir=str(tmp_path / "none")))
    assert "\n" not in str(e.value) and not (tmp_path / "none").exists()


def test_data_parallel_on_a_cache_matches_one_process(tiny_cache, tmp_path):
    ref = train_sae(W.SAE_CFG, W.CACHE_CFG, CacheReader(tiny_cache, "train", 0), tmp_path / "single")
    W.launch(2, "train_cache", str(tmp_path), str(tiny_cache))
    got = final(tmp_path / "cache-w2")
    for k in got:
        assert rel_err(getattr(ref.sae, k).detach(), got[k]) <= RTOL, k


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_layouts_match_one_process(tmp_path):
    """Two ranks on one GPU (gloo carries the CUDA tensors; NCCL needs one GPU per rank): the sharded
    kernels, selection and collectives on CUDA give the single-process CUDA weights."""
    for name, cfg in W.TRAIN_CFGS.items():
        train_sae(W.SAE_CFG, dataclasses.replace(cfg, device="cuda"), W.source(), tmp_path / f"{name}-single")
    W.launch(2, "train_cuda", str(tmp_path))
    for name in W.TRAIN_CFGS:
        a = final(tmp_path / f"{name}-single")
        for shards in (2, 1):
            b = final(tmp_path / f"{name}-w2-l{shards}")
            for k in a:
                assert rel_err(a[k], b[k]) <= RTOL, (name, shards, k)


# ---- pieces --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "world,shards,n,batch,needle",
    [
        (3, 2, 128, 64, "world size 3 is not divisible by --latent-shards 2"),
        (4, 3, 128, 64, "world size 4 is not divisible by --latent-shards 3"),
        (2, 2, 101, 64, "--n 101 is not divisible by --latent-shards 2"),
        (4, 4, 130, 64, "--n 130 is not divisible by --latent-shards 4"),
        (4, 1, 128, 66, "--batch-size 66 is not divisible by the 4 data-parallel replicas"),
    ],
)
def test_layout_errors_are_one_line(world, shards, n, batch, needle):
    with pytest.raises(SaescaleError) as e:
        check_layout(world, shards, n, batch, "topk")
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_latent_shards_without_torchrun_is_a_one_line_error(tmp_path, capsys):
    code = cli_main(["train", "--acts", "synthetic", "--n", "128", "--latent-shards", "2", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: world size 1 is not divisible by --latent-shards 2")
    assert "\n" not in err and "torchrun --nproc-per-node 2" in err
    assert not (tmp_path / "r").exists()


# ---- a killed rank ----------------------------------------------------------------------------
STEPS = 600
TORCHRUN_ARGS = ["--acts", "synthetic", "--synth-d", "16", "--synth-features", "64", "--synth-k", "4", "--n", "256",
                 "--k", "8", "--batch-size", "256", "--tokens", str(256 * STEPS), "--checkpoint-every", "20",
                 "--latent-shards", "2", "--dist-timeout", "30", "--no-progress", "--threads", "1",
                 "--eval-tokens", "2048", "--init-tokens", "1024"]


def torchrun(out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(W.free_port()),
           "-m", "saescale", "--", "train", *TORCHRUN_ARGS, "--out", str(out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def worker_of_rank(parent: int, rank: int) -> int | None:
    """The pid of torchrun ``parent``'s worker with RANK=rank (read from /proc)."""
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                if f"RANK={rank}" in (p / "environ").read_bytes().decode(errors="replace").split("\0"):
                    return int(p.name)
        except (OSError, ValueError, IndexError):
            continue
    return None


def latest_step(out: Path) -> int:
    try:
        return json.loads((out / "checkpoints" / "latest.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.slow
def test_killed_rank_stops_every_rank_then_the_run_resumes(tmp_path):
    out = tmp_path / "run"
    proc = torchrun(out)
    while latest_step(out) < 40 and proc.poll() is None:  # bounded by the process, not the clock
        time.sleep(0.1)
    victim, survivor = worker_of_rank(proc.pid, 1), worker_of_rank(proc.pid, 0)
    assert proc.poll() is None and victim and survivor, "run ended before the kill; raise STEPS"
    os.kill(victim, signal.SIGKILL)
    text = proc.communicate(timeout=300)[0]  # a guard against a hang (--dist-timeout 30 s ends the survivor)
    assert proc.returncode != 0
    assert "error: rank 0 of 2:" in text and "rerun the same command to resume from the last checkpoint" in text, text
    assert not Path(f"/proc/{survivor}").exists()  # rank 0 exited too (not left running, orphaned)
    killed_at = latest_step(out)
    assert 40 <= killed_at < STEPS

    again = torchrun(out)
    text = again.communicate(timeout=300)[0]
    assert again.returncode == 0, text
    assert f"resuming {out} from step {killed_at}" in text
    assert text.count("held-out nMSE") == 1  # only rank 0 prints
    steps = [m["step"] for m in metrics(out)]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS
    assert final(out)["W_dec"].shape == (256, 16)
