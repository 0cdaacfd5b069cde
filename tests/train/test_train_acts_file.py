"""``saescale train --acts FILE_OR_FOLDER`` and ``saescale sweep`` on your own activation files: end to end,
provenance, planted-dictionary recovery through the file path, and one-line errors with nothing written."""

import json

import numpy as np
import pytest
import torch

from saescale.activations.sources import is_array_path
from saescale.cli import main
from saescale.data.synthetic import SyntheticConfig, SyntheticSource, feature_recovery
from saescale.sae.io import load_sae
from saescale.sweep.runner import run_sweep
from saescale.sweep.spec import load_spec

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = ["--n", "32", "--k", "4", "--normalize", "none", "--tokens", "4096", "--batch-size", "256",
         "--eval-tokens", "512", "--no-progress"]


@pytest.fixture
def small_npy(tmp_path):
    f = tmp_path / "acts.npy"
    np.save(f, np.random.default_rng(0).standard_normal((2000, 16)).astype(np.float32))
    return f


def test_cli_trains_on_an_npy_and_records_its_provenance(tmp_path, small_npy, capsys):
    out = tmp_path / "run"
    assert main(["train", "--acts", str(small_npy), *SMALL, "--out", str(out)]) == 0
    assert "saved SAE" in capsys.readouterr().out
    sae = load_sae(out / "sae")
    assert sae.cfg.d == 16
    extra = json.loads((out / "sae" / "cfg.json").read_text())["extra"]
    assert extra["source"] == "arrays"
    rec = extra["arrays"]
    assert rec["files"] == [{"path": str(small_npy), "tensor": None, "shape": [2000, 16], "dtype": "float32"}]
    assert rec["rows"] == 2000 and rec["d"] == 16
    assert rec["split"] == {"rule": "last rows held out", "heldout": 0.05, "train_rows": 1900, "heldout_rows": 100}
    assert json.loads((out / "eval.json").read_text())["heldout"]["tokens"] == 100  # the held-out rows, all of them
    assert main(["train", "--acts", str(small_npy), *SMALL, "--out", str(out)]) == 0  # finished: nothing to redo


def test_planted_dictionary_is_recovered_through_an_npy(tmp_path):
    """A loader that permutes columns or reads the wrong width scores about 0.4 here (measured), not >= 0.9."""
    src = SyntheticSource(SyntheticConfig(d=32, features=64, k=4, alpha=0.0))
    f = tmp_path / "data.npy"
    np.save(f, src.batch(40_000, 0).numpy())
    out = tmp_path / "run"
    assert main(["train", "--acts", str(f), "--n", "64", "--k", "4", "--normalize", "none", "--tokens", "200000",
                 "--batch-size", "512", "--lr", "0.01", "--eval-tokens", "2048", "--no-progress", "--out", str(out)]) == 0
    mmc, frac = feature_recovery(load_sae(out / "sae").W_dec.detach(), src.features)
    print(f"\nsaescale train --acts data.npy: mean-max cos {mmc:.3f}, recovered {frac:.1%} at cos >= 0.9")
    assert mmc >= 0.9 and frac >= 0.6


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


class Obj:  # a pickled object: torch.load(weights_only=True) refuses it
    pass


def test_bad_inputs_fail_in_one_line_with_nothing_written(tmp_path, small_npy, capsys):
    torch.save({"acts": Obj()}, tmp_path / "pickle.pt")
    np.save(tmp_path / "cube.npy", np.zeros((4, 4, 4), np.float32))
    (tmp_path / "empty.npy").write_bytes(b"")
    (tmp_path / "acts.csv").write_text("1,2\n")
    (tmp_path / "shards").mkdir()
    np.save(tmp_path / "shards" / "a.npy", np.zeros((8, 16), np.float32))
    np.save(tmp_path / "shards" / "b.npy", np.zeros((8, 12), np.float32))
    cases = [(["--acts", str(tmp_path / "pickle.pt")], "weights_only=True) refuses"),
             (["--acts", str(tmp_path / "cube.npy")], "not (N, d)"),
             (["--acts", str(tmp_path / "empty.npy")], "is empty (0 bytes)"),
             (["--acts", str(tmp_path / "acts.csv")], "unknown activation file type '.csv'"),
             (["--acts", str(tmp_path / "missing.npy")], "not found"),
             (["--acts", str(tmp_path / "shards")], "has width 12 but"),
             (["--acts", str(small_npy), "--d", "8"], "--d 8 does not match the width 16"),
             (["--acts", str(small_npy), "--model", "gpt2"], "--model sets how a model's activations are made")]
    for i, (args, needle) in enumerate(cases):
        out = tmp_path / f"out{i}"
        assert needle in one_line_error(capsys, ["train", *args, *SMALL, "--out", str(out)]), args
        assert not out.exists()


