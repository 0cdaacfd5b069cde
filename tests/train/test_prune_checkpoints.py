"""Pruning keeps the ``keep`` newest checkpoints by step number, counting only folders that are checkpoints."""

from saescale.train.checkpoint import prune_checkpoints


def test_keeps_the_newest_checkpoints_by_step_and_leaves_other_folders(tmp_path):
    """A folder named step-* that is not a checkpoint (step-notes) sorted after every step-N as text, so it
    took one of the ``keep`` places (one checkpoint kept instead of two) and was never pruned; past 10^9 steps
    the zero-padded names grow longer and sort before the smaller steps."""
    for step in (999_999_998, 999_999_999, 1_000_000_000):
        (tmp_path / f"step-{step:09d}").mkdir()
    (tmp_path / "step-notes").mkdir()  # not a checkpoint folder: not counted, left alone
    (tmp_path / ".step-000000005.tmp-123").mkdir()  # a killed run's temporary: removed
    prune_checkpoints(tmp_path, keep=2, current="step-1000000000")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-1000000000", "step-999999999", "step-notes"]


def test_keep_two_keeps_two(tmp_path):
    for step in (100, 200, 300):
        (tmp_path / f"step-{step:09d}").mkdir()
    (tmp_path / "step-notes").mkdir()
    prune_checkpoints(tmp_path, keep=2, current="step-000000300")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000000200", "step-000000300", "step-notes"]
