"""``ckptconv transplant SRC TARGET.keras OUT``: weights from any checkpoint into an architecture."""

from __future__ import annotations

import argparse
import sys

from .common import add_debug, add_json, emit_json, error_json, exit_status

EXIT_STATUS = {
    0: "OUT written",
    1: "nothing written: the weights do not fit (strict), a file cannot be read, Keras cannot "
    "build TARGET or is not installed, OUT exists without --force",
    2: "a usage error: an unknown option, OUT not ending in .keras or .weights.h5, --map with "
    "--by-order",
}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "transplant",
        help="load a checkpoint into the model a .keras file describes and save the result",
        description=(
            "Build the model TARGET.keras describes (Keras does this, with its safe mode on), "
            "load the weights of SRC into it by name (or through --map SPEC, or by order), "
            "and save the result as OUT: a .keras file (whole model) or .weights.h5 (weights "
            "only). Every weight is checked before anything is assigned; by default any "
            "missing, unused or mismatched weight is an error and nothing is written. OUT is "
            "written to a temporary file and renamed into place."
        ),
        epilog=exit_status(EXIT_STATUS),
    )
    p.add_argument("src", metavar="SRC", help="checkpoint with the weights (any format ckptconv reads)")
    p.add_argument("target", metavar="TARGET.keras", help=".keras file with the architecture")
    p.add_argument("out", metavar="OUT", help="output path ending in .keras or .weights.h5")
    p.add_argument("--map", metavar="SPEC", help="mapping spec file (YAML, JSON or TOML)")
    p.add_argument(
        "--non-strict", action="store_true",
        help="load what fits and report the rest (default: any problem is an error)",
    )
    p.add_argument(
        "--by-order", action="store_true",
        help="ignore names: pair layers with weights in order (Keras' topological loading)",
    )
    p.add_argument(
        "--cast", action="store_true",
        help="cast source weights to the model's dtypes (default: a dtype difference is an error)",
    )
    p.add_argument(
        "--only", metavar="GLOB", action="append",
        help="load only variables/layers matching GLOB (repeatable); the rest keep TARGET's "
        "values, and source weights of the rest are reported outside only=, not unused",
    )
    p.add_argument(
        "--unsafe", action="store_true",
        help="let Keras build models with Lambda bytecode or custom code (trusted files only)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing OUT")
    add_json(p, "the load report")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    p.add_argument("--no-fsync", action="store_true", help="do not flush OUT to disk before renaming")
    add_debug(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import LoadError
    from ..keras import (
        transplant,  # imports Keras (quietly) only once everything else is checked
    )

    try:
        result = transplant(
            args.src,
            args.target,
            args.out,
            args.map,
            unsafe=args.unsafe,
            force=args.force,
            fsync=not args.no_fsync,
            strict=not args.non_strict,
            by_order=args.by_order,
            cast=args.cast,
            only=args.only,
        )
    except LoadError as e:
        report = getattr(e, "report", None)
        if args.json:
            from .common import SPELLING

            doc = error_json(e, e.render(SPELLING), 1)
            if report is not None:
                doc["report"] = report.to_json()
            emit_json(args, doc)
        elif report is not None and not args.quiet:
            print(report.format_table(), file=sys.stderr)
        raise
    if args.json:
        emit_json(args, {"ok": True, **result.to_json()})
    elif not args.quiet:
        print(result.report.format_table())
        print(f"\nwrote {result.out} in {result.seconds:.2f} s")
    return 0
