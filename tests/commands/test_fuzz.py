"""Property-based fuzzing of the CLI with bad input (issue 14): options, folders, caches, checkpoints,
sweep specs, results files, corpora and model files.

Every generated case runs the real ``saescale.cli.main`` in this process (one process for all cases:
the models, caches and runs they damage are built once) and must

- exit non-zero,
- show no traceback,
- print exactly one line, ``error: ...``, on stderr, which is not the CLI's "internal error" (a bug),
- leave every file that existed before it byte-identical (new files, e.g. a lock, are allowed).

Each test asserts how many cases it tried; together at least 300. With SAESCALE_FUZZ_REPORT=FILE the
counts are also written there as JSON (benchmarks/fuzz_cli.py prints them for docs/reliability.md).
"""

from __future__ import annotations

import gzip
import json
import math
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from saescale.cli import _commands, main
from saescale.cliargs import _leaf_fields
from saescale.configs import _bounds, in_range, unwrap_optional
from tests.commands.cli_helpers import TRAIN, interrupted_run, snapshot, sweep_spec

pytestmark = pytest.mark.usefixtures("one_thread")

TRIED: Counter = Counter()
BASE = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.filter_too_much])


def fuzz(n: int) -> settings:
    """``n`` generated cases, reproducible (derandomized), no deadline."""
    return settings(BASE, max_examples=n)
CACHE = ["--n-tokens", "3000", "--shard-tokens", "1024", "--context-len", "32", "--val-fraction", "0.2"]
SPEC = sweep_spec()


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_lm_dir):
    """What the cases damage copies of: a finished run, a run cut off at step 12, a tiny model's cache,
    a finished sweep with its spec and results, the tiny model's folder."""
    root = tmp_path_factory.mktemp("fuzz")
    home, cwd = os.environ.get("SAESCALE_HOME"), os.getcwd()
    os.environ["SAESCALE_HOME"] = str(root / "home")  # a case that wrongly ran would write here ...
    (root / "cwd").mkdir()
    os.chdir(root / "cwd")  # ... and its runs/ here, never in the user's
    assert main(["train", *TRAIN, "--out", str(root / "run")]) == 0
    interrupted_run(root / "partial", 12)
    assert main(["cache", "--model", str(tiny_lm_dir), "--cache-dir", str(root / "cache"), *CACHE]) == 0
    (root / "spec.toml").write_text(SPEC)
    assert main(["sweep", str(root / "spec.toml"), "--out", str(root / "sweep"), "--no-progress", "--no-fit"]) == 0
    shutil.copytree(tiny_lm_dir, root / "model")
    (root / "scratch").mkdir()
    yield root
    os.chdir(cwd)
    if home is None:
        os.environ.pop("SAESCALE_HOME")
    else:
        os.environ["SAESCALE_HOME"] = home


def refused(argv: list[str], root: Path, capsys, kind: str) -> str:
    """Run one case; assert the four properties of the module docstring; the error line."""
    capsys.readouterr()
    before = snapshot(root)
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    lines = [ln for ln in out.err.splitlines() if ln.strip()]
    after = snapshot(root)
    TRIED[kind] += 1
    assert code != 0, f"{argv}: exit 0\n{out.out}\n{out.err}"
    assert "Traceback" not in out.err + out.out, out.err
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{argv}: {out.err!r}"
    assert "internal error" not in lines[0], f"{argv}: {lines[0]}"
    changed = sorted(k for k, v in before.items() if after.get(k) != v)
    assert not changed, f"{argv} changed {changed}"
    return lines[0]


def scratch(root: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=root / "scratch"))


def done(kind: str, at_least: int) -> None:
    assert TRIED[kind] >= at_least, f"only {TRIED[kind]} {kind} cases"
    report = os.environ.get("SAESCALE_FUZZ_REPORT")
    if report:
        old = json.loads(Path(report).read_text()) if Path(report).is_file() else {}
        Path(report).write_text(json.dumps({**old, kind: TRIED[kind]}, indent=1))


# ---- options ---------------------------------------------------------------------------------------------

def _numeric_options() -> list[tuple[str, str, type, str | None]]:
    """(command, option, int/float, valid rule) for every numeric option of every command."""
    out = []
    for name, (_, cls, _) in _commands().items():
        for _, opt, f, tp, _ in _leaf_fields(cls):
            base = unwrap_optional(tp)[0]
            if base in (int, float):
                out.append((name, opt, base, f.metadata.get("valid")))
    return out


