"""Resuming checks every field of a checkpoint against the run before using it (issue 14).

Before: a checkpoint with a missing key, a tensor of the wrong shape or dtype, a NaN or a forged step
count gave a traceback, a bogus 'training diverged', memory corruption (fused Adam on a moment of the
wrong shape aborts the process) or, with a forged step, the early weights saved as the final SAE.
Each field of each file of a checkpoint (state.json, cfg.json, sae.safetensors, state.safetensors,
latest.json; a distributed checkpoint's state.json and, for a sample of damages, its DCP tensors) is
damaged in turn: resuming must refuse with one line that names the file and the field, and leave
every file of the run as it was. ``test_every_field_has_cases`` fails when a checkpoint gains a field
(found in a real one) that has no case here.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from safetensors.torch import load_file, save_file

from saescale.data.synthetic import SyntheticConfig, SyntheticSource
from saescale.errors import SaescaleError
from saescale.sae.base import PARAMS
from saescale.sae.config import SAEConfig
from saescale.train.config import TrainConfig
from saescale.train.run import train_sae

pytestmark = pytest.mark.usefixtures("one_thread")

SRC = SyntheticConfig(d=8, features=16, k=2)
CFG = TrainConfig(tokens=64 * 4, batch_size=64, checkpoint_every=2, log_every=1, init_tokens=64, ema=0.9,
                  progress=False)  # EMA on: the checkpoint holds every kind of tensor
SAE = SAEConfig(n=32, k=4)
STEP = 2  # the killed runs resume from this checkpoint of 4 steps
CK = f"checkpoints/step-{STEP:09d}"
NAN, INF = float("nan"), float("inf")


# ---- damages ------------------------------------------------------------------------------------
Edit = Callable[[dict], Any]


def drop(key: str) -> Edit:
    return lambda r: r.pop(key)


def put(key: str, value: Any) -> Edit:
    return lambda r: r.__setitem__(key, value)


def edit(key: str, f: Callable[[Any], Any]) -> Edit:
    return lambda r: r.__setitem__(key, f(r[key]))


def nan_first(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[0] = NAN
    return t


def one_more(t: torch.Tensor) -> torch.Tensor:
    """The tensor with its first row (entry) repeated: one too many along dim 0."""
    return torch.cat([t, t[:1]])


def rng_header(left: int, seeded: int, nxt: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """A torch CPU generator state with its Mersenne Twister header (seed, left, seeded, next) replaced."""
    def f(t: torch.Tensor) -> torch.Tensor:
        b = bytearray(t.numpy().tobytes())
        seed = struct.unpack_from("@Q", b, 0)[0]
        struct.pack_into("@QiiQ", b, 0, seed, left, seeded, nxt)
        return torch.frombuffer(b, dtype=torch.uint8).clone()
    return f


@dataclass(frozen=True)
class Case:
    file: str  # the damaged file, as the tests name it (see path_of)
    field: str  # the field (JSON key or tensor name) the error must name
    how: str
    damage: Edit

    @property
    def id(self) -> str:
        return f"{self.file}:{self.field}:{self.how}"


OTHER_DTYPE = {torch.float32: torch.float64, torch.int64: torch.int32, torch.uint8: torch.int8}


def tensor_cases(file: str, key: str, dtype: torch.dtype) -> list[Case]:
    """Removed, one row too many, another dtype, and a NaN (float tensors) for tensor ``key``."""
    cases = [Case(file, key, "missing", drop(key)), Case(file, key, "shape", edit(key, one_more)),
             Case(file, key, "dtype", edit(key, lambda t: t.to(OTHER_DTYPE[t.dtype])))]
    if dtype.is_floating_point:
        cases.append(Case(file, key, "nan", edit(key, nan_first)))
    return cases


def meta_cases(file: str) -> list[Case]:
    """The trainer's state.json fields (of either kind of checkpoint): removed, mistyped, forged."""
    f = file
    return [
        Case(f, "step", "missing", drop("step")), Case(f, "step", "str", put("step", "2")),
        Case(f, "step", "float", put("step", 2.0)), Case(f, "step", "bool", put("step", True)),
        Case(f, "step", "zero", put("step", 0)), Case(f, "step", "past-the-end", put("step", 5)),
        Case(f, "step", "forged-final", put("step", 4)),  # = steps: the loop would see nothing left to train
        Case(f, "step", "forged-earlier", put("step", 1)),
        Case(f, "tokens_seen", "missing", drop("tokens_seen")),
        Case(f, "tokens_seen", "null", put("tokens_seen", None)),
        Case(f, "tokens_seen", "forged", put("tokens_seen", 129)),
        Case(f, "tokens_seen", "negative", put("tokens_seen", -128)),
        Case(f, "loss_scale", "missing", drop("loss_scale")), Case(f, "loss_scale", "str", put("loss_scale", "1.0")),
        Case(f, "loss_scale", "nan", put("loss_scale", NAN)), Case(f, "loss_scale", "inf", put("loss_scale", INF)),
        Case(f, "loss_scale", "zero", put("loss_scale", 0.0)),
        Case(f, "loss_scale", "negative", put("loss_scale", -1.0)),
        Case(f, "ema_t", "missing", drop("ema_t")), Case(f, "ema_t", "float", put("ema_t", 2.5)),
        Case(f, "ema_t", "forged", put("ema_t", 1)), Case(f, "ema_t", "zero-with-ema", put("ema_t", 0)),
        Case(f, "note", "unknown", put("note", 1)),
    ]


