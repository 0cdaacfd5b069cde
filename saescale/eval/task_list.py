"""The probe tasks (docs/probes.md lists them with source, licence and size).

Sequence tasks label a context by its document's meta; token tasks label a token by its text or
by a character class of its document (:mod:`saescale.eval.token_rules`). Each class of a task is
drawn from its own sources where the data allows, so a default pool (``--probe-docs`` documents
per source) holds enough examples of both.
"""

from __future__ import annotations

import torch

from saescale.eval import token_rules as tr
from saescale.eval.probe_sources import CODE_LANGS, KJV_GROUPS, SOTU_ERAS, SPAM_GROUPS
from saescale.eval.tasks import Task, by_char_class, by_meta, by_token_text

SOTU = tuple(f"sotu:{e}" for e in SOTU_ERAS)
PROSE = (*SOTU, "moby-dick")
KJV = tuple(f"kjv:{g}" for g in KJV_GROUPS)
CODE = tuple(f"code:{lang}" for lang in CODE_LANGS)
SPAM = ("spam-assassin:spam", "spam-assassin:easy-ham", "spam-assassin:hard-ham")
LANGS = {"de": "german", "fr": "french", "es": "spanish", "it": "italian", "pl": "polish", "ru": "russian",
         "cs": "czech", "pt": "portuguese", "ga": "irish", "eo": "esperanto", "bg": "bulgarian", "zh": "chinese"}


def src(*names: str):
    """Meta predicate: the document's source is one of ``names`` (large-corpus base names or source names)."""
    return lambda m: m.get("source") in names


def books(*groups: str):
    """Meta predicate: a KJV chapter whose book lies in one of the ``groups`` (:data:`KJV_GROUPS`)."""
    spans = [KJV_GROUPS[g] for g in groups]
    return lambda m: m.get("source") == "kjv" and any(lo <= m.get("book_index", 0) <= hi for lo, hi in spans)


def years(lo: int, hi: int):
    return lambda m: m.get("source") == "sotu" and lo <= m.get("year", 0) <= hi


def seq(name, sources, pos, neg, doc) -> Task:
    return Task(name, "sequence", tuple(sources), by_meta(pos, neg), doc)


def tok(name, sources, label, doc) -> Task:
    return Task(name, "token", tuple(sources), label, doc)


def _capitalised(text: str) -> int:
    s = text.strip()
    return -1 if not s or not s[0].isalpha() else int(s[0].isupper())


def _digit(text: str) -> int:
    s = text.strip()
    return -1 if not s else int(any(c.isdigit() for c in s))


def _punctuation(text: str) -> int:
    s = text.strip()
    return -1 if not s else 0 if s[0].isalpha() else int(not any(c.isalnum() for c in s))


def _language_tasks() -> list[Task]:
    out = [seq(f"{name}_vs_english", (f"fortunes-{code}", "fortunes-en"), src(f"fortunes-{code}"), src("fortunes-en"),
               f"Debian fortunes in {name.capitalize()} (1) vs English fortunes (0)") for code, name in LANGS.items()]
    for a, b in (("es", "it"), ("cs", "pl"), ("ru", "bg")):
        out.append(seq(f"{LANGS[a]}_vs_{LANGS[b]}", (f"fortunes-{a}", f"fortunes-{b}"), src(f"fortunes-{a}"),
                       src(f"fortunes-{b}"), f"Debian fortunes in {LANGS[a].capitalize()} (1) vs {LANGS[b].capitalize()} (0)"))
    return out


def _kjv_tasks() -> list[Task]:
    old, new = tuple(KJV_GROUPS)[:5], tuple(KJV_GROUPS)[5:]
    pairs = [("kjv_law_vs_history", ("law",), ("history",)),
             ("kjv_poetry_vs_prophets", ("poetry",), ("major-prophets", "minor-prophets")),
             ("kjv_major_vs_minor_prophets", ("major-prophets",), ("minor-prophets",)),
             ("kjv_gospels_vs_epistles", ("gospels",), ("pauline", "general-epistles")),
             ("kjv_pauline_vs_general_epistles", ("pauline",), ("general-epistles",))]
    out = [seq("kjv_testament", KJV, books(*new), books(*old), "KJV chapter of the New (1) vs Old (0) Testament")]
    out += [seq(n, (*(f"kjv:{g}" for g in p), *(f"kjv:{g}" for g in q)), books(*p), books(*q),
                f"KJV chapter from {' / '.join(p)} (1) vs {' / '.join(q)} (0)") for n, p, q in pairs]
    out.append(seq("kjv_vs_novel", ("kjv:history", "kjv:gospels", "moby-dick"), books("history", "gospels"),
                   src("moby-dick"),
                   "KJV narrative chapter (history books, gospels) (1) vs Moby-Dick chapter (0)"))
    return out


