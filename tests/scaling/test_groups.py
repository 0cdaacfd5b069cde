"""Which members ``saescale fit`` pools: groups from the recorded settings, named by what sets them apart; seeds averaged."""

import json
import math

import numpy as np
import pytest

from saescale.cli import main
from saescale.configs import config_to_dict
from saescale.errors import SaescaleError
from saescale.sae.config import SAEConfig
from saescale.scaling.analysis import fit_all
from saescale.scaling.groups import group_labels, group_members, mean_over_seeds
from saescale.scaling.joint import fit_joint
from saescale.scaling.results import assign_uids, parse_member
from saescale.train.config import TrainConfig
from tests.scaling.test_scaling import D, joint_records

SHARED = {"batch_size": 4096, "dead_tokens": 40960, "progress": False}


def settings(n, k, lr=None, tokens=2**24, seed=0, sae=None, train=None):
    """A results line's ``settings`` as ``saescale sweep`` records it today (every field of both configs)."""
    s = SAEConfig(n=n, k=k, **(sae or {}))
    t = TrainConfig(tokens=tokens, lr=lr, seed=seed, **{**SHARED, **(train or {})})
    return {"id": f"n{n}-k{k}", "grid": {"n": n, "k": k}, "sae": config_to_dict(s), "train": config_to_dict(t)}


def line(n=1024, k=8, loss=0.3, seed=0, lr=1e-3, tokens=2**24, sae=None, train=None, **top):
    """One results line of today's runner (new dead-latent names, settings recorded)."""
    rec = {"id": f"n{n}-k{k}-s{seed}", "arch": "topk", "n": n, "k": k, "d": D, "lr": lr, "tokens": tokens,
           "seed": seed, "model": "tiny", "model_params": None, "hook": "layers.4", "loss": loss, "l0": float(k),
           "never_fired_frac": 0.0, "dead_frac": 0.0, "dead_window_tokens": 40960, "heldout_tokens": 65536,
           "flops_per_token": 12 * D * n, "curve": [{"tokens": tokens, "loss": loss}],
           "settings": settings(n, k, lr, tokens, seed, sae, train)}
    rec.update(top)
    return rec


def members(records):
    return assign_uids([parse_member(r, f"synthetic:{i}") for i, r in enumerate(records)])


@pytest.mark.parametrize("sae,train,top", [
    ({"normalize": "std"}, {}, {}),
    ({}, {"multi_topk": True}, {}),
    ({}, {"aux_coef": 0.0}, {}),
    ({}, {"k_aux": 64}, {}),
    ({}, {"tied_init": False}, {}),
    ({}, {"batch_size": 1024}, {}),
    ({}, {"dead_tokens": 81920}, {"dead_window_tokens": 81920}),
    ({}, {"ema": 0.999}, {}),
    ({}, {"lr_decay": "cosine"}, {}),
    ({}, {}, {"hook": "layers.2"}),
    ({}, {}, {"model": "other"}),
])
def test_members_differing_in_any_other_setting_are_not_pooled(sae, train, top):
    ms = members([line(), line(n=2048, sae=sae, train=train, **top)])
    assert len(group_members(ms)) == 2


def test_a_setting_unknown_to_this_code_still_splits_the_groups():
    """A field added later (here 'dtype', 'init_scale') is compared without anyone listing it; absent is a value too."""
    a, b, c = line(), line(n=2048), line(n=4096)
    b["settings"]["train"]["dtype"] = "bfloat16"
    c["settings"]["train"]["dtype"] = "float32"
    a["settings"]["activations"] = {"corpus": "embedded"}
    assert len(group_members(members([a, b, c]))) == 3
    b2 = line(n=2048)
    b2["settings"]["sae"]["init_scale"] = True
    keys = list(group_members(members([line(), b2])))
    assert sorted(group_labels(keys).values()) == ["tiny/topk init_scale=(not recorded)", "tiny/topk init_scale=true"]