SINGLE_CASES = [
    *meta_cases("state.json"),
    Case("cfg.json", "format", "missing", drop("format")), Case("cfg.json", "format", "other", put("format", "sae-v0")),
    Case("cfg.json", "extra", "missing", drop("extra")), Case("cfg.json", "extra", "list", put("extra", [])),
    Case("cfg.json", "arch", "missing", drop("arch")), Case("cfg.json", "arch", "int", put("arch", 5)),
    Case("cfg.json", "arch", "forged", put("arch", "relu")),
    Case("cfg.json", "n", "missing", drop("n")), Case("cfg.json", "n", "str", put("n", "32")),
    Case("cfg.json", "n", "forged", put("n", 64)), Case("cfg.json", "n", "zero", put("n", 0)),
    Case("cfg.json", "k", "missing", drop("k")), Case("cfg.json", "k", "float", put("k", 4.5)),
    Case("cfg.json", "k", "forged", put("k", 8)), Case("cfg.json", "k", "beyond-n", put("k", 40)),
    Case("cfg.json", "d", "missing", drop("d")), Case("cfg.json", "d", "null", put("d", None)),
    Case("cfg.json", "d", "forged", put("d", 16)),
    Case("cfg.json", "normalize", "missing", drop("normalize")),
    Case("cfg.json", "normalize", "unknown-kind", put("normalize", "bogus")),
    Case("cfg.json", "normalize", "forged", put("normalize", "none")),
    Case("cfg.json", "norm_scale", "missing", drop("norm_scale")),
    Case("cfg.json", "norm_scale", "str", put("norm_scale", "x")),
    Case("cfg.json", "norm_scale", "forged", put("norm_scale", 0.5)),
    Case("cfg.json", "width", "unknown", put("width", 8)),
    Case("cfg.json", "prefixes", "str", put("prefixes", "8")),
    Case("cfg.json", "prefixes", "forged", put("prefixes", [8, 32])),
    Case("cfg.json", "bandwidth", "str", put("bandwidth", "x")),
    Case("cfg.json", "bandwidth", "forged", put("bandwidth", 0.01)),
    Case("cfg.json", "prolu_grad", "unknown-kind", put("prolu_grad", "bogus")),
    Case("cfg.json", "prolu_grad", "forged", put("prolu_grad", "relu")),
    Case("cfg.json", "threshold_lr", "str", put("threshold_lr", "x")),
    Case("cfg.json", "threshold_lr", "forged", put("threshold_lr", 0.5)),
    Case("cfg.json", "experts", "str", put("experts", "x")),
    Case("cfg.json", "experts", "forged", put("experts", 4)),
    Case("cfg.json", "d_out", "str", put("d_out", "x")),
    Case("cfg.json", "d_out", "forged", put("d_out", 16)),  # a transcoder's config on an SAE's checkpoint
    Case("cfg.json", "skip", "str", put("skip", "yes")),
    Case("cfg.json", "skip", "forged", put("skip", True)),
    Case("cfg.json", "target_scale", "str", put("target_scale", "x")),
    Case("cfg.json", "target_scale", "forged", put("target_scale", 2.0)),
    *[c for p in PARAMS for c in tensor_cases("sae.safetensors", p, torch.float32)],
    Case("sae.safetensors", "W_dec", "rows-not-unit", edit("W_dec", lambda t: 2 * t)),
    Case("sae.safetensors", "W_dec", "all-zero", edit("W_dec", torch.zeros_like)),
    Case("sae.safetensors", "W_extra", "unknown", put("W_extra", torch.zeros(3))),
    *tensor_cases("state.safetensors", "since_fired", torch.int64),
    Case("state.safetensors", "since_fired", "negative", edit("since_fired", lambda t: t - 64)),
    Case("state.safetensors", "since_fired", "not-a-batch-multiple", edit("since_fired", lambda t: t + 1)),
    Case("state.safetensors", "since_fired", "past-tokens-seen", edit("since_fired", lambda t: t + 192)),
    *tensor_cases("state.safetensors", "rng.torch", torch.uint8),
    Case("state.safetensors", "rng.torch", "left-zero", edit("rng.torch", rng_header(0, 1, 624))),
    Case("state.safetensors", "rng.torch", "next-out-of-range", edit("rng.torch", rng_header(1, 1, 10**9))),
    Case("state.safetensors", "rng.torch", "next-past-the-state", edit("rng.torch", rng_header(624, 1, 624))),
    Case("state.safetensors", "rng.torch", "unseeded", edit("rng.torch", rng_header(1, 0, 0))),
    *[c for p in PARAMS for c in tensor_cases("state.safetensors", f"opt.{p}.step", torch.float32)],
    *[Case("state.safetensors", f"opt.{p}.step", "forged", put(f"opt.{p}.step", torch.tensor([3.0]))) for p in PARAMS],
    *[c for p in PARAMS for m in ("exp_avg", "exp_avg_sq") for c in tensor_cases("state.safetensors", f"opt.{p}.{m}",
                                                                                 torch.float32)],
    *[Case("state.safetensors", f"opt.{p}.exp_avg_sq", "negative", edit(f"opt.{p}.exp_avg_sq", lambda t: -t - 1))
      for p in PARAMS],
    *[c for p in PARAMS for c in tensor_cases("state.safetensors", f"ema.{p}", torch.float32)],
    Case("state.safetensors", "opt.W_enc.max_exp_avg_sq", "unknown",
         put("opt.W_enc.max_exp_avg_sq", torch.zeros(32, 8))),
    Case("latest.json", "folder", "missing", drop("folder")), Case("latest.json", "folder", "int", put("folder", 2)),
    Case("latest.json", "folder", "outside", put("folder", "../../step-000000002")),
    Case("latest.json", "step", "missing", drop("step")), Case("latest.json", "step", "str", put("step", "2")),
    Case("latest.json", "step", "forged", put("step", 4)), Case("latest.json", "step", "zero", put("step", 0)),
    Case("latest.json", "note", "unknown", put("note", 1)),
]

