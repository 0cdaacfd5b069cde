"""The switch between the fast sparse kernels and the plain dense reference.

``SAESCALE_KERNELS=reference`` forces the dense PyTorch reference path (pre-activations
(B, n) materialised, ``topk``, autograd through ``embedding_bag``); unset or ``fast``
selects the chunked/sparse kernels of this package. Read at every call, so a test or a
run can flip it with the environment alone.
"""

from __future__ import annotations

import os

from saescale.errors import SaescaleError

ENV = "SAESCALE_KERNELS"
CHOICES = ("fast", "reference")


def fast_kernels() -> bool:
    """True unless ``SAESCALE_KERNELS=reference``; any other value than fast/reference is an error."""
    choice = os.environ.get(ENV, "fast").strip().lower() or "fast"
    if choice not in CHOICES:
        raise SaescaleError(f"{ENV}={choice!r} is not one of {CHOICES}")
    return choice == "fast"
