"""A longer, coverage-guided fuzzing run of ckptconv's readers with atheris (libFuzzer).

The same harness as ``tests/test_fuzz.py``: a real file of one kind is replaced by the
fuzzer's bytes, then ckptconv opens the checkpoint and reads every entry. Reading it or
raising a one-line :class:`ckptconv.CkptconvError` naming a file are the only accepted
outcomes; any other exception is reported by atheris as a crash (with the input saved as
``crash-*``), and libFuzzer's ``-timeout`` catches hangs.

Usage::

    pip install atheris                      # or: pip install -e '.[fuzz]'
    python scripts/fuzz_atheris.py --list
    python scripts/fuzz_atheris.py weights-h5 -- -max_total_time=600 -timeout=30
    python scripts/fuzz_atheris.py tf-object --file ckpt-1.index -- -runs=100000

Fixtures are written once by the test generators (they need TensorFlow) into
``--fixtures`` (default: ``$CKPTCONV_FIXTURE_CACHE`` or ``~/.cache/ckptconv-fuzz``). The
seed corpus (the unmodified file) and every new input atheris finds go to
``--workdir/corpus-<kind>-<file>``, findings (``crash-*``, ``timeout-*``) to ``--workdir``;
pass the same ``--workdir`` again to resume.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", nargs="?", help="which kind of checkpoint to fuzz (see --list)")
    parser.add_argument("--file", help="which file of a multi-file checkpoint to mutate (default: the first)")
    parser.add_argument("--list", action="store_true", help="list the kinds and their files, then exit")
    parser.add_argument(
        "--fixtures",
        default=os.environ.get("CKPTCONV_FIXTURE_CACHE", str(Path.home() / ".cache" / "ckptconv-fuzz")),
        help="where the generated fixture files are kept",
    )
    parser.add_argument("--workdir", default=None, help="where the corpus and scratch files go (default: a temp dir)")
    if "--" in argv:
        at = argv.index("--")
        own, fuzzer = argv[:at], argv[at + 1 :]
    else:
        own, fuzzer = argv, []
    return parser.parse_args(own), fuzzer


def sources(fixtures: Path, scratch: Path):  # type: ignore[no-untyped-def]
    from tests.conftest import run_generator
    from tests.test_fuzz import build_sources

    fixtures.mkdir(parents=True, exist_ok=True)
    made = {name: run_generator(name, fixtures) for name in ("keras", "load", "tf")}
    root = scratch / "sources"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    return build_sources(made["keras"], made["load"], made["tf"], root)


def main(argv: list[str]) -> int:
    args, fuzzer_args = parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="ckptconv-fuzz-"))
    found = sources(Path(args.fixtures), workdir)
    if args.list or not args.kind:
        for label, source in found.items():
            print(f"{label:22s} {source.entry:32s} files: {', '.join(source.mutable)}")
        return 0
    if args.kind not in found:
        print(f"unknown kind {args.kind!r}; --list shows them", file=sys.stderr)
        return 2
    source = found[args.kind]
    victim = args.file or source.mutable[0]
    if victim not in source.mutable:
        print(f"{args.kind} has no file {victim!r}; it has {', '.join(source.mutable)}", file=sys.stderr)
        return 2
    try:
        import atheris
    except ImportError:
        print("atheris is not installed: pip install atheris (or pip install -e '.[fuzz]')", file=sys.stderr)
        return 2

    corpus = workdir / f"corpus-{args.kind}-{victim}"
    corpus.mkdir(parents=True, exist_ok=True)
    seed = (source.directory / victim).read_bytes()
    (corpus / "seed").write_bytes(seed)
    target = source.directory / victim
    entry = source.directory / source.entry

    from tests.test_fuzz import read_everything

    # ckptconv is already imported (building the sources used it): instrument what is loaded
    # (ckptconv, h5py's Python layer, zipfile, json) so libFuzzer sees coverage
    atheris.instrument_all()

    def one_input(data: bytes) -> None:
        target.write_bytes(data)
        read_everything(entry)  # anything but a CkptconvError propagates: a finding

    print(f"fuzzing {target} (entry {entry.name}); corpus {corpus}", file=sys.stderr)
    if not any(a.startswith("-artifact_prefix=") for a in fuzzer_args):
        # crash-*/timeout-* inputs go beside the corpus, never into the current directory
        fuzzer_args.append(f"-artifact_prefix={workdir}/")
    atheris.Setup([sys.argv[0], str(corpus), *fuzzer_args], one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
