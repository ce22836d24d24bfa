"""``ckptconv batch``: convert many checkpoints into one directory, in parallel."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)

from .common import (
    SPELLING,
    add_convert_options,
    add_debug,
    add_json,
    cli_type,
    convert_options,
    emit_json,
    exit_status,
    human_bytes,
    print_error,
    usage_exit,
    want_progress,
    warn_unchecked,
)

if TYPE_CHECKING:
    from typing import Any

    from ..batch import BatchReport, Job

EXIT_STATUS = {
    0: "every file converted",
    1: "at least one file failed (the others still ran; each failure is one line on stderr), or the "
    "spec is broken, or the Dask cluster cannot be used (no scheduler at --scheduler, a worker "
    "without this ckptconv; before any file is read)",
    2: "a usage error, before any file is read: a bad option value (-j, --scheduler, --dtype, "
    "--max-shard-size, --metadata), a lossy --dtype (int8, bool, ...) without --allow-lossy, no "
    "inputs, -o naming a file, two inputs with one output",
}


def _jobs(text: str) -> int:
    """-j N: a count of worker processes, 0 for one per CPU."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"expected a whole number of worker processes, got {text!r}") from None
    if value < 0:
        raise ValueError(f"expected 0 (one per CPU) or more worker processes, got {value}")
    return value


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from ..batch_fields import PATTERN_FIELDS

    fields = "; ".join(f"{{{k}}}: {v}" for k, v in PATTERN_FIELDS.items())
    p = sub.add_parser(
        "batch",
        help="convert many checkpoints to safetensors in parallel, with a summary",
        description=(
            "Convert many checkpoints (paths, globs, or a list file) into safetensors files in "
            "OUTDIR, with the same options for all, in local worker processes (-j) or on a Dask "
            "cluster (--scheduler). Prints one `ok` line per converted file on stdout and one "
            "`ckptconv: error:` line per failed file on stderr (naming it, with the reason), "
            "continues past failures, ends with a summary on stdout; exit status 1 if any "
            "file failed."
        ),
        epilog=f"Name pattern fields: {fields}. {exit_status(EXIT_STATUS)}",
    )
    p.add_argument("inputs", metavar="INPUT", nargs="*", help="checkpoint paths or globs (quote globs; ** recurses)")
    p.add_argument("--from-file", metavar="LIST", help="read inputs from LIST, one per line (- for stdin)")
    p.add_argument("-o", "--output-dir", metavar="OUTDIR", required=True, help="directory for the outputs (created if missing)")
    p.add_argument(
        "--name-pattern", metavar="PATTERN", default="{stem}.safetensors",
        help="output file name under OUTDIR (default: {stem}.safetensors)",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("-j", "--jobs", type=cli_type(_jobs), default=1, metavar="N", help="worker processes (default 1; 0: one per CPU)")
    where.add_argument(
        "--scheduler", metavar="ADDRESS", type=cli_type(_scheduler, keep_text=True),
        help="run the files as tasks on a Dask cluster: the address of its scheduler "
        "(tcp://HOST:PORT), or local:N to start N worker processes on this machine; inputs "
        "and outputs must be paths every worker sees (needs ckptconv[dask])",
    )
    add_convert_options(p, many=True)
    add_json(p, "the report (instead of lines)")
    p.add_argument("--quiet", "-q", action="store_true", help="print only failures (on stderr) and the summary")
    p.add_argument("--progress", action="store_true", help="show the progress bar even when stderr is not a terminal")
    add_debug(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..batch import expand_inputs, plan_jobs, prepare_options, read_list

    patterns = list(args.inputs)
    if args.from_file:
        try:
            patterns += read_list(args.from_file)
        except OSError as e:
            return _usage(args, f"cannot read the input list {args.from_file}: {e.strerror}")
    if not patterns:
        return _usage(args, "no inputs: give paths or globs, or --from-file LIST")
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        return _usage(args, f"-o {args.output_dir}: exists and is not a directory")
    if not args.name_pattern.endswith(".safetensors") and not args.any_suffix:
        return _usage(
            args, f"--name-pattern {args.name_pattern}: outputs are safetensors files; end the "
            "pattern in .safetensors, or pass --any-suffix"
        )
    sources, unmatched = expand_inputs(patterns)
    try:
        jobs = plan_jobs(sources, args.output_dir, pattern=args.name_pattern, expand=False)
    except ValueError as e:
        return _usage(args, str(e))

    # checked and parsed once, here: a broken spec fails before any worker starts
    options = prepare_options(convert_options(args))
    with contextlib.ExitStack() as stack:
        where: dict[str, Any] = {"workers": args.jobs}
        if args.scheduler is not None:
            from ..cluster import connect

            try:
                where = {"client": stack.enter_context(connect(args.scheduler))}
            except ValueError as e:  # an address Dask cannot parse
                return _usage(args, f"--scheduler {args.scheduler}: {e}")
        report = _run(args, jobs, unmatched, where, options)
    if report.succeeded:
        warn_unchecked(args)
    if args.json:
        doc = report.to_json()
        if not report.ok:
            failed = len(report.failed)
            doc["error"] = {
                "type": "BatchFailed",
                "message": f"{failed} of {len(report.results)} file(s) failed",
                "exit": 1,
            }
        emit_json(args, doc)
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

    def failed(result: FileResult) -> None:  # on stderr, also with --json (as every error)
        write = None if bar is None else (lambda line: bar.write(line, file=sys.stderr))
        print_error(f"{result.src}: {result.error}", write=write)

    missing = [
        FileResult(src=p, dst="", ok=False, error="no input matches this pattern", error_type="FormatError")
        for p in unmatched
    ]
    for result in missing:
        failed(result)

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
            failed(result)

    try:
        report = run_batch(jobs, on_result=on_result, spelling=SPELLING, **where, **options)
    finally:
        if bar is not None:
            bar.close()
    report.results = missing + report.results
    return report


def _scheduler(text: str) -> str:
    """--scheduler: checked here for local:N; an address is checked when connecting."""
    from ..cluster import parse_scheduler

    parse_scheduler(text)
    return text


def _usage(args: argparse.Namespace, message: str) -> int:
    """A command-line value found wrong once the arguments are parsed: the same as
    argparse's own usage errors (one line with the command's prefix, exit status 2)."""
    raise usage_exit(args, message)