NUMERIC = _numeric_options()
POSITIONAL = {"eval": ["runs/none/sae"], "sweep": ["none.toml"], "fit": ["runs/none"]}


def _bad_values(tp: type, rule: str | None) -> list[str]:
    """Values outside the option's rule, and values no number option takes."""
    bad = ["nan", "inf", "-inf", "abc", "1,5", "0x10", str(2**64), str(-(2**64)), "1e999"]
    if tp is int:
        bad += ["1.5", "1e3", "ten"]
    if rule:
        bad = [v for v in bad if not _accepted(v, tp, rule)]  # 2^64 is a fine float for --adam-eps > 0
        lo, lo_in, hi, hi_in = _bounds(rule)
        if math.isfinite(lo):
            bad.append(repr(int(lo) - 1 if tp is int else lo - 0.5) if lo_in else repr(int(lo) if tp is int else lo))
        if math.isfinite(hi):
            bad.append(repr(int(hi) + 1 if tp is int else hi + 0.5) if hi_in else repr(int(hi) if tp is int else hi))
    return bad


def _accepted(text: str, tp: type, rule: str) -> bool:
    """Whether ``text`` is a valid value of an option of type ``tp`` with ``rule`` (then it is no bad input)."""
    try:
        v = tp(text)
    except ValueError:
        return False
    return math.isfinite(v) and (tp is float or abs(v) < 2**63) and in_range(v, rule)


@st.composite
def bad_option(draw):
    cmd, opt, tp, rule = draw(st.sampled_from(NUMERIC))
    value = draw(st.sampled_from(_bad_values(tp, rule)))
    return [cmd, *POSITIONAL.get(cmd, []), f"--{opt}={value}"]


@st.composite
def bad_word(draw):
    cmd = draw(st.sampled_from(sorted(_commands())))
    kind = draw(st.sampled_from(["unknown", "choice", "bool", "command"]))
    fields = [(opt, tp) for _, opt, f, tp, _ in _leaf_fields(_commands()[cmd][1])]
    if kind == "unknown":
        word = draw(st.text("abcdefghijklmnopqrstuvwxyz-", min_size=2, max_size=12))
        assume(word.strip("-") and not any(word.strip("-") == o for o, _ in fields))
        return [cmd, *POSITIONAL.get(cmd, []), f"--{word.strip('-')}", "1"]
    if kind == "command":
        return [draw(st.sampled_from(["trian", "Train", "evaluate", "--train", "sweeps", "-x"]))]
    if kind == "bool":
        flags = [o for o, tp in fields if unwrap_optional(tp)[0] is bool]
        assume(flags)
        return [cmd, *POSITIONAL.get(cmd, []), f"--{draw(st.sampled_from(flags))}={draw(st.sampled_from(['maybe', '2', 'yes']))}"]
    choices = [(o, tp) for o, tp in fields if getattr(unwrap_optional(tp)[0], "__origin__", None) is not None
               and str(unwrap_optional(tp)[0]).startswith("typing.Literal")]
    assume(choices)
    opt, _ = draw(st.sampled_from(choices))
    return [cmd, *POSITIONAL.get(cmd, []), f"--{opt}", draw(st.sampled_from(["bogus", "", "AUTO", "float64"]))]


@fuzz(180)
@given(argv=bad_option())
def test_bad_numeric_values(world, capsys, argv):
    refused(argv, world, capsys, "options")


@fuzz(60)
@given(argv=bad_word())
def test_unknown_options_choices_and_commands(world, capsys, argv):
    refused(argv, world, capsys, "words")


def test_zz_options_count():
    done("options", 150)
    done("words", 40)


# ---- folders ---------------------------------------------------------------------------------------------

@fuzz(30)
@given(case=st.sampled_from(["file", "under_file", "foreign", "other_run", "cache", "sweep"]),
       cmd=st.sampled_from(["train", "cache", "sweep", "eval", "fit"]))
