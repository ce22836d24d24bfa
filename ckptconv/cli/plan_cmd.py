"""``ckptconv plan SRC --map SPEC``: the dry run. Build and check the plan, print the report."""

from __future__ import annotations

import argparse
import json
import sys

from .common import add_debug


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "plan",
        help="check a mapping spec against a checkpoint and print the plan (reads no tensor data)",
        description=(
            "Build the mapping plan of SRC through SPEC from metadata alone and print it: every "
            "output with its sources and ops, every source entry as used, dropped, passed "
            "through or unused, and every problem. Exit status 1 when the plan has problems. "
            "Nothing is written."
        ),
    )
    p.add_argument("src", metavar="SRC", help="checkpoint file, directory or TF prefix")
    p.add_argument(
        "--map", metavar="SPEC",
        help="mapping spec file (YAML, JSON or TOML); without it, the identity plan",
    )
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--all", action="store_true", help="include optimizer and bookkeeping entries")
    p.add_argument(
        "--dtype", metavar="DT",
        help="default output dtype for floating-point weights (overrides the spec's dtype:); "
        "keep, float32, float16, bfloat16, ... or target",
    )
    p.add_argument(
        "--target", metavar="MODEL.keras",
        help="check the outputs against the weights of the model this .keras file describes "
        "(builds it with Keras, safe mode on)",
    )
    p.add_argument(
        "--lenient", action="store_true",
        help="with --target: report target weights nothing fills and source weights that go "
        "nowhere, without counting them as problems",
    )
    p.add_argument(
        "--only", metavar="GLOB", action="append",
        help="with --target: check only the part of the model matching GLOB (repeatable; "
        "variable names or layer paths, as load_into's only=); sources of other weights are "
        "reported outside only=, not unused",
    )
    p.add_argument(
        "--unsafe", action="store_true",
        help="with --target: let Keras build a model holding Lambda bytecode (only for files you trust)",
    )
    add_debug(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import formats
    from ..mapping import build_plan, load_spec

    if args.only and not args.target:
        print("ckptconv plan: error: --only chooses a part of --target MODEL.keras; give --target", file=sys.stderr)
        return 2
    spec = load_spec(args.map) if args.map else None  # a broken spec fails before the source is opened
    target = None
    if args.target:
        import os

        # building the target imports Keras (and TensorFlow): keep its start-up logging quiet
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        from ..keras import target_from_keras_file

        target = target_from_keras_file(args.target, unsafe=args.unsafe)
    with formats.open(args.src) as store:
        plan = build_plan(
            store,
            spec,
            target=target,
            include_all=args.all,
            dtype=args.dtype,
            strict=target is not None and not args.lenient,
            only=args.only,
        )
    if args.json:
        print(json.dumps(plan.report.to_json(), indent=1))
    else:
        print(plan.report.format_table())
    for problem in plan.problems:
        print(f"ckptconv: plan: {problem}", file=sys.stderr)
    return 0 if plan.ok else 1
