"""Launching gloo process groups from a test, and the work each rank does in tests/distributed/test_distributed.py.

Processes come from a forkserver that imported torch and saescale once (a fresh interpreter per rank
would pay ~3 s of imports each on a loaded 2-core machine), one torch thread each, on a free port.
Ranks write what the test checks to files (safetensors, never pickle); the test process compares.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import multiprocessing
import os
import shutil
import socket
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from saescale.data.synthetic import SyntheticConfig, SyntheticSource
from saescale.distributed.mesh import DistConfig, check_layout, init_mesh
from saescale.distributed.sharded_topk import sharded_topk
from saescale.sae.config import SAEConfig
from saescale.train.config import TrainConfig
from saescale.train.run import train_sae

D, N, K, BATCH, STEPS = 16, 128, 4, 64, 4
SAE_CFG = SAEConfig(n=N, k=K)  # layernorm inputs
# two training settings, each run under every layout: (AuxK + Multi-TopK, early decoder step) and
# (clipping that does clip, EMA, plain TopK); latents die after one batch so AuxK is on from step 2
TRAIN_CFGS = {
    "auxk-multi": TrainConfig(tokens=BATCH * STEPS, batch_size=BATCH, lr=1e-2, dead_tokens=BATCH, k_aux=8,
                              multi_topk=True, init_tokens=256, checkpoint_every=2, log_every=1, progress=False),
    "clip-ema": TrainConfig(tokens=BATCH * STEPS, batch_size=BATCH, lr=1e-2, dead_tokens=BATCH, k_aux=8, grad_clip=0.05,
                            ema=0.9, init_tokens=256, checkpoint_every=2, log_every=1, progress=False),
}


ARCHS = ("relu", "gated", "prolu", "jumprelu", "batchtopk", "matryoshka")  # data-parallel (topk: TRAIN_CFGS)
ARCH_SAE = {arch: SAEConfig(arch=arch, n=N, k=K) for arch in ARCHS}
# AuxK on from step 2 for the BatchTopK family; a penalty large enough to move the thresholds and gates
ARCH_TRAIN = {arch: TrainConfig(tokens=BATCH * STEPS, batch_size=BATCH, lr=1e-2, dead_tokens=BATCH, k_aux=8,
                                l1_coef=0.05, l0_coef=0.05, threshold_lr_mult=10.0 if arch == "jumprelu" else 1.0,
                                init_tokens=256, checkpoint_every=2, log_every=1, progress=False) for arch in ARCHS}


def source() -> SyntheticSource:
    return SyntheticSource(SyntheticConfig(d=D, features=64, k=4))


def tie_pre(B: int = 32, n: int = N, seed: int = 0) -> torch.Tensor:
    """Pre-activations (B, n) with many near-ties (8 levels + noise of 1e-6) and, in odd rows, exact ties."""
    g = torch.Generator().manual_seed(seed)
    pre = torch.randint(0, 8, (B, n), generator=g).double() + 1e-6 * torch.randn(B, n, generator=g, dtype=torch.float64)
    pre[1::2] = pre[1::2].round()  # exact ties: 8 levels only
    return pre


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world: int, fn_name: str, *args) -> None:
    """Run ``fn_name(rank, world, *args)`` of this module on ``world`` processes joined in one gloo group."""
    import torch.multiprocessing as mp

    # what every rank imports, once in the forkserver: Adam imports torch._dynamo on first use (~5 s here)
    multiprocessing.set_forkserver_preload(["torch._dynamo", "torch.distributed.checkpoint", "torch.distributed.tensor",
                                            "saescale.activations.cache", "tests.distributed.dist_workers"])
    mp.start_processes(_entry, args=(world, free_port(), fn_name, args), nprocs=world, start_method="forkserver")


def _entry(rank: int, world: int, port: int, fn_name: str, args: tuple) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    try:
        globals()[fn_name](rank, world, *args)
    finally:
        dist.destroy_process_group()


def _mesh(rank: int, world: int, shards: int):
    layout = check_layout(world, shards, N, BATCH, "topk")
    return init_mesh(layout, rank, DistConfig(dist_timeout=60), torch.device("cpu"))


def rewind(run: Path, to: Path, step: int) -> None:
    """Copy run folder ``run`` to ``to`` as if it had been killed right after the checkpoint of ``step``."""
    shutil.copytree(run, to)
    for p in (to / "checkpoints").glob("step-*"):
        if int(p.name.split("-")[1]) > step:
            shutil.rmtree(p)
    shutil.rmtree(to / "sae", ignore_errors=True)
    (to / "checkpoints" / "latest.json").write_text(json.dumps({"folder": f"step-{step:09d}", "step": step}))


def train_layouts(rank: int, world: int, tmp: str, shard_counts: list[int]) -> None:
    """Each training setting under each latent-shard count: OUT = tmp/<setting>-w<world>-l<shards>."""
    for shards in shard_counts:
        mesh = _mesh(rank, world, shards)
        for name, cfg in TRAIN_CFGS.items():
            train_sae(SAE_CFG, cfg, source(), Path(tmp) / f"{name}-w{world}-l{shards}", mesh=mesh)


def train_archs(rank: int, world: int, tmp: str, kernels: str) -> None:
    """Every architecture besides TopK data-parallel over ``world`` ranks: OUT = tmp/<arch>-w<world>-<kernels>."""
    os.environ["SAESCALE_KERNELS"] = kernels
    for arch in ARCHS:
        layout = check_layout(world, 1, N, BATCH, arch)
        mesh = init_mesh(layout, rank, DistConfig(dist_timeout=60), torch.device("cpu"))
        train_sae(ARCH_SAE[arch], ARCH_TRAIN[arch], source(), Path(tmp) / f"{arch}-w{world}-{kernels}", mesh=mesh)


def resume_layout(rank: int, world: int, tmp: str, shards: int, runs: list[tuple[str, str]]) -> None:
    """Resume each (training setting, rewound run folder tmp/<folder>) under ``shards`` latent shards and finish it."""
    mesh = _mesh(rank, world, shards)
    for name, folder in runs:
        r = train_sae(SAE_CFG, TRAIN_CFGS[name], source(), Path(tmp) / folder, mesh=mesh)
        if rank == 0:
            (Path(tmp) / folder / "resumed.json").write_text(json.dumps({"from": r.resumed_from}))


def topk_ties(rank: int, world: int, tmp: str) -> None:
    """The sharded top-m of tie_pre() under latent sharding by ``world``: rank 0 writes values/indices."""
    mesh = _mesh(rank, world, world)
    pre = tie_pre()
    n_l = N // world
    out = {}
    for m in (1, K, 4 * K, n_l + 3):
        v, i = sharded_topk(pre[:, rank * n_l : (rank + 1) * n_l], m, mesh)
        out[f"values{m}"], out[f"indices{m}"] = v, i
    if rank == 0:
        save_file(out, str(Path(tmp) / f"topk-w{world}.safetensors"))


CACHE_CFG = TrainConfig(tokens=BATCH * 12, batch_size=BATCH, lr=1e-2, dead_tokens=BATCH, k_aux=8, init_tokens=128,
                        progress=False)  # 768 tokens: more than an epoch of the tiny cache's 600


def train_cache(rank: int, world: int, tmp: str, cache: str) -> None:
    """Data parallel over all ``world`` ranks on an activation cache: OUT = tmp/cache-w<world>."""
    from saescale.activations.cache import CacheReader

    mesh = _mesh(rank, world, 1)
    train_sae(SAE_CFG, CACHE_CFG, CacheReader(cache, "train", 0), Path(tmp) / f"cache-w{world}", mesh=mesh)


def train_cuda(rank: int, world: int, tmp: str) -> None:
    """On one GPU shared by ``world`` ranks (gloo moves the CUDA tensors): each setting, latent and data parallel."""
    torch.cuda.set_device(0)
    for shards in (world, 1):
        layout = check_layout(world, shards, N, BATCH, "topk")
        mesh = init_mesh(layout, rank, DistConfig(dist_timeout=60), torch.device("cuda", 0))
        for name, cfg in TRAIN_CFGS.items():
            cfg = dataclasses.replace(cfg, device="cuda")
            train_sae(SAE_CFG, cfg, source(), Path(tmp) / f"{name}-w{world}-l{shards}", mesh=mesh)


def train_reference(rank: int, world: int, tmp: str) -> None:
    """The dense reference path (SAESCALE_KERNELS=reference), L = world:
    OUT = tmp/<setting>-w<world>-reference."""
    os.environ["SAESCALE_KERNELS"] = "reference"
    mesh = _mesh(rank, world, world)
    for name, cfg in TRAIN_CFGS.items():
        train_sae(SAE_CFG, cfg, source(), Path(tmp) / f"{name}-w{world}-reference", mesh=mesh)


def sharded_grads(rank: int, world: int, tmp: str) -> None:
    """One forward/backward of a TopK SAE's shard on a float64 SAE with the dead latents all on shard 0, under
    latent sharding (L = world) and data parallelism (D = world): rank 0 writes loss, x̂ and whole gradients."""
    from saescale.sae.base import PARAMS, SHARDED, LossContext
    from saescale.sae.registry import build_sae
    from tests.helpers import make_sae

    sae = make_sae("topk", N, K, D, dtype=torch.float64, seed=5)
    x = torch.randn(BATCH, D, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    dead = torch.arange(N) < 20  # shards other than 0 have no dead latent
    out = {}
    for shards in (world, 1):
        mesh = _mesh(rank, world, shards)
        part = build_sae(sae.cfg, mesh).double()
        shard = part.shard
        with torch.no_grad():
            for name in PARAMS:
                whole = getattr(sae, name)
                getattr(part, name).copy_(whole[shard.lo : shard.hi] if name in SHARDED else whole)
        rows = x.chunk(mesh.data_shards)[mesh.data_rank]
        ctx = LossContext(dead[shard.lo : shard.hi], 8, 1 / 32, 1.3, True, 0.0, BATCH)
        step = part.loss_terms(rows, ctx)
        step.loss.backward()
        for name, p in part.named_parameters():
            mesh.all_reduce(p.grad, "data")
            whole = mesh.gather_rows(p.grad) if name != "b_pre" else p.grad
            if rank == 0:
                out[f"l{shards}.grad.{name}"] = whole
        loss = mesh.all_reduce(step.loss.detach().clone(), "data")
        x_hat = torch.cat(list(mesh.all_gather(step.x_hat.detach(), "data")))
        if rank == 0:
            out[f"l{shards}.loss"], out[f"l{shards}.x_hat"] = loss, x_hat
    if rank == 0:
        save_file(out, str(Path(tmp) / f"grads-w{world}.safetensors"))
