"""The shipped sweep specs load (a spec the README tells users to run must not be refused)."""

from pathlib import Path

import pytest

from saescale.sweep.spec import load_spec

ROOT = Path(__file__).parents[2] / "examples"
EXAMPLES = sorted(ROOT.rglob("*.toml"))  # the architectures' specs of docs/architectures.md too


@pytest.mark.parametrize("path", EXAMPLES, ids=[str(p.relative_to(ROOT)) for p in EXAMPLES])
def test_example_spec_loads(path):
    """Before: sweep-nk.toml set lr = 0.0 ('auto'), refused since unset settings are None."""
    spec = load_spec(path)
    assert spec.members and all(m.train.lr is None or m.train.lr > 0 for m in spec.members)
