"""Fixtures of the planted-dictionary training tests (test_train_synthetic.py, test_arch_recovery.py)."""

import pytest
from saescale.threads import one_thread as single_thread

from saescale.data.synthetic import SyntheticConfig, SyntheticSource

PLANTED_D, PLANTED_FEATURES, PLANTED_K = 64, 256, 8


@pytest.fixture(scope="module")
def one_thread_module():
    """A module's trainings (module-scoped fixtures included) on one thread: request it with
    ``pytestmark = pytest.mark.usefixtures("one_thread_module")``."""
    with single_thread():
        yield


@pytest.fixture(scope="module")
def data(one_thread_module):
    """The planted dictionary (d = 64, 256 features, k = 8 active): (training source, held-out source)."""
    src = SyntheticSource(SyntheticConfig(d=PLANTED_D, features=PLANTED_FEATURES, k=PLANTED_K))
    return src, src.heldout()
