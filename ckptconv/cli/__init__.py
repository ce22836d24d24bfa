"""The command line: one boundary that turns known errors into one line and an exit code.

Each subcommand lives in its own module with ``register(subparsers)``; it sets
``func(args) -> int`` as the parser default. Exit status: 0 ok, 1 a failed job, 2 usage.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import CkptconvError
from ..interrupts import Terminated, sigterm_raises

__all__ = ["main", "build_parser"]

# subcommand -> module (in ckptconv.cli), in the order --help lists them
COMMANDS = {
    "inspect": "inspect_cmd",
    "convert": "convert_cmd",
    "plan": "plan_cmd",
    "verify": "verify_cmd",
    "batch": "batch_cmd",
    "transplant": "transplant_cmd",
}


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (the CLI reference in docs/ is generated from it)."""
    parser = argparse.ArgumentParser(
        prog="ckptconv",
        description=(
            "Convert neural-network weights between checkpoint files (Keras .h5, .weights.h5, "
            ".keras, TensorFlow checkpoints, safetensors) and load them into Keras models."
        ),
        epilog="Run `ckptconv COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"ckptconv {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback when a command fails"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMANDS.values():
        try:
            module = importlib.import_module(f"{__name__}.{module_name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{module_name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with sigterm_raises():
            return int(args.func(args) or 0)
    except CkptconvError as e:
        if args.debug:
            raise
        print(f"ckptconv: error: {_one_line(str(e))}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Terminated) as e:
        if args.debug:
            if isinstance(e, Terminated):  # a SystemExit: Python would print no traceback
                import traceback

                traceback.print_exc()
            raise
        what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        print(f"ckptconv: {what}; no partial output was left behind", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)
    except BrokenPipeError:
        return 1
    except MemoryError as e:
        if args.debug:
            raise
        print(f"ckptconv: error: out of memory: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        if args.debug:
            raise
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"ckptconv: error: {where}{_one_line(str(e.strerror or e))}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - a bug: still one line, the traceback on request
        if args.debug:
            raise
        print(
            f"ckptconv: internal error: {type(e).__name__}: {_one_line(str(e))} (a bug in "
            "ckptconv: rerun with --debug for the traceback and report it)",
            file=sys.stderr,
        )
        return 1


def _one_line(text: str) -> str:
    """Messages are one line whatever a library put in them (batch jobs parse stderr)."""
    return " ".join(text.split())
