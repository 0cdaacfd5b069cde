"""The units of a reproduction: one sweep each, written as a ``saescale sweep`` spec (TOML).

A unit is resumable the way a sweep is (finished members are skipped, started ones resume from their
checkpoints), and each finished member's result (with the extra metrics its unit asks for, see
``evals``) is copied to the report folder, so a rerun elsewhere skips it. Units, in run order:

=====================  =========================================================  ==========================
unit                   grid                                                       extra metrics per member
=====================  =========================================================  ==========================
scaling-default        n x k, TopK, budgets ∝ n^0.6 (SmolLM2-135M)               downstream, probes, N2G,
                                                                                  ablation (k = eval_k row
                                                                                  and n = eval_n column)
scaling-gemma3-270m    n x k on Gemma-3-270M, same budgets (L(N_model))           --
arch-topk-family       arch in {topk, batchtopk, matryoshka} x k                  downstream; refine (topk)
arch-switch            switch, E experts, x k                                     downstream
arch-l1-family         arch in {relu, gated, prolu} x L1 coefficient              downstream; refine (relu)
arch-jumprelu          jumprelu x L0 coefficient                                  downstream
dead-latents           tied_init x AuxK on/off at n = dead_n                      --
progressive            multi_topk off / on                                        progressive
=====================  =========================================================  ==========================
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from saescale.reproduce.profiles import Profile


@dataclass(frozen=True)
class Unit:
    """One sweep of the reproduction and the extra metrics its members get."""

    name: str
    model: str
    grid: dict[str, list[Any]]
    sae: dict[str, Any]
    train: dict[str, Any]
    tokens_rule: str = "fixed"

    def evals(self, member: dict[str, Any], p: Profile) -> list[str]:
        """The eval metrics for a member (its grid values), beyond the sweep's held-out nMSE and L0."""
        n, k = member.get("n", self.sae.get("n")), member.get("k", self.sae.get("k"))
        arch = member.get("arch", self.sae.get("arch"))
        if self.name == "scaling-default":
            return ["downstream", "probes", "n2g", "ablation"] if k == p.eval_k or n == p.eval_n else []
        if self.name.startswith("arch-"):
            return ["downstream", "refine"] if arch in ("topk", "relu") else ["downstream"]
        if self.name == "progressive":
            return ["progressive"]
        return []

    def spec_toml(self, p: Profile, out: str) -> str:
        """The ``saescale sweep`` spec of this unit under profile ``p``, writing to folder ``out``."""
        tables = {
            "sweep": {"source": "cache", "out": out, "heldout_tokens": p.heldout_tokens, "curve_points": 6,
                      "tokens_rule": self.tokens_rule,
                      **({"tokens_base_n": p.scaling_n[0]} if self.tokens_rule != "fixed" else {})},
            "grid": self.grid,
            "sae": {"normalize": "layernorm", **self.sae},
            "train": {"batch_size": p.batch_size, "seed": 0, "checkpoint_every": 20, "log_every": 10, **self.train},
            "activations": {"model": self.model, "corpus": p.corpus, "n_tokens": p.cache_tokens[self.model],
                            "model_dtype": p.model_dtype},
        }
        return "".join(f"[{name}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in table.items()) + "\n"
                       for name, table in tables.items())


def _toml(v: Any) -> str:
    """A TOML value: JSON's spelling fits bools, numbers, strings and lists of them."""
    return json.dumps(v)


def units(p: Profile) -> list[Unit]:
    """The reproduction's units under profile ``p``, in run order."""
    k_arch = {"tokens": p.arch_tokens}
    return [
        Unit("scaling-default", "default", {"n": list(p.scaling_n), "k": list(p.scaling_k)}, {"arch": "topk"},
             {"tokens": p.scaling_tokens}, tokens_rule="n^0.6"),
        Unit("scaling-gemma3-270m", "gemma3-270m", {"n": list(p.model_n), "k": list(p.model_k)}, {"arch": "topk"},
             {"tokens": p.scaling_tokens}, tokens_rule="n^0.6"),
        Unit("arch-topk-family", "default", {"arch": ["topk", "batchtopk", "matryoshka"], "k": list(p.topk_k)},
             {"n": p.arch_n}, k_arch),
        Unit("arch-switch", "default", {"k": list(p.topk_k)}, {"arch": "switch", "n": p.arch_n, "experts": p.experts},
             k_arch),
        Unit("arch-l1-family", "default", {"arch": ["relu", "gated", "prolu"], "l1_coef": list(p.l1_coefs)},
             {"n": p.arch_n}, k_arch),
        Unit("arch-jumprelu", "default", {"l0_coef": list(p.l0_coefs)}, {"arch": "jumprelu", "n": p.arch_n},
             {**k_arch, "threshold_lr_mult": 100}),
        Unit("dead-latents", "default", {"tied_init": [True, False], "aux_coef": [0.0, 1 / 32]},
             {"arch": "topk", "n": p.dead_n, "k": p.dead_k}, {"tokens": p.dead_tokens}),
        Unit("progressive", "default", {"multi_topk": [False, True]}, {"arch": "topk", "n": p.prog_n, "k": p.prog_k},
             {"tokens": p.prog_tokens}),
    ]
