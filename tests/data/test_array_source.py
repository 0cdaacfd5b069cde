"""ArraySource (saescale/data/arrays.py): your own (N, d) activations as a restartable, shuffled BatchSource,
in memory and from .npy / .safetensors / .pt files or a folder of shards."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from saescale.data.arrays import ArraySource, heldout_rows
from saescale.data.source import BatchSource, DataParallelSlice
from saescale.errors import SaescaleError

N, D = 1000, 8


def labelled(n: int = N, d: int = D) -> torch.Tensor:
    """(n, d) float32 rows whose column 0 is the row number (so a row read tells which it is)."""
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    x[:, 0] = torch.arange(n, dtype=torch.float32)
    return x


def ids(batches) -> np.ndarray:
    return torch.cat(list(batches))[:, 0].round().long().numpy()


def test_every_training_row_once_per_epoch_in_a_seeded_order():
    x = labelled()
    src = ArraySource(x, seed=3)
    assert isinstance(src, BatchSource) and src.d == D
    assert (src.n_tokens, src.heldout().n_tokens) == (950, 50)  # the last 5% held out
    epoch = src.n_tokens
    for e in range(2):
        got = ids([src.rows(e * epoch, epoch)])
        assert sorted(got) == list(range(epoch))  # each training row exactly once
        assert not np.array_equal(got, np.arange(epoch))  # shuffled
    assert not np.array_equal(ids([src.rows(0, epoch)]), ids([src.rows(epoch, epoch)]))  # a new order each epoch
    same, other = ArraySource(x, seed=3), ArraySource(x, seed=4)
    assert np.array_equal(ids(b for _, b in zip(range(5), same.batches(64))), ids(b for _, b in zip(range(5), src.batches(64))))
    assert not np.array_equal(ids([other.rows(0, 64)]), ids([src.rows(0, 64)]))
    assert torch.equal(src.rows(0, epoch)[np.argsort(ids([src.rows(0, epoch)]))], x[:epoch])  # the rows themselves


def test_restart_equals_skipping_and_batches_span_epochs():
    src = ArraySource(labelled(), seed=1)
    first = [b for _, b in zip(range(40), src.batches(64))]  # 40 * 64 > 2 epochs of 950 rows
    for s in (0, 7, 14, 29):
        again = [b for _, b in zip(range(40 - s), ArraySource(labelled(), seed=1).batches(64, start=s))]
        assert all(torch.equal(a, b) for a, b in zip(first[s:], again))
    assert all(b.shape == (64, D) and b.dtype == torch.float32 for b in first)
    half = [b for _, b in zip(range(5), DataParallelSlice(src, 1, 2).batches(32, start=3))]  # a rank's rows
    assert all(torch.equal(h, f[32:]) for h, f in zip(half, first[3:]))


def test_heldout_rows_are_the_last_rows_disjoint_from_training():
    x = labelled()
    src = ArraySource(x, heldout=100)
    held = src.heldout()
    assert torch.equal(held.read_all()["acts"], x[900:])  # in file order
    assert torch.equal(held.read_all(max_tokens=10)["acts"], x[900:910])
    train_ids = set(ids([src.rows(0, src.n_tokens)]))
    assert train_ids == set(range(900)) and not train_ids & set(ids([held.rows(0, 300)]))
    assert sorted(ids([held.rows(0, 100)])) == list(range(900, 1000))
    assert heldout_rows(1000, 0.05) == 50 and heldout_rows(10, 0.01) == 1 and heldout_rows(10, 3) == 3
    with pytest.raises(SaescaleError, match="too few"):
        ArraySource(x[:1])
    with pytest.raises(SaescaleError, match="fraction in"):
        ArraySource(x, heldout=1.5)


def test_numpy_and_tensor_in_memory_give_the_same_batches():
    x = labelled()
    a, b = ArraySource(x, seed=2), ArraySource(x.numpy(), seed=2)
    assert all(torch.equal(p, q) for _, p, q in zip(range(20), a.batches(100), b.batches(100)))
    rec = a.provenance()["arrays"]
    assert rec["files"] == [{"path": "<memory>", "tensor": None, "shape": [N, D], "dtype": "float32"}]
    assert rec["split"] == {"rule": "last rows held out", "heldout": 0.05, "train_rows": 950, "heldout_rows": 50}


def save(fmt: str, path, x: torch.Tensor, dtype=torch.float32, **others) -> None:
    if fmt == "npy":
        np.save(path, x.to(dtype).numpy())
    elif fmt == "safetensors":
        save_file({"acts": x.to(dtype).contiguous(), **others}, path)
    else:
        torch.save(x.to(dtype) if not others else {"acts": x.to(dtype), **others}, path)


@pytest.mark.parametrize("fmt,dtype", [("npy", torch.float32), ("npy", torch.float16), ("safetensors", torch.float32),
                                       ("safetensors", torch.bfloat16), ("pt", torch.float32), ("pt", torch.bfloat16)])
def test_each_file_format_reads_the_same_rows_as_memory(tmp_path, fmt, dtype):
    x = labelled()
    f = tmp_path / f"acts.{fmt}"
    save(fmt, f, x, dtype)
    src, ref = ArraySource(f, seed=5), ArraySource(x.to(dtype), seed=5)
    assert all(torch.equal(p, q) for _, p, q in zip(range(30), src.batches(100), ref.batches(100)))
    assert torch.equal(src.heldout().read_all()["acts"], x[950:].to(dtype).float())
    rec = src.provenance()["arrays"]["files"][0]
    assert rec["path"] == str(f.absolute()) and rec["shape"] == [N, D]
    assert rec["dtype"] == str(dtype).removeprefix("torch.")
    if fmt != "pt":
        assert src.shards[0].mapped and isinstance(src.shards[0].data, np.memmap)


def test_a_file_with_several_tensors_uses_acts_or_the_only_2d_one(tmp_path):
    x = labelled()
    save_file({"acts": x, "other": x[:, :2].contiguous(), "pos": torch.arange(N)}, tmp_path / "a.safetensors")
    assert torch.equal(ArraySource(tmp_path / "a.safetensors", heldout=0).rows(0, 5), ArraySource(x, heldout=0).rows(0, 5))
    save_file({"x": x, "pos": torch.arange(N)}, tmp_path / "b.safetensors")
    assert ArraySource(tmp_path / "b.safetensors").provenance()["arrays"]["files"][0]["tensor"] == "x"
    torch.save({"x": x, "pos": torch.arange(N)}, tmp_path / "c.pt")
    assert ArraySource(tmp_path / "c.pt").d == D
    save_file({"x": x, "y": x.clone()}, tmp_path / "d.safetensors")
    with pytest.raises(SaescaleError, match="2 2-D tensors .*naming that tensor 'acts'"):
        ArraySource(tmp_path / "d.safetensors")


def test_a_folder_of_shards_is_their_concatenation_in_name_order(tmp_path):
    x = labelled()
    folder = tmp_path / "shards"
    folder.mkdir()
    save("npy", folder / "part-02.npy", x[600:])
    save("safetensors", folder / "part-00.safetensors", x[:250])
    save("pt", folder / "part-01.pt", x[250:600])
    (folder / "README.txt").write_text("not activations")
    src, ref = ArraySource(folder, seed=9), ArraySource(x, seed=9)
    assert all(torch.equal(p, q) for _, p, q in zip(range(30), src.batches(128), ref.batches(128)))
    files = src.provenance()["arrays"]["files"]
    assert [f["path"].rsplit("/", 1)[1] for f in files] == ["part-00.safetensors", "part-01.pt", "part-02.npy"]
    assert [f["shape"][0] for f in files] == [250, 350, 400] and src.provenance()["arrays"]["rows"] == N
    assert torch.equal(src.heldout().read_all()["acts"], x[950:])  # held-out rows from the last shard
    listed = ArraySource([x[:500], x[500:]], seed=9)  # a list of arrays: shards too
    assert torch.equal(next(listed.batches(64)), next(ref.batches(64)))


def bad(tmp_path, name: str, content) -> str:
    f = tmp_path / name
    if isinstance(content, bytes):
        f.write_bytes(content)
    elif isinstance(content, np.ndarray):
        np.save(f, content)
    return str(f)


class Obj:  # a pickled object: torch.load(weights_only=True) refuses it
    pass


@pytest.mark.parametrize("case,needle", [
    ("pickle", "torch.load\\(weights_only=True\\) refuses"),
    ("3d", "shape \\(4, 5, 6\\), not \\(N, d\\)"),
    ("1d", "shape \\(10,\\), not \\(N, d\\)"),
    ("empty_file", "is empty \\(0 bytes\\)"),
    ("empty_array", "empty array of shape \\(0, 8\\)"),
    ("ints", "holds int64 values"),
    ("extension", "unknown activation file type '.csv'"),
    ("missing", "not found"),
    ("widths", "has width 4 but .* has width 8"),
    ("empty_folder", "holds no activation files"),
    ("legacy_pt", "cannot be memory-mapped"),
])
def test_bad_input_is_one_clear_line(tmp_path, case, needle):
    if case == "pickle":
        torch.save({"acts": Obj()}, tmp_path / "p.pt")
        path = tmp_path / "p.pt"
    elif case == "legacy_pt":
        torch.save(torch.zeros(4, 4), tmp_path / "l.pt", _use_new_zipfile_serialization=False)
        path = tmp_path / "l.pt"
    elif case in ("widths", "empty_folder"):
        path = tmp_path / "f"
        path.mkdir()
        if case == "widths":
            np.save(path / "a.npy", np.zeros((5, 8), np.float32))
            np.save(path / "b.npy", np.zeros((5, 4), np.float32))
    else:
        path = {"3d": lambda: bad(tmp_path, "x.npy", np.zeros((4, 5, 6), np.float32)),
                "1d": lambda: bad(tmp_path, "x.npy", np.zeros(10, np.float32)),
                "empty_file": lambda: bad(tmp_path, "x.safetensors", b""),
                "empty_array": lambda: bad(tmp_path, "x.npy", np.zeros((0, 8), np.float32)),
                "ints": lambda: bad(tmp_path, "x.npy", np.zeros((4, 8), np.int64)),
                "extension": lambda: bad(tmp_path, "x.csv", b"1,2\n"),
                "missing": lambda: str(tmp_path / "nothing.npy")}[case]()
    with pytest.raises(SaescaleError, match=needle) as e:
        ArraySource(path)
    assert "\n" not in str(e.value)


def test_a_nan_row_names_the_file_and_row(tmp_path):
    x = labelled()
    x[123, 3] = float("nan")
    folder = tmp_path / "s"
    folder.mkdir()
    np.save(folder / "a.npy", x[:100].numpy())
    np.save(folder / "b.npy", x[100:].numpy())
    src = ArraySource(folder, heldout=0)
    src.rows(0, 0)
    with pytest.raises(SaescaleError, match=r"b\.npy: row 23 hold"):
        src.rows(0, src.n_tokens)


def test_fortran_order_npy_and_consecutive_runs_read_correctly(tmp_path):
    x = labelled()
    np.save(tmp_path / "f.npy", np.asfortranarray(x.numpy()))
    np.save(tmp_path / "c.npy", x.numpy())
    f, c = ArraySource(tmp_path / "f.npy", heldout=0), ArraySource(tmp_path / "c.npy", heldout=0)
    rows = np.array([0, 1, 2, 3, 10, 11, 500, 998, 999, 5], dtype=np.int64)  # runs of consecutive rows, unsorted
    assert torch.equal(f.read(rows), x[rows]) and torch.equal(c.read(rows), x[rows])
    assert f.shards[0].offset is None and c.shards[0].offset is not None  # preadv only for C order