DCP_CASES = [
    *meta_cases("dcp state.json"),
    Case("dcp state.json", "format", "missing", drop("format")),
    Case("dcp state.json", "format", "other", put("format", "saescale-dcp-v0")),
    Case("dcp state.json", "sae", "missing", drop("sae")), Case("dcp state.json", "sae", "str", put("sae", "topk")),
    Case("dcp state.json", "n", "forged", edit("sae", lambda s: {**s, "n": 64})),
    Case("dcp state.json", "k", "missing", edit("sae", lambda s: {k: v for k, v in s.items() if k != "k"})),
    Case("dcp state.json", "layout", "missing", drop("layout")),
    Case("dcp state.json", "layout", "list", put("layout", [2, 2])),
    Case("dcp state.json", "layout", "one-process", put("layout", {"world": 1, "latent_shards": 1})),
    Case("dcp state.json", "layout", "shards-not-dividing", put("layout", {"world": 2, "latent_shards": 3})),
    Case("dcp state.json", "latent_shards", "missing", put("layout", {"world": 2})),
    Case("dcp state.json", "world", "str", put("layout", {"world": "2", "latent_shards": 2})),
    Case("DCP", "since_fired", "missing", drop("since_fired")),
    Case("DCP", "W_enc", "shape", edit("W_enc", lambda t: torch.cat([t, t[:, :1]], 1))),
    Case("DCP", "opt.W_dec.exp_avg", "shape", edit("opt.W_dec.exp_avg", one_more)),
    Case("DCP", "opt.W_enc.exp_avg_sq", "dtype", edit("opt.W_enc.exp_avg_sq", lambda t: t.double())),
    Case("DCP", "ema.b_enc", "nan", edit("ema.b_enc", nan_first)),
    Case("DCP", "opt.b_pre.step", "forged", put("opt.b_pre.step", torch.tensor([3.0]))),
    Case("DCP", "rng.torch", "next-out-of-range", edit("rng.torch", rng_header(1, 1, 10**9))),
    Case("DCP", "W_dec", "rows-not-unit", edit("W_dec", lambda t: 2 * t)),
    Case("DCP", "opt.W_enc.max_exp_avg_sq", "unknown", put("opt.W_enc.max_exp_avg_sq", torch.zeros(32, 8))),
]


