"""The dashboard's JSON documents (docs/dashboard.md describes every field): the index, one document per
latent, the vocabulary, and the export in the shape of Neuronpedia's feature dashboards."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from saescale.dashboard.collect import EDGES, LO, OCTAVES, STEP, Collected
from saescale.dashboard.logit_lens import LogitLens

INDEX_FORMAT = "saescale-dashboard-index-v1"
LATENT_FORMAT = "saescale-dashboard-latent-v1"
INDEX_FIELDS = ("latent", "density", "max", "fires", "mean", "explanation", "precision", "recall", "top_token", "promoted",
                "explanation_kind", "ngram")
EXPLANATION_KINDS = ("n2g", "ngram", "none")


def f32(v: float) -> float:
    """The shortest decimal that reads back as the same float32 (JSON stays short and exact to float32)."""
    return float(np.format_float_positional(np.float32(v), unique=True, trim="-"))


def f32_row(row: np.ndarray) -> list[float]:
    """:func:`f32` of every value of a row (zeros stay 0)."""
    out = [0.0] * len(row)
    for j in np.flatnonzero(row):
        out[j] = f32(row[j])
    return [0 if v == 0 else v for v in out]


def nan_none(v: float | None) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def context_doc(col: Collected, ctx: int, row: np.ndarray) -> dict[str, Any]:
    """One context of a latent: ids, document, token ids (kept positions; -1 = not in the cache), z along it."""
    toks = col.tokens[ctx]
    j = int(row.argmax())
    return {"ctx": int(ctx), "doc": int(col.docs[ctx]), "tokens": toks.tolist(), "acts": f32_row(row),
            "max": f32(row[j]), "argmax": j}


def quantile_samples(col: Collected, i: int, samples: int) -> list[dict[str, Any]]:
    """Latent i's contexts drawn from its activation quantiles q_j = (j + 0.5) / samples: for each, the
    octave bin holding q_j and the uniform random firing token the pass kept from that bin (distinct bins
    only, lowest first); ``quantile``: [CDF before the bin, CDF after it]."""
    oct_counts = col.hist[i].view(OCTAVES, STEP).sum(1).double()
    total = float(oct_counts.sum())
    if total == 0:
        return []
    cdf = torch.cumsum(oct_counts, 0) / total
    bins = sorted({int(torch.searchsorted(cdf, torch.tensor((j + 0.5) / samples, dtype=torch.float64)))
                   for j in range(samples)})
    out = []
    for o in bins:
        o = min(o, OCTAVES - 1)
        c = int(col.s_ctx[i, o])
        if c < 0:
            continue
        row = col.s_rows[i, o].numpy()
        doc = context_doc(col, c, row)
        doc.update({"bin": [2.0 ** (LO + o), 2.0 ** (LO + o + 1)], "bin_count": int(oct_counts[o]),
                    "quantile": [float(cdf[o - 1]) if o else 0.0, float(cdf[o])], "pos": int(col.s_pos[i, o]),
                    "value": f32(col.s_val[i, o])})
        out.append(doc)
    return out


def histogram(col: Collected, i: int) -> dict[str, Any]:
    """Latent i's activation histogram (log2 bins, quarter octave), trimmed to the bins between its first
    and last non-empty one."""
    h = col.hist[i]
    nz = h.nonzero().flatten()
    if not len(nz):
        return {"edges": [], "counts": []}
    a, b = int(nz[0]), int(nz[-1]) + 1
    return {"edges": EDGES[a : b + 1], "counts": h[a:b].tolist()}


def token_list(ids, values, vocab: list[str]) -> list[dict[str, Any]]:
    return [{"token": int(t), "text": vocab[int(t)], "value": f32(v)} for t, v in zip(ids.tolist(), values.tolist())]


def pick_explanation(fires: int, n2g: dict | None, ngram: dict | None) -> tuple[dict | None, str, str | None]:
    """(explanation shown, its kind, why there is none): N2G's where it exists, else the n-gram one, else none."""
    if n2g:
        return n2g, "n2g", None
    if ngram:
        return ngram, "ngram", None
    return None, "none", ("never fires on this split" if fires == 0 else
                          "no top context with its activating token in the cache")


def latent_doc(col: Collected, i: int, lens: LogitLens, nb_ids, nb_cos, vocab: list[str], samples: int,
               explanation: dict | None, shown_top: int, first_pos: int, ngram: dict | None = None) -> dict[str, Any]:
    """The per-latent document (docs/dashboard.md, 'latents/<i>.json'); ``explanation``: N2G's (or None),
    ``ngram``: the model-free n-gram explanation (or None)."""
    fires = int(col.fires[i])
    shown, kind, reason = pick_explanation(fires, explanation, ngram)
    keep = (col.top_ctx[i] >= 0).nonzero().flatten()[:shown_top]
    rows = col.top_rows[i].numpy()
    return {
        "format": LATENT_FORMAT, "latent": i, "n_tokens": col.n_tokens, "fires": fires,
        "density": fires / max(col.n_tokens, 1), "max": f32(col.max[i]),
        "mean": f32(float(col.act_sum[i]) / fires) if fires else 0.0, "first_position": first_pos,
        "explanation": shown, "explanation_kind": kind, "explanation_reason": reason, "ngram": ngram,
        "top": [context_doc(col, int(col.top_ctx[i, s]), rows[s]) for s in keep.tolist()],
        "quantiles": quantile_samples(col, i, samples),
        "histogram": histogram(col, i),
        "logits": {"promoted": token_list(lens.pos_ids[i], lens.pos_values[i], vocab),
                   "suppressed": token_list(lens.neg_ids[i], lens.neg_values[i], vocab),
                   "final_norm": lens.final_norm},
        "neighbours": [{"latent": int(j), "cosine": f32(c)} for j, c in zip(nb_ids[i].tolist(), nb_cos[i].tolist())],
    }


