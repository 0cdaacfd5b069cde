"""Probe tasks at breadth: every task labels both classes on a fixture corpus, the registry documents each task,
tasks differ, missing data gives one line, and the bootstrap intervals behave."""

import gzip
import json
from pathlib import Path

import pytest
import torch

from saescale.activations.corpus import Document
from saescale.errors import SaescaleError
from saescale.eval import probe_sources
from saescale.eval.probe_data import build_pool
from saescale.eval.probe_sources import (
    CODE_LANGS,
    FORTUNE_LANGS,
    FORTUNES,
    SOURCES,
    large_path,
)
from saescale.eval.probes import bootstrap_ci, score_task
from saescale.eval.report import format_table
from saescale.eval.suite import probe_summary
from saescale.eval.tasks import TASKS, select_tasks

pytestmark = pytest.mark.usefixtures("one_thread")

PROSE = ('The President said "we shall act (and act soon) in 1861." Then the LORD spake. The Lord said: '
         'no. And Mr. Smith (of Ohio) wrote "hello there," to us. ')
PY = ('import os  # the os module\n\ndef f(x):\n    """Doc string."""\n    if x > 1:\n        return "a" + str(x)  '
      '# done\n    return None\n')
CODE = {"python": PY, "c": "int main(void) { /* entry */ return 1; } // end\n", "javascript":
        "function f(a) { return a + 1; } // add one\n/* block */ let b = 2;\n", "shell":
        "echo hello  # greet\nls -l /tmp\n# list\n", "perl": "my $x = 1;  # one\nprint $x;\n"}
MAIL = "Subject: offer\n\n<html><body><p>Buy now</p> cheap <b>pills</b></body></html> click here 123\n"


def _gz(path: Path, records: list[dict]) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def write_large_corpus(home: Path) -> None:
    """Fixture large corpus under ``home``/corpus/large: kjv, spam-assassin, code, *-doc + MANIFEST.json."""
    folder = home / "corpus" / "large"
    folder.mkdir(parents=True)
    _gz(folder / "kjv.jsonl.gz", [{"text": f"Book {b} chapter {c}. " + PROSE * 6, "source": "kjv", "book": f"B{b}",
                                  "book_index": b, "testament": "old" if b < 40 else "new", "chapter": c}
                                 for b in range(1, 67) for c in (1, 2)])
    _gz(folder / "spam-assassin.jsonl.gz", [{"text": f"Mail {i} {g}. " + MAIL * 4, "source": "spam-assassin",
                                            "label": "ham" if "ham" in g else "spam", "group": g}
                                           for g in ("easy-ham-1", "hard-ham-1", "spam-1", "spam-2") for i in range(4)])
    _gz(folder / "code.jsonl.gz", [{"text": f"# file {i}\n" + CODE[lang] * 8, "source": "code", "language": lang,
                                    "package": "p", "path": f"f{i}"} for lang in CODE_LANGS for i in range(4)])
    _gz(folder / "python-doc.jsonl.gz", [{"text": f"Section {i}\n=========\n\nThe ``os`` module (see below) is "
                                          "portable. " * 8, "source": "python-doc", "file": f"d{i}.rst"}
                                         for i in range(4)])
    for name in ("perl-doc", "django-doc"):
        _gz(folder / f"{name}.jsonl.gz", [{"text": f"{name} page {i}. " + PROSE * 4, "source": name, "file": f"p{i}"}
                                          for i in range(4)])
    names = ("kjv", "spam-assassin", "code", "python-doc", "perl-doc", "django-doc")
    (folder / "MANIFEST.json").write_text(json.dumps({"sources": [{"name": n, "file": f"{n}.jsonl.gz"} for n in names]}))


def write_fortunes(root: Path) -> None:
    """A fixture /usr/share/games/fortunes: every language's files at the path its Debian package uses."""
    for lang, (_, rels, _) in FORTUNE_LANGS.items():
        text = "\n%\n".join(f"Fortune {lang} number {i}: " + "words " * 30 for i in range(12)) + "\n%\n"
        path = root / rels[0]
        if path.suffix or lang in ("en", "pt", "zh"):  # top-level files (fortunes-min, -br, -zh)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            (root / f"{rels[0]}.dat").write_bytes(b"\x00\x01index")  # index files are skipped
        else:
            path.mkdir(parents=True)
            (path / "witze.fortunes").write_text(text)  # fortunes-es names its files *.fortunes


@pytest.fixture
def fixture_data(tmp_path, monkeypatch):
    """(fortunes root) with SAESCALE_HOME -> a fixture large corpus and the default corpus / stdlib replaced by
    small fixture documents (so every class appears in a few contexts)."""
    monkeypatch.setenv("SAESCALE_HOME", str(tmp_path / "home"))
    write_large_corpus(tmp_path / "home")
    write_fortunes(tmp_path / "fortunes")
    default = [Document(f"Address {y}. " + PROSE * 6, {"source": "sotu", "year": y, "president": "P",
                                                        "party": ("Democratic", "Republican", "Whig")[y % 3]})
               for y in range(1790, 2021, 5)]
    default += [Document(f"Chapter {c}. " + PROSE * 6, {"source": "moby-dick", "chapter": c}) for c in range(1, 9)]
    monkeypatch.setattr(probe_sources, "load_documents", lambda spec: default)
    monkeypatch.setattr(probe_sources, "python_docs",
                        lambda: [Document(PY * 6, {"source": "python", "file": f"m{i}.py"}) for i in range(6)])
    return tmp_path / "fortunes"


