"""OpenAI's released SAE files (github.com/openai/sparse_autoencoder): a ``torch.save``d state dict.

Read with ``torch.load(path, weights_only=True)`` only (no code in the file ever runs): tensors,
strings, ints and dicts pass, anything else is refused. The released ``Autoencoder`` computes, on
x (B, d), with encoder.weight (n, d), decoder.weight (d, n):

    x_n, μ, σ = LN(x)  when activation is 'TopK' (its ``normalize``), else x_n = x
    z  = act(encoder.weight (x_n - pre_bias) + latent_bias)                    (B, n)
    x̂ = (decoder.weight z + pre_bias) σ + μ                                     (B, d)

with LN x_n = (x - μ) / (σ + 1e-5), σ the unbiased std: saescale's 'std' exactly. 'TopK' (k from
``activation_state_dict``, postact_fn 'ReLU') maps to saescale's topk, 'ReLU' to relu (no
normalisation); W_enc = encoder.weight, b_enc = latent_bias, W_dec = decoder.weight^T, b_pre = pre_bias.
The training statistics some files carry (stats_last_nonzero, latents_activation_frequency,
latents_mean_square) are ignored.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from saescale.errors import SaescaleError
from saescale.sae.config import SAEConfig
from saescale.sae.formats.common import Imported, as_int, check_tensors, finish

STATS = ("stats_last_nonzero", "latents_activation_frequency", "latents_mean_square")
FIX = "give the state dict as OpenAI's release saves it (Autoencoder.state_dict())"


def load_state(f: Path) -> dict:
    """``torch.load(f, weights_only=True)`` with one line for a file it refuses or cannot read."""
    try:
        sd = torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        m = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if m:
            raise SaescaleError(f"{f} holds pickled Python objects ({m.group(1)}), which torch.load(weights_only=True) "
                                "refuses to run: saescale reads only tensors, strings and numbers; save the state dict "
                                "itself (torch.save(model.state_dict(), path)) and give that file") from None
        raise SaescaleError(f"{f} is not a torch file torch.load(weights_only=True) can read; {FIX}") from None
    except (EOFError, RuntimeError, OSError, ValueError) as e:
        raise SaescaleError(f"{f} is empty, truncated or not a torch file ({type(e).__name__}); {FIX}") from None
    if not isinstance(sd, dict):
        raise SaescaleError(f"{f} holds a {type(sd).__name__}, not a state dict; {FIX}")
    return sd


def read(f: Path) -> Imported:
    """An OpenAI state dict as saescale tensors and config."""
    sd = load_state(f)
    act = sd.get("activation", "ReLU")
    params = sd.get("activation_state_dict", {}) or {}
    if act == "TopK":
        if not isinstance(params, dict) or params.get("postact_fn", "ReLU") != "ReLU":
            raise SaescaleError(f"{f}: TopK's postact_fn is {params.get('postact_fn') if isinstance(params, dict) else params!r}, "
                                "not ReLU (saescale's TopK applies ReLU to the kept values); it cannot be read exactly")
        arch, norm, k = "topk", "std", as_int(params.get("k"), f, "activation_state_dict.k", FIX)
    elif act == "ReLU":
        arch, norm, k = "relu", "none", None
    else:
        raise SaescaleError(f"{f}: activation {act!r} has no saescale equivalent (saescale reads 'TopK' and 'ReLU')")
    tensors = {key: v for key, v in sd.items() if key not in ("activation", "activation_state_dict")}
    enc = tensors.get("encoder.weight")
    if not isinstance(enc, torch.Tensor) or enc.ndim != 2:
        shape = tuple(enc.shape) if isinstance(enc, torch.Tensor) else None
        raise SaescaleError(f"{f}: tensor encoder.weight is {'missing' if enc is None else f'of shape {shape}'} "
                            f"(expected (n_latents, d)); {FIX}")
    n, d = enc.shape
    shapes = {"pre_bias": (d,), "encoder.weight": (n, d), "latent_bias": (n,), "decoder.weight": (d, n)}
    check_tensors(f, tensors, shapes, f"OpenAI autoencoder of {n} latents on width {d}", FIX, ignored=STATS)
    if k is not None and k > n:
        raise SaescaleError(f"{f}: activation_state_dict.k {k} is more than the {n} latents; {FIX}")
    out = {"W_enc": tensors["encoder.weight"], "b_enc": tensors["latent_bias"], "W_dec": tensors["decoder.weight"].T,
           "b_pre": tensors["pre_bias"]}
    cfg = SAEConfig(arch=arch, n=n, d=d, normalize=norm, **({"k": k} if k else {}))
    return Imported(cfg, {"imported": {"format": "openai", "activation": act}}, finish(out), f, "openai")
