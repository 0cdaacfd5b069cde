"""Rerunning a sweep after its spec was edited: refused in one line, nothing written (issue 14).

Before: a rerun after e.g. more tokens per member reported '0 to train' and kept the stale members."""

import json
from pathlib import Path

import pytest

from saescale.cli import main
from saescale.sweep.runner import run_sweep
from saescale.sweep.spec import load_spec
from saescale.train.config import default_lr

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = """
[sweep]
source = "synthetic"
heldout_tokens = 256
curve_points = 2
[grid]
n = [32, 64]
[sae]
k = 4
normalize = "none"
[train]
tokens = 640
batch_size = 64
init_tokens = 64
lr = 0.001
checkpoint_every = 5
[synthetic]
d = 8
features = 24
k = 2
"""


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def sweep(spec: Path, out: Path) -> int:
    return main(["sweep", str(spec), "--out", str(out), "--threads", "1", "--no-progress", "--no-fit"])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """(spec file, output folder) of a finished two-member synthetic sweep."""
    root = tmp_path_factory.mktemp("rerun")
    (root / "spec.toml").write_text(SPEC)
    spec = load_spec(root / "spec.toml")
    spec.settings.out = str(root / "out")
    from saescale.threads import one_thread

    with one_thread():
        assert len(run_sweep(spec)) == 2
    return root / "spec.toml", root / "out"


@pytest.fixture
def sweep_copy(finished, tmp_path):
    """A private copy of the finished sweep: (spec file, output folder, its files)."""
    import shutil

    spec, out = finished
    shutil.copytree(out, tmp_path / "out")
    shutil.copy(spec, tmp_path / "spec.toml")
    return tmp_path / "spec.toml", tmp_path / "out", files(tmp_path / "out")


def refused(capsys, spec: Path, out: Path, before: dict[str, bytes]) -> str:
    """The one-line error of a refused rerun, after checking that every file is as it was."""
    assert sweep(spec, out) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert files(out) == before
    return err


def test_unedited_spec_trains_nothing_and_succeeds(sweep_copy, capsys):
    spec, out, before = sweep_copy
    assert sweep(spec, out) == 0
    text = capsys.readouterr().out
    assert "2 members finished" in text
    assert files(out) == before


@pytest.mark.parametrize("old,new,setting,values", [
    ("tokens = 640", "tokens = 1280", "train.tokens", ("640", "1280")),
    ("lr = 0.001", "lr = 0.002", "train.lr", ("0.001", "0.002")),
    ('k = 4\nnormalize = "none"', 'k = 8\nnormalize = "none"', "sae.k", ("4", "8")),
    ("features = 24", "features = 32", "data.synthetic.features", ("24", "32")),
    ('source = "synthetic"', 'source = "stream"', "data.source", ("'synthetic'", "'stream'")),
])
def test_edited_setting_is_refused_and_nothing_is_written(sweep_copy, capsys, old, new, setting, values):
    spec, out, before = sweep_copy
    spec.write_text(spec.read_text().replace(old, new))
    err = refused(capsys, spec, out, before)
    assert "member n32" in err and setting in err and all(v in err for v in values), err
    assert "restore" in err and "--out" in err


def test_settings_that_do_not_change_the_result_may_change(sweep_copy, capsys):
    """Logging and checkpoint cadence, device; a default written out (warm-up: min(1000, 10 steps // 20) = 0)."""
    spec, out, before = sweep_copy
    spec.write_text(spec.read_text().replace("checkpoint_every = 5", "checkpoint_every = 7\nlog_every = 3\n"
                                             "keep_checkpoints = 5\nwarmup_steps = 0\ndevice = 'cpu'"))
    assert sweep(spec, out) == 0
    assert capsys.readouterr().err == ""
    assert files(out) == {**before, "spec.toml": spec.read_bytes()}


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_a_selection_precision_certified_equal_to_float32_may_change(sweep_copy, capsys, precision):
    """The members ran at 'auto' (bfloat16 or float32 by this machine): both train the same SAE, so a spec
    (or a machine) choosing the other one resumes the sweep; before, one of the two was refused as an edit."""
    spec, out, before = sweep_copy
    spec.write_text(spec.read_text().replace("lr = 0.001", f"lr = 0.001\nprecision = '{precision}'"))
    assert sweep(spec, out) == 0
    assert capsys.readouterr().err == ""
    assert files(out) == {**before, "spec.toml": spec.read_bytes()}


