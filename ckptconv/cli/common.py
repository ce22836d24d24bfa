"""Helpers the subcommands share: sizes, progress bars, output checks."""

from __future__ import annotations

import sys


def human_bytes(n: int) -> str:
    """``1536`` -> ``1.5 KiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def want_progress(quiet: bool, forced: bool = False) -> bool:
    """Progress bars go to stderr, only on a terminal (or when asked), never with --quiet."""
    if quiet:
        return False
    return forced or sys.stderr.isatty()


def add_debug(parser) -> None:  # type: ignore[no-untyped-def]
    """Accept ``--debug`` after the subcommand too (``ckptconv convert a b --debug``)."""
    import argparse

    parser.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the full traceback when the command fails",
    )
