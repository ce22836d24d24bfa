"""``ckptconv convert SRC DST.safetensors``: stream a checkpoint into safetensors."""

from __future__ import annotations

import argparse
import sys

from .common import (
    add_convert_options,
    add_debug,
    add_json,
    convert_options,
    emit_json,
    exit_status,
    human_bytes,
    want_progress,
    warn_unchecked,
)

EXIT_STATUS = {
    0: "written",
    1: "nothing written: the source cannot be read, the plan has problems, the output exists "
    "without --force or cannot be written, or --verify found a mismatch",
    2: "a usage error, before the source is read: an unknown option, a bad value (--dtype, "
    "--max-shard-size, --metadata), a lossy --dtype (int8, bool, ...) without --allow-lossy, "
    "an output name not ending in .safetensors without --any-suffix",
}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "convert",
        help="convert a checkpoint to safetensors (optionally through a mapping spec)",
        description=(
            "Convert a checkpoint into a safetensors file (or a sharded set with "
            "--max-shard-size). The mapping plan is checked on metadata before anything is "
            "written; the output goes to a temporary file that is fsynced and renamed into "
            "place, so a failed or interrupted run leaves nothing behind."
        ),
        epilog=exit_status(EXIT_STATUS),
    )
    p.add_argument("src", metavar="SRC", help="checkpoint file, directory or TF prefix")
    p.add_argument("dst", metavar="DST", help="output .safetensors path (or .safetensors.index.json for a set)")
    add_convert_options(p)
    add_json(p, "what was written")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    p.add_argument("--progress", action="store_true", help="show a progress bar even when stderr is not a terminal")
    add_debug(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..convert import convert

    result = convert(
        args.src, args.dst, progress=want_progress(args.quiet or args.json, args.progress),
        **convert_options(args),
    )
    warn_unchecked(args)
    if args.json:
        emit_json(args, {"ok": True, **result.to_json()})
    elif not args.quiet:
        for name, reason in result.skipped:
            print(f"note: skipped {name!r}: {reason}", file=sys.stderr)
        where = result.files[-1] if len(result.files) > 1 else result.files[0]
        shards = f" in {len(result.files) - 1} shards" if len(result.files) > 1 else ""
        print(
            f"wrote {result.tensors} tensors ({human_bytes(result.nbytes)}) from "
            f"{result.source} ({result.source_format}) to {where}{shards} "
            f"in {result.seconds:.2f} s"
        )
    return 0
