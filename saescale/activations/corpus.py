"""Text corpora as documents, and their cutting into fixed-length token contexts.

The default corpus ships with the package (``saescale/data/corpus``, built by
``scripts/build_corpus.py``): 233 State of the Union addresses (1790-2021; meta: source,
year, president, party) then the 135 chapters of Moby-Dick (meta: source, chapter, title).

The large corpus (``load_documents("large")``, ``--corpus large``) is built, not shipped: ``make corpus``
(``scripts/build_corpus.py --large``) writes one ``<source>.jsonl.gz`` per source plus ``MANIFEST.json``
into ``$SAESCALE_HOME/corpus/large``; docs/corpus.md lists its sources, meta and licences.
"""

from __future__ import annotations

import gzip
import importlib.resources
import json
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from saescale.errors import SaescaleError, file_error

DEFAULT_FILES = ("sotu.jsonl.gz", "moby_dick.jsonl.gz")
SPLIT_SEED = 0  # seed of the train / val document split shared by the cache and the live stream
SPLITS = ("train", "val")  # the order split_documents returns them in
LARGE_NOT_BUILT = "the large corpus is not built: run `make corpus` (or python scripts/build_corpus.py --large)"


@dataclass
class Document:
    """One document: its text and labels (e.g. source, year, party, chapter)."""

    text: str
    meta: dict = field(default_factory=dict)


@dataclass
class Contexts:
    """M token contexts of length T cut from documents.

    tokens: (M, T) token ids; doc: (M,) index of the source document; start: (M,) offset
    of the context's first text token within its document's token ids (BOS not counted).
    """

    tokens: torch.Tensor
    doc: torch.Tensor
    start: torch.Tensor

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def select(self, idx: torch.Tensor) -> Contexts:
        """The contexts at ``idx`` ((K,) long), in that order."""
        return Contexts(self.tokens[idx], self.doc[idx], self.start[idx])


def _read_jsonl(path: Path) -> list[Document]:
    """Documents from a JSONL file (optionally .gz): field 'text', the other fields as meta."""
    opener = gzip.open if path.suffix == ".gz" else open
    docs = []
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                text = record.pop("text")
            except (ValueError, KeyError, TypeError, AttributeError):
                msg = f"{path}:{lineno}: not a JSON object with a 'text' field; fix or remove that line"
                raise SaescaleError(msg) from None
            docs.append(Document(str(text), record))
    return docs


def _read_parquet(path: Path) -> list[Document]:
    """Documents from a Parquet file: column 'text', the other columns as meta (needs pyarrow)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SaescaleError(f"reading {path} needs pyarrow: pip install pyarrow") from None
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for unreadable files
        raise SaescaleError(f"cannot read {path} as Parquet ({type(e).__name__}); check the file") from None
    if rows and "text" not in rows[0]:
        raise SaescaleError(f"{path} has no 'text' column; rename the text column to 'text'")
    return [Document(str(r.pop("text")), r) for r in rows]


def _read_hf(name: str) -> list[Document]:
    """Documents from the 'train' split of Hugging Face dataset ``name`` (needs ``datasets`` and network)."""
    try:
        import datasets
    except ImportError:
        raise SaescaleError(f"corpus 'hf:{name}' needs the datasets package: pip install datasets") from None
    from saescale.activations.hub import hub_reachable

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    if not offline and not hub_reachable():  # fail now, not after datasets' ~30 s of retries
        raise SaescaleError(f"offline or unknown dataset: corpus 'hf:{name}' needs the Hugging Face hub, which cannot be "
                            "reached from here; use local files (or set HF_HUB_OFFLINE=1 to read a cached copy)")
    try:
        rows = datasets.load_dataset(name, split="train")
    except Exception as e:  # network, missing dataset, bad config: all user-fixable
        raise SaescaleError(
            f"could not load Hugging Face dataset '{name}' ({type(e).__name__}); "
            "check the name and network, or use local files"
        ) from None
    return [Document(str(r.pop("text")), r) for r in rows]


def _read_file(spec: str) -> list[Document]:
    """Documents from one local file: .txt (whole file = one document), .jsonl[.gz], or .parquet."""
    path = Path(spec).expanduser()
    if not path.is_file():
        raise SaescaleError(
            f"corpus file '{spec}' not found: give existing .txt/.jsonl/.jsonl.gz/.parquet files, 'hf:NAME', or 'default'"
        )
    name = path.name.lower()
    try:
        if name.endswith(".txt"):
            return [Document(path.read_text(encoding="utf-8"), {"source": str(path)})]
        if name.endswith((".jsonl", ".jsonl.gz")):
            return _read_jsonl(path)
    except UnicodeDecodeError as e:
        raise SaescaleError(f"corpus file {path} is not UTF-8 text (byte {e.start}: {e.reason}); convert it to "
                            "UTF-8 (e.g. iconv -t utf-8) or drop it") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise SaescaleError(f"corpus file {path} is not a complete gzip file ({e or type(e).__name__}); "
                            "re-download or re-compress it") from None
    except OSError as e:
        raise file_error(e, path, "read") from None
    if name.endswith(".parquet"):
        return _read_parquet(path)
    raise SaescaleError(f"corpus file '{spec}' has an unknown type: use .txt, .jsonl, .jsonl.gz or .parquet")


def default_corpus_files() -> list[Path]:
    """Paths of the shipped corpus files."""
    folder = importlib.resources.files("saescale") / "data" / "corpus"
    return [Path(str(folder / name)) for name in DEFAULT_FILES]


def large_corpus_dir() -> Path:
    """Folder of the built large corpus: ``$SAESCALE_HOME/corpus/large``."""
    from saescale.activations.lm import saescale_home  # lazy: lm imports transformers

    return saescale_home() / "corpus" / "large"


def large_manifest() -> dict:
    """The large corpus's MANIFEST.json; a one-line error if it is not built or is damaged."""
    path = large_corpus_dir() / "MANIFEST.json"
    if not path.is_file():
        raise SaescaleError(LARGE_NOT_BUILT)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        [s["name"] + s["file"] for s in manifest["sources"]]  # noqa: B018 - checks the shape
    except (OSError, ValueError, KeyError, TypeError):
        raise SaescaleError(f"{path} is damaged: rebuild it with `make corpus` "
                            "(or python scripts/build_corpus.py --large)") from None
    return manifest


