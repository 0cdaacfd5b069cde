"""Several SAEs on one pass over the data (the sweep runner) get exactly the weights they get alone."""

import pytest
import torch
from safetensors.torch import load_file

from saescale.data.synthetic import SyntheticSource
from saescale.errors import SaescaleError
from saescale.sweep.runner import run_sweep
from saescale.sweep.spec import load_spec
from saescale.train.run import train_sae

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = """
[sweep]
source = "synthetic"
heldout_tokens = 256
curve_points = 2
[grid]
arch = ["topk", "relu"]
tokens = [1280, 1920]
[sae]
n = 64
k = 4
normalize = "none"
[train]
batch_size = 64
init_tokens = 64
lr = 1e-3
[synthetic]
d = 16
features = 48
k = 3
"""


def test_members_match_separate_runs_and_data_is_read_once(tmp_path, monkeypatch):
    (tmp_path / "s.toml").write_text(SPEC)
    spec = load_spec(tmp_path / "s.toml")
    spec.settings.out = str(tmp_path / "sweep")
    reads = []
    batch = SyntheticSource.batch  # count training-stream batch reads, data unchanged
    monkeypatch.setattr(SyntheticSource, "batch",
                        lambda self, bs, i: (reads.append(i) if self.stream == 0 else None, batch(self, bs, i))[1])
    results = run_sweep(spec)
    assert len(reads) - len(spec.members) == 30  # each member's init reads batch 0 once; the longest budget: 30 steps
    monkeypatch.undo()
    for m, r in zip(spec.members, results):
        alone = train_sae(m.sae, m.train, SyntheticSource(spec.synthetic)).sae
        got = load_file(str(tmp_path / "sweep" / m.id / "sae" / "sae.safetensors"))
        for name in ("W_enc", "b_enc", "W_dec", "b_pre"):
            assert torch.equal(got[name], getattr(alone, name).detach()), (m.id, name)
        assert r["l0"] > 0 and torch.isfinite(torch.tensor(r["loss"]))


def test_members_must_share_the_batch_size(tmp_path):
    (tmp_path / "s.toml").write_text(SPEC.replace('arch = ["topk", "relu"]', "batch_size = [64, 32]"))
    with pytest.raises(SaescaleError, match="share batch_size"):
        load_spec(tmp_path / "s.toml")