# ---- run folders --------------------------------------------------------------------------------
def killed_copy(run: Path, to: Path) -> Path:
    """A copy of finished ``run`` as if killed right after its step-2 checkpoint."""
    shutil.copytree(run, to)
    shutil.rmtree(to / "checkpoints" / "step-000000004")
    shutil.rmtree(to / "sae")
    (to / "summary.json").unlink()
    (to / "checkpoints" / "latest.json").write_text(json.dumps({"folder": f"step-{STEP:09d}", "step": STEP}))
    return to


def read_checkpoint(folder: Path) -> tuple[dict, dict, dict[str, torch.Tensor]]:
    """(state.json, cfg.json, every tensor: the SAE's and the state's) of a single-process checkpoint."""
    meta, cfg = json.loads((folder / "state.json").read_text()), json.loads((folder / "cfg.json").read_text())
    return meta, cfg, {**load_file(str(folder / "sae.safetensors")), **load_file(str(folder / "state.safetensors"))}


def write_dcp(folder: Path, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Replace the checkpoint in ``folder`` by a distributed one of ``tensors`` and state.json ``meta``
    (DCP shards written here by one process, so every tensor whole; a 2-rank, 2-shard layout recorded)."""
    from saescale.distributed.checkpoint import save_dcp
    from saescale.distributed.mesh import Mesh
    from saescale.train.checkpoint import row_sharded

    for p in folder.iterdir():
        p.unlink()
    save_dcp(folder, Mesh.single(), {k: v.contiguous() for k, v in tensors.items()}, SAE.n, row_sharded)
    (folder / "state.json").write_text(json.dumps(meta))


def dcp_meta(folder: Path) -> dict:
    """state.json as a distributed run (2 processes, 2 latent shards) writes it for the checkpoint in ``folder``."""
    from saescale.train.checkpoint import dcp_state_record

    meta, cfg, _ = read_checkpoint(folder)
    sae = SAEConfig(**{k: v for k, v in cfg.items() if k not in ("format", "extra")})
    return dcp_state_record(meta, sae, 2, 2)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """finished/ (4 steps), single/ (killed after step 2), dcp/ (the same with a distributed checkpoint)."""
    tmp = tmp_path_factory.mktemp("ckcheck")
    train_sae(SAE, CFG, SyntheticSource(SRC), tmp / "finished")
    single = killed_copy(tmp / "finished", tmp / "single")
    dcp = killed_copy(tmp / "finished", tmp / "dcp")
    write_dcp(dcp / CK, dcp_meta(single / CK), read_checkpoint(single / CK)[2])
    return tmp


def files(run: Path) -> dict[str, bytes | None]:
    """Every path under ``run`` -> its bytes (None for folders)."""
    return {str(p.relative_to(run)): p.read_bytes() if p.is_file() else None for p in sorted(run.rglob("*"))}


def path_of(case: Case) -> str:
    name = case.file.removeprefix("dcp ")
    return "checkpoints/latest.json" if name == "latest.json" else f"{CK}/{name}"


def damage_single(run: Path, case: Case) -> None:
    path = run / path_of(case)
    if path.suffix == ".json":
        rec = json.loads(path.read_text())
        case.damage(rec)
        path.write_text(json.dumps(rec))
    else:
        tensors = load_file(str(path))
        case.damage(tensors)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


def expect_refusal(run: Path, file: str, field: str | None) -> str:
    """Resume ``run``: a one-line SaescaleError naming ``file`` and ``field``, every file left as it was."""
    before = files(run)
    with pytest.raises(SaescaleError) as e:
        train_sae(SAE, CFG, SyntheticSource(SRC), run)
    msg = str(e.value)
    assert "\n" not in msg
    tensor = file.endswith(".safetensors") or file == "DCP"  # tensors are named as load_sae names them, unquoted
    assert field is None or (f"tensor {field} " if tensor else f"'{field}'") in msg, msg
    assert file.removeprefix("dcp ") in msg, msg
    assert "delete" in msg and "--out" in msg, msg  # the fix
    assert files(run) == before
    return msg


# ---- tests --------------------------------------------------------------------------------------
def test_every_field_has_cases(runs):
    """The fields of a real checkpoint (and of a distributed one's state.json) each have cases above."""
    ck = runs / "single" / CK
    found = {
        "state.json": set(json.loads((ck / "state.json").read_text())),
        "cfg.json": set(json.loads((ck / "cfg.json").read_text())),
        "sae.safetensors": set(load_file(str(ck / "sae.safetensors"))),
        "state.safetensors": set(load_file(str(ck / "state.safetensors"))),
        "latest.json": set(json.loads((runs / "single" / "checkpoints" / "latest.json").read_text())),
        "dcp state.json": set(dcp_meta(ck)) | set(dcp_meta(ck)["layout"]),
    }
    assert len(found["state.safetensors"]) == 18 and "ema.W_dec" in found["state.safetensors"]
    for file, fields in found.items():
        kinds = {c.field for c in SINGLE_CASES + DCP_CASES if c.file == file}
        assert fields <= kinds, f"{file}: no damage case for {sorted(fields - kinds)}"


def test_undamaged_copies_resume_to_the_same_weights(runs, tmp_path):
    """The copies the cases damage are good checkpoints: both kinds resume, to the uninterrupted weights."""
    ref = load_file(str(runs / "finished" / "sae" / "sae.safetensors"))
    for kind in ("single", "dcp"):
        run = shutil.copytree(runs / kind, tmp_path / kind)
        r = train_sae(SAE, CFG, SyntheticSource(SRC), run)
        assert r.resumed_from == STEP
        got = load_file(str(run / "sae" / "sae.safetensors"))
        assert all(torch.equal(ref[k], got[k]) for k in ref), kind


@pytest.mark.parametrize("case", SINGLE_CASES, ids=lambda c: c.id)
def test_a_damaged_checkpoint_field_is_refused(runs, tmp_path, case):
    run = shutil.copytree(runs / "single", tmp_path / "run")
    damage_single(run, case)
    expect_refusal(run, case.file, case.field)


@pytest.mark.parametrize("case", DCP_CASES, ids=lambda c: c.id)
def test_a_damaged_distributed_checkpoint_field_is_refused(runs, tmp_path, case):
    run = shutil.copytree(runs / "single", tmp_path / "run")
    meta, tensors = dcp_meta(run / CK), read_checkpoint(run / CK)[2]
    case.damage(meta if case.file == "dcp state.json" else tensors)
    write_dcp(run / CK, meta, tensors)
    expect_refusal(run, case.file, case.field)


def test_an_early_checkpoint_renamed_as_the_last_is_not_saved_as_final(runs, tmp_path):
    """Before: step-2 relabelled step 4 (folder, latest.json and state.json all agreeing) made the trainer
    believe it had finished and save the step-2 weights as the final SAE. Adam's own step counts give it away."""
    run = shutil.copytree(runs / "single", tmp_path / "run")
    (run / CK).rename(run / "checkpoints" / "step-000000004")
    (run / "checkpoints" / "latest.json").write_text(json.dumps({"folder": "step-000000004", "step": 4}))
    state = run / "checkpoints" / "step-000000004" / "state.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), "step": 4, "tokens_seen": 256, "ema_t": 4}))
    msg = expect_refusal(run, "state.safetensors", None)
    assert re.search(r"tensor opt\.\w+\.step is 2, expected the checkpoint's step 4", msg), msg
    assert not (run / "sae").exists() and not (run / "summary.json").exists()


def test_following_the_fix_resumes_from_the_checkpoint_before(runs, tmp_path):
    """The message says to delete the damaged folder and latest.json: the run then resumes from the one before."""
    run = shutil.copytree(runs / "finished", tmp_path / "run")
    state = run / "checkpoints" / "step-000000004" / "state.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), "loss_scale": NAN}))
    with pytest.raises(SaescaleError, match="'loss_scale'"):
        train_sae(SAE, CFG, SyntheticSource(SRC), run)
    shutil.rmtree(state.parent)
    (run / "checkpoints" / "latest.json").unlink()
    r = train_sae(SAE, CFG, SyntheticSource(SRC), run)
    assert r.resumed_from == STEP
    ref, got = (load_file(str(p / "sae" / "sae.safetensors")) for p in (runs / "finished", run))
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_the_cli_refuses_a_damaged_checkpoint_in_one_line(tmp_path, capsys):
    from saescale.cli import main

    out = tmp_path / "run"
    args = ["train", "--acts", "synthetic", "--synth-d", "8", "--synth-features", "16", "--synth-k", "2", "--n", "32",
            "--k", "4", "--tokens", "256", "--batch-size", "64", "--checkpoint-every", "2", "--init-tokens", "64",
            "--ema", "0.9", "--eval-tokens", "64", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    folder = out / "checkpoints" / json.loads((out / "checkpoints" / "latest.json").read_text())["folder"]
    tensors = load_file(str(folder / "state.safetensors"))
    tensors["opt.W_dec.exp_avg"] = tensors["opt.W_dec.exp_avg"][:8].contiguous()  # fused Adam would abort on it
    save_file(tensors, str(folder / "state.safetensors"))
    capsys.readouterr()
    before = files(out)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: checkpoint {folder}: state.safetensors tensor "
                                                   "opt.W_dec.exp_avg has shape (8, 8), expected (32, 8)"), err
    assert "Traceback" not in err and files(out) == before
