"""Several SAEs on one pass over the data get exactly the weights they get alone."""

import pytest
import torch

from saescale.data.synthetic import SyntheticConfig, SyntheticSource
from saescale.errors import SaescaleError
from saescale.sae.config import SAEConfig
from saescale.train.config import TrainConfig
from saescale.train.run import train_sae
from saescale.train.together import train_together

pytestmark = pytest.mark.usefixtures("one_thread")


def test_members_match_separate_runs_and_data_is_read_once():
    src = SyntheticSource(SyntheticConfig(synth_d=16, synth_features=48, synth_k=3))
    reads = []
    batch = src.batch
    src.batch = lambda bs, i: (reads.append(i), batch(bs, i))[1]  # count batch reads, data unchanged
    members = [
        (SAEConfig(n=64, k=4, normalize="none"), TrainConfig(tokens=64 * 30, batch_size=64, progress=False, init_tokens=64)),
        (SAEConfig(n=96, k=2, normalize="none"), TrainConfig(tokens=64 * 20, batch_size=64, progress=False, init_tokens=64, seed=3)),
        (SAEConfig(arch="relu", n=32, normalize="none"), TrainConfig(tokens=64 * 30, batch_size=64, progress=False, init_tokens=64, lr=1e-3)),
    ]
    together = train_together(members, src, progress=False)
    training_reads = len(reads) - 3  # each member's init reads batch 0 once
    assert training_reads == 30
    for (sae_cfg, cfg), (sae, metrics) in zip(members, together):
        alone = train_sae(sae_cfg, cfg, src).sae
        for name in ("W_enc", "b_enc", "W_dec", "b_pre"):
            assert torch.equal(getattr(sae, name), getattr(alone, name)), name
        assert metrics["l0"] > 0 and torch.isfinite(torch.tensor(metrics["loss"]))


def test_members_must_share_the_batch_size():
    src = SyntheticSource(SyntheticConfig(synth_d=16, synth_features=48, synth_k=3))
    members = [(SAEConfig(n=64, k=4), TrainConfig(batch_size=64)), (SAEConfig(n=64, k=4), TrainConfig(batch_size=32))]
    with pytest.raises(SaescaleError, match="share --batch-size"):
        train_together(members, src, progress=False)
