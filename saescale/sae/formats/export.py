"""Write an SAE as a SAELens or sparsify folder, atomically (a temporary folder renamed into place: a
failed write leaves the previous folder, or nothing, never a mix). Everything that can be refused is
refused before anything is written."""

from __future__ import annotations

import os
from pathlib import Path

from saescale.atomic import atomic_save_safetensors, atomic_write_json
from saescale.errors import SaescaleError
from saescale.sae.formats import saelens, sparsify
from saescale.sae.io import load_sae, read_cfg, replace_folder

FORMATS = ("saelens", "sparsify")


def export_sae(src: str | os.PathLike, fmt: str, out: str | os.PathLike) -> Path:
    """Export the SAE at ``src`` (any format :func:`~saescale.sae.io.load_sae` reads) to folder ``out`` in
    format ``fmt``; returns ``out``."""
    src, out = Path(src), Path(out)
    if fmt not in FORMATS:
        raise SaescaleError(f"unknown export format {fmt!r} (--format); choose one of {', '.join(FORMATS)}")
    s, o = src.resolve(), out.resolve()
    if s == o or o in s.parents:
        raise SaescaleError(f"--out {out} would replace the SAE being exported ({src}): choose another folder")
    sae = load_sae(src)
    _, extra = read_cfg(src)
    if fmt == "saelens":
        cfg, tensors = saelens.export(sae, extra)
        files, weights = {saelens.CFG: cfg}, saelens.WEIGHTS
    else:
        cfg, tensors, record = sparsify.export(sae, extra)
        files, weights = {sparsify.CFG: cfg, sparsify.RECORD: record}, sparsify.WEIGHTS
    if out.exists() and not out.is_dir():
        raise SaescaleError(f"--out {out} is a file, not a folder: remove it or choose another path")

    def fill(tmp: Path) -> None:
        atomic_save_safetensors(tensors, tmp / weights)
        for name, obj in files.items():
            atomic_write_json(tmp / name, obj)

    return replace_folder(out, fill)
