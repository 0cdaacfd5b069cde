"""Several SAEs trained on the same activation batches in one process (one read of the data).

Each SAE keeps its own optimiser, schedule and dead-latent counters (its own :class:`Trainer`);
only the batch stream is shared, so a member trained here gets exactly the weights it would get
alone on the same stream. Members may differ in n, k, architecture, seed, learning rate and token
budget; they must share the batch size and the input width.
"""

from __future__ import annotations

from itertools import islice

from tqdm.auto import tqdm

from saescale.data.source import BatchSource
from saescale.errors import SaescaleError
from saescale.sae.base import SparseAutoencoder
from saescale.sae.config import SAEConfig
from saescale.train.config import TrainConfig
from saescale.train.run import new_trainer


def train_together(members: list[tuple[SAEConfig, TrainConfig]], source: BatchSource,
                   progress: bool = True) -> list[tuple[SparseAutoencoder, dict[str, float]]]:
    """Train every (SAEConfig, TrainConfig) member on one pass over ``source``; returns (sae, last metrics) each.

    Batch i goes to every member that still has steps left; the stream stops after the longest budget.
    No checkpoints are written (use one ``saescale train`` per member for resumable runs).
    """
    sizes = {cfg.batch_size for _, cfg in members}
    if len(sizes) != 1:
        raise SaescaleError(f"SAEs trained together must share --batch-size, got {sorted(sizes)}")
    trainers = [new_trainer(sae_cfg, cfg, source, None) for sae_cfg, cfg in members]
    steps = max(t.cfg.steps for t in trainers)
    last: list[dict[str, float]] = [{} for _ in trainers]
    for x in tqdm(islice(source.batches(sizes.pop()), steps), total=steps, disable=not progress, desc="train together"):
        for i, t in enumerate(trainers):
            if t.state.step < t.cfg.steps:
                last[i] = t.step(x)
    return [(t.final_sae(), m) for t, m in zip(trainers, last)]
