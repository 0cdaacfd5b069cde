"""Steer a causal LM with one SAE latent: add (or clamp) its decoder direction at a hook point.

The SAE's decoder rows live in its *normalised* space. For raw activations x (N, d) at the hook,
:func:`~saescale.sae.normalize.normalize` gives x_n and the statistics (shift, scale) that undo it, and
the reconstruction is x̂ = scale · (Σ_j z_j W_dec[j] + b_pre) + shift, so latent i firing at z_i
contributes

    z_i · u_i(x),   u_i(x) = scale(x) · W_dec[i]   (N, d)        "one unit of latent i at token x"

to the raw-space reconstruction, scale being the decode multiplier (``NormStats.scale``, (N, 1) or a
scalar). Per normalisation (μ = mean over channels of x):

    layernorm   u_i(x) = ‖x - μ‖₂ · W_dec[i]             per token
    std         u_i(x) = σ(x) · W_dec[i]                  per token, σ the unbiased std of x - μ
    mean_sq     u_i    = W_dec[i] / s                     s: the SAE's fixed norm_scale
    none        u_i    = W_dec[i]

Two modes, applied to the hook module's output h (B, T, d) at every position (prompt and generated):

- ``scale=S``: h ← h + S · u_i(h): what latent i firing at S would add to the reconstruction (S is in
  units of the latent's activation; S < 0 subtracts; S = 0 leaves h bit-identical).
- ``clamp=V``: h ← h + (V - z_i(h)) · u_i(h), z_i(h) the latent's activation in the SAE's code of h
  (0 where it does not fire). This replaces the latent's contribution to the reconstruction
  z_i u_i by V u_i and leaves everything else -- the other latents and the SAE's error h - ĥ --
  untouched. V = 0 ablates the latent.

Re-encoding the steered h need not give z_i = z_i + S (or V) exactly: per-token normalisations
renormalise the shifted vector, and the other latents' pre-activations move too.
"""

from __future__ import annotations

import math
import operator
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor, nn

from saescale.activations.hooks import resolve_hook
from saescale.errors import SaescaleError
from saescale.sae.base import SparseAutoencoder


def check_latent(sae: SparseAutoencoder, latent: int) -> None:
    """One line unless ``latent`` is a latent index of ``sae`` (0 <= latent < n)."""
    n = sae.W_dec.shape[0]
    try:
        index = operator.index(latent)  # int, numpy or 0-d torch integer; not a float
    except TypeError:
        index = None
    if isinstance(latent, bool) or index is None or not 0 <= index < n:
        raise SaescaleError(f"latent {latent} is out of range: the SAE has {n} latents; give a latent (--latent) "
                            f"in 0..{n - 1}")


def check_mode(scale: float | None, clamp: float | None) -> None:
    """One line unless exactly one of ``scale`` and ``clamp`` is given, and it is a finite number."""
    if (scale is None) == (clamp is None):
        said = "both" if scale is not None else "neither"
        raise SaescaleError(f"{said} of --scale and --clamp given: give exactly one (--scale S adds S units of the "
                            "latent's direction, --clamp V sets its activation to V)")
    value = scale if clamp is None else clamp
    if not math.isfinite(value):
        raise SaescaleError(f"--{'scale' if clamp is None else 'clamp'} must be a finite number, got {value}")


def check_width(sae: SparseAutoencoder, hook: str, width: int) -> None:
    """One line unless the hook point's width equals the SAE's input width d."""
    if width != sae.cfg.d:
        raise SaescaleError(f"hook point '{hook}' has width {width} but the SAE reads width {sae.cfg.d}: give the "
                            "--hook (and --model) the SAE was trained on")


@torch.no_grad()
def latent_direction(sae: SparseAutoencoder, latent: int, x: Tensor) -> Tensor:
    """u_i(x): raw-space direction of one unit of latent ``latent`` at each token of x (N, d) -> (N, d),
    in the SAE's dtype (see the module docstring)."""
    _, stats = sae.normalize(x)
    return (sae.W_dec[latent] * stats.scale).expand(x.shape[0], -1)


@torch.no_grad()
def latent_activation(sae: SparseAutoencoder, latent: int, x: Tensor) -> Tensor:
    """z_i(x): latent ``latent``'s activation in the SAE's code of raw x (N, d) -> (N,); 0 where it does not fire."""
    code = sae.encode(x)
    return (code.values * (code.indices == latent)).sum(-1)


@torch.no_grad()
def steering_delta(sae: SparseAutoencoder, latent: int, x: Tensor, scale: float | None = None,
                   clamp: float | None = None) -> Tensor:
    """What steering adds to raw x (N, d) -> (N, d) in x's dtype: S u_i(x), or (V - z_i(x)) u_i(x) for a clamp."""
    xs = x.to(sae.W_dec.device)
    u = latent_direction(sae, latent, xs)
    if clamp is None:
        delta = scale * u
    else:
        delta = (clamp - latent_activation(sae, latent, xs)).unsqueeze(-1) * u
    return delta.to(device=x.device, dtype=x.dtype)


def _steer_output(sae: SparseAutoencoder, hook: str, latent: int, scale: float | None, clamp: float | None):
    """A forward hook adding :func:`steering_delta` to the module's output (B, T, d) (a tuple's first element)."""

    def fn(_module, _inputs, output):
        h = output[0] if isinstance(output, tuple) else output
        check_width(sae, hook, h.shape[-1])
        flat = h.reshape(-1, h.shape[-1])
        steered = (flat + steering_delta(sae, latent, flat, scale, clamp)).view(h.shape)
        return (steered,) + tuple(output[1:]) if isinstance(output, tuple) else steered

    return fn


@contextmanager
def steer(model: nn.Module, sae: SparseAutoencoder, hook: str, latent: int, scale: float | None = None,
          clamp: float | None = None) -> Iterator[nn.Module]:
    """Within the block, every forward of ``model`` (any HF causal LM, e.g. inside ``model.generate``)
    has latent ``latent``'s direction added at hook point ``hook`` (a name of
    :mod:`saescale.activations.hooks`, e.g. ``layers.20``), at every position:
    ``scale=S`` adds S u_i(h); ``clamp=V`` sets the latent's activation to V (see the module docstring).
    Exactly one of ``scale`` and ``clamp`` must be given. Yields the hooked module; the hook is removed
    on exit, also when the block raises."""
    check_latent(sae, latent)
    check_mode(scale, clamp)
    latent = operator.index(latent)
    module = resolve_hook(model, hook)
    handle = module.register_forward_hook(_steer_output(sae, hook, latent, scale, clamp))
    try:
        yield module
    finally:
        handle.remove()
