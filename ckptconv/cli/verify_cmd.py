"""``ckptconv verify FILE...``: re-check files against the CRC-32Cs ckptconv recorded."""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import CkptconvError
from .common import (
    SPELLING,
    add_debug,
    add_json,
    emit_json,
    exit_status,
    human_bytes,
    print_error,
    spelled_for_debug,
    want_progress,
)

EXIT_STATUS = {
    0: "every tensor of every file matches its checksum",
    1: "a file fails, records no checksums, is missing or is not a safetensors file",
    2: "a usage error",
}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "verify",
        help="re-check safetensors files against the CRC-32Cs ckptconv recorded in them",
        description=(
            "Re-read every tensor of safetensors files written by `ckptconv convert` and compare "
            "it with the CRC-32C recorded in the file's __metadata__. A sharded set can be given "
            "by its index, its directory or any shard, and is checked once however many of its "
            "files are given (`verify out/*`). Prints `ok FILE` on stdout for each file "
            "that matches; each file that fails is one `ckptconv: error:` line on stderr naming "
            "it and the tensors that no longer match; exit status 1 if any file fails or "
            "records no checksums."
        ),
        epilog=exit_status(EXIT_STATUS),
    )
    p.add_argument("files", metavar="FILE", nargs="+", help="safetensors file, index JSON or shard")
    add_json(p, "the report (instead of lines)")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing for the files that match (failures still go to stderr)")
    p.add_argument("--progress", action="store_true", help="show a progress bar even when stderr is not a terminal")
    add_debug(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..verify import verify_file

    failed = 0
    reports: list[dict[str, object]] = []
    show_bar = want_progress(args.quiet or args.json, args.progress)
    covered: set[str] = set()  # the files of the sets verified so far: `verify sh*` checks each set once
    for path in args.files:
        if os.path.realpath(path) in covered:
            continue
        try:
            result = _verify(verify_file, path, show_bar)
        except CkptconvError as e:
            if getattr(args, "debug", False):
                spelled_for_debug(e)
                raise
            failed += 1
            reports.append({"path": path, "ok": False, "error": e.render(SPELLING)})
            print_error(_with_path(e, path))
            continue
        except OSError as e:
            if getattr(args, "debug", False):
                raise
            failed += 1
            reports.append({"path": path, "ok": False, "error": e.strerror or str(e)})
            print_error(f"{path}: {e.strerror or e}")
            continue
        covered.update(os.path.realpath(f) for f in [path, result.path, *result.files])
        reports.append(result.to_json())
        if result.ok:
            if not args.json and not args.quiet:
                unchecked = "; its source's checksums were not checked when it was written" if result.sources_unchecked else ""
                print(f"ok {result.path} ({result.tensors} tensors, {human_bytes(result.nbytes)}{unchecked})")
            continue
        failed += 1
        try:
            result.check()
        except CkptconvError as e:  # the IntegrityError naming the file and the failed tensors
            if getattr(args, "debug", False):  # as every failure under --debug: its traceback
                spelled_for_debug(e)
                raise
            print_error(e.render(SPELLING))
    if args.json:
        doc: dict[str, object] = {"ok": failed == 0, "files": reports}
        if failed:
            doc["error"] = {
                "type": "VerifyFailed",
                "message": f"{failed} of {len(args.files)} file(s) failed verification",
                "exit": 1,
            }
        emit_json(args, doc)
    return 1 if failed else 0


def _verify(verify_file, path: str, show_bar: bool):  # type: ignore[no-untyped-def]
    if not show_bar:
        return verify_file(path)
    from tqdm import tqdm

    with tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc=path, file=sys.stderr, leave=False) as bar:
        return verify_file(path, progress=bar.update)


def _with_path(error: CkptconvError, given: str) -> str:
    """The error's message, naming the file: the one it is about, else the one given."""
    if error.path is None:
        return f"{given}: {error.render(SPELLING)}"
    return error.render(SPELLING)
