"""``ckptconv diff A B``: do two checkpoints hold the same weights? Exit 0 if so, 1 if not."""

from __future__ import annotations

import argparse
import sys

from .common import add_debug, add_json, cli_type, emit_json, exit_status, lazy, want_progress

EXIT_STATUS = {
    0: "A and B hold the same tensors, equal (bit-exact, or within --atol/--rtol)",
    1: "they differ (names, shapes, dtypes or values), or a file cannot be read",
    2: "a usage error (unknown option, a bad --atol, --rtol or --dtype)",
}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parse_tolerance = lazy("ckptconv.mapping.diff", "parse_tolerance")
    parse_dtype_option = lazy("ckptconv.mapping.spec", "parse_dtype_option")

    p = sub.add_parser(
        "diff",
        help="compare two checkpoints tensor by tensor (exit 0 when they hold the same weights)",
        description=(
            "Compare the tensors of A and B, of any formats, by name: names only in A or only "
            "in B, shape and dtype differences, and per tensor whether the bytes are identical "
            "or how far the values are apart (max abs, max rel, count beyond the tolerance, "
            "the first of them). Reads every byte of both; big tensors in blocks, two at a time."
        ),
        epilog=exit_status(EXIT_STATUS),
    )
    p.add_argument("a", metavar="A", help="checkpoint file, directory or TF prefix")
    p.add_argument("b", metavar="B", help="checkpoint file, directory or TF prefix")
    p.add_argument(
        "--map", metavar="SPEC",
        help="mapping spec (YAML, JSON or TOML) applied to A before comparing, as convert applies it",
    )
    p.add_argument(
        "--atol", metavar="X", type=cli_type(parse_tolerance), default=0.0,
        help="absolute tolerance: |a - b| <= X + Y*|b| counts as equal (default 0)",
    )
    p.add_argument(
        "--rtol", metavar="Y", type=cli_type(parse_tolerance), default=0.0,
        help="relative tolerance, relative to B (default 0)",
    )
    p.add_argument(
        "--dtype", metavar="DT", type=cli_type(parse_dtype_option, keep_text=True),
        help="cast A's floating-point tensors to DT first (float16, bfloat16, ... or target: "
        "B's dtype), to check that B is exactly A converted",
    )
    p.add_argument("--all", action="store_true", help="also compare optimizer and bookkeeping entries")
    p.add_argument(
        "--no-check-crc", dest="check_crc", action="store_false",
        help="do not check the checksums the files record (TF CRC-32Cs, safetensors checksums, "
        "zip CRC-32s): compare a damaged copy's bytes as they are",
    )
    add_json(p, 'the report ("result": "equal" or "different")')
    p.add_argument("-v", "--verbose", action="store_true", help="list every tensor, equal ones too")
    p.add_argument(
        "--progress", action="store_true", help="show a progress bar even when stderr is not a terminal"
    )
    add_debug(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..mapping.diff import diff

    options = dict(
        mapping=args.map, atol=args.atol, rtol=args.rtol, dtype=args.dtype, include_all=args.all,
        check_crc=args.check_crc,
    )
    if want_progress(args.json, args.progress):
        from tqdm import tqdm

        with tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc="diff", file=sys.stderr, leave=False) as bar:
            report = diff(args.a, args.b, progress=bar.update, **options)
    else:
        report = diff(args.a, args.b, **options)
    if args.json:
        # exit status 1 twice over: "result" is there when the comparison ran (and found a
        # difference); a failed command's object has "error" instead, and no report
        emit_json(args, {"ok": report.equal, **report.to_json()})
    else:
        print(report.format_text(verbose=args.verbose))
    return 0 if report.equal else 1