def index_row(doc: dict[str, Any], vocab: list[str]) -> list[Any]:
    """One latent's row of the index, in :data:`INDEX_FIELDS` order."""
    e = doc["explanation"] or {}
    ng = (doc.get("ngram") or {}).get("text", "") if doc["explanation_kind"] == "n2g" else ""
    top = doc["top"][0] if doc["top"] else None
    top_token = vocab[top["tokens"][top["argmax"]]] if top and top["tokens"][top["argmax"]] >= 0 else ""
    return [doc["latent"], doc["density"], doc["max"], doc["fires"], doc["mean"], e.get("text", ""),
            nan_none(e.get("precision")), nan_none(e.get("recall")), top_token,
            [t["text"] for t in doc["logits"]["promoted"][:3]], doc["explanation_kind"], ng]


def density_histogram(col: Collected, bins: int = 40) -> dict[str, Any]:
    """Histogram of log10(density) over the latents that fire on the split, and how many never fire."""
    dens = col.fires.double() / max(col.n_tokens, 1)
    alive = dens[dens > 0].log10()
    if not len(alive):
        return {"log10_edges": [], "counts": [], "never_fire": len(dens)}
    lo, hi = float(alive.min()), float(alive.max())
    hi = hi if hi > lo else lo + 1.0
    counts = torch.histc(alive, bins=bins, min=lo, max=hi)
    edges = [lo + (hi - lo) * j / bins for j in range(bins + 1)]
    return {"log10_edges": edges, "counts": [int(c) for c in counts.tolist()], "never_fire": int((dens == 0).sum())}


def neuronpedia_feature(doc: dict[str, Any], col: Collected, lens: LogitLens, W_dec_row, vocab: list[str],
                        corpus: str, context_len: int) -> dict[str, Any]:
    """One feature in the shape of SAEDashboard's ``NeuronpediaDashboardFeature.to_dict()`` (the batch files
    Neuronpedia imports); fields saescale cannot fill are empty lists (see docs/dashboard.md)."""
    i = doc["latent"]
    w = W_dec_row.float()
    top3 = w.abs().topk(min(3, len(w))).indices
    l1 = w.abs().sum().clamp_min(1e-12)

    def strs(ids: list[int]) -> list[str]:
        return [vocab[t] if t >= 0 else "" for t in ids]

    acts = []
    if doc["top"]:
        acts += [{"bin_min": -1, "bin_max": doc["max"], "bin_contains": -1, "tokens": strs(c["tokens"]),
                  "values": c["acts"]} for c in doc["top"]]
    acts += [{"bin_min": q["bin"][0], "bin_max": q["bin"][1], "bin_contains": q["bin_count"] / max(doc["fires"], 1),
              "tokens": strs(q["tokens"]), "values": q["acts"]} for q in doc["quantiles"]]
    h = doc["histogram"]
    centres = [math.sqrt(a * b) for a, b in zip(h["edges"][:-1], h["edges"][1:])]
    le, lc = lens.hist_edges[i], lens.hist_counts[i]
    return {
        "feature_index": i,
        "neuron_alignment_indices": top3.tolist(), "neuron_alignment_values": [f32(w[j]) for j in top3.tolist()],
        "neuron_alignment_l1": [f32(abs(w[j]) / l1) for j in top3.tolist()],
        "correlated_neurons_indices": [], "correlated_neurons_l1": [], "correlated_neurons_pearson": [],
        "correlated_features_indices": [], "correlated_features_l1": [], "correlated_features_pearson": [],
        "neg_str": [t["text"] for t in doc["logits"]["suppressed"]],
        "neg_values": [t["value"] for t in doc["logits"]["suppressed"]],
        "pos_str": [t["text"] for t in doc["logits"]["promoted"]],
        "pos_values": [t["value"] for t in doc["logits"]["promoted"]],
        "frac_nonzero": doc["density"],
        "freq_hist_data_bar_values": centres, "freq_hist_data_bar_heights": h["counts"],
        "logits_hist_data_bar_heights": lc.tolist(),
        "logits_hist_data_bar_values": [f32((a + b) / 2) for a, b in zip(le[:-1].tolist(), le[1:].tolist())],
        "n_prompts_total": len(col.tokens), "n_tokens_in_prompt": context_len, "dataset": corpus,
        "decoder_weights_dist": [],
        "activations": acts,
    }
