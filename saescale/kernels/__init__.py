"""Fast kernels for TopK SAEs: chunked encoder with running top-k, sparse decoder, CSR backward.

The dense reference lives in :mod:`saescale.sae.topk`; ``SAESCALE_KERNELS=reference`` forces it
(see :mod:`saescale.kernels.switch`).
"""

from saescale.kernels.decoder import sparse_decode
from saescale.kernels.encoder import fused_topk_encode
from saescale.kernels.select import DEFAULT_CHUNK, Selection, select_topk
from saescale.kernels.switch import fast_kernels

__all__ = ["DEFAULT_CHUNK", "Selection", "fast_kernels", "fused_topk_encode", "select_topk", "sparse_decode"]