def test_bad_folders(world, capsys, case, cmd, tiny_lm_dir):
    tmp = scratch(world)
    (tmp / "a_file").write_text("not a folder\n")
    (tmp / "foreign").mkdir()
    (tmp / "foreign" / "notes.txt").write_text("someone's notes\n")
    target = {"file": tmp / "a_file", "under_file": tmp / "a_file" / "sub", "foreign": tmp / "foreign",
              "other_run": world / "run", "cache": world / "cache", "sweep": world / "sweep"}[case]
    if cmd == "train":
        argv = ["train", *TRAIN, "--n", "128", "--out", target]  # other settings than every run here
    elif cmd == "cache":
        assume(case not in ("cache",))  # the same options on the same cache: a finished cache, exit 0
        argv = ["cache", "--model", tiny_lm_dir, "--cache-dir", target, *CACHE[:-2]]
    elif cmd == "sweep":
        argv = ["sweep", world / "spec.toml", "--out", target, "--no-progress", "--no-fit"]
        assume(case != "sweep")  # its own folder: nothing to train, exit 0
        if case in ("cache", "other_run"):
            argv = ["sweep", world / "spec.toml", "--out", target / "checkpoints" if case == "other_run" else target,
                    "--no-progress"]
    elif cmd == "eval":
        assume(case in ("file", "under_file"))
        argv = ["eval", world / "run" / "sae", "--metrics", "recon", "--out", target]
    else:
        assume(case in ("file", "under_file", "foreign", "cache"))
        argv = ["fit", target] if case in ("foreign", "cache") else ["fit", world / "sweep", "--out", target]
    refused(argv, world, capsys, "folders")


def test_zz_folders_count():
    done("folders", 12)


# ---- caches ----------------------------------------------------------------------------------------------

@fuzz(30)
@given(what=st.sampled_from(["manifest_garbage", "manifest_key", "manifest_value", "shard_truncate", "shard_flip",
                             "shard_missing", "stats_missing", "stats_flip", "verified_garbage_and_flip"]),
       where=st.integers(0, 10_000), byte=st.integers(1, 255))
def test_damaged_caches(world, capsys, what, where, byte):
    cache = scratch(world) / "cache"
    shutil.copytree(world / "cache", cache)
    manifest = json.loads((cache / "manifest.json").read_text())
    shard = sorted((cache / "train").glob("shard_*.safetensors"))[where % 2]
    if what == "manifest_garbage":
        (cache / "manifest.json").write_bytes(bytes([byte]) * (1 + where % 50))
    elif what == "manifest_key":
        key = sorted(manifest)[where % len(manifest)]
        del manifest[key]
        (cache / "manifest.json").write_text(json.dumps(manifest))
    elif what == "manifest_value":
        manifest["d_model"] = manifest["d_model"] + 1 + where if where % 2 else "wide"
        manifest["splits"]["train"] = "none" if where % 3 == 0 else manifest["splits"]["train"]
        (cache / "manifest.json").write_text(json.dumps(manifest))
    elif what == "shard_truncate":
        data = shard.read_bytes()
        shard.write_bytes(data[: where % len(data)])
    elif what in ("shard_flip", "stats_flip", "verified_garbage_and_flip"):
        target = cache / "stats.safetensors" if what == "stats_flip" else shard
        data = bytearray(target.read_bytes())
        pos = len(data) - 1 - where % 1024  # in the tensor data, after the header
        data[pos] ^= byte
        target.write_bytes(bytes(data))
        if what == "verified_garbage_and_flip":
            (cache / "verified.json").write_bytes(b"\xff{")
    elif what == "shard_missing":
        shard.unlink()
    else:
        (cache / "stats.safetensors").unlink()
    refused(["train", "--acts", cache, "--n", "64", "--k", "4", "--tokens", "2048", "--batch-size", "512",
             "--no-progress", "--out", cache.parent / "out"], world, capsys, "caches")


def test_zz_caches_count():
    done("caches", 25)


# ---- checkpoints -----------------------------------------------------------------------------------------

JSON_VALUES = st.one_of(st.none(), st.booleans(), st.text(max_size=5), st.lists(st.integers(), max_size=2),
                        st.sampled_from([-1, -1.5, float("nan"), 10**30, 0, 1e300]))


@fuzz(40)
@given(what=st.sampled_from(["state_json", "latest", "state_tensors", "sae_tensors", "cfg"]), key=st.integers(0, 99),
       value=JSON_VALUES)
