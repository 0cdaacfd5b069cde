"""Distributed training on ``torch.distributed``: data parallel, latent sharding, or both (a 2-D mesh).

mesh.py (layout, process groups, timeouts, guarded collectives) · collectives.py (differentiable
all-reduce pair) · sharded_topk.py (exact global top-k from per-rank candidates) · sharded_sae.py
(one rank's rows of a TopK SAE and its loss) · shares.py (losses as shares of the global batch) ·
init.py (sharded initialisation, slicing) · trainer.py (the distributed step) · data.py (disjoint
rows per data-parallel rank) · checkpoint.py (torch.distributed.checkpoint, re-sharded on load) ·
run.py (open / train / finish a run) · launch.py (``saescale train`` under torchrun) · config.py
(the --latent-shards, --dist-timeout, --dist-backend options). Guide: docs/distributed.md.
"""
