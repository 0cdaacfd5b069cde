"""The large corpus (--corpus large): its loader on a small fixture, the 'not built' error, the
deterministic record writer of scripts/build_corpus.py, and checks on the real built corpus."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
from pathlib import Path

import pytest

from saescale.activations.config import ActivationConfig
from saescale.activations.corpus import (
    LARGE_NOT_BUILT,
    large_corpus_dir,
    large_documents,
    large_sources,
    load_documents,
)
from saescale.cliargs import parse_config
from saescale.errors import SaescaleError

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build_corpus.py"
# Meta keys of every record, per source (docs/corpus.md documents them).
SCHEMA = {
    "sotu": {"text", "source", "year", "president", "party"},
    "moby-dick": {"text", "source", "chapter", "title"},
    "kjv": {"text", "source", "book", "book_index", "testament", "chapter"},
    "spam-assassin": {"text", "source", "label", "group", "id"},
    "fortunes-en": {"text", "source", "file", "part"},
    "perl-doc": {"text", "source", "file"},
    "python-doc": {"text", "source", "file"},
    "django-doc": {"text", "source", "file"},
    "code": {"text", "source", "language", "package", "path"},
}


def build_script():
    """scripts/build_corpus.py as a module (it is not a package)."""
    spec = importlib.util.spec_from_file_location("build_corpus", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_fixture(home: Path) -> dict[str, list[dict]]:
    """A two-source large corpus under ``home``/corpus/large, manifest order b then a; returns its records."""
    bc = build_script()
    folder = home / "corpus" / "large"
    folder.mkdir(parents=True)
    records = {
        "beta": [{"text": "Beta one is here.", "source": "beta", "n": 1},
                 {"text": "Beta two is here.", "source": "beta", "n": 2}],
        "alpha": [{"text": "Alpha only.", "source": "alpha", "kind": "x"}],
    }
    entries = []
    for name, recs in records.items():
        data = bc.gzip_jsonl(recs)
        (folder / f"{name}.jsonl.gz").write_bytes(data)
        entries.append({"name": name, "file": f"{name}.jsonl.gz", "licence": "CC0-1.0", "documents": len(recs),
                        "sha256": hashlib.sha256(data).hexdigest()})
    (folder / "MANIFEST.json").write_text(json.dumps({"name": "large", "sources": entries}))
    return records


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty $SAESCALE_HOME."""
    monkeypatch.setenv("SAESCALE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_loader_reads_every_source_in_manifest_order(home):
    records = write_fixture(home)
    assert large_corpus_dir() == home / "corpus" / "large"
    assert large_sources() == ["beta", "alpha"]
    docs = load_documents("large")
    assert [d.text for d in docs] == ["Beta one is here.", "Beta two is here.", "Alpha only."]
    assert docs[1].meta == {"source": "beta", "n": 2}
    alpha = large_documents("alpha")
    assert [(d.text, d.meta) for d in alpha] == [("Alpha only.", {"source": "alpha", "kind": "x"})]
    assert len(large_documents("beta")) == len(records["beta"])


def test_unknown_source_lists_the_sources(home):
    write_fixture(home)
    with pytest.raises(SaescaleError, match="unknown large-corpus source 'gamma': choose one of beta, alpha"):
        large_documents("gamma")


def test_not_built_is_one_line(home):
    for call in (lambda: load_documents("large"), lambda: large_documents("kjv")):
        with pytest.raises(SaescaleError) as e:
            call()
        assert str(e.value) == LARGE_NOT_BUILT
        assert "\n" not in str(e.value) and "make corpus" in str(e.value)


def test_damaged_manifest_is_one_line(home):
    write_fixture(home)
    (home / "corpus" / "large" / "MANIFEST.json").write_text("{not json")
    with pytest.raises(SaescaleError, match="MANIFEST.json is damaged: rebuild it with `make corpus`"):
        load_documents("large")


def test_corpus_large_flows_from_the_option_to_the_documents(home):
    write_fixture(home)
    cfg = parse_config(ActivationConfig, ["--corpus", "large"], prog="saescale harvest")
    assert cfg.corpus == "large"
    assert [d.meta["source"] for d in load_documents(cfg.corpus)] == ["beta", "beta", "alpha"]


def test_record_writer_is_deterministic():
    bc = build_script()
    recs = [{"text": "é two", "source": "s", "b": 2, "a": 1}, {"source": "s", "text": "one"}]
    reordered = [{"a": 1, "b": 2, "source": "s", "text": "é two"}, {"text": "one", "source": "s"}]
    first, second = bc.gzip_jsonl(recs), bc.gzip_jsonl(reordered)
    assert first == second == bc.gzip_jsonl(recs)
    assert first[4:8] == b"\x00\x00\x00\x00"  # gzip mtime 0
    lines = gzip.decompress(first).decode("utf-8").splitlines()
    assert lines[0] == '{"a": 1, "b": 2, "source": "s", "text": "é two"}'
    assert [json.loads(line) for line in lines] == reordered


def test_kjv_parser_checks_the_chapter_sequence(monkeypatch):
    bc = build_script()
    monkeypatch.setattr(bc, "KJV_BOOKS", (("Jude", 1),))
    monkeypatch.setattr(bc, "deb_version", lambda package: "1")

    class Out:
        stdout = "\nJude 1\n\n  1 Jude, the servant.\n  2 Mercy unto you.\n"

    monkeypatch.setattr(bc, "run_tool", lambda *a, **k: Out)
    (rec,) = bc.kjv_records()
    assert rec == {"text": "Jude, the servant.\nMercy unto you.", "source": "kjv", "book": "Jude", "book_index": 1,
                   "testament": "old", "chapter": 1}
    Out.stdout = "\nJude 2\n\n  1 Wrong chapter.\n"
    with pytest.raises(bc.BuildError, match="not the 1189 KJV chapters"):
        bc.kjv_records()


def test_missing_debian_package_is_one_line():
    bc = build_script()
    with pytest.raises(bc.BuildError) as e:
        bc.deb_version("saescale-no-such-package")
    assert "missing Debian package saescale-no-such-package: run `make corpus`" in str(e.value)
    assert "\n" not in str(e.value)


def test_html_and_mail_to_text():
    bc = build_script()
    page = ('<html><head><title>T</title><script>x=1</script></head><body><div class="nav">menu</div>'
            '<div role="main"><h1>Title<a class="headerlink">¶</a></h1><p>Some  <b>bold</b>\ntext.</p>'
            '<div><p>inner</p></div><pre>code\n    indented</pre></div><div>footer</div></body></html>')
    assert bc.html_to_text(page) == "Title\n\nSome bold text.\n\ninner\n\ncode\n    indented"
    mail = ("From: a@b.c\nSubject: =?utf-8?q?Caf=C3=A9?= now\nContent-Type: text/plain; charset=utf-8\n\n"
            "Hello there,\nthis is the body.\n")
    assert bc.mail_text(mail) == "Subject: Café now\n\nHello there,\nthis is the body."


# --- the real corpus (built by `make corpus`) ---------------------------------------------------

@pytest.fixture(scope="module")
def built() -> dict:
    """The real large corpus's manifest; skip when it is not built."""
    try:
        return json.loads((large_corpus_dir() / "MANIFEST.json").read_text())
    except FileNotFoundError:
        pytest.skip(f"the large corpus is not built in {large_corpus_dir()}: run `make corpus`")


def test_built_manifest_totals_and_licences(built):
    sources = built["sources"]
    assert [s["name"] for s in sources] == list(SCHEMA)
    totals = built["totals"]
    for key in ("documents", "characters", "tokens"):
        assert totals[key] == sum(s[key] for s in sources)
    assert totals["tokens"] >= 10_000_000
    code = next(s for s in sources if s["name"] == "code")
    assert code["tokens"] <= 0.5 * totals["tokens"]
    for s in sources:
        assert s["licence"] and s["documents"] > 0 and s["tokens"] > 0
        assert s["packages"] and all(p["name"] and p["version"] and p["licence"] for p in s["packages"])
        data = (large_corpus_dir() / s["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == s["sha256"], f"{s['file']} differs from its manifest"


def test_built_documents_have_their_meta(built):
    for name, keys in SCHEMA.items():
        docs = large_documents(name)
        entry = next(s for s in built["sources"] if s["name"] == name)
        assert len(docs) == entry["documents"]
        bad = [d.meta for d in docs if set(d.meta) | {"text"} != keys or d.meta["source"] != name]
        assert not bad, f"{name}: {len(bad)} documents with other keys, e.g. {bad[0]}"
    kjv = large_documents("kjv")
    assert len(kjv) == 1189 and {d.meta["testament"] for d in kjv} == {"old", "new"}
    assert {d.meta["book_index"] for d in kjv} == set(range(1, 67))
    assert {d.meta["label"] for d in large_documents("spam-assassin")} == {"spam", "ham"}
    languages: dict[str, int] = {}
    for d in large_documents("code"):
        languages[d.meta["language"]] = languages.get(d.meta["language"], 0) + 1
    assert len([lang for lang, n in languages.items() if n >= 200]) >= 4, languages
