"""Every command that writes, on a full disk and on a read-only file system: exit 2 with one line that
names the path and the remedy, no traceback, every earlier file byte-identical; once there is room again
the same command finishes (a run resumes from the checkpoint the full disk did not touch).

The disk is a small tmpfs mounted for the test (root can mount one here and in CI). Where mounting is
not permitted, the same tests run on a patched rename that fails with ENOSPC / EROFS inside the
folder, which covers every atomic write (checkpoints, SAE, manifests, results) but not appends
(metrics.jsonl); that is the documented fallback of issue 14.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

import saescale.atomic as atomic
from saescale.cli import main
from tests.commands.cli_helpers import TRAIN, interrupted_run, snapshot, sweep_spec
from tests.eval.eval_helpers import save_for_model
from tests.helpers import make_sae

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = sweep_spec(grid='n = [32, 64, 128]\nk = [2, 4]', checkpoint_every=4)


def _can_mount() -> bool:
    probe = Path(f"/tmp/saescale-mount-probe-{uuid.uuid4().hex[:8]}")
    probe.mkdir()
    try:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
                            capture_output=True).returncode == 0
        if ok:
            subprocess.run(["umount", str(probe)], check=True)
        return ok
    except OSError:
        return False
    finally:
        probe.rmdir()


MOUNT = _can_mount()


class Disk:
    """A small file system at ``root``: ``fill()`` leaves about ``leave`` bytes free, ``empty()`` frees it,
    ``readonly()`` / ``writable()`` remount it (or, without mount rights, patch the rename that every
    atomic write ends with)."""

    def __init__(self, root: Path, monkeypatch):
        self.root, self.mp, self.mode = root, monkeypatch, "ok"
        root.mkdir()
        if MOUNT:
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(root)], check=True)
        else:
            real = os.replace

            def replace(src, dst, *a, **kw):
                if self.mode != "ok" and Path(dst).resolve().is_relative_to(self.root.resolve()):
                    code = errno.ENOSPC if self.mode == "full" else errno.EROFS
                    raise OSError(code, os.strerror(code), str(dst))
                return real(src, dst, *a, **kw)

            monkeypatch.setattr(atomic.os, "replace", replace)

    def fill(self, leave: int = 0) -> None:
        self.mode = "full"
        if MOUNT:
            free = shutil.disk_usage(self.root).free
            with open(self.root / ".filler", "wb") as f:
                f.write(b"\0" * max(0, free - leave))

    def empty(self) -> None:
        self.mode = "ok"
        (self.root / ".filler").unlink(missing_ok=True)

    def readonly(self) -> None:
        self.mode = "readonly"
        if MOUNT:
            subprocess.run(["mount", "-o", "remount,ro", str(self.root)], check=True)

    def writable(self) -> None:
        self.mode = "ok"
        if MOUNT:
            subprocess.run(["mount", "-o", "remount,rw", str(self.root)], check=True)

    def close(self) -> None:
        if MOUNT:
            subprocess.run(["umount", "-l", str(self.root)], check=False)


@pytest.fixture
def disk(tmp_path, monkeypatch):
    d = Disk(tmp_path / "disk", monkeypatch)
    yield d
    d.close()


def refused(argv: list[str], capsys, disk: Disk, why: str) -> str:
    """Run the CLI, expect exit 2 and one error line naming a path under the disk and the remedy."""
    before = snapshot(disk.root)
    code = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert "Traceback" not in err and len([ln for ln in lines if ln.startswith("error:")]) == 1, err
    line = lines[-1]
    assert line.startswith("error: ") and str(disk.root) in line, line
    assert why in line, line
    after = snapshot(disk.root)
    assert {k: v for k, v in after.items() if k in before} == before, "an earlier file changed"
    return line


FULL = "no space left on the device: free space there or choose a folder on another disk"
READONLY = "read-only file system: choose a writable folder"


@pytest.mark.parametrize("mode", ["full", "readonly"])
def test_train_keeps_its_checkpoints_and_resumes(disk, mode, capsys, tmp_path):
    out = disk.root / "run"
    interrupted_run(out, 12)  # checkpoints at steps 5 and 10
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-000000005", "step-000000010"]
    if mode == "full":
        disk.fill(leave=4096)  # the next checkpoint (~25 kB) does not fit
        refused(["train", *TRAIN, "--out", str(out)], capsys, disk, FULL)
        disk.empty()
    else:
        disk.readonly()
        refused(["train", *TRAIN, "--out", str(out)], capsys, disk, READONLY)
        disk.writable()
    assert main(["train", *TRAIN, "--out", str(out)]) == 0  # room again: resumes and finishes
    assert f"resuming {out} from step 10" in capsys.readouterr().out or not MOUNT
    ref = tmp_path / "ref"
    assert main(["train", *TRAIN, "--out", str(ref)]) == 0
    assert (out / "sae" / "sae.safetensors").read_bytes() == (ref / "sae" / "sae.safetensors").read_bytes()


@pytest.mark.parametrize("mode", ["full", "readonly"])
def test_cache_keeps_its_shards_and_resumes(disk, mode, tiny_lm_dir, capsys):
    folder = disk.root / "cache"
    argv = ["cache", "--model", str(tiny_lm_dir), "--cache-dir", str(folder), "--n-tokens", "3000",
            "--shard-tokens", "512", "--context-len", "32", "--val-fraction", "0.2"]
    if mode == "full":
        disk.fill(leave=3 * 512 * 32 * 2)  # room for a shard or two of 32 kB
        refused(argv, capsys, disk, FULL)
        disk.empty()
    else:
        assert main(argv) == 0
        capsys.readouterr()
        shard = folder / "train" / "shard_00001.safetensors"  # a damaged shard to repair, on a read-only disk
        data = bytearray(shard.read_bytes())
        data[-8:] = bytes(8)
        shard.write_bytes(bytes(data))
        disk.readonly()
        refused(argv, capsys, disk, READONLY)
        disk.writable()
    assert main(argv) == 0
    assert "verified: every shard matches its sha256" in capsys.readouterr().out


def _sweep(disk: Disk, capsys) -> tuple[Path, Path]:
    spec = disk.root / "spec.toml"
    spec.write_text(SPEC)
    out = disk.root / "sweep"
    assert main(["sweep", str(spec), "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert (out / "fit.json").is_file() and (out / "results.jsonl").is_file()
    return spec, out


@pytest.mark.parametrize("mode", ["full", "readonly"])
def test_sweep_and_fit_keep_earlier_results(disk, mode, capsys):
    spec, out = _sweep(disk, capsys)
    (disk.fill if mode == "full" else disk.readonly)()
    why = FULL if mode == "full" else READONLY
    line = refused(["fit", str(out), "--no-plots"], capsys, disk, why)
    assert "fit.json" in line
    refused(["sweep", str(spec), "--out", str(disk.root / "sweep2"), "--no-progress"], capsys, disk, why)
    refused(["sweep", str(spec), "--out", str(out), "--no-progress"], capsys, disk, why)  # rerun: its fit


@pytest.mark.parametrize("mode", ["full", "readonly"])
def test_eval_keeps_earlier_metrics(disk, mode, tiny_lm_dir, capsys):
    sae = save_for_model(make_sae(n=64, k=4, d=32, normalize="layernorm"), disk.root / "run" / "sae",
                         str(tiny_lm_dir), context_len=32)
    argv = ["eval", str(sae), "--metrics", "recon", "--eval-contexts", "8", "--batch", "8"]
    assert main(argv) == 0
    capsys.readouterr()
    assert (disk.root / "run" / "metrics.json").is_file()
    (disk.fill if mode == "full" else disk.readonly)()
    line = refused(argv, capsys, disk, FULL if mode == "full" else READONLY)
    assert "metrics.json" in line
