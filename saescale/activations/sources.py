"""The activation sources a training run can read, by the name ``--acts`` gives them.

'synthetic' (a planted sparse dictionary), 'stream' (the model run live), 'cache' (the on-disk
cache for the activation settings, built if missing), the path of a built cache (a folder with the
cache's manifest.json), or the path of your own (N, d) activations: an .npy / .safetensors / .pt
file or a folder of them (:class:`~saescale.data.arrays.ArraySource`, the last 5% of the rows held
out). Each comes with a held-out source and the provenance recorded with the SAE (so evaluation can
rerun the same model and corpus, or find the same files).
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from saescale.activations.config import ActivationConfig
from saescale.activations.precision import recorded_model_dtype
from saescale.configs import config_to_dict, non_default
from saescale.data.arrays import ArraySource
from saescale.data.source import BatchSource
from saescale.data.synthetic import SyntheticConfig, SyntheticSource
from saescale.errors import SaescaleError

Progress = Callable[[dict[str, Any]], None]  # the cache harvest's {"tokens": done, "total": to do}


def activation_sources(acts: str, activations: ActivationConfig, synthetic: SyntheticConfig, seed: int,
                       progress: Progress | None = None, log: Callable[[str], None] | None = None,
                       ) -> tuple[BatchSource, BatchSource, dict[str, Any]]:
    """(train source, held-out source, provenance) for ``acts``; ``seed`` sets the data order;
    ``progress`` and ``log`` report the harvest when 'cache' builds the cache."""
    if acts == "synthetic":
        src = SyntheticSource(synthetic)
        return src, src.heldout(), {"source": "synthetic", "synthetic": config_to_dict(synthetic)}
    if acts == "stream":
        if activations.target_hook:
            raise SaescaleError("--target-hook needs --acts cache (the cache stores both hooks from one forward "
                                "pass); --acts stream runs one hook: use --acts cache")
        from saescale.activations.lm_text import load_lm_text
        from saescale.activations.stream import StreamSource

        lt = load_lm_text(activations)  # one model load and one tokenisation for both splits
        return (StreamSource(activations, "train", seed, lm_text=lt), StreamSource(activations, "val", seed, lm_text=lt),
                {"source": "stream", "activations": dict(config_to_dict(activations), model_dtype=lt.model_dtype)})
    from saescale.activations.cache import CacheReader, build_cache

    if acts != "cache" and is_array_path(acts):
        check_no_model_options(activations, acts)
        train = ArraySource(acts, seed=seed)
        return train, train.heldout(), train.provenance()
    path = Path(acts) if acts != "cache" else build_cache(activations, progress=progress, log=log)
    if not path.exists():
        raise SaescaleError(f"--acts {path} not found: give an activation file (.npy, .safetensors, .pt), a folder "
                            "of them, a built cache folder ('saescale cache'), or synthetic / stream / cache")
    side = "target" if acts != "cache" and target_side(activations, path) else "both"
    train = CacheReader(path, "train", seed, side=side)
    if acts != "cache":
        check_given_options(activations, train.manifest, path)
    return train, CacheReader(path, "val", seed, side=side), cache_provenance(train)


def target_side(activations: ActivationConfig, path: Path) -> bool:
    """Whether ``--acts PATH --hook H`` asks for the target side of a transcoder's cache (H its target hook, no
    --target-hook): an SAE on the transcoder's target, from the same cache."""
    from saescale.activations.manifest import read_manifest

    if activations.target_hook or not activations.hook:
        return False
    return activations.hook == read_manifest(path).get("target_hook")


def is_array_path(acts: str) -> bool:
    """Whether ``--acts`` names your own activations: an existing file, or a folder without the cache manifest."""
    from saescale.activations.manifest import MANIFEST

    path = Path(acts).expanduser()
    return path.is_file() or (path.is_dir() and not (path / MANIFEST).exists())


def check_no_model_options(activations: ActivationConfig, acts: str) -> None:
    """With ``--acts FILE_OR_FOLDER`` of your own activations no model runs: an activation option given
    (not its default) is refused, naming it."""
    given = [n for n in non_default(activations) if n != "cache_dir"]
    if given:
        opt = f"--{given[0].replace('_', '-')}"
        raise SaescaleError(f"{opt} sets how a model's activations are made, but --acts {acts} trains on the "
                            f"activations stored there: drop {opt}")


def check_given_options(activations: ActivationConfig, manifest: dict[str, Any], path: Path) -> None:
    """With ``--acts PATH`` the cache decides the activations: an activation option given on the command
    line (not its default) that differs from what the cache was built with is refused, naming both."""
    built = manifest.get("config", {})
    for name in non_default(activations):
        given = getattr(activations, name)
        if name == "cache_dir":
            continue
        recorded = [built.get(name)] + ([manifest.get("hook"), manifest.get("target_hook")] if name == "hook" else [])
        if name == "model_dtype":
            recorded = [recorded_model_dtype(built)]
        if given not in recorded:
            opt = f"--{name.replace('_', '-')}"
            raise SaescaleError(f"{opt} {given} differs from the cache given by --acts {path} (built with {opt} "
                                f"{recorded[-1]}): drop {opt}, or use --acts cache to build a cache for it")


def cache_provenance(reader: Any) -> dict[str, Any]:
    """What an SAE trained on a cache records about its data: the cache folder and the activation
    settings (hook resolved, e.g. 'layers.20'; model dtype as built, float32 for caches that predate
    the option), so evaluation can rerun the same model and corpus."""
    config = reader.manifest.get("config", {})
    acts = {**config, "hook": reader.manifest["hook"], "model_dtype": recorded_model_dtype(config)}
    if reader.manifest.get("target_hook"):
        acts["target_hook"] = reader.manifest["target_hook"]
    if getattr(reader, "side", "both") == "target":  # an SAE on the target side: evaluated at the target hook
        acts.update(hook=reader.manifest["target_hook"], target_hook="")
    return {"source": "cache", "cache": str(reader.path), "activations": acts}


def heldout_batches(held: BatchSource, tokens: int, batch_size: int) -> Iterable[torch.Tensor]:
    """Up to ``tokens`` held-out tokens, each once: a cache's split read in order, or a stream's first batches."""
    if hasattr(held, "read_all"):
        return held.read_all(max_tokens=tokens)["acts"].split(batch_size)
    return islice(held.batches(batch_size), max(1, tokens // batch_size))
