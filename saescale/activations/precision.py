"""The language model's forward-pass dtype: ``--model-dtype {auto,float32,bfloat16}`` and the probe behind ``auto``.

bfloat16 keeps float32's 8 exponent bits and 7 of its 23 mantissa bits, so one rounding has
relative error at most u = 2⁻⁸; a forward pass in bf16 is worth it only where the hardware
multiplies bf16 natively (fp32 accumulation): elsewhere torch emulates it and it is *slower*
than fp32 (0.36x on an AVX2-only CPU, measured in benchmarks/README.md).

``auto`` resolves, once per process and device type, by :func:`fast_bf16`:

    CPU:   /proc/cpuinfo ``flags`` include ``avx512_bf16`` or ``amx_bf16``
    CUDA:  compute capability (major, minor) >= (8, 0)  (Ampere and later: bf16 tensor cores)
    else:  no

``SAESCALE_FAST_BF16=1`` (or ``0``) overrides the hardware answer, so tests can force either
path on any machine. The resolved name (never ``auto``) is what manifests and SAE configs record.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

from saescale.errors import SaescaleError

MODEL_DTYPES = ("auto", "float32", "bfloat16")
RESOLVED = {"float32": torch.float32, "bfloat16": torch.bfloat16}
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
FORCE_ENV = "SAESCALE_FAST_BF16"
LEGACY = "float32"  # what a record without a model dtype (made before the option existed) was built with


def cpu_has_fast_bf16(cpuinfo: str) -> bool:
    """True if the ``flags`` line of ``cpuinfo`` (text of /proc/cpuinfo) names AVX512-BF16 or AMX-BF16."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return any(f in value.split() for f in CPU_BF16_FLAGS)
    return False


def cuda_has_fast_bf16(capability: tuple[int, int]) -> bool:
    """True for a CUDA compute capability (major, minor) >= (8, 0)."""
    return tuple(capability) >= (8, 0)


@functools.lru_cache(maxsize=None)
def _hardware_fast_bf16(device_type: str) -> bool:
    """The probe proper, run once per device type and process."""
    if device_type == "cuda":
        return torch.cuda.is_available() and cuda_has_fast_bf16(torch.cuda.get_device_capability())
    if device_type == "cpu":
        try:
            return cpu_has_fast_bf16(Path("/proc/cpuinfo").read_text())
        except OSError:
            return False
    return False


def fast_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` has fast bf16 matmuls: ``$SAESCALE_FAST_BF16`` (1/0) if set, else the hardware probe."""
    forced = os.environ.get(FORCE_ENV, "").strip()
    if forced:
        if forced not in ("0", "1"):
            raise SaescaleError(f"{FORCE_ENV} must be 0 or 1, got '{forced}'")
        return forced == "1"
    return _hardware_fast_bf16(torch.device(device).type)


def check_model_dtype(name: str) -> str:
    """``name`` if it is one of :data:`MODEL_DTYPES`, else a one-line SaescaleError."""
    if name not in MODEL_DTYPES:
        raise SaescaleError(f"--model-dtype must be one of {', '.join(MODEL_DTYPES)}, got '{name}'")
    return name


def resolve_model_dtype(name: str, device: str | torch.device = "cpu") -> str:
    """'float32' or 'bfloat16' for option value ``name``: auto -> bfloat16 iff :func:`fast_bf16` (device)."""
    if check_model_dtype(name) != "auto":
        return name
    return "bfloat16" if fast_bf16(device) else "float32"


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of option value ``name`` (auto resolved on the CPU)."""
    return RESOLVED[resolve_model_dtype(name)]


def recorded_model_dtype(record: dict) -> str:
    """The model dtype a manifest config or SAE provenance ``record`` names; 'float32' when it names none."""
    return record.get("model_dtype") or LEGACY
