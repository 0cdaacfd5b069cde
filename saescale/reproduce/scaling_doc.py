"""The scaling-law results of a reproduction as a Markdown section, spliced into ``docs/scaling.md``.

``saescale reproduce --scaling-doc docs/scaling.md`` (with or without ``--report-only``) rewrites the part of
that file between the two marker lines below (appending it, markers included, when the file has none) from
the report just built: the scaling finding's verdict and criteria, the exact fit lines
(``joint fit: …``, ``n_opt exponent: …``, ``L(N_model): …``), and per n × k member of ``scaling-default``
its held-out nMSE, token budget and convergence test (the relative change of held-out loss over the
last doubling of tokens). Nothing outside the markers changes; the file is written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saescale.atomic import atomic_write_text
from saescale.errors import SaescaleError

BEGIN = "<!-- saescale reproduce: scaling results begin (generated from report.json; edits here are overwritten) -->"
END = "<!-- saescale reproduce: scaling results end -->"
MARK = {True: "✓", False: "✗"}


def _grid(members: list[dict[str, Any]], cell) -> list[str]:
    """A Markdown n × k table of ``cell(member)`` over the members (blank where a member is missing)."""
    ns = sorted({m["n"] for m in members})
    ks = sorted({m["k"] for m in members})
    at = {(m["n"], m["k"]): m for m in members}
    rows = ["| n \\ k | " + " | ".join(str(k) for k in ks) + " |", "|---" * (len(ks) + 1) + "|"]
    for n in ns:
        rows.append(f"| {n} | " + " | ".join(cell(at[n, k]) if (n, k) in at else "" for k in ks) + " |")
    return rows


def scaling_section(doc: dict[str, Any], members: list[dict[str, Any]], out: str) -> str:
    """The section (markers included) for report ``doc`` and the finished ``scaling-default`` members."""
    f = next((x for x in doc["findings"] if x["id"] == "scaling"), None)
    if f is None:
        raise SaescaleError("the report has no scaling finding; rebuild it with saescale reproduce --report-only")
    prof = doc["profile"]
    status = doc["units"].get("scaling-default", {})
    held = sorted({m["heldout_tokens"] for m in members if m.get("heldout_tokens")}) or [prof["heldout_tokens"]]
    lines = [BEGIN, "", f"## Reproduced scaling laws (`saescale reproduce`, {prof['name']} profile)", "",
             f"Generated {doc['generated']} from `{out}/report.json` ({doc['machine_seconds'] / 3600:.1f} h of this "
             f"machine over {len(doc['chunks'])} chunk(s)); SmolLM2-135M, corpus `{prof['corpus']}`, "
             f"n ∈ {{{', '.join(map(str, prof['scaling_n']))}}} × k ∈ {{{', '.join(map(str, prof['scaling_k']))}}}, "
             f"batch {prof['batch_size']}, budgets {prof['scaling_tokens']:,} × (n / {prof['scaling_n'][0]})^0.6 "
             f"tokens, held-out loss on {' / '.join(f'{h:,}' for h in held)} validation tokens. Every figure and number: "
             f"`{out}/report.html`.", "",
             f"**Verdict: {f['verdict']}.** {f['reason'] or 'The n x k sweep has not finished.'}", ""]
    if f["lines"]:
        lines += ["```", *f["lines"], "```", ""]
    else:
        total = status.get("members") or len(prof["scaling_n"]) * len(prof["scaling_k"])
        lines += [f"The fits run when the sweep has finished: {status.get('finished', 0)} of {total} members so far.",
                  ""]
    lines += [f"- {MARK[bool(c['holds'])]} {c['test']}" for c in f["criteria"]]
    if members:
        lines += ["", "Final held-out nMSE:", "", *_grid(members, lambda m: f"{m['loss']:.4f}"), "",
                  "Token budget per member, and its convergence test: the change of held-out loss over the last "
                  "doubling of tokens, relative to the final loss (negative: still falling):", "",
                  *_grid(members, lambda m: f"{m['tokens'] / 1e6:.2f}M, "
                         + (f"{-m['last_doubling']['rel_change']:+.1%}" if m.get("last_doubling") else "n/a"))]
    return "\n".join(lines + ["", END]) + "\n"


def splice(text: str, section: str) -> str:
    """``text`` with the part between the markers replaced by ``section`` (appended when there are none)."""
    a, b = text.find(BEGIN), text.find(END)
    if a < 0 and b < 0:
        return text.rstrip("\n") + "\n\n" + section if text.strip() else section
    if a < 0 or b < a:
        raise SaescaleError("the scaling doc has one marker without the other (or in the wrong order); restore both "
                            f"lines ({BEGIN!r} … {END!r}) or remove both")
    rest = text[b + len(END):]
    return text[:a] + section + ("\n" + rest.lstrip("\n") if rest.strip() else "")


def write_scaling_doc(path: Path, doc: dict[str, Any], members: list[dict[str, Any]], out: str) -> None:
    """Splice the scaling section into the Markdown file at ``path`` (created if missing), atomically."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    atomic_write_text(path, splice(text, scaling_section(doc, members, out)))
