"""What is really about processes: data parallel, latent sharding, or both (a 2-D mesh).

The SAE, its loss and the trainer are written once for any mesh (one process: ``Mesh.single()``);
this package holds only mesh.py (layout, process groups, timeouts, guarded collectives, the
--latent-shards / --dist-timeout / --dist-backend options) · collectives.py (the differentiable
all-reduce pair, global-batch statistics) · sharded_topk.py (exact global top-k from per-rank
candidates) · checkpoint.py (torch.distributed.checkpoint shards, re-sharded on load) · launch.py
(a torchrun rank's device, quiet stdout, SIGTERM). Guide: docs/distributed.md.
"""
