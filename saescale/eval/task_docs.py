"""docs/probes.md: every probe task with its level, meaning, source, licence and size in the default pool.

Run ``python -m saescale.eval.task_docs > docs/probes.md`` (reads the default model's tokenizer, the
installed fortunes and the built large corpus; tasks whose data is missing are listed as such).
Size = labelled examples (contexts for sequence tasks, tokens for token tasks) of each class in the
pool ``saescale eval`` builds with the default settings, before balancing; a task then scores
min(pos, neg, ``--probe-max-per-class``) of each class, half for training, half for testing.
"""

from __future__ import annotations

from saescale.eval.probe_data import build_pool
from saescale.eval.probes import ProbeConfig
from saescale.eval.task_list import TASKS
from saescale.eval.tasks import Task

HEADER = """# Probe tasks

`saescale eval --metrics probes` scores each binary task below by the best single SAE latent's held-out
cross-entropy (nats; log 2 = 0.693 is chance), reports every task's score with a 95 % bootstrap interval
over its test documents, and the mean over tasks (`probe_loss`) with a 95 % bootstrap interval over tasks
(`probe_loss_ci`; `bootstrap` records the seed and the number of resamples, `--probe-bootstrap`).
`--probe-tasks all` runs every task whose data is present; naming a task whose data is missing fails
with one line saying what to install (`apt-get install fortunes-..`) or build (`make corpus`).

Sources: the embedded corpus (State of the Union, Moby-Dick) and the Python standard library are
always present; the Debian `fortunes-*` packages are read from /usr/share/games/fortunes; the large
corpus (`make corpus`, `$SAESCALE_HOME/corpus/large`, see its MANIFEST.json for versions and licences)
gives the KJV, SpamAssassin, code and documentation tasks. Each class is drawn from its own sub-source
(e.g. `kjv:law`, `code:perl`, `sotu:1945-1980`) so that the pool (`--probe-docs` documents per source,
`--probe-per-doc` contexts each) holds both classes.

Size: labelled examples of class 1 / class 0 in the default pool ({settings}; contexts for sequence
tasks, tokens for token tasks), before balancing to at most {max_per_class} per class.
"""


FOOTER = """
## Caveats

- `french_vs_english` needs Debian `fortunes-fr`, which current Debian releases do not package; it stays
  unavailable (and out of `all`) unless the folder /usr/share/games/fortunes/fr exists.
- `irish_vs_english` has few examples (fortunes-ga holds one 8 kB file of proverbs): about 20 contexts of
  class 1, so its score is noisier than the others'.
- `in_parentheses` and `in_html_tag` are rare-positive token tasks (~120 and ~190 tokens of class 1 in the
  default pool); with a much smaller `--probe-docs` they can have none and are reported as skipped.
- Cost: the default pool is ~3,500 contexts of 64 tokens from ~40 sources (7x the 7-task pool), and each
  task fits one 1-D probe per latent plus, unless `--probe-dense false`, a dense probe (the larger part).
- Token classes are read from the text by simple rules (:mod:`saescale.eval.token_rules`): Python comments,
  strings and keywords by Python's tokenize module; C / JavaScript and shell / Perl comments by regular
  expressions that do not parse string literals; quotes and parentheses by counting, restarted at each
  blank line; sentence starts by the character before a capital. They are approximate, not parsers.
- The per-task interval resamples test documents with the chosen latent's fit held fixed: it does not
  include the optimism of choosing the best latent on the test half (the paper's definition), so the
  latent's train loss is reported beside it (`train_ce`). The interval of the mean resamples tasks,
  treating them as a sample of possible tasks.
"""


def task_sizes(tokenizer, context_len: int = 64, cfg: ProbeConfig | None = None, seed: int = 0) -> dict[str, tuple]:
    """(pos, neg) labelled examples per available task in the default pool, or (None, why) for missing tasks."""
    cfg = cfg or ProbeConfig()
    avail = [t for t in TASKS.values() if t.available()]
    sources = list(dict.fromkeys(s for t in avail for s in t.sources))
    pool = build_pool(sources, tokenizer, context_len, tokenizer.bos_token_id, cfg.docs, cfg.per_doc, seed)
    out: dict[str, tuple] = {}
    for t in TASKS.values():
        if not t.available():
            out[t.name] = (None, t.missing())
            continue
        lab = t.label(pool)
        lab = lab if t.level == "sequence" else lab[:, 1:]
        out[t.name] = (int((lab == 1).sum()), int((lab == 0).sum()))
    return out


def _row(t: Task, size: tuple) -> str:
    n = f"{size[0]} / {size[1]}" if size[0] is not None else f"missing: {size[1]}"
    return f"| `{t.name}` | {t.level} | {t.doc} | {t.source_doc} | {t.licence} | {n} |"


def markdown(sizes: dict[str, tuple], context_len: int = 64, cfg: ProbeConfig | None = None) -> str:
    """The docs/probes.md text: header, then one table row per task."""
    cfg = cfg or ProbeConfig()
    settings = f"context {context_len} tokens, {cfg.docs} documents per source, {cfg.per_doc} contexts each, seed 0"
    lines = [HEADER.format(settings=settings, max_per_class=cfg.max_per_class),
             f"{len(TASKS)} tasks, {sum(s[0] is not None for s in sizes.values())} with their data present here.\n",
             "| task | level | 1 vs 0 | source | licence | size (1 / 0) |", "|---|---|---|---|---|---|"]
    lines += [_row(t, sizes[t.name]) for t in TASKS.values()]
    return "\n".join(lines) + "\n" + FOOTER


def main() -> None:
    from transformers import AutoTokenizer

    from saescale.activations.lm import quiet_transformers, resolve_model_folder

    with quiet_transformers():
        tok = AutoTokenizer.from_pretrained(resolve_model_folder("default"))
    print(markdown(task_sizes(tok)), end="")


if __name__ == "__main__":
    main()