def test_the_approximate_autocast_selection_is_an_edit(sweep_copy, capsys):
    spec, out, before = sweep_copy
    spec.write_text(spec.read_text().replace("lr = 0.001", "lr = 0.001\nprecision = 'autocast'"))
    err = refused(capsys, spec, out, before)
    assert "train.precision" in err and "'autocast'" in err, err


def test_started_member_is_checked_too(sweep_copy, capsys):
    """A member that started but did not finish (run.json, no result.json) would resume with the new spec."""
    spec, out, _ = sweep_copy
    (out / "n64" / "result.json").unlink()
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text(lines[0] + "\n")
    before = files(out)
    spec.write_text(spec.read_text().replace('k = 4\nnormalize = "none"', 'k = 4\nnormalize = "layernorm"'))
    err = refused(capsys, spec, out, before)
    assert "member n32" in err  # the first member in spec order is named first
    (out / "n32" / "result.json").unlink()
    (out / "n32" / "run.json").unlink()
    (out / "results.jsonl").write_text("")
    before = files(out)
    err = refused(capsys, spec, out, before)
    assert f"{out / 'n64' / 'run.json'}: member n64" in err and "sae.normalize" in err and "'layernorm'" in err


def test_results_line_of_a_member_the_spec_no_longer_has_is_refused(sweep_copy, capsys):
    spec, out, before = sweep_copy
    spec.write_text(spec.read_text().replace("n = [32, 64]", "n = [32, 128]"))
    err = refused(capsys, spec, out, before)
    assert f"{out / 'results.jsonl'}:2: member n64 is not in the spec" in err


@pytest.mark.parametrize("damage,needle", [
    (lambda b: b.replace(b'"id"', b'"\xff\xfeid"', 1), ":1: not UTF-8"),
    (lambda b: b[: len(b) - 40], ":2: not valid JSON"),
    (lambda b: b + b"{not json}\n", ":3: not valid JSON"),
])
def test_damaged_results_jsonl_is_one_line_naming_file_and_line(sweep_copy, capsys, damage, needle):
    spec, out, _ = sweep_copy
    path = out / "results.jsonl"
    path.write_bytes(damage(path.read_bytes()))
    err = refused(capsys, spec, out, files(out))
    assert f"{path}{needle}" in err and "delete the file" in err


def test_damaged_result_json_is_one_line(sweep_copy, capsys):
    spec, out, _ = sweep_copy
    (out / "n64" / "result.json").write_bytes(b'{"id": "n64", "settings": ')
    err = refused(capsys, spec, out, files(out))
    assert f"{out / 'n64' / 'result.json'} is damaged" in err


def test_truncated_last_line_says_so(sweep_copy, capsys):
    spec, out, _ = sweep_copy
    path = out / "results.jsonl"
    path.write_bytes(path.read_bytes()[:-40])
    err = refused(capsys, spec, out, files(out))
    assert f"{path}:2: not valid JSON" in err and "truncated" in err


def test_records_name_the_data_they_were_trained_on(finished):
    _, out = finished
    rec = json.loads((out / "n32" / "result.json").read_text())["settings"]
    assert rec["data"]["source"] == "synthetic" and rec["data"]["synthetic"]["features"] == 24


def test_results_record_the_settings_that_ran(finished):
    """Next to the metrics: every unset setting resolved (no 'auto' or None left), as run.json has them."""
    _, out = finished
    result = json.loads((out / "n32" / "result.json").read_text())
    ran = result["resolved"]
    assert result["settings"]["train"]["precision"] == "auto" and result["settings"]["train"]["k_aux"] is None
    assert ran["train"]["precision"] in ("float32", "bfloat16") and ran["train"]["k_aux"] == 4
    assert ran["train"]["lr"] == result["lr"] and ran["sae"]["d"] == 8 and ran["runtime"]["precision"] == ran["train"]["precision"]
    assert ran == json.loads((out / "n32" / "run.json").read_text())["resolved"]


CACHE_SPEC = """
[sweep]
source = "cache"
heldout_tokens = 128
curve_points = 2
[grid]
n = [32]
[sae]
k = 4
[train]
tokens = 256
batch_size = 64
init_tokens = 64
lr = 0.001
[activations]
model = "{model}"
corpus = "{corpus}"
context_len = 16
n_tokens = 600
shard_tokens = 64
harvest_batch = 4
val_fraction = 0.2
"""


