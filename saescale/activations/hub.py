"""Hub ids: which model names go to the Hugging Face hub, and a fast refusal when it cannot be reached.

Standard library and ``huggingface_hub`` only (no torch, no transformers), so that the CLI can refuse a
hub id that cannot be reached before the ~4 s of importing torch and transformers, and long before
transformers' ~50 s of retries.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from saescale.errors import SaescaleError


def is_hub_id(name: str) -> bool:
    """Whether model ``name`` would be fetched from the hub: not 'default', not an existing path, and of the
    form org/name (anything else that is not a path is refused by :func:`saescale.activations.lm.resolve_model_folder`)."""
    if name == "default" or Path(name).expanduser().exists():
        return False
    return not name.startswith(("/", ".", "~")) and name.count("/") == 1


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub ($HF_ENDPOINT, default huggingface.co) accepts a connection within ``timeout`` s."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def check_hub_id(name: str) -> None:
    """A hub id that is neither in the local Hugging Face cache nor reachable fails now, in seconds, with one
    line that says "offline or unknown model", not after transformers' ~50 s of retries."""
    from huggingface_hub import try_to_load_from_cache

    cached = isinstance(try_to_load_from_cache(name, "config.json"), str)
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    if not cached and (offline or not hub_reachable()):
        why = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face hub cannot be reached from here"
        raise SaescaleError(f"offline or unknown model '{name}': it is not a local folder and not in the Hugging "
                            f"Face cache, and {why}; download it where there is network and give its local folder "
                            "(or a .gguf file)")


def model_options(argv: list[str]) -> list[str]:
    """The values of every ``--model`` option in a command line (``--model X`` and ``--model=X``)."""
    out = []
    for i, arg in enumerate(argv):
        if arg == "--model" and i + 1 < len(argv):
            out.append(argv[i + 1])
        elif arg.startswith("--model="):
            out.append(arg.split("=", 1)[1])
    return out