def test_fitted_axes_seeds_and_runtime_settings_are_pooled():
    ms = members([line(), line(n=2048, k=16, lr=3e-3, tokens=2**20, seed=1, train={"device": "cuda", "log_every": 1,
                                                                                  "checkpoint_every": 7})])
    assert len(group_members(ms)) == 1


def test_selections_certified_equal_to_float32_are_pooled_and_autocast_is_not():
    """train.precision: older records (none: they selected in float32), 'auto', 'float32' and 'bfloat16'
    (certified to select float32's latents) train the same SAE; 'autocast' (approximate) does not. Before,
    the reproduction's 24-member sweep split in two groups of 12 (records from before the setting existed
    against 'auto') and the joint law was fitted to half of it."""
    older, auto, f32, bf16, approx = (line(n=n) for n in (1024, 2048, 4096, 8192, 16384))
    del older["settings"]["train"]["precision"]
    for rec, value in ((auto, "auto"), (f32, "float32"), (bf16, "bfloat16"), (approx, "autocast")):
        rec["settings"]["train"]["precision"] = value
    groups = group_members(members([older, auto, f32, bf16, approx]))
    assert sorted(len(ms) for ms in groups.values()) == [1, 4]
    assert [m.n for ms in groups.values() if len(ms) == 1 for m in ms] == [16384]


def test_older_records_read_as_today_and_pool_with_them():
    """Older results: lr 0 / k_aux 0 / warmup -1 / dead_tokens 0 meant 'auto', fire_threshold 1e-3, d 0,
    dead_frac = never fired on held-out tokens, train_dead_frac = the dead fraction over the window."""
    old = line(n=2048, tokens=2_000_000)
    old["settings"]["train"].update(lr=0.0, k_aux=0, warmup_steps=-1, dead_tokens=0, fire_threshold=1e-3)
    old["settings"]["sae"].update(d=0, norm_scale=1.0)
    for key in ("never_fired_frac", "dead_window_tokens"):
        del old[key]
    old.update(dead_frac=0.25, train_dead_frac=0.01, flops_per_token=6 * D * 2048)
    new = line(tokens=2_000_000, dead_window_tokens=200_000, train={"dead_tokens": 200_000})
    m_old, m_new = members([old, new])
    assert m_old.group == m_new.group  # the old auto window min(10M, tokens / 10) is the new explicit 200k
    assert (m_old.dead_frac, m_old.dead_window_tokens, m_old.never_fired_frac) == (0.01, 200_000, 0.25)
    other_threshold = dict(old, settings=json.loads(json.dumps(old["settings"])))
    other_threshold["settings"]["train"]["fire_threshold"] = 0.0
    assert members([other_threshold])[0].group != m_new.group


def test_multi_topk_grid_gives_two_named_groups_in_fit_json(tmp_path, capsys):
    """The issue's check: multi_topk = [true, false] in the grid never gives one pooled fit."""
    recs = []
    for multi, scale in ((False, 1.0), (True, 1.1)):
        for r in joint_records(ks=[8, 16, 32, 64, 128]):
            recs.append(line(r["n"], r["k"], r["loss"] * scale, multi_topk=multi, train={"multi_topk": multi}))
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert main(["fit", str(path), "--bootstrap", "0", "--no-plots"]) == 0
    out = capsys.readouterr().out
    doc = json.loads((tmp_path / "fit.json").read_text())
    assert sorted(doc["groups"]) == ["tiny/topk multi_topk=false", "tiny/topk multi_topk=true"]
    for label, g in doc["groups"].items():
        assert len(g["members"]) == 30 and g["differs"] == {"train.multi_topk": label.endswith("true")}
        assert g["settings"]["train.multi_topk"] is label.endswith("true") and "sae.n" not in g["settings"]
    alpha = {label: g["joint"]["params"]["alpha"] for label, g in doc["groups"].items()}
    assert alpha["tiny/topk multi_topk=true"] == pytest.approx(alpha["tiny/topk multi_topk=false"] + math.log(1.1),
                                                               abs=1e-3)  # each group its own fit
    assert "2 groups of comparable members, told apart by train.multi_topk" in out
    assert "joint fit [tiny/topk multi_topk=true]: R2=" in out