def _pool(sources, tok, root, n_docs=4):
    return build_pool(list(sources), tok, 48, tok.bos_token_id, n_docs=n_docs, per_doc=2, seed=0, fortunes_root=root)


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_labels_both_classes(name, fixture_data, tiny_lm):
    task = TASKS[name]
    assert task.available(fixture_data), task.missing(fixture_data)
    labels = task.label(_pool(task.sources, tiny_lm[1], fixture_data))
    lab = labels if task.level == "sequence" else labels[:, 1:]
    assert lab.shape[0] > 0 and (lab == 1).sum() >= 2 and (lab == 0).sum() >= 2, (name, lab.unique(return_counts=True))


def test_registry_is_broad_documented_and_tasks_differ(fixture_data, tiny_lm):
    assert len(TASKS) >= 30 and len(select_tasks("all", root=fixture_data)) == len(TASKS)
    for t in TASKS.values():
        assert t.doc and t.source_doc and t.licence and t.level in ("sequence", "token"), t.name
        assert all(s in SOURCES for s in t.sources), t.name
    sources = list(dict.fromkeys(s for t in TASKS.values() for s in t.sources))
    pool = _pool(sources, tiny_lm[1], fixture_data, n_docs=3)
    seen: dict[tuple, str] = {}
    for t in TASKS.values():  # no task is another one under a new name (same labels on the same pool)
        key = (t.level, tuple(t.label(pool).reshape(-1).tolist()))
        assert key not in seen, (t.name, seen.get(key))
        seen[key] = t.name


def test_missing_data_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("SAESCALE_HOME", str(tmp_path / "empty-home"))
    for name, want in (("kjv_testament", "run `make corpus`"), ("spam_vs_ham", "run `make corpus`"),
                       ("german_vs_english", "install Debian package fortunes-de"),
                       ("portuguese_vs_english", "install Debian package fortunes-br")):
        with pytest.raises(SaescaleError, match=want) as e:
            select_tasks(name, root=tmp_path)
        assert len(str(e.value).splitlines()) == 1 and name in str(e.value)
    builtin = select_tasks("all", root=tmp_path)
    assert builtin and all(all(SOURCES[s].missing(tmp_path) is None for s in t.sources) for t in builtin)
    assert "kjv_testament" not in [t.name for t in builtin] and "sotu_party" in [t.name for t in builtin]
    with pytest.raises(SaescaleError, match="unknown probe task"):
        select_tasks("nope", root=tmp_path)


def test_bootstrap_covers_the_mean_narrows_and_is_seeded():
    g = torch.Generator().manual_seed(0)
    few, many = torch.rand(10, generator=g), torch.rand(160, generator=g)
    lo, hi = bootstrap_ci(few, 2000, seed=3)
    assert lo < float(few.mean()) < hi
    lo2, hi2 = bootstrap_ci(many, 2000, seed=3)
    assert lo2 < float(many.mean()) < hi2 and (hi2 - lo2) < 0.6 * (hi - lo)  # ~ 1/sqrt(16) of the width
    assert bootstrap_ci(few, 2000, seed=3) == [lo, hi] and bootstrap_ci(few, 2000, seed=4) != [lo, hi]
    groups = torch.arange(160) // 40  # 4 clusters: a wider interval than 160 independent values
    lo3, hi3 = bootstrap_ci(many + groups * 0.5, 2000, seed=3, groups=groups)
    lo4, hi4 = bootstrap_ci(many + groups * 0.5, 2000, seed=3)
    assert hi3 - lo3 > 2 * (hi4 - lo4)


def test_task_interval_and_summary_report():
    g = torch.Generator().manual_seed(1)
    y = (torch.rand(300, generator=g) < 0.5).float()
    z = torch.relu(torch.randn(300, 32, generator=g))
    z[:, 7] += y
    res = score_task(z, torch.randn(300, 4, generator=g), y, torch.arange(300) // 3, seed=0, dense=False, resamples=500)
    lo, hi = res["test_ce_ci"]
    assert res["latent"] == 7 and lo < res["test_ce"] < hi
    tasks = {f"t{i}": {"test_ce": 0.3 + 0.05 * i, "latent": i, "pos": 9, "neg": 9} for i in range(6)}
    tasks["empty"] = {"skipped": "only 2 balanced examples", "pos": 1, "neg": 1}
    s = probe_summary(tasks, resamples=400, seed=5, dense=False)
    assert s["tasks_scored"] == 6 and s["bootstrap"] == {"over": "tasks", "level": 0.95, "resamples": 400, "seed": 5}
    assert s["probe_loss"] == pytest.approx(0.425) and s["probe_loss_ci"][0] < 0.425 < s["probe_loss_ci"][1]
    table = format_table({"probes": {**s, "tasks": tasks}})
    assert f"[{s['probe_loss_ci'][0]:.4f}, {s['probe_loss_ci'][1]:.4f}]" in table
    assert "mean over 6 tasks" in table and "400 resamples, seed 5" in table and "9/9 pos/neg" in table


def test_real_data_gives_thirty_tasks():
    if not all(large_path(s).is_file() for s in ("kjv", "spam-assassin", "code", "python-doc")):
        pytest.skip(f"the large corpus is not built under {large_path('kjv').parent} (make corpus)")
    if not (FORTUNES / "de").is_dir():
        pytest.skip("Debian fortunes-* packages are not installed")
    assert len(select_tasks("all")) >= 30
