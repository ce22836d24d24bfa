"""The command line: one boundary that turns known errors into one line and an exit code.

Each subcommand lives in its own module with ``register(subparsers)``; it sets
``func(args) -> int`` as the parser default. Exit status: 0 ok, 1 a failed job, 2 a usage
error (a bad option or value: argparse's, or a :class:`~ckptconv.UsageError`).

Errors are printed with option names spelled as this command line spells them
(:data:`~ckptconv.cli.common.SPELLING`). With ``--json``, stdout holds exactly one JSON object
whatever happens: the command's own, or ``{"ok": false, "error": {...}}`` when it failed before
printing one; the one-line error still goes to stderr.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import CkptconvError, UsageError
from ..interrupts import Noted, Terminated, interrupts_noted, report_early_interrupt, report_interrupt, sigterm_raises
from .common import (
    SPELLING, Parser, UsageExit, emit_json, error_json, print_error, spelled_for_debug, usage_exit,
)

__all__ = ["main", "build_parser"]

# subcommand -> module (in ckptconv.cli), in the order --help lists them
COMMANDS = {
    "inspect": "inspect_cmd",
    "convert": "convert_cmd",
    "plan": "plan_cmd",
    "verify": "verify_cmd",
    "batch": "batch_cmd",
    "transplant": "transplant_cmd",
    "suggest": "suggest_cmd",
    "diff": "diff_cmd",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser (the CLI reference in docs/ is generated from the full one).

    ``command``: build the subparser of that command only (see :func:`command_of`): each
    command's module, and the gettext lookups of its options, cost start-up time. The
    parser's output for that command (``--help``, usage errors) is the full parser's."""
    parser = Parser(
        prog="ckptconv",
        description=(
            "Convert neural-network weights between checkpoint files (Keras .h5, .weights.h5, "
            ".keras, TensorFlow checkpoints, safetensors, PyTorch torch.save files) and load them "
            "into Keras models."
        ),
        epilog="Run `ckptconv COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"ckptconv {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback when a command fails"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)
    for name, module_name in COMMANDS.items():
        if command is not None and name != command:
            continue
        try:
            module = importlib.import_module(f"{__name__}.{module_name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{module_name}":
                raise
            continue
        module.register(sub)
    return parser


def command_of(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` runs, when the top-level parser can only hand it on to that
    command's parser: it is a known command, and only ``--debug`` (the one top-level option
    that neither prints nor exits) comes before it. Otherwise None, and the full parser
    answers (``--help``, ``--version``, an unknown or missing command, anything else)."""
    for arg in argv:
        if arg == "--debug":
            continue
        return arg if arg in COMMANDS else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        with interrupts_noted() as ctrl_c:
            return _main(argv, ctrl_c)
    except KeyboardInterrupt as e:  # before the command runs: while its modules are imported
        return report_early_interrupt(e, argv)


# what OpenBLAS reads for its thread count, in its order of precedence
_BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")


def _import_numpy() -> None:
    """Import numpy, which every command uses (``--help`` and usage errors, answered before,
    do not), with the cyclic garbage collector paused: the import makes some 100,000
    long-lived objects and no garbage, and each burst of them would have the collector walk
    them all (about 10 ms, 6% of numpy's import, on the project machine). They are then
    handed to the collector's oldest generation (see :mod:`ckptconv.gcpause`).

    OpenBLAS, which numpy's wheels carry, starts a thread per further core as it loads and
    sets up a buffer for each: 55 of numpy's 130 ms of CPU on a 2-core machine. No command
    does linear algebra (bytes are copied, cast, transposed and compared), so the command line
    asks for one thread (``OPENBLAS_NUM_THREADS=1``, inherited by ``batch``'s workers) unless
    the user set a count. ``import ckptconv`` in a program changes nothing."""
    import os

    if not any(name in os.environ for name in _BLAS_THREAD_VARIABLES):
        os.environ["OPENBLAS_NUM_THREADS"] = "1"
    from ..gcpause import paused_gc

    with paused_gc():
        import numpy  # noqa: F401


def _main(argv: list[str], ctrl_c: Noted) -> int:
    try:
        parser = build_parser(command_of(argv))  # imports that command's module (all for --help)
        args = parser.parse_args(argv)
    except UsageExit as e:
        return _usage_exit(e, "--json" in argv)
    try:
        try:
            with sigterm_raises():
                _import_numpy()
                return int(args.func(args) or 0)
        except Exception:
            if ctrl_c.seen and not args.debug:
                # a library turned the KeyboardInterrupt into another error as it failed
                # (numpy's C-extension import says ImportError): still Ctrl-C
                raise KeyboardInterrupt from None
            raise
    except UsageExit as e:  # a value found wrong once parsed (batch's inputs, output directory)
        return _usage_exit(e, getattr(args, "json", False))
    except UsageError as e:  # a value the API refuses: said as argparse says its own
        if args.debug:
            spelled_for_debug(e)
            raise
        return _usage_exit(usage_exit(args, _one_line(e.render(SPELLING))), getattr(args, "json", False), e)
    except CkptconvError as e:
        if args.debug:
            spelled_for_debug(e)
            raise
        return _fail(args, e, e.render(SPELLING), 1)
    except (KeyboardInterrupt, Terminated) as e:
        if args.debug:
            if isinstance(e, Terminated):  # a SystemExit: Python would print no traceback
                import traceback

                traceback.print_exc()
            raise
        return report_interrupt(e, json=getattr(args, "json", False) and not getattr(args, "json_emitted", False))
    except BrokenPipeError:
        return 1
    except MemoryError as e:
        if args.debug:
            raise
        return _fail(args, e, f"out of memory: {e}", 1)
    except OSError as e:
        if args.debug:
            raise
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        return _fail(args, e, f"{where}{_one_line(str(e.strerror or e))}", 1)
    except Exception as e:  # noqa: BLE001 - a bug: still one line, the traceback on request
        if args.debug:
            raise
        print(
            f"ckptconv: internal error: {type(e).__name__}: {_one_line(str(e))} (a bug in "
            "ckptconv: rerun with --debug for the traceback and report it)",
            file=sys.stderr,
        )
        if getattr(args, "json", False) and not getattr(args, "json_emitted", False):
            emit_json(args, error_json(e, f"internal error: {_one_line(str(e))}", 1))
        return 1


def _usage_exit(error: UsageExit, json_requested: bool, cause: UsageError | None = None) -> int:
    print(error.line, file=sys.stderr)
    if json_requested:
        if cause is not None:
            emit_json(None, error_json(cause, error.message, 2))
        else:
            emit_json(None, {"ok": False, "error": {"type": "UsageError", "message": error.message, "exit": 2}})
    return 2


def _fail(args: argparse.Namespace, error: BaseException, message: str, status: int) -> int:
    """Print the one-line error; with --json, the error object too (unless the command
    already printed its own JSON, which then carries the error)."""
    message = _one_line(message)
    print_error(message)
    if getattr(args, "json", False) and not getattr(args, "json_emitted", False):
        emit_json(args, error_json(error, message, status))
    return status


def _one_line(text: str) -> str:
    """Messages are one line whatever a library put in them (batch jobs parse stderr)."""
    return " ".join(text.split())
