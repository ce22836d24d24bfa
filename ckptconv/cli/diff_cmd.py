"""``ckptconv diff A B``: do two checkpoints hold the same weights? Exit 0 if so, 1 if not."""

from __future__ import annotations

import argparse
import json
import math
import sys

from ..errors import CkptconvError
from .common import add_debug, want_progress


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "diff",
        help="compare two checkpoints tensor by tensor (exit 0 when they hold the same weights)",
        description=(
            "Compare the tensors of A and B, of any formats, by name: names only in A or only "
            "in B, shape and dtype differences, and per tensor whether the bytes are identical "
            "or how far the values are apart (max abs, max rel, count beyond the tolerance, "
            "the first of them). Reads every tensor of both, one at a time, big ones in blocks. "
            "Exit status 0 when they are equal (within the tolerance), 1 when not."
        ),
        allow_abbrev=False,
    )
    p.add_argument("a", metavar="A", help="checkpoint file, directory or TF prefix")
    p.add_argument("b", metavar="B", help="checkpoint file, directory or TF prefix")
    p.add_argument(
        "--map", metavar="SPEC",
        help="mapping spec (YAML, JSON or TOML) applied to A before comparing, as convert applies it",
    )
    p.add_argument(
        "--atol", metavar="X", type=_tolerance, default=0.0,
        help="absolute tolerance: |a - b| <= X + Y*|b| counts as equal (default 0)",
    )
    p.add_argument(
        "--rtol", metavar="Y", type=_tolerance, default=0.0,
        help="relative tolerance, relative to B (default 0)",
    )
    p.add_argument(
        "--dtype", metavar="DT", type=_dtype,
        help="cast A's floating-point tensors to DT first (float16, bfloat16, ... or target: "
        "B's dtype), to check that B is exactly A converted",
    )
    p.add_argument("--all", action="store_true", help="also compare optimizer and bookkeeping entries")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("-v", "--verbose", action="store_true", help="list every tensor, equal ones too")
    p.add_argument(
        "--progress", action="store_true", help="show a progress bar even when stderr is not a terminal"
    )
    add_debug(p)
    p.set_defaults(func=run)


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0 (like 1e-6), got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _dtype(text: str) -> str:
    from ..mapping.spec import parse_dtype_option

    try:
        parse_dtype_option(text, what="--dtype")
    except CkptconvError as e:
        raise argparse.ArgumentTypeError(e.reason) from None
    return text


def run(args: argparse.Namespace) -> int:
    from ..mapping.diff import diff

    try:
        report = _run_diff(diff, args)
    except (CkptconvError, OSError) as e:
        if not args.json or getattr(args, "debug", False):
            raise
        message = str(e) if isinstance(e, CkptconvError) else f"{getattr(e, 'filename', '') or ''}: {e.strerror or e}"
        print(json.dumps({"equal": False, "error": " ".join(message.split())}, indent=1))
        return 1
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        print(report.format_text(verbose=args.verbose))
    return 0 if report.equal else 1


def _run_diff(diff, args: argparse.Namespace):  # type: ignore[no-untyped-def]
    options = dict(mapping=args.map, atol=args.atol, rtol=args.rtol, dtype=args.dtype, include_all=args.all)
    if not want_progress(args.json, args.progress):
        return diff(args.a, args.b, **options)
    from tqdm import tqdm

    with tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc="diff", file=sys.stderr, leave=False) as bar:
        return diff(args.a, args.b, progress=bar.update, **options)
