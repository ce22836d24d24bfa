"""``ckptconv suggest SRC --target TARGET``: propose a mapping spec by aligning the two."""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import OutputError
from .common import add_debug, add_json, emit_json, exit_status

EXIT_STATUS = {
    0: "a spec was proposed (printed, or written to -o)",
    1: "SRC or TARGET cannot be read, or -o exists (without --force) or cannot be written",
    2: "a usage error (unknown option, no --target)",
}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "suggest",
        help="propose a mapping spec from SRC onto TARGET's variables (names, order, shapes, conventions)",
        description=(
            "Align SRC's entries with the variables of TARGET, from metadata alone: same names "
            "first, then clearly similar names, then layer order and shapes, with the known "
            "conventions between frameworks (PyTorch Linear/Conv weights transposed into Keras "
            "kernels, BatchNorm and LayerNorm names, Embedding, Keras 2 and 3 names). Writes an "
            "ordinary YAML spec, a comment on each rule saying why and how sure; source entries "
            "it cannot place are listed as commented-out rules, target variables left without "
            "a source are listed at the end. Check the result with `ckptconv plan SRC --map "
            "SPEC --target TARGET` (a .keras TARGET; for another checkpoint, `ckptconv plan "
            "SRC --map SPEC`)."
        ),
        epilog=exit_status(EXIT_STATUS),
    )
    p.add_argument("src", metavar="SRC", help="checkpoint file, directory or TF prefix")
    p.add_argument(
        "--target", metavar="TARGET", required=True,
        help="a .keras file (the model Keras builds from it, safe mode on) or any checkpoint "
        "whose names and shapes the spec should produce",
    )
    p.add_argument("-o", "--output", metavar="SPEC", help="write the spec to this file (default: stdout)")
    p.add_argument("--force", action="store_true", help="replace an existing -o file")
    add_json(p, "the spec, every placed layer with its reason and the leftovers")
    p.add_argument("--all", action="store_true", help="include optimizer and bookkeeping entries")
    p.add_argument(
        "--unsafe", action="store_true",
        help="let Keras build a .keras TARGET holding Lambda bytecode (only for files you trust)",
    )
    add_debug(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import formats
    from ..mapping.suggest import align
    from ..writers.outputs import atomic_file, check_not_inputs

    if args.output:  # before any work: an existing spec (without --force), an input
        if os.path.lexists(args.output) and not args.force:
            raise OutputError("the spec file exists; pass {opt:force=True} to replace it", path=args.output)
        check_not_inputs([os.path.abspath(args.output)], [args.src, args.target])
    # a bad source fails before Keras is imported to build the target
    with formats.open(args.src) as store:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # building a .keras target imports Keras
        suggestion = align(store, args.target, include_all=args.all, unsafe=args.unsafe)
    suggestion.source = args.src
    text = suggestion.to_yaml(spec_name=args.output or "SPEC")
    if args.output:  # written like every output: locked, beside it, renamed into place
        with atomic_file(args.output, force=args.force, inputs=[args.src, args.target]) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
    if args.json:
        emit_json(args, {"ok": True, **suggestion.to_json()})
    elif not args.output:
        sys.stdout.write(text)
    placed = sum(len(m.weights) for m in suggestion.matches)
    total = placed + len(suggestion.unfilled)
    where = f"; wrote {args.output}" if args.output else ""
    print(
        f"ckptconv: suggest: {len(suggestion.matches)} layer(s) placed, {placed} of {total} target "
        f"variables filled; {len(suggestion.unplaced)} source entries not placed{where}",
        file=sys.stderr,
    )
    return 0
