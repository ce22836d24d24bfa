"""``ckptconv batch``: convert many checkpoints into one directory, in parallel."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import TYPE_CHECKING, Any

from .common import add_convert_options, add_debug, convert_options, human_bytes, want_progress

if TYPE_CHECKING:
    from ..batch import BatchReport, Job


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from ..batch import PATTERN_FIELDS

    fields = "; ".join(f"{{{k}}}: {v}" for k, v in PATTERN_FIELDS.items())
    p = sub.add_parser(
        "batch",
        help="convert many checkpoints to safetensors in parallel, with a summary",
        description=(
            "Convert many checkpoints (paths, globs, or a list file) into safetensors files in "
            "OUTDIR, with the same options for all, in local worker processes (-j) or on a Dask "
            "cluster (--scheduler). Prints one line per file (ok / failed with the reason), "
            "continues past failures, ends with a summary; exit status 1 if any file failed."
        ),
        epilog=f"Name pattern fields: {fields}.",
    )
    p.add_argument("inputs", metavar="INPUT", nargs="*", help="checkpoint paths or globs (quote globs; ** recurses)")
    p.add_argument("--from-file", metavar="LIST", help="read inputs from LIST, one per line (- for stdin)")
    p.add_argument("-o", "--output-dir", metavar="OUTDIR", required=True, help="directory for the outputs (created if missing)")
    p.add_argument(
        "--name-pattern", metavar="PATTERN", default="{stem}.safetensors",
        help="output file name under OUTDIR (default: {stem}.safetensors)",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("-j", "--jobs", type=int, default=1, metavar="N", help="worker processes (default 1; 0: one per CPU)")
    where.add_argument(
        "--scheduler", metavar="ADDRESS", type=_scheduler,
        help="run the files as tasks on a Dask cluster: the address of its scheduler "
        "(tcp://HOST:PORT), or local:N to start N worker processes on this machine; inputs "
        "and outputs must be paths every worker sees (needs ckptconv[dask])",
    )
    add_convert_options(p, many=True)
    p.add_argument("--json", action="store_true", help="print a JSON report on stdout instead of lines")
    p.add_argument("--quiet", "-q", action="store_true", help="print only failures and the summary")
    p.add_argument("--progress", action="store_true", help="show the progress bar even when stderr is not a terminal")
    add_debug(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..batch import expand_inputs, plan_jobs, prepare_options, read_list
    from ..writers.safetensors import parse_size

    patterns = list(args.inputs)
    if args.from_file:
        try:
            patterns += read_list(args.from_file)
        except OSError as e:
            return _usage(f"cannot read the input list {args.from_file}: {e.strerror}")
    if not patterns:
        return _usage("no inputs: give paths or globs, or --from-file LIST")
    if args.max_shard_size is not None:
        try:
            parse_size(args.max_shard_size)
        except ValueError as e:
            return _usage(f"--max-shard-size: {e}")
    sources, unmatched = expand_inputs(patterns)
    try:
        jobs = plan_jobs(sources, args.output_dir, pattern=args.name_pattern, expand=False)
    except ValueError as e:
        return _usage(str(e))

    # checked and parsed once, here: a broken spec fails before any worker starts
    options = prepare_options(convert_options(args))
    with contextlib.ExitStack() as stack:
        where: dict[str, Any] = {"workers": args.jobs}
        if args.scheduler is not None:
            from ..cluster import connect

            try:
                where = {"client": stack.enter_context(connect(args.scheduler))}
            except ValueError as e:  # an address Dask cannot parse
                return _usage(f"--scheduler {args.scheduler}: {e}")
        report = _run(args, jobs, unmatched, where, options)
    if args.json:
        json.dump(report.to_json(), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        total = len(report.results)
        ok = len(report.succeeded)
        size = human_bytes(sum(r.nbytes for r in report.results))
        print(
            f"{total} file{'s' if total != 1 else ''}: {ok} converted, {total - ok} failed "
            f"({size} in {report.seconds:.1f} s)"
        )
    return 0 if report.ok else 1


def _run(
    args: argparse.Namespace, jobs: list[Job], unmatched: list[str], where: dict[str, Any],
    options: dict[str, Any],
) -> BatchReport:
    """Run the jobs (``where``: local ``workers`` or a Dask ``client``), printing a line per
    file as it finishes and the progress bar; unmatched globs count as failed inputs."""
    from ..batch import FileResult, run_batch

    bar = None
    if want_progress(args.quiet, args.progress):
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), unit="file", file=sys.stderr, leave=False)

    def say(line: str) -> None:
        if args.json:
            return
        if bar is not None:
            bar.write(line, file=sys.stdout)
        else:
            print(line, flush=True)

    missing = [
        FileResult(src=p, dst="", ok=False, error="no input matches this pattern", error_type="FormatError")
        for p in unmatched
    ]
    for result in missing:
        say(f"failed {result.src}: {result.error}")

    def on_result(result: FileResult) -> None:
        if bar is not None:
            bar.update(1)
        if result.ok:
            if not args.quiet:
                say(
                    f"ok {result.src} -> {result.dst} ({result.tensors} tensors, "
                    f"{human_bytes(result.nbytes)}, {result.seconds:.2f} s)"
                )
        else:
            say(f"failed {result.src}: {result.error}")

    try:
        report = run_batch(jobs, on_result=on_result, **where, **options)
    finally:
        if bar is not None:
            bar.close()
    report.results = missing + report.results
    return report


def _scheduler(text: str) -> str:
    from ..cluster import parse_scheduler

    try:
        parse_scheduler(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _usage(message: str) -> int:
    print(f"ckptconv batch: error: {message}", file=sys.stderr)
    return 2
