"""The ``saescale`` command line: one sub-command per job, options generated from typed configs."""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

from saescale.errors import SaescaleError, first_line, os_error_line


def _commands() -> dict[str, tuple[str, type, Callable[[Any], Any]]]:
    from saescale.activations.config import ActivationConfig
    from saescale.commands.cache import run_cache
    from saescale.commands.dashboard import DashboardCommand, run_dashboard
    from saescale.commands.eval import EvalCommand, run_eval
    from saescale.commands.export import ExportCommand, run_export
    from saescale.commands.fit import FitConfig, run_fit
    from saescale.commands.sweep import SweepConfig, run_sweep_command
    from saescale.commands.reproduce import ReproduceCommand, run_reproduce
    from saescale.commands.steer import SteerCommand, run_steer
    from saescale.commands.train import TrainCommand, run_train

    return {
        "train": ("train (or resume) an SAE; with no options: the main job on the embedded model", TrainCommand, run_train),
        "cache": ("harvest activations of a model at a hook point into an on-disk cache", ActivationConfig, run_cache),
        "eval": ("the paper's metrics for a trained SAE (SAE_DIR) on its model", EvalCommand, run_eval),
        "sweep": ("train a grid of SAEs (spec file) together on one pass over the activations; rerun to resume",
                  SweepConfig, run_sweep_command),
        "fit": ("scaling-law fits (joint L(n,k), L(C), lr rule) of finished sweeps (PATH...)", FitConfig, run_fit),
        "dashboard": ("static offline feature browser of an SAE (SAE_DIR) from its activation cache", DashboardCommand, run_dashboard),
        "export": ("an SAE (SAE_DIR) as a SAELens or sparsify folder their own loaders read", ExportCommand, run_export),
        "steer": ("greedy continuations of a prompt without and with one SAE latent steered (SAE_DIR)", SteerCommand, run_steer),
        "reproduce": ("every finding of the paper on the embedded models, resumable (--quick, --budget 2h); report.html",
                      ReproduceCommand, run_reproduce),
    }


def _usage(cmds: dict[str, tuple[str, type, Any]]) -> str:
    lines = ["usage: saescale COMMAND [options]   (saescale COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:10s} {doc}" for name, (doc, _, _) in cmds.items()]
    return "\n".join(lines)


def unexpected_line(e: BaseException) -> str:
    """One line for an exception that is not a SaescaleError: a file-system error (full disk, read-only
    folder, ...) says the path and the remedy; out of memory says so; anything else is a bug."""
    if isinstance(e, OSError):
        return os_error_line(e)
    if isinstance(e, MemoryError) or "can't allocate memory" in str(e) or "out of memory" in str(e).lower():
        return ("out of memory: use a smaller --n, --batch-size or --harvest-batch (or a machine with more "
                "memory); files saved earlier are intact")
    if isinstance(e, UnicodeDecodeError):
        return f"a file is not UTF-8 text ({e.reason} at byte {e.start}): check the files given and rerun"
    return (f"internal error {type(e).__name__}: {first_line(e, 300)} - this is a bug in saescale; rerun with "
            "SAESCALE_DEBUG=1 for the traceback and report it")


def _fail(message: str, code: int = 2) -> int:
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    return code


def _check_hub_ids(argv: list[str]) -> None:
    """Refuse a ``--model`` hub id that cannot be reached before importing torch and transformers (~4 s),
    so that an offline machine answers in about a second."""
    from saescale.activations.hub import check_hub_id, is_hub_id, model_options

    for model in model_options(argv):
        if is_hub_id(model):
            check_hub_id(model)


def main(argv: list[str] | None = None) -> int:
    from saescale.cliargs import parse_config

    argv = sys.argv[1:] if argv is None else argv
    if "-h" not in argv and "--help" not in argv:
        try:
            _check_hub_ids(argv)
        except SaescaleError as e:
            return _fail(str(e))
    cmds = _commands()
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(cmds))
        return 0
    name, rest = argv[0], argv[1:]
    try:
        if name not in cmds:
            raise SaescaleError(f"unknown command {name!r}; choose one of {', '.join(cmds)} (see 'saescale --help')")
        _, cls, fn = cmds[name]
        fn(parse_config(cls, rest, prog=f"saescale {name}"))
    except SaescaleError as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        print("\ninterrupted: rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the CLI never shows a traceback
        if os.environ.get("SAESCALE_DEBUG"):
            raise
        return _fail(unexpected_line(e), 2 if isinstance(e, (OSError, MemoryError, UnicodeDecodeError)) else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
