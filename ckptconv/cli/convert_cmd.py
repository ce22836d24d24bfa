"""``ckptconv convert SRC DST.safetensors``: stream a checkpoint into safetensors."""

from __future__ import annotations

import argparse
import sys

from .common import add_debug, human_bytes, want_progress


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
    )
    p.add_argument("src", metavar="SRC", help="checkpoint file, directory or TF prefix")
    p.add_argument("dst", metavar="DST", help="output .safetensors path")
    p.add_argument("--map", metavar="SPEC", help="mapping spec file (YAML, JSON or TOML)")
    p.add_argument(
        "--dtype", metavar="DT",
        help="output dtype for floating-point weights (float32, float16, bfloat16, ...)",
    )
    p.add_argument(
        "--max-shard-size", metavar="SIZE",
        help="write a Hugging Face sharded set, at most SIZE per shard (5GB = 5*10^9 bytes, 2GiB = 2*2^30)",
    )
    p.add_argument("--all", action="store_true", help="also write optimizer and bookkeeping entries")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    p.add_argument("--progress", action="store_true", help="show a progress bar even when stderr is not a terminal")
    p.add_argument("--no-fsync", action="store_true", help="do not flush the output to disk before finishing")
    p.add_argument("--no-checksum", action="store_true", help="do not record per-tensor CRC-32C checksums")
    p.add_argument("--no-check-crc", action="store_true", help="skip the source's own per-tensor checksums (TF checkpoints)")
    p.add_argument("--verify", action="store_true", help="re-read the output at the end and verify every tensor's checksum")
    add_debug(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..convert import convert

    result = convert(
        args.src,
        args.dst,
        mapping=args.map,
        dtype=args.dtype,
        include_all=args.all,
        force=args.force,
        fsync=not args.no_fsync,
        checksum=not args.no_checksum,
        max_shard_size=args.max_shard_size,
        verify=args.verify,
        progress=want_progress(args.quiet, args.progress),
        check_crc=not args.no_check_crc,
    )
    if not args.quiet:
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
