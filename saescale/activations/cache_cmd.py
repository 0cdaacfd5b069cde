"""``saescale cache``: build (or resume, or repair) an activation cache, verify it, print a summary."""

from __future__ import annotations

import sys

from saescale.activations.cache_write import build_cache
from saescale.activations.config import ActivationConfig
from saescale.activations.manifest import MANIFEST
from saescale.cliargs import parse_config
from saescale.errors import SaescaleError


def run_cache(cfg: ActivationConfig) -> None:
    """Build, resume or repair the cache for ``cfg``: every existing shard is checked by sha256
    (damaged ones are rebuilt) and every shard written now is read back and checked."""
    path = build_cache(cfg, progress=True, verify=True)
    print(f"verified: every shard matches its sha256 in {path / MANIFEST}")


def main(argv: list[str] | None = None) -> int:
    """``python -m saescale.activations.cache_cmd [options]`` (the same options as ``saescale cache``)."""
    try:
        run_cache(parse_config(ActivationConfig, sys.argv[1:] if argv is None else argv, prog="saescale cache"))
    except SaescaleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
