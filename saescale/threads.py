"""Run small bookkeeping ops on one thread.

On a shared 2-core machine every multi-threaded op on a small tensor (say (4096, 32)) waits
for the second thread to be scheduled: ~8 ms per op was measured under load, against ~0.1 ms
on one thread. The kernels keep the large matmuls multi-threaded and run their index
bookkeeping (selection merges, CSR builds) inside :func:`one_thread`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def one_thread() -> Iterator[None]:
    """Temporarily ``torch.set_num_threads(1)``; restores the previous count."""
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