def _mail_and_code_tasks() -> list[Task]:
    group = lambda name: lambda m: m.get("source") == "spam-assassin" and SPAM_GROUPS[name](m)
    ham = lambda m: m.get("source") == "spam-assassin" and m.get("label") == "ham"
    out = [seq("spam_vs_ham", SPAM, group("spam"), ham, "SpamAssassin mail: spam (1) vs ham (0)"),
           seq("spam_vs_hard_ham", SPAM[::2], group("spam"), group("hard-ham"),
               "SpamAssassin mail: spam (1) vs hard ham (0)"),
           seq("hard_vs_easy_ham", SPAM[1:], group("hard-ham"), group("easy-ham"),
               "SpamAssassin ham: hard (1) vs easy (0)")]
    lang = lambda *ls: lambda m: m.get("source") == "code" and m.get("language") in ls
    for name in CODE_LANGS:
        out.append(seq(f"code_is_{name}", CODE, lang(name), lang(*(x for x in CODE_LANGS if x != name)),
                       f"source file in {name} (1) vs in another of {', '.join(CODE_LANGS)} (0)"))
    out += [seq("python_doc_vs_code", ("python-doc", "python"), src("python-doc"), src("python"),
                "Python documentation text (1) vs Python standard-library source (0)"),
            seq("perl_doc_vs_python_doc", ("perl-doc", "python-doc"), src("perl-doc"), src("python-doc"),
                "Perl documentation (1) vs Python documentation (0)"),
            seq("django_doc_vs_python_doc", ("django-doc", "python-doc"), src("django-doc"), src("python-doc"),
                "Django documentation (1) vs Python documentation (0)")]
    return out


def _sotu_tasks() -> list[Task]:
    return [
        seq("sotu_party", SOTU, lambda m: m.get("party") == "Democratic", lambda m: m.get("party") == "Republican",
            "State of the Union: Democratic (1) vs Republican (0) president"),
        seq("sotu_era", SOTU, years(1900, 9999), years(0, 1899),
            "State of the Union: delivered in 1900 or later (1) vs before 1900 (0)"),
        seq("sotu_civil_war_era", SOTU[:2], years(1861, 1899), years(0, 1860),
            "State of the Union: 1861-1899 (1) vs 1790-1860 (0)"),
        seq("sotu_postwar", SOTU[2:4], years(1945, 1980), years(1900, 1944),
            "State of the Union: 1945-1980 (1) vs 1900-1944 (0)"),
        seq("sotu_recent", SOTU[3:], years(1981, 9999), years(1945, 1980),
            "State of the Union: 1981 or later (1) vs 1945-1980 (0)"),
        seq("novel_vs_speech", PROSE, src("moby-dick"), src("sotu"), "Moby-Dick (1) vs State of the Union (0)"),
        seq("code_vs_prose", ("python", *PROSE), src("python"), src("sotu", "moby-dick"),
            "Python standard-library source (1) vs English prose (0)"),
    ]


def _token_tasks() -> list[Task]:
    py, prose = src("python"), src("sotu", "moby-dick")
    comments = lambda t: tr.comment_mask(t).to(torch.int8)
    return [
        tok("comment_vs_code", ("python",), by_char_class(comments, py),
            "token of a Python file inside a # comment (1) vs in code (0)"),
        tok("in_string_literal", ("python",), by_char_class(tr.py_string_classes, py),
            "Python token inside a string literal (1) vs other code outside comments (0)"),
        tok("python_keyword", ("python",), by_char_class(tr.py_keyword_classes, py),
            "Python token opening a keyword (def, if, return, ...) (1) vs another name (0)"),
        tok("line_start", ("python",), by_char_class(tr.line_start_classes, py),
            "Python token that is the first on its line (1) vs any other non-blank token (0)"),
        tok("capitalised", PROSE, by_token_text(_capitalised, prose),
            "prose token starting with an upper-case letter (1) vs a lower-case letter (0)"),
        tok("has_digit", ("python", *PROSE), by_token_text(_digit, src("python", "sotu", "moby-dick")),
            "token containing a digit (1) vs any other non-blank token (0)"),
        tok("sentence_start", PROSE, by_char_class(tr.sentence_start_classes, prose),
            "prose capital opening a sentence (1) vs a capital inside a sentence (0)"),
        tok("in_quotes", PROSE, by_char_class(tr.quote_classes, prose),
            'prose token inside double quotes "..." (1) vs outside (0)'),
        tok("in_parentheses", PROSE, by_char_class(tr.paren_classes, prose),
            "prose token inside parentheses (1) vs outside (0)"),
        tok("punctuation", PROSE, by_token_text(_punctuation, prose),
            "prose token of punctuation only (1) vs a word token (0)"),
        tok("all_caps", ("kjv:law", "kjv:history", *SOTU), by_char_class(tr.all_caps_classes, src("kjv", "sotu")),
            "token of a word in all capitals, e.g. LORD (1) vs of a capitalised mixed-case word, e.g. Lord (0)"),
        tok("c_comment", ("code:c", "code:javascript"),
            by_char_class(tr.c_comment_classes, lambda m: m.get("language") in ("c", "javascript")),
            "C / JavaScript token inside a // or /* */ comment (1) vs outside (0)"),
        tok("hash_comment", ("code:shell", "code:perl"),
            by_char_class(tr.hash_comment_classes, lambda m: m.get("language") in ("shell", "perl")),
            "shell / Perl token inside a # comment (1) vs outside (0)"),
        tok("in_html_tag", ("spam-assassin:spam", "spam-assassin:hard-ham"),
            by_char_class(tr.html_tag_classes, src("spam-assassin")),
            "mail token inside an HTML tag <...> (1) vs outside (0)"),
    ]


TASKS: dict[str, Task] = {t.name: t for t in [
    *_sotu_tasks(), *_token_tasks(), *_language_tasks(), *_kjv_tasks(), *_mail_and_code_tasks(),
]}
