"""Write the static site: HTML shells, assets, and every JSON document twice, as ``.json`` for programs and
as ``.js`` (``window.NAME = <the same JSON>;``) for the pages, since file:// pages cannot fetch() JSON."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from saescale.dashboard import assets


def dumps(doc: Any) -> str:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def write_doc(folder: Path, stem: str, global_name: str, doc: Any) -> None:
    """``stem.json`` and ``stem.js`` (setting ``window.<global_name>``) under ``folder``."""
    text = dumps(doc)
    (folder / f"{stem}.json").write_text(text, encoding="utf-8")
    (folder / f"{stem}.js").write_text(f"window.{global_name} = {text};\n", encoding="utf-8")


def write_shell(root: Path, title: str) -> None:
    """index.html, latent.html and assets/ (CSS + JS)."""
    (root / "assets").mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    (root / "latents").mkdir(exist_ok=True)
    t = html.escape(title)
    (root / "index.html").write_text(assets.INDEX_HTML.format(title=t), encoding="utf-8")
    (root / "latent.html").write_text(assets.LATENT_HTML.format(title=t), encoding="utf-8")
    for name, text in (("style.css", assets.STYLE), ("common.js", assets.COMMON_JS), ("index.js", assets.INDEX_JS),
                       ("latent.js", assets.LATENT_JS)):
        (root / "assets" / name).write_text(text, encoding="utf-8")
