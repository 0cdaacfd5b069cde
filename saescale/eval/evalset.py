"""What every metric evaluates on: the SAE, its model and hook point, and held-out token contexts.

The model, hook, corpus and context settings are those recorded in the SAE's ``cfg.json``
(``extra["activations"]``), so the SAE is evaluated where it was trained. Eval contexts are a
seeded uniform random sample of the contexts of the corpus's validation documents (the same
document split as the cache and stream, :data:`SPLIT_SEED`), kept in the sampled (random)
order, so that every prefix -- the first ``DownstreamConfig.contexts`` contexts, the first
``RefineConfig.tokens`` tokens -- is itself a uniform random sample of the whole split:

    pool  = all contexts of the split's documents (tokenize_contexts), C of them
    eval  = pool[perm[:M]],  perm a seeded random permutation of 0..C-1

With another corpus (``saescale eval --corpus``) every document of that corpus is the split
(out-of-distribution evaluation: the SAE never saw any of it).

    tokens: (M, T) contexts      acts: (M, T', d) raw activations at the kept positions (a transcoder's:
                                 (M, T', d + d_out), its source hook's and its target hook's side by side)
    positions: (T',) the kept positions (1..T-1 by default; 0..T-1 with keep_first)
    doc: (M,) index of each context's document in the corpus's document list
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saescale.activations.config import ActivationConfig
from saescale.activations.corpus import (SPLIT_SEED, Contexts, Document, load_documents, split_documents,
                                         tokenize_contexts)
from saescale.activations.harvest import harvest_hooks, positions_kept
from saescale.activations.hooks import default_hook, hook_width
from saescale.activations.lm_text import load_lm
from saescale.configs import config_from_dict
from saescale.errors import SaescaleError
from saescale.eval import Track, untracked
from saescale.sae.base import SparseAutoencoder
from saescale.sae.io import load_sae, read_cfg


@dataclass
class EvalSet:
    """An SAE with its language model and held-out contexts (see module docstring for shapes)."""

    sae: SparseAutoencoder
    model: Any
    tokenizer: Any
    hook: str
    acts_cfg: ActivationConfig
    tokens: Tensor  # (M, T) long
    acts: Tensor  # (M, T', d) float32, raw space
    positions: Tensor  # (T',) long
    doc: Tensor  # (M,) long, corpus index of each context's document
    doc_titles: dict[int, str]  # corpus index -> readable title, for every document in ``doc``
    split: str = "val"  # "val" (the SAE's corpus's validation documents) or "all" (another corpus, all of it)
    split_docs: int = 0  # documents in the split the contexts were sampled from
    trained_corpus: str = ""  # the corpus the SAE was trained on (acts_cfg.corpus differs with --corpus)
    track: Track = untracked  # the caller's progress callback for the metrics' loops
    target_hook: str = ""  # a transcoder's target hook ('' for an SAE): downstream loss and ablation splice there
    memo: dict = field(default_factory=dict)  # model-side results shared by the SAEs evaluated on this set (probe data)

    def splicer(self):
        """The :class:`~saescale.eval.splice.Splicer` for downstream loss and ablation: at the hook, or for a
        transcoder at its target hook, with the source hook captured alongside."""
        from saescale.eval.splice import Splicer

        return Splicer(self.model, self.target_hook, self.hook) if self.target_hook else Splicer(self.model, self.hook)

    @property
    def spliced_acts(self) -> Tensor:
        """(M * T', d_h) raw activations at the spliced hook point: the hook's, or a transcoder's target's."""
        return self.flat_acts[:, self.sae.cfg.d :] if self.target_hook else self.flat_acts

    def documents(self, contexts: Tensor) -> list[dict]:
        """The documents behind eval contexts ``contexts`` ((K,) indices into ``tokens``), by corpus index:
        [{'index', 'title', 'contexts'}] (``contexts``: how many of them come from that document)."""
        idx, counts = self.doc[contexts].unique(return_counts=True)
        return [{"index": int(i), "title": self.doc_titles[int(i)], "contexts": int(c)} for i, c in zip(idx, counts)]

    @property
    def flat_acts(self) -> Tensor:
        """(M * T', d) raw activations, context-major."""
        return self.acts.reshape(-1, self.acts.shape[-1])

    @property
    def pad_id(self) -> int:
        """Token used as 'padding' (N2G wildcards): pad, else EOS, else 0."""
        t = self.tokenizer
        return next((i for i in (t.pad_token_id, t.eos_token_id) if i is not None), 0)

    @property
    def bos_id(self) -> int | None:
        return self.tokenizer.bos_token_id if self.acts_cfg.prepend_bos else None


def recorded_activations(extra: dict[str, Any], where: str) -> ActivationConfig:
    """The ActivationConfig the SAE was trained with (from cfg.json's ``extra``)."""
    rec = extra.get("activations")
    if not isinstance(rec, dict) or not rec:
        raise SaescaleError(
            f"{where} records no language model (trained on synthetic data?); eval needs an SAE trained with --acts cache or stream"
        )
    return config_from_dict(ActivationConfig, rec, what=f"{where} extra.activations")


def doc_title(doc: Document, index: int) -> str:
    """A readable title of corpus document ``index`` from its meta (e.g. 'sotu 1790 George Washington',
    'moby-dick 135 The Chase.—Third Day.'); 'document <index>' when it has no meta."""
    keys = ("source", "year", "president", "chapter", "title", "file", "name", "id")
    parts = [str(doc.meta[k]) for k in keys if doc.meta.get(k) not in (None, "")]
    return " ".join(parts) if parts else f"document {index}"


@dataclass
class SampledContexts:
    """Eval contexts (in sampled order) with the corpus index and title of their documents."""

    contexts: Contexts  # tokens (M, T); doc (M,) corpus document index; start (M,)
    doc_titles: dict[int, str]
    split: str  # "val" or "all"
    split_docs: int


def val_contexts(cfg: ActivationConfig, tokenizer, n_contexts: int, seed: int,
                 whole_corpus: bool = False) -> SampledContexts:
    """``n_contexts`` contexts drawn uniformly at random (seeded) from the validation documents of
    ``cfg.corpus`` -- or from all of its documents with ``whole_corpus`` -- in the sampled order
    (see module docstring: any prefix is a random sample of the whole split)."""
    docs = load_documents(cfg.corpus)
    split = list(range(len(docs))) if whole_corpus else split_documents(len(docs), cfg.val_fraction, SPLIT_SEED)[1]
    if not split:
        raise SaescaleError("the SAE's corpus has no validation documents; retrain with --val-fraction > 0 "
                            "or evaluate on another corpus with --corpus")
    ctx = tokenize_contexts([docs[i] for i in split], tokenizer, cfg.context_len, cfg.prepend_bos)
    g = torch.Generator().manual_seed(seed)
    picked = ctx.select(torch.randperm(len(ctx), generator=g)[:n_contexts])
    picked.doc = torch.tensor(split, dtype=torch.long)[picked.doc]  # split position -> corpus index
    titles = {i: doc_title(docs[i], i) for i in picked.doc.unique().tolist()}
    return SampledContexts(picked, titles, "all" if whole_corpus else "val", len(split))


def harvest(model, hook: str | list[str], tokens: Tensor, keep_first: bool, batch: int = 16, desc: str = "harvest",
            track: Track = untracked) -> Tensor:
    """Raw activations (M, T', d) of contexts ``tokens`` (M, T), ``batch`` contexts per forward; ``track``
    reports the batches. A list of hooks (a transcoder's source and target) gives theirs side by side, from
    one forward pass each batch: (M, T', sum of widths)."""
    t_kept = tokens.shape[1] - (not keep_first)
    hooks = [hook] if isinstance(hook, str) else hook
    parts = []
    for i in track(range(0, len(tokens), batch), desc, -(-len(tokens) // batch)):
        chunk = tokens[i : i + batch]
        got = torch.cat(harvest_hooks(model, hooks, chunk, keep_first), dim=1)
        parts.append(got.view(len(chunk), t_kept, -1))
    return torch.cat(parts)


def other_corpus(trained_on: str, corpus: str) -> str:
    """``corpus`` after checking it is not the one the SAE was trained on (its training documents would count)."""
    if corpus == trained_on:
        raise SaescaleError(f"--corpus {corpus} is the corpus the SAE was trained on (all of it would count as "
                            "validation); omit --corpus to evaluate on its validation documents")
    return corpus


def load_eval_set(sae_dir: str | Path, n_contexts: int, seed: int, model_override: str = "", lm=None,
                  corpus: str = "", model_dtype: str = "auto", track: Track = untracked) -> EvalSet:
    """Load the SAE at ``sae_dir``, its model (or ``lm``, cast to ``model_dtype`` if needed) in ``model_dtype``
    (auto: the probe of :mod:`saescale.activations.precision`; ``acts_cfg.model_dtype`` holds the resolved
    name) and hook, and harvest ``n_contexts`` val contexts (of corpus ``corpus``, all of it, when given:
    out-of-distribution evaluation). ``track`` reports the progress of every loop (harvest and metrics)."""
    sae_cfg, extra = read_cfg(sae_dir)
    acts_cfg = recorded_activations(extra, str(Path(sae_dir) / "cfg.json"))
    if model_override:
        acts_cfg.model = model_override
    trained_corpus = acts_cfg.corpus
    if corpus:
        acts_cfg.corpus = other_corpus(trained_corpus, corpus)
    sae = load_sae(sae_dir).eval()
    sae.requires_grad_(False)
    model, tokenizer, acts_cfg.model_dtype = load_lm(acts_cfg.model, model_dtype, lm)
    hook = acts_cfg.hook or default_hook(model)
    width = hook_width(model, hook)
    if width != sae_cfg.d:
        raise SaescaleError(
            f"the SAE has d={sae_cfg.d} but hook '{hook}' of model '{acts_cfg.model}' has width {width}; "
            "evaluate it on the model and hook it was trained on"
        )
    target = acts_cfg.target_hook
    if bool(target) != sae.transcoder:
        raise SaescaleError(f"{Path(sae_dir) / 'cfg.json'}: the SAE is {'a transcoder' if sae.transcoder else 'not a transcoder'} "
                            f"but its activations record {'no' if not target else 'a'} target hook; export it again from its run")
    if target and hook_width(model, target) != sae_cfg.d_out:
        raise SaescaleError(f"the transcoder has d_out={sae_cfg.d_out} but target hook '{target}' of model "
                            f"'{acts_cfg.model}' has width {hook_width(model, target)}; evaluate it on its own model")
    sample = val_contexts(acts_cfg, tokenizer, n_contexts, seed, whole_corpus=bool(corpus))
    tokens = sample.contexts.tokens
    acts = harvest(model, [hook, target] if target else hook, tokens, acts_cfg.keep_first, track=track)
    return EvalSet(sae, model, tokenizer, hook, acts_cfg, tokens, acts,
                   positions_kept(acts_cfg.context_len, acts_cfg.keep_first), sample.contexts.doc,
                   sample.doc_titles, sample.split, sample.split_docs, trained_corpus, track, target)
