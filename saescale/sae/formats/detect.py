"""Which format an SAE path holds, from its files alone.

- a file ``*.pt`` / ``*.pth``: an OpenAI state dict
- a folder with ``cfg.json``: saescale's (``"format": "saescale-sae-v1"``), SAELens's (``d_in`` and
  ``d_sae``; weights ``sae_weights.safetensors``) or sparsify's (``d_in`` and ``num_latents`` /
  ``expansion_factor``; weights ``sae.safetensors``, the name saescale uses too)
- a folder without ``cfg.json`` whose subfolders have one (a sparsify run folder, one SAE per hook
  point; a saescale run folder with its ``sae/``): refused with one line listing them, so the user
  gives ``DIR/<hookpoint>``
"""

from __future__ import annotations

from pathlib import Path

from saescale.errors import SaescaleError
from saescale.sae.formats import saelens, sparsify
from saescale.sae.formats.common import RECORD_FORMAT, Imported, read_json

KINDS = ("saescale", "saelens", "sparsify", "openai")
GIVE = "give an SAE folder (saescale, SAELens or sparsify: cfg.json + weights) or an OpenAI state dict (.pt)"


def detect(path: str | Path) -> str:
    """One of :data:`KINDS` for ``path``; one line for a missing path, a run folder or an unknown format."""
    path = Path(path)
    if path.is_file():
        if path.suffix in (".pt", ".pth"):
            return "openai"
        raise SaescaleError(f"{path} is a file of unknown SAE format: {GIVE}")
    if not path.is_dir():
        raise SaescaleError(f"{path} not found: {GIVE}")
    cfg = path / "cfg.json"
    if not cfg.is_file():
        subs = sorted(p.name for p in path.iterdir() if p.is_dir() and (p / "cfg.json").is_file())
        if subs:
            shown = ", ".join(subs[:8]) + (", ..." if len(subs) > 8 else "")
            raise SaescaleError(f"{path} holds {len(subs)} SAE folder(s), one per hook point ({shown}): give one, "
                                f"e.g. {path / subs[0]}")
        raise SaescaleError(f"{cfg} not found: give a folder written by saescale (cfg.json + sae.safetensors), "
                            "SAELens or sparsify, or an OpenAI state dict (.pt)")
    raw = read_json(cfg, "restore it or retrain")
    if raw.get("format") == RECORD_FORMAT:
        return "saescale"
    if "format" not in raw and saelens.looks_like(raw):
        return "saelens"
    if "format" not in raw and sparsify.looks_like(raw):
        return "sparsify"
    raise SaescaleError(f"{cfg}: missing or unknown 'format' (expected {RECORD_FORMAT!r}) and not a SAELens (d_in, "
                        "d_sae) or sparsify (d_in, num_latents) cfg.json: is this an SAE folder?")


def read_foreign(path: str | Path, kind: str) -> Imported:
    """The SAE at ``path`` of foreign format ``kind``, converted."""
    path = Path(path)
    if kind == "saelens":
        return saelens.read(path)
    if kind == "sparsify":
        return sparsify.read(path)
    from saescale.sae.formats import openai

    return openai.read(path)