@pytest.fixture
def cache_sweep(tiny_lm_dir, tmp_path, monkeypatch):
    """(spec file, output folder, SAESCALE_HOME) of a finished one-member sweep on a tiny model's cache."""
    monkeypatch.setenv("SAESCALE_HOME", str(tmp_path / "home"))
    docs = []
    for i in range(6):
        docs.append(tmp_path / f"doc{i}.txt")
        docs[-1].write_text(" ".join(f"word{(i * 7 + j) % 13}" for j in range(200)))
    spec = tmp_path / "spec.toml"
    spec.write_text(CACHE_SPEC.format(model=tiny_lm_dir, corpus=",".join(map(str, docs))))
    assert sweep(spec, tmp_path / "out") == 0
    return spec, tmp_path / "out", tmp_path / "home"


def test_edited_activation_settings_are_refused_before_any_harvest(cache_sweep, capsys):
    spec, out, home = cache_sweep
    capsys.readouterr()
    text, before, caches = spec.read_text(), files(out), sorted((home / "acts").iterdir())
    assert len(caches) == 1
    for old, new, setting in [("n_tokens = 600", "n_tokens = 700", "data.activations.n_tokens"),
                              ("context_len = 16", "context_len = 32", "data.activations.context_len"),
                              ("harvest_batch = 4", 'harvest_batch = 4\nhook = "layers.1"', "data.activations.hook")]:
        spec.write_text(text.replace(old, new))
        err = refused(capsys, spec, out, before)
        assert "member n32" in err and setting in err, err
        assert sorted((home / "acts").iterdir()) == caches  # refused before a new cache was harvested
    # the default hook written out (layers.4 of 6 blocks), another harvest batch (a cache keeps its own): same data
    spec.write_text(text.replace("harvest_batch = 4", 'harvest_batch = 8\nhook = "layers.4"\ncache_dir = ""'))
    assert sweep(spec, out) == 0, capsys.readouterr().err
    assert files(out) == {**before, "spec.toml": spec.read_bytes()}


@pytest.mark.parametrize("damage,needle", [
    (lambda b: b.replace(b'"id"', b'"\xff\xfeid"', 1), ":1: not UTF-8"),
    (lambda b: b[: len(b) - 40], ":2: not valid JSON"),
])
def test_fit_names_the_damaged_line_of_results_jsonl(sweep_copy, capsys, damage, needle):
    """Before: a results.jsonl that is not UTF-8 stopped 'saescale fit' with a UnicodeDecodeError traceback."""
    _, out, _ = sweep_copy
    path = out / "results.jsonl"
    path.write_bytes(damage(path.read_bytes()))
    assert main(["fit", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}{needle}") and err.count("\n") == 1, err
    assert "truncated" in err or "UTF-8" in err


def test_older_records_read_as_todays(sweep_copy, capsys):
    """A results line without settings (older sweeps) has nothing to compare; a setting a record lacks
    (added to saescale since) counts at its default; an unset lr equals the rule's value written out."""
    spec, out, _ = sweep_copy
    path = out / "results.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    path.write_text("".join(json.dumps({k: v for k, v in x.items() if k != "settings"}) + "\n" for x in lines))
    for m in ("n32", "n64"):  # as if trained with lr left to the default rule
        run = json.loads((out / m / "run.json").read_text())
        del run["train"]["ema"], run["sae"]["norm_scale"]
        run["train"]["lr"] = None
        (out / m / "run.json").write_text(json.dumps(run))
        result = json.loads((out / m / "result.json").read_text())
        result["settings"]["train"]["lr"] = None
        (out / m / "result.json").write_text(json.dumps(result))
    rule = {n: default_lr(n, 64) for n in (32, 64)}  # the spec's batch_size = 64
    spec.write_text(spec.read_text().replace("lr = 0.001", f"lr = {rule[32]!r}"))  # n32's value written out
    assert sweep(spec, out) == 2
    err = capsys.readouterr().err  # n32 (checked first) passed: its rule value is what the spec now says
    assert f"member n64 was trained with train.lr = {rule[64]!r} but the spec {spec} asks for {rule[32]!r}" in err
    spec.write_text(spec.read_text().replace(f"lr = {rule[32]!r}", ""))
    assert sweep(spec, out) == 0, capsys.readouterr().err
