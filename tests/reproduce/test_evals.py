"""The reproduction's evaluator: one EvalSet per model shared by every SAE, probe data harvested once, and the
same numbers as a fresh ``saescale eval`` of each SAE."""

import dataclasses

import pytest

from saescale.commands.eval import EvalCommand, run_eval
from saescale.eval import suite
from saescale.eval.evalset import load_eval_set
from saescale.reproduce.evals import EvalSettings
from tests.eval.eval_helpers import save_for_model
from tests.helpers import make_sae

pytestmark = pytest.mark.usefixtures("one_thread")

TASKS = "sotu_era,novel_vs_speech,capitalised"


def test_shared_probe_data_is_harvested_once_and_gives_each_saes_own_numbers(tiny_lm_dir, tiny_lm, tmp_path, monkeypatch):
    dirs = [save_for_model(make_sae(n=64, k=4, d=32, seed=s), tmp_path / f"sae{s}", str(tiny_lm_dir)) for s in (0, 1)]
    settings = dataclasses.replace(EvalSettings(), probes=dataclasses.replace(EvalSettings().probes, tasks=TASKS, docs=4,
                                                                               dense=False, bootstrap=50))
    calls = []
    real = suite.harvest
    monkeypatch.setattr(suite, "harvest", lambda *a, **k: calls.append(1) or real(*a, **k))
    es = load_eval_set(dirs[0], 8, 0, lm=tiny_lm)
    shared = []
    for d in dirs:
        from saescale.sae.io import load_sae

        es_d = dataclasses.replace(es, sae=load_sae(d).eval())
        shared.append(suite.run_metrics(es_d, ["probes"], settings)[0]["probes"])
    assert len(calls) == 1  # the second SAE reused the first one's probe activations
    for d, got in zip(dirs, shared):  # and each SAE's numbers are those of its own fresh evaluation
        fresh = run_eval(EvalCommand(sae=str(d), out=str(d.parent / "eval"), metrics="probes", eval_contexts=8,
                                     probes=settings.probes), lm=tiny_lm)["metrics"]["probes"]
        assert got["probe_loss"] == pytest.approx(fresh["probe_loss"], rel=1e-6)
        assert {t: r.get("test_ce") for t, r in got["tasks"].items()} == pytest.approx(
            {t: r.get("test_ce") for t, r in fresh["tasks"].items()}, rel=1e-6)
    assert shared[0]["probe_loss"] != shared[1]["probe_loss"]  # two different SAEs, not one answer twice
