"""Activations pulled live from the model (no cache), as an endless deterministic batch stream.

The stream is a fixed sequence of activation rows, a pure function of (config, split, seed):

- epoch e visits every context of the split once, in the order
  ``numpy.random.default_rng([seed, e]).permutation``;
- the epoch's order is cut into blocks of ``buffer_contexts`` contexts; a block's rows
  ((contexts * T', d), harvested ``harvest_batch`` contexts per forward) are shuffled with
  ``default_rng([seed, e, block])``;
- blocks and epochs are concatenated, and batch s is rows ``[s * B, (s + 1) * B)``.

So ``batches(B, start=s)`` equals ``batches(B)`` from batch s on, and skipping costs no
forward pass for every whole block before row ``s * B``.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from saescale.activations.config import ActivationConfig
from saescale.activations.corpus import SPLIT_SEED, SPLITS, split_documents
from saescale.activations.harvest import harvest_contexts, positions_kept
from saescale.activations.lm_text import LMText, load_lm_text
from saescale.errors import SaescaleError

class StreamSource:
    """Endless float32 (batch_size, d) batches of activations at ``cfg.hook``, harvested on demand.

    ``lm`` optionally passes an already loaded (model, tokenizer) for ``cfg.model``; ``lm_text`` an
    already loaded model + tokenised corpus (shared by the train and val streams of one run).
    ``buffer_tokens`` is the size of the shuffle buffer (rounded to whole contexts).
    """

    def __init__(
        self,
        cfg: ActivationConfig,
        split: str = "train",
        seed: int = 0,
        *,
        lm: tuple | None = None,
        lm_text: LMText | None = None,
        buffer_tokens: int = 32_768,
    ):
        if split not in SPLITS:
            raise SaescaleError(f"unknown split '{split}': use one of {', '.join(SPLITS)}")
        lt = lm_text or load_lm_text(cfg, lm)
        self.model, self.hook, self.d = lt.model, lt.hook, lt.d
        self.seed, self.keep_first, self.harvest_batch = seed, cfg.keep_first, cfg.harvest_batch
        keep = split_documents(len(lt.docs), cfg.val_fraction, SPLIT_SEED)[SPLITS.index(split)]
        contexts = lt.contexts
        mine = torch.isin(contexts.doc, torch.tensor(keep, dtype=torch.long))
        if not mine.any():
            raise SaescaleError(
                f"the {split} split of corpus '{cfg.corpus}' has no contexts; give more documents or change --val-fraction"
            )
        self.tokens = contexts.tokens[mine]  # (M, T)
        self.per_ctx = len(positions_kept(cfg.context_len, cfg.keep_first))
        self.buffer_contexts = max(1, buffer_tokens // self.per_ctx)

    @property
    def tokens_per_epoch(self) -> int:
        """Activation rows in one pass over the split."""
        return len(self.tokens) * self.per_ctx

    def _order(self, epoch: int) -> torch.Tensor:
        """(M,) context indices in epoch ``epoch``'s order."""
        return torch.from_numpy(np.random.default_rng([self.seed, epoch]).permutation(len(self.tokens)))

    def _block(self, epoch: int, block: int, ids: torch.Tensor) -> torch.Tensor:
        """Shuffled activations (len(ids) * T', d) of contexts ``ids``, forward passes of ``harvest_batch``."""
        acts = torch.cat([
            harvest_contexts(self.model, self.hook, self.tokens[ids[i : i + self.harvest_batch]], self.keep_first)
            for i in range(0, len(ids), self.harvest_batch)
        ])
        perm = np.random.default_rng([self.seed, epoch, block]).permutation(len(acts))
        return acts[torch.from_numpy(perm)]

    def _rows(self, first_row: int) -> Iterator[torch.Tensor]:
        """The row stream from row ``first_row`` on, a block at a time; skipped blocks are not harvested."""
        epoch, offset = divmod(first_row, self.tokens_per_epoch)
        while True:
            order = self._order(epoch)
            for block, lo in enumerate(range(0, len(order), self.buffer_contexts)):
                ids = order[lo : lo + self.buffer_contexts]
                if offset >= len(ids) * self.per_ctx:
                    offset -= len(ids) * self.per_ctx
                    continue
                yield self._block(epoch, block, ids)[offset:]
                offset = 0
            epoch += 1

    def batches(self, batch_size: int, start: int = 0) -> Iterator[torch.Tensor]:
        """Yield float32 (batch_size, d) batches forever, from batch ``start`` of the stream on."""
        if batch_size <= 0 or start < 0:
            raise SaescaleError(f"batch size must be positive and start non-negative, got {batch_size}, {start}")
        buf = torch.empty(0, self.d)
        for rows in self._rows(start * batch_size):
            buf = torch.cat([buf, rows])
            n = len(buf) // batch_size
            for i in range(n):
                yield buf[i * batch_size : (i + 1) * batch_size]
            buf = buf[n * batch_size :]