def test_seeds_are_averaged_and_their_spread_reported(tmp_path, capsys):
    """Three seeds per (n, k): the fit sees their mean (the old code took the minimum), fit.json the spread."""
    base = joint_records(noise=0.0, ks=[8, 16, 32, 64])
    rng = np.random.default_rng(0)
    seeded, means = [], []
    for r in base:
        losses = r["loss"] * np.exp(0.05 * rng.standard_normal(3))
        seeded += [line(r["n"], r["k"], float(x), seed=s) for s, x in enumerate(losses)]
        means.append(line(r["n"], r["k"], float(losses.mean())))
    fits = fit_all(members(seeded), heldout=3, seed=0, bootstrap=0)
    (g,) = fits.groups.values()
    assert len(g.members) == 3 * len(base) and len(g.points) == len(base)
    on_means = fit_joint(members(means), heldout=3, seed=0, bootstrap=0)
    np.testing.assert_allclose(g.joint.fit.values, on_means.fit.values, rtol=1e-6, atol=1e-9)
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in seeded))
    assert main(["fit", str(path), "--bootstrap", "0", "--no-plots"]) == 0
    assert f"{len(base)} of {len(base)} points are means over 3 seeds; seed sd / mean loss: median" in capsys.readouterr().out
    spread = json.loads((tmp_path / "fit.json").read_text())["groups"]["tiny/topk"]["seed_means"]
    assert len(spread) == len(base) and spread[0]["seeds"] == [0, 1, 2] and len(spread[0]["members"]) == 3
    first = [r["loss"] for r in seeded[:3]]
    assert spread[0]["loss_mean"] == pytest.approx(np.mean(first))
    assert spread[0]["loss_sd"] == pytest.approx(np.std(first, ddof=1))
    assert (spread[0]["loss_min"], spread[0]["loss_max"]) == (min(first), max(first))


def test_mean_curve_is_taken_at_the_tokens_every_seed_has():
    a = line(loss=0.3, curve=[{"tokens": 10, "loss": 0.9}, {"tokens": 20, "loss": 0.5}, {"tokens": 2**24, "loss": 0.3}])
    b = line(loss=0.5, seed=1, curve=[{"tokens": 20, "loss": 0.7}, {"tokens": 2**24, "loss": 0.5}])
    (p,) = mean_over_seeds(members([a, b]))
    assert p.curve_tokens == (20, 2**24) and p.curve_loss == pytest.approx((0.6, 0.4)) and p.loss == pytest.approx(0.4)


def test_the_same_sae_twice_is_refused(tmp_path, capsys):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(line()) + "\n")
    with pytest.raises(SaescaleError, match="same SAE"):
        group_members(members([line(), line()]))
    assert main(["fit", str(path), str(path), "--no-plots"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pass each results file once" in err


@pytest.mark.parametrize("recs", [
    [line()],  # one member
    [line(), line(seed=1), line(seed=2)],  # one (n, k) over three seeds
])
def test_fitting_nothing_is_an_error_not_exit_0(tmp_path, capsys, recs):
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert main(["fit", str(path), "--no-plots"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no law could be fitted" in err and "1 point(s)" in err
    assert not (tmp_path / "fit.json").exists()


def test_lines_without_settings_are_compared_on_what_they_record():
    bare = {k: v for k, v in line().items() if k != "settings"}
    ms = members([bare, dict(bare, n=2048), dict(bare, n=4096, multi_topk=True), line(n=8192)])
    groups = group_members(ms)
    assert sorted(len(v) for v in groups.values()) == [1, 1, 2] and not ms[0].settings_recorded