def test_damaged_checkpoints(world, capsys, what, key, value):
    run = scratch(world) / "partial"
    shutil.copytree(world / "partial", run)
    ck = run / "checkpoints" / "step-000000010"
    if what in ("state_json", "cfg", "latest"):
        path = {"state_json": ck / "state.json", "cfg": ck / "cfg.json",
                "latest": run / "checkpoints" / "latest.json"}[what]
        record = json.loads(path.read_text())
        flat = [k for k, v in record.items() if not isinstance(v, dict)] or list(record)
        name = flat[key % len(flat)]
        assume(record[name] != value)
        record[name] = value
        path.write_text(json.dumps(record))
    else:
        from safetensors.torch import load_file, save_file

        path = ck / ("state.safetensors" if what == "state_tensors" else "sae.safetensors")
        tensors = load_file(str(path))
        name = sorted(tensors)[key % len(tensors)]
        t = tensors[name]
        tensors[name] = t.flatten()[:-1].clone() if t.numel() > 1 and key % 2 else (t * float("nan") if t.is_floating_point() else t[:0].clone())
        save_file(tensors, str(path))
    refused(["train", *TRAIN, "--out", run], world, capsys, "checkpoints")


def test_zz_checkpoints_count():
    done("checkpoints", 30)


# ---- sweep specs -----------------------------------------------------------------------------------------

SPEC_EDITS = [
    ("[grid]\nn = [32, 64]", "[grid]\nn = []"), ("[grid]\nn = [32, 64]", "[grid]\nn = ['x']"),
    ("[grid]\nn = [32, 64]", "[grid]\nn = [-32]"), ("[grid]\nn = [32, 64]", "[grid]\nn = 32"),
    ("[grid]\nn = [32, 64]", "[grid]\nn = [32, 64]\nbogus = [1]"), ("k = 4\nnormalize", "k = 400\nnormalize"),
    ("tokens = 4096", "tokens = -5"), ("tokens = 4096", "tokens = 'many'"), ("tokens = 4096", "tokens = 8192"),
    ("batch_size = 512", "batch_size = 0"), ("[sweep]", "[sweeps]"), ("[sweep]", "[sweep]\ncolour = 'red'"),
    ("source = \"synthetic\"", "source = \"nowhere\""), ("curve_points = 2", "curve_points = -1"),
    ("d = 16", "d = 16.5"), ("[train]", "[train]\nlr = nan"), ("[train]", "[train]\nadam_beta1 = 1.0"),
    ("[sae]", "[sae]\narch = 'gated_maybe'"), ("d = 16", "d = 32"), ("[grid]\nn = [32, 64]", "[grid]\nn = [32, 64, 64]"),
]


@fuzz(45)
@given(case=st.one_of(st.sampled_from(SPEC_EDITS), st.binary(min_size=1, max_size=40)),
       into=st.sampled_from(["new", "finished"]))
def test_bad_specs(world, capsys, case, into):
    tmp = scratch(world)
    spec = tmp / "spec.toml"
    if isinstance(case, bytes):
        spec.write_bytes(b"\xff[" + case)  # never valid UTF-8 TOML
    else:
        old, new = case
        assert old in SPEC
        spec.write_text(SPEC.replace(old, new, 1))
        assume(into == "finished" or case not in [SPEC_EDITS[8], SPEC_EDITS[18]])  # valid for a new sweep
    out = tmp / "sweep"
    if into == "finished":
        shutil.copytree(world / "sweep", out)
    refused(["sweep", spec, "--out", out, "--no-progress", "--no-fit"], world, capsys, "specs")


def test_zz_specs_count():
    done("specs", 30)


# ---- results files ---------------------------------------------------------------------------------------

@fuzz(30)
@given(case=st.sampled_from(["bytes", "not_json", "truncated", "one_member", "same_member", "missing_key", "wrong_type",
                             "empty", "nan_loss"]),
       junk=st.binary(min_size=1, max_size=30), pick=st.integers(0, 50))
def test_bad_results_files(world, capsys, case, junk, pick):
    lines = (world / "sweep" / "results.jsonl").read_text().splitlines()
    records = [json.loads(ln) for ln in lines]
    path = scratch(world) / "results.jsonl"
    if case == "bytes":
        path.write_bytes(b"\xff" + junk)
    elif case == "not_json":
        path.write_text(lines[0] + "\n{not json" + "\n")
    elif case == "truncated":
        path.write_text(lines[0] + "\n" + lines[1][: 1 + pick % (len(lines[1]) - 1)])
    elif case == "one_member":
        path.write_text(lines[0] + "\n")
    elif case == "same_member":
        path.write_text((lines[0] + "\n") * 3)
    elif case in ("missing_key", "wrong_type", "nan_loss"):
        rec = records[0]
        # keys whose absence or wrong type makes the line bad input whatever else could be fitted (a line may lack
        # settings or l0: those are read as older results, and two such members can be fitted since curves carry
        # a half-budget point)
        key = (["loss", "n", "curve"] if case == "missing_key" else ["loss", "settings", "n"])[pick % 3] \
            if case != "nan_loss" else "loss"
        if case == "missing_key":
            rec.pop(key, None)
        else:
            rec[key] = "lots" if case == "wrong_type" else float("nan")
        path.write_text(json.dumps(rec) + "\n" + lines[1] + "\n")
    else:
        path.write_text("")
    refused(["fit", path, "--no-plots", "--bootstrap", "0", "--out", path.parent / "fit"], world, capsys, "results")


