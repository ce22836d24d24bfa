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


def add_convert_options(parser, *, many: bool = False) -> None:  # type: ignore[no-untyped-def]
    """The conversion options ``convert`` and ``batch`` share (``many``: worded for batch)."""
    outputs = "outputs" if many else "the output"
    parser.add_argument(
        "--map", metavar="SPEC",
        help="mapping spec file (YAML, JSON or TOML)" + (", applied to every input" if many else ""),
    )
    parser.add_argument(
        "--dtype", metavar="DT",
        help="output dtype for floating-point weights (float32, float16, bfloat16, ...)",
    )
    parser.add_argument(
        "--max-shard-size", metavar="SIZE",
        help="write Hugging Face sharded sets, at most SIZE per shard (5GB = 5*10^9 bytes, 2GiB = 2*2^30)",
    )
    parser.add_argument("--all", action="store_true", help="also write optimizer and bookkeeping entries")
    parser.add_argument(
        "--force", action="store_true",
        help=f"replace existing {outputs}" if many else "replace an existing output (a sharded set crash-safely; "
        "only files ckptconv wrote are ever removed)",
    )
    parser.add_argument("--no-fsync", action="store_true", help=f"do not flush {outputs} to disk before finishing")
    parser.add_argument("--no-checksum", action="store_true", help="do not record per-tensor CRC-32C checksums")
    parser.add_argument(
        "--no-check-crc", action="store_true",
        help="skip the sources' own checksums (TF checkpoints' per-tensor CRC-32C, a .keras member's CRC-32)",
    )
    parser.add_argument(
        "--verify", action="store_true",
        help=f"read {outputs} back before putting them in place and check every tensor's CRC-32C "
        "(a failure leaves no output)",
    )
    parser.add_argument(
        "--metadata", metavar="KEY=VALUE", action="append", type=_metadata_item,
        help="add or replace a __metadata__ entry, e.g. format=pt for Hugging Face "
        "transformers (repeatable)",
    )


def _metadata_item(text: str) -> tuple[str, str]:
    import argparse

    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. format=pt), got {text!r}")
    if key.startswith("ckptconv."):
        raise argparse.ArgumentTypeError(f"{key!r}: keys starting with 'ckptconv.' are ckptconv's own")
    return key, value


def convert_options(args) -> dict:  # type: ignore[no-untyped-def]
    """The keyword arguments of :func:`ckptconv.convert` that :func:`add_convert_options` set."""
    return dict(
        mapping=args.map,
        dtype=args.dtype,
        include_all=args.all,
        force=args.force,
        fsync=not args.no_fsync,
        checksum=not args.no_checksum,
        max_shard_size=args.max_shard_size,
        verify=args.verify,
        check_crc=not args.no_check_crc,
        metadata=dict(args.metadata) if args.metadata else None,
    )
