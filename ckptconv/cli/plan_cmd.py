"""``ckptconv plan SRC --map SPEC``: the dry run. Build and check the plan, print the report."""

from __future__ import annotations

import argparse
import sys

from .common import SPELLING, add_debug, add_json, cli_type, emit_json, exit_status, lazy, usage_exit

EXIT_STATUS = {
    0: "the plan has no problems",
    1: "the plan has problems (each on stderr), or the source, spec or target cannot be read",
    2: "a usage error (unknown option, a bad --dtype; --only, --lenient, --unsafe or --dtype target "
    "without --target)",
}


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
        epilog=exit_status(EXIT_STATUS),
    )
    p.add_argument("src", metavar="SRC", help="checkpoint file, directory or TF prefix")
    p.add_argument(
        "--map", metavar="SPEC",
        help="mapping spec file (YAML, JSON or TOML); without it, the identity plan",
    )
    add_json(p, "the report")
    p.add_argument("--all", action="store_true", help="include optimizer and bookkeeping entries")
    p.add_argument(
        "--dtype", metavar="DT",
        type=cli_type(lazy("ckptconv.mapping.spec", "parse_dtype_option"), keep_text=True),
        help="default output dtype for floating-point weights (overrides the spec's dtype:); "
        "keep, float32, float16, bfloat16, ... or target",
    )
    p.add_argument(
        "--allow-lossy", action="store_true",
        help="let --dtype be a lossy cast (float weights to int8, bool, ...); a problem otherwise",
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
    from ..errors import render_options
    from ..mapping import build_plan, load_spec

    if not args.target:
        # options that say how to check against a target model mean nothing without one
        for value, what in (
            (args.only, "--only chooses a part of --target MODEL.keras; give --target"),
            (args.lenient, "--lenient reports what --target MODEL.keras lacks or leaves unused without counting "
             "it as problems; give --target, or drop --lenient"),
            (args.unsafe, "--unsafe lets Keras build --target MODEL.keras with Lambda bytecode; give --target, "
             "or drop --unsafe"),
        ):
            if value:
                raise usage_exit(args, what)
    # the spec and the source are checked before the target's Keras (and TensorFlow) loads
    spec = load_spec(args.map) if args.map else None
    with formats.open(args.src) as store:
        target = None
        if args.target:
            from ..keras import target_from_keras_file

            target = target_from_keras_file(args.target, unsafe=args.unsafe)
        plan = build_plan(
            store,
            spec,
            target=target,
            include_all=args.all,
            dtype=args.dtype,
            strict=target is not None and not args.lenient,
            only=args.only,
            allow_lossy=args.allow_lossy,
        )
    hints = [render_options(h, SPELLING) for h in plan.hints]
    if args.json:
        doc = plan.report.to_json()
        if not plan.ok:
            doc["error"] = {
                "type": "PlanError",
                "message": f"{len(plan.problems)} problem(s) in the mapping plan",
                "exit": 1,
                "problems": list(plan.problems),
                "hints": hints,
            }
        emit_json(args, doc)
    else:
        print(plan.report.format_table())
    for problem in plan.problems:
        print(f"ckptconv: plan: {problem}", file=sys.stderr)
    for hint in hints:
        print(f"ckptconv: plan: hint: {hint}", file=sys.stderr)
    return 0 if plan.ok else 1