def test_nan_rows_are_reported_with_the_file_and_no_sae_is_saved(tmp_path, capsys):
    x = np.random.default_rng(0).standard_normal((2000, 16)).astype(np.float32)
    x[1500, 2] = np.nan
    f = tmp_path / "nan.npy"
    np.save(f, x)
    out = tmp_path / "run"
    err = one_line_error(capsys, ["train", "--acts", str(f), *SMALL, "--out", str(out)])
    assert f"{f}: row 1500 hold NaN/inf" in err
    assert not (out / "sae").exists()


def test_resuming_on_activations_of_another_width_is_refused(tmp_path, small_npy, capsys):
    out = tmp_path / "run"
    assert main(["train", "--acts", str(small_npy), *SMALL, "--out", str(out)]) == 0
    before = sorted(p.name for p in out.rglob("*"))
    np.save(small_npy, np.zeros((2000, 12), np.float32))  # the same path, now of width 12
    err = one_line_error(capsys, ["train", "--acts", str(small_npy), *SMALL, "--out", str(out)])
    assert "holds a run trained on width-16 activations" in err and "width 12" in err
    assert sorted(p.name for p in out.rglob("*")) == before


def test_a_cache_folder_stays_a_cache_and_other_paths_are_arrays(tmp_path, small_npy):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "manifest.json").write_text("{}")
    assert not is_array_path(str(tmp_path / "cache"))
    assert is_array_path(str(small_npy)) and is_array_path(str(tmp_path))
    assert not is_array_path("synthetic") and not is_array_path(str(tmp_path / "missing.npy"))


SPEC = """
[sweep]
source = "{source}"
heldout_tokens = 512
curve_points = 2
[grid]
n = [32, 64]
[sae]
k = 4
normalize = "none"
[train]
tokens = 4096
batch_size = 256
lr = 0.01
"""


def test_sweep_trains_on_an_activation_folder_and_refuses_changed_files(tmp_path, capsys):
    shards = tmp_path / "shards"
    shards.mkdir()
    x = np.random.default_rng(1).standard_normal((3000, 16)).astype(np.float32)
    np.save(shards / "000.npy", x[:1000])
    np.save(shards / "001.npy", x[1000:])
    spec_file = tmp_path / "spec.toml"
    spec_file.write_text(SPEC.format(source=shards))
    spec = load_spec(spec_file)
    spec.settings.out = str(tmp_path / "sweep")
    results = run_sweep(spec)
    assert [r["n"] for r in results] == [32, 64] and all(r["d"] == 16 for r in results)
    assert results[0]["model"] == f"arrays:{shards}" and results[0]["heldout_tokens"] == 150
    data = results[0]["settings"]["data"]
    assert data["source"] == "arrays" and [f["shape"] for f in data["arrays"]["files"]] == [[1000, 16], [2000, 16]]
    extra = json.loads((tmp_path / "sweep" / "n32" / "sae" / "cfg.json").read_text())["extra"]
    assert extra["arrays"]["split"]["heldout_rows"] == 150
    assert len(run_sweep(spec)) == 2  # a rerun: finished members skipped, the same files accepted
    np.save(shards / "001.npy", x[1000:2500])  # the data changed: refused, naming the setting
    with pytest.raises(Exception, match="data.arrays"):
        run_sweep(spec)
    assert main(["sweep", str(spec_file), "--out", str(tmp_path / "cli"), "--no-progress", "--no-fit"]) == 0
    assert (tmp_path / "cli" / "results.jsonl").read_text().count("\n") == 2
