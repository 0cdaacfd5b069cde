"""A whole dashboard on the tiny llama: the files and their JSON schema, values that match a re-encode,
N2G, the Neuronpedia-shaped export; and every bad input is one line (no traceback, nothing half-written)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from saescale.activations.cache_read import CacheReader
from saescale.cli import main
from saescale.cliargs import parse_config
from saescale.commands.dashboard import DashboardCommand, run_dashboard
from saescale.dashboard.build import parse_latents
from saescale.dashboard.schema import INDEX_FIELDS
from saescale.errors import SaescaleError
from saescale.sae.io import load_sae
from tests.dashboard.dash_helpers import tiny_setup

pytestmark = pytest.mark.usefixtures("one_thread")


def command(*args: str) -> DashboardCommand:
    return parse_config(DashboardCommand, list(args), prog="saescale dashboard")


@pytest.fixture(scope="module")
def built(tiny_lm_dir, tiny_lm, tmp_path_factory):
    root = tmp_path_factory.mktemp("dash_build")
    sae_dir, cache = tiny_setup(root, tiny_lm_dir, tiny_lm)
    out = root / "dash"
    run_dashboard(command(str(sae_dir), "--out", str(out), "--top", "5", "--n2g-latents", "4", "--n2g-build", "4",
                          "--n2g-test", "4", "--n2g-max-len", "4", "--neuronpedia", "--no-progress"), lm=tiny_lm)
    return sae_dir, cache, out


def latent_json(out: Path, i: int) -> dict:
    return json.loads((out / "latents" / f"{i}.json").read_text())


def test_files_and_index(built):
    _sae_dir, _, out = built
    for f in ("index.html", "latent.html", "assets/style.css", "assets/common.js", "assets/index.js",
              "assets/latent.js", "data/index.json", "data/index.js", "data/vocab.json", "data/meta.js", "dashboard.json"):
        assert (out / f).is_file(), f
    index = json.loads((out / "data/index.json").read_text())
    assert index["format"] == "saescale-dashboard-index-v1" and index["fields"] == list(INDEX_FIELDS)
    assert [r[0] for r in index["rows"]] == list(range(64))
    assert sum(index["density_histogram"]["counts"]) + index["density_histogram"]["never_fire"] == 64
    js = (out / "data/index.js").read_text()
    assert js.startswith("window.SAESCALE_INDEX = ") and json.loads(js[len("window.SAESCALE_INDEX = "):-2]) == index
    html = (out / "index.html").read_text() + (out / "latent.html").read_text()
    assert "http" not in html.replace('"http://www.w3.org', "")  # offline: no CDN, no server
    assert not list(out.parent.glob(".dash.tmp-*"))


def test_latent_values_equal_a_reencode(built, tiny_lm):
    sae_dir, cache, out = built
    sae = load_sae(sae_dir).eval()
    rows = CacheReader(cache).read_all()
    with torch.no_grad():
        code = sae.encode(rows["acts"])
    z = torch.zeros(len(rows["acts"]), sae.cfg.n).scatter_add_(1, code.indices, code.values.clamp_min(0))
    checked = 0
    for i in range(0, 64, 5):
        doc = latent_json(out, i)
        assert doc["format"] == "saescale-dashboard-latent-v1" and doc["latent"] == i
        assert doc["fires"] == int((z[:, i] > 0).sum()) and doc["density"] == doc["fires"] / doc["n_tokens"]
        assert sum(doc["histogram"]["counts"]) == doc["fires"]
        for c in doc["top"] + doc["quantiles"]:
            sel = rows["ctx"] == c["ctx"]
            want = torch.zeros(len(c["acts"]))
            want[rows["pos"][sel] - doc["first_position"]] = z[sel, i]
            assert torch.allclose(torch.tensor(c["acts"]), want, rtol=1e-5, atol=1e-7)
            assert c["tokens"][: int(sel.sum())] == rows["tokens"][sel].tolist()
            checked += 1
        for q in doc["quantiles"]:
            assert q["bin"][0] <= q["value"] < q["bin"][1] or q["bin"][0] == 2.0 ** -16
            assert q["acts"][q["pos"]] == q["value"]
        assert len(doc["neighbours"]) == 8 and len(doc["logits"]["promoted"]) == 10
    assert checked > 20


def test_n2g_explanations(built):
    _, _, out = built
    index = json.loads((out / "data/index.json").read_text())
    col = {f: j for j, f in enumerate(index["fields"])}
    explained = [r for r in index["rows"] if r[col["explanation_kind"]] == "n2g"]
    assert 1 <= len(explained) == index["meta"]["explained"] <= 4
    for r in explained:
        doc = latent_json(out, r[0])
        e = doc["explanation"]
        assert e["text"] == r[col["explanation"]] and e["patterns"]
        assert e["precision"] is None or 0 <= e["precision"] <= 1
        assert e["recall"] is None or 0 <= e["recall"] <= 1
        assert doc["ngram"] and r[col["ngram"]] == doc["ngram"]["text"]  # both kept; N2G's is shown


def test_every_latent_has_an_explanation_or_a_reason(built):
    _, _, out = built
    index = json.loads((out / "data/index.json").read_text())
    col = {f: j for j, f in enumerate(index["fields"])}
    kinds = {"n2g": 0, "ngram": 0, "none": 0}
    for r in index["rows"]:
        doc = latent_json(out, r[0])
        kind = doc["explanation_kind"]
        kinds[kind] += 1
        assert r[col["explanation_kind"]] == kind
        if kind == "none":
            assert doc["explanation"] is None and doc["explanation_reason"] and r[col["explanation"]] == ""
            assert doc["fires"] == 0 and doc["explanation_reason"] == "never fires on this split"
        else:
            assert doc["explanation_reason"] is None and doc["explanation"]["text"] == r[col["explanation"]] != ""
            assert doc["ngram"]["patterns"] and all(1 <= len(p) <= 3 for p in doc["ngram"]["patterns"])
            h = doc["ngram"]
            assert h["building_contexts"] + h["held_out_contexts"] == index["meta"]["n_contexts"]
            assert h["precision"] is None or 0 <= h["precision"] <= 1
        if kind == "ngram":
            assert doc["explanation"] == doc["ngram"] and r[col["ngram"]] == ""
    assert kinds["ngram"] >= 40 and kinds["n2g"] == index["meta"]["explained"]
    assert kinds["n2g"] + kinds["ngram"] == index["meta"]["ngram_explained"]  # every firing latent has an n-gram one


def test_neuronpedia_export_shape(built):
    _, _, out = built
    batch = json.loads((out / "neuronpedia" / "batch-0.json").read_text())
    assert set(batch) == {"model_id", "layer", "sae_set", "features"} and len(batch["features"]) == 64
    f = batch["features"][3]
    for key in ("feature_index", "neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1",
                "correlated_neurons_indices", "correlated_features_indices", "neg_str", "neg_values", "pos_str",
                "pos_values", "frac_nonzero", "freq_hist_data_bar_values", "freq_hist_data_bar_heights",
                "logits_hist_data_bar_heights", "logits_hist_data_bar_values", "n_prompts_total",
                "n_tokens_in_prompt", "dataset", "decoder_weights_dist", "activations"):
        assert key in f, key
    doc = latent_json(out, 3)
    assert f["frac_nonzero"] == doc["density"] and f["pos_values"] == [t["value"] for t in doc["logits"]["promoted"]]
    assert all(set(a) == {"bin_min", "bin_max", "bin_contains", "tokens", "values"} for a in f["activations"])


def test_rebuild_replaces_a_dashboard(built, tiny_lm):
    sae_dir, _, out = built
    copy = out.parent / "dash2"
    shutil.copytree(out, copy)
    (copy / "stale.txt").write_text("old")
    run_dashboard(command(str(sae_dir), "--out", str(copy), "--latents", "3", "--n2g-latents", "1", "--n2g-build", "2",
                          "--n2g-test", "2", "--n2g-max-len", "2", "--no-progress"), lm=tiny_lm)
    assert not (copy / "stale.txt").exists() and sorted(p.name for p in (copy / "latents").iterdir()) == [
        "0.js", "0.json", "1.js", "1.json", "2.js", "2.json"]


def test_parse_latents():
    assert parse_latents("all", 5) == [0, 1, 2, 3, 4] and parse_latents("2", 5) == [0, 1]
    assert parse_latents("4,1-2", 5) == [1, 2, 4]
    for bad, says in (("6", "out of range"), ("0", "out of range"), ("1,5", "latent 5 is out of range"),
                      ("x", "is not 'all'"), ("3-1", "empty")):
        with pytest.raises(SaescaleError, match=says):
            parse_latents(bad, 5)


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_inputs_are_one_line(built, tmp_path, capsys):
    sae_dir, _cache, _ = built
    out = tmp_path / "out"
    err = one_line_error(capsys, ["dashboard", str(sae_dir), "--out", str(out), "--latents", "65"])
    assert "--latents 65 is out of range" in err and "64 latents" in err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    err = one_line_error(capsys, ["dashboard", str(sae_dir), "--out", str(blocker / "dash")])
    assert "cannot write the dashboard to" in err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    err = one_line_error(capsys, ["dashboard", str(sae_dir), "--out", str(tmp_path / "mine")])
    assert "not a dashboard folder" in err and (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    err = one_line_error(capsys, ["dashboard", str(tmp_path / "nothing")])
    assert "not found" in err
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_missing_cache_says_how_to_rebuild(built, tmp_path, capsys):
    sae_dir, _cache, _ = built
    moved = tmp_path / "sae"
    shutil.copytree(sae_dir, moved)
    cfg = json.loads((moved / "cfg.json").read_text())
    cfg["extra"]["cache"] = str(tmp_path / "gone")
    (moved / "cfg.json").write_text(json.dumps(cfg))
    err = one_line_error(capsys, ["dashboard", str(moved), "--out", str(tmp_path / "d")])
    assert "is missing: rebuild it with `saescale cache --model" in err
    assert f"--cache-dir {tmp_path / 'gone'}" in err and "--context-len 16 --n-tokens 3007" in err
    assert not (tmp_path / "d").exists() and not list(tmp_path.glob(".d.tmp-*"))


def test_missing_model_is_one_line(built, tmp_path, capsys):
    sae_dir, _, _ = built
    moved = tmp_path / "sae"
    shutil.copytree(sae_dir, moved)
    cfg = json.loads((moved / "cfg.json").read_text())
    cfg["extra"]["activations"]["model"] = str(tmp_path / "no_model")
    (moved / "cfg.json").write_text(json.dumps(cfg))
    err = one_line_error(capsys, ["dashboard", str(moved), "--out", str(tmp_path / "d")])
    assert "the SAE's model" in err and "cannot be loaded" in err and "--model" in err
    assert not (tmp_path / "d").exists() and not list(tmp_path.glob(".d.tmp-*"))


def test_val_split_and_a_latent_list(built, tiny_lm):
    sae_dir, cache, out = built
    other = out.parent / "dash_val"
    run_dashboard(command(str(sae_dir), "--out", str(other), "--split", "val", "--latents", "1,3-4", "--n2g-latents", "1",
                          "--n2g-build", "2", "--n2g-test", "2", "--n2g-max-len", "2", "--no-progress"), lm=tiny_lm)
    index = json.loads((other / "data" / "index.json").read_text())
    assert index["meta"]["split"] == "val" and index["meta"]["n_tokens"] == CacheReader(cache, "val").n_tokens
    assert [r[0] for r in index["rows"]] == [1, 3, 4]
    meta = json.loads((other / "data" / "meta.json").read_text())
    assert meta["latents"] == [1, 3, 4]


def test_a_rebuild_keeps_explanations_and_adds_more(built, tiny_lm):
    sae_dir, _, out = built
    copy = out.parent / "dash_more"
    shutil.copytree(out, copy)
    before = json.loads((copy / "dashboard.json").read_text())
    run_dashboard(command(str(sae_dir), "--out", str(copy), "--top", "5", "--n2g-latents", "2", "--n2g-build", "4",
                          "--n2g-test", "4", "--n2g-max-len", "4", "--no-progress"), lm=tiny_lm)
    after = json.loads((copy / "dashboard.json").read_text())
    assert after["n2g_key"] == before["n2g_key"]
    assert set(before["explained_ids"]) < set(after["explained_ids"]) and after["explained"] == before["explained"] + 2
    for i in before["explained_ids"]:
        assert latent_json(copy, i)["explanation"] == latent_json(out, i)["explanation"]
