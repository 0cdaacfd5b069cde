"""The sizes of a reproduction: ``quick`` (<= 15 min on 2 CPU cores) and ``full`` (<= 8 h, in chunks).

A profile fixes every size the findings use; the findings, their sweeps and their verdicts are the
same code for both (saescale.reproduce.units). Cost model for the full profile on this machine (2 cores,
fp32): harvest 300-800 tokens/s (SmolLM2-135M to layers.20; 780 measured on the idle machine for the
large corpus), training ~3.5e7 latent-tokens/s summed over the
members of one sweep (all members share each batch; measured on the full scaling sweep, 2026-12-02: ~30 s a
shared step of its 24 members, B n summed = 1.06e9), slower by 2-3x when any other job shares the machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MODELS = {"default": "SmolLM2-135M", "gemma3-270m": "Gemma-3-270M"}


@dataclass(frozen=True)
class Profile:
    """Every size of one reproduction."""

    name: str
    corpus: str  # the text every cache is harvested from
    cache_tokens: dict[str, int]  # training tokens cached per subject model (val split: 5 % of the documents)
    batch_size: int
    heldout_tokens: int
    # scaling laws: n x k grid, budgets tokens_base x (n / n[0])^0.6
    scaling_n: tuple[int, ...]
    scaling_k: tuple[int, ...]
    scaling_tokens: int  # the budget of the smallest n
    model_n: tuple[int, ...]  # the grid of the second subject model (L(N_model)), at k = model_k
    model_k: tuple[int, ...]
    # architectures on the nMSE-L0 frontier, n = arch_n, arch_tokens each
    arch_n: int
    arch_tokens: int
    topk_k: tuple[int, ...]
    l1_coefs: tuple[float, ...]  # wide (x10), at the penalty rule lr (4e-4 at n = 4096), to reach TopK's L0 range
    l0_coefs: tuple[float, ...]
    experts: int
    # dead latents: tied init x AuxK at n = dead_n
    dead_n: int
    dead_k: int
    dead_tokens: int
    # progressive codes: TopK vs Multi-TopK
    prog_n: int
    prog_k: int
    prog_tokens: int
    # evals of scaling members (downstream, probes, N2G, ablation) as n and k grow
    eval_contexts: int
    downstream_contexts: int
    probe_tasks: str
    probe_docs: int
    n2g_latents: int
    n2g_examples: int  # activating examples to build each explanation, and as many to test it
    ablation_latents: int
    eval_k: int  # members with this k (every n) and with n = eval_n (every k) are evaluated
    eval_n: int
    seeds: tuple[int, ...] = (0,)
    # the subject models' dtype in every harvest, fixed (not 'auto', which resolves to bfloat16 on a CPU with
    # fast bf16 matmuls and to float32 elsewhere): chunks run on whichever machine a session gets, and every
    # member of a reproduction must see the same activations (the first members were harvested in float32)
    model_dtype: str = "float32"
    # cost model (saescale reproduce --plan): training latent-tokens/s summed over one sweep's members, and
    # harvest tokens/s per model, on this 2-core machine alone (SmolLM2 and training measured 2026-12-02;
    # Gemma-3-270M not yet measured on the large corpus: assumed from its size, 100M non-embedding parameters)
    train_rate: float = 3.5e7
    harvest_rate: dict[str, float] = field(default_factory=lambda: {"default": 780.0, "gemma3-270m": 500.0})
    notes: list[str] = field(default_factory=list)


QUICK = Profile(
    name="quick", corpus="default", cache_tokens={"default": 30_000, "gemma3-270m": 12_000}, batch_size=1024,
    heldout_tokens=4096,
    scaling_n=(256, 512, 1024, 2048), scaling_k=(8, 16, 32), scaling_tokens=40_960,
    model_n=(256, 512, 1024, 2048), model_k=(16,),
    arch_n=1024, arch_tokens=61_440, topk_k=(8, 32), l1_coefs=(0.05, 0.2), l0_coefs=(0.001, 0.003), experts=4,
    dead_n=4096, dead_k=16, dead_tokens=61_440,
    prog_n=1024, prog_k=16, prog_tokens=61_440,
    eval_contexts=16, downstream_contexts=8, probe_tasks="sotu_era,sotu_party,novel_vs_speech,capitalised,has_digit",
    probe_docs=8, n2g_latents=2, n2g_examples=8, ablation_latents=4, eval_k=16, eval_n=1024,
    notes=["quick: the embedded corpus (30k cached tokens, each seen several times), 4096 held-out tokens, "
           "budgets of 40k-120k tokens: a smoke test of every finding, not evidence"],
)

FULL = Profile(
    name="full", corpus="large", cache_tokens={"default": 1_200_000, "gemma3-270m": 400_000}, batch_size=4096,
    heldout_tokens=65_536,
    scaling_n=(1024, 2048, 4096, 8192, 16384, 32768), scaling_k=(8, 16, 32, 64), scaling_tokens=245_760,
    model_n=(1024, 2048, 4096, 8192, 16384), model_k=(32,),
    arch_n=4096, arch_tokens=819_200, topk_k=(16, 32, 64), l1_coefs=(0.1, 0.3, 1.0), l0_coefs=(0.003, 0.01, 0.03, 0.1),
    experts=8,
    dead_n=16384, dead_k=32, dead_tokens=819_200,
    prog_n=4096, prog_k=32, prog_tokens=819_200,
    eval_contexts=96, downstream_contexts=48, probe_tasks="all", probe_docs=24, n2g_latents=8, n2g_examples=16,
    ablation_latents=32,
    eval_k=32, eval_n=4096,
)

PROFILES = {"quick": QUICK, "full": FULL}