def large_sources() -> list[str]:
    """Names of the large corpus's sources, in its fixed order (the manifest's)."""
    return [s["name"] for s in large_manifest()["sources"]]


def large_documents(source: str) -> list[Document]:
    """The documents of one source of the large corpus (e.g. 'kjv', 'spam-assassin', 'code'), in file order."""
    entries = {s["name"]: s for s in large_manifest()["sources"]}
    if source not in entries:
        raise SaescaleError(f"unknown large-corpus source '{source}': choose one of {', '.join(entries)}")
    path = large_corpus_dir() / entries[source]["file"]
    if not path.is_file():
        raise SaescaleError(LARGE_NOT_BUILT)
    return _read_file(str(path))


def load_documents(spec: str = "default") -> list[Document]:
    """Documents of corpus ``spec``, in a fixed order.

    spec: 'default' (shipped corpus), 'large' (the built large corpus: every source, in the manifest's
    order), 'hf:NAME', or comma-separated local files: .txt (the
    whole file is one document), .jsonl / .jsonl.gz (one JSON object per line, field 'text'),
    .parquet (column 'text'). Other fields become ``Document.meta``. Empty documents are dropped.
    """
    if spec == "default":
        docs = [d for path in default_corpus_files() for d in _read_jsonl(path)]
    elif spec == "large":
        docs = [d for source in large_sources() for d in large_documents(source)]
    elif spec.startswith("hf:"):
        docs = _read_hf(spec[3:])
    else:
        docs = [d for part in spec.split(",") if part.strip() for d in _read_file(part.strip())]
    docs = [d for d in docs if d.text.strip()]
    if not docs:
        raise SaescaleError(f"corpus '{spec}' has no non-empty documents; give files containing text")
    return docs


def bos_id(tokenizer, prepend_bos: bool) -> int | None:
    """The BOS token id put at position 0 of every context, or None (prepend_bos off, or no BOS token)."""
    return tokenizer.bos_token_id if prepend_bos else None


def tokenize_contexts(docs: list[Document], tokenizer, context_len: int, prepend_bos: bool = True) -> Contexts:
    """Cut each document into non-overlapping contexts of ``context_len`` tokens.

    Each document is tokenised alone (no special tokens). With a BOS token (``prepend_bos``
    and the tokenizer has one) each context is BOS + the next ``context_len - 1`` text tokens;
    otherwise ``context_len`` text tokens. A document's remainder shorter than that is dropped.
    Contexts are in document order, then position order; the result is deterministic.
    """
    bos = bos_id(tokenizer, prepend_bos)
    n_text = context_len - (bos is not None)
    rows, doc_idx, starts = [], [], []
    ids_per_doc = tokenizer([d.text for d in docs], add_special_tokens=False, verbose=False)["input_ids"]
    for i, ids in enumerate(ids_per_doc):
        ids = torch.tensor(ids, dtype=torch.long)
        n = ids.numel() // n_text
        if n == 0:
            continue
        chunks = ids[: n * n_text].view(n, n_text)
        if bos is not None:
            chunks = torch.cat([torch.full((n, 1), bos, dtype=torch.long), chunks], dim=1)
        rows.append(chunks)
        doc_idx.append(torch.full((n,), i, dtype=torch.long))
        starts.append(torch.arange(n, dtype=torch.long) * n_text)
    if not rows:
        raise SaescaleError(f"no document has {n_text} tokens; lower --context-len or give longer documents")
    return Contexts(torch.cat(rows), torch.cat(doc_idx), torch.cat(starts))


def split_documents(n_docs: int, val_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Deterministic held-out split by document: (sorted train indices, sorted val indices).

    round(n_docs * val_fraction) documents, at least 1 when val_fraction > 0 and n_docs > 1,
    are drawn uniformly at random (torch generator seeded with ``seed``) for validation.
    """
    n_val = round(n_docs * val_fraction)
    if val_fraction > 0 and n_docs > 1:
        n_val = min(max(n_val, 1), n_docs - 1)
    perm = torch.randperm(n_docs, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(perm[n_val:]), sorted(perm[:n_val])