def test_zz_results_count():
    done("results", 20)


# ---- corpora ---------------------------------------------------------------------------------------------

@fuzz(30)
@given(case=st.sampled_from(["txt_bytes", "jsonl_bytes", "jsonl_no_text", "jsonl_not_object", "gz_garbage",
                             "gz_truncated", "parquet_garbage", "empty_txt", "missing", "unknown_type", "a_folder"]),
       junk=st.binary(min_size=1, max_size=40))
def test_bad_corpora(world, capsys, case, junk, tiny_lm_dir):
    tmp = scratch(world)
    name = {"txt_bytes": "c.txt", "empty_txt": "c.txt", "gz_garbage": "c.jsonl.gz", "gz_truncated": "c.jsonl.gz",
            "parquet_garbage": "c.parquet", "unknown_type": "c.docx", "a_folder": "c.txt"}.get(case, "c.jsonl")
    path = tmp / name
    if case in ("txt_bytes", "jsonl_bytes"):
        path.write_bytes(b"\xff\xfe" + junk)
    elif case == "jsonl_no_text":
        path.write_text(json.dumps({"body": "hello"}) + "\n")
    elif case == "jsonl_not_object":
        path.write_text("[1, 2]\n")
    elif case == "gz_garbage":
        path.write_bytes(b"\x1f\x8b" + junk)
    elif case == "gz_truncated":
        path.write_bytes(gzip.compress(("{\"text\": \"%s\"}\n" % ("word " * 200)).encode())[:-12])
    elif case in ("parquet_garbage", "unknown_type"):
        path.write_bytes(junk)
    elif case == "empty_txt":
        path.write_text("")
    elif case == "a_folder":
        path.mkdir()
    refused(["cache", "--model", tiny_lm_dir, "--corpus", path, "--cache-dir", tmp / "cache", *CACHE], world, capsys,
            "corpora")


def test_zz_corpora_count():
    done("corpora", 20)


# ---- model files -----------------------------------------------------------------------------------------

@fuzz(30)
@given(case=st.sampled_from(["config_bytes", "config_list", "model_type", "no_config", "weights_truncated",
                             "weights_garbage", "no_weights", "tokenizer_garbage", "hub_id", "gguf_garbage"]),
       junk=st.binary(min_size=1, max_size=40), cut=st.integers(1, 10_000))
def test_bad_model_files(world, capsys, case, junk, cut, monkeypatch):
    tmp = scratch(world)
    model = tmp / "model"
    shutil.copytree(world / "model", model)
    weights = model / "model.safetensors"
    if case == "config_bytes":
        (model / "config.json").write_bytes(b"\xff" + junk)
    elif case == "config_list":
        (model / "config.json").write_text("[1, 2, 3]")
    elif case == "model_type":
        cfg = json.loads((model / "config.json").read_text())
        cfg["model_type"] = "llama_" + junk.hex()[:8]
        (model / "config.json").write_text(json.dumps(cfg))
    elif case == "no_config":
        (model / "config.json").unlink()
    elif case == "weights_truncated":
        data = weights.read_bytes()
        weights.write_bytes(data[: cut % len(data)])
    elif case == "weights_garbage":
        weights.write_bytes(junk)
    elif case == "no_weights":
        weights.unlink()
    elif case == "tokenizer_garbage":
        (model / "tokenizer.json").write_bytes(b"\xff" + junk)
    elif case == "gguf_garbage":
        model = tmp / "m.gguf"
        model.write_bytes(b"GGUF" + junk)
    else:
        model = "nobody/no-such-model-" + junk.hex()[:6]
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    refused(["cache", "--model", model, "--cache-dir", tmp / "cache", *CACHE], world, capsys, "models")


def test_zz_models_count():
    done("models", 20)


def test_zz_total():
    assert sum(TRIED.values()) >= 300 or len(TRIED) < 9, dict(TRIED)  # the whole module: at least 300 cases

