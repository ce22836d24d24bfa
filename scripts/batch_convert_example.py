#!/usr/bin/env python3
"""Worked example: convert a directory tree of checkpoints to safetensors with ckptconv's API.

What it does, step by step:

1. finds the checkpoints under INPUT_DIR (Keras .h5/.weights.h5/.keras, sharded .weights.json,
   TensorFlow checkpoint indexes, safetensors files and sharded sets);
2. names each output ``{parent}_{stem}.safetensors`` in OUTPUT_DIR, so files with one name in
   different run directories do not collide;
3. converts them in worker processes (bfloat16 here, to halve the size), printing one line per
   file as it finishes, and carries on past damaged files;
4. re-verifies every output against its recorded CRC-32Cs and writes ``report.json``.

Usage::

    python scripts/batch_convert_example.py INPUT_DIR OUTPUT_DIR [-j 2] [--dtype bfloat16]
    python scripts/batch_convert_example.py --demo        # makes its own inputs in a temp dir

Exit status 1 if any file failed. The same per-file job runs on a cluster: see docs/batch.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from ckptconv import verify_file
from ckptconv.batch import FileResult, plan_jobs, run_batch

PATTERNS = [
    "**/*.weights.h5",
    "**/*.weights.json",
    "**/*.keras",
    "**/*.h5",
    "**/*.index",
    "**/*.safetensors.index.json",
    "**/*.safetensors",
]


def find_checkpoints(root: Path) -> list[str]:
    """Every checkpoint under ``root``, each once (``*.h5`` also matches ``*.weights.h5``; the
    planner drops repeats, TF data files and shards of listed sharded sets)."""
    return [str(root / pattern) for pattern in PATTERNS]


def make_demo_inputs(root: Path) -> None:
    """Two small 'training runs' written by the safetensors library, and one damaged file."""
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    for run in ("run1", "run2"):
        (root / run).mkdir(parents=True)
        save_file(
            {
                "encoder.layer.0.attention.self.query.weight": rng.standard_normal((16, 16), np.float32),
                "encoder.layer.0.attention.self.query.bias": rng.standard_normal(16, np.float32),
                "classifier.weight": rng.standard_normal((2, 16), np.float32),
            },
            str(root / run / "best.safetensors"),
            metadata={"format": "pt"},
        )
    good = (root / "run1" / "best.safetensors").read_bytes()
    (root / "run3").mkdir()
    (root / "run3" / "best.safetensors").write_bytes(good[: len(good) - 100])  # truncated copy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input_dir", nargs="?", type=Path)
    parser.add_argument("output_dir", nargs="?", type=Path)
    parser.add_argument("-j", "--workers", type=int, default=2)
    parser.add_argument("--dtype", default="bfloat16", help="output dtype for float weights ('keep' for none)")
    parser.add_argument("--demo", action="store_true", help="convert generated demo inputs")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        if args.demo:
            args.input_dir = Path(scratch) / "in"
            args.output_dir = Path(scratch) / "out"
            make_demo_inputs(args.input_dir)
        elif args.input_dir is None or args.output_dir is None:
            parser.error("give INPUT_DIR and OUTPUT_DIR, or --demo")

        jobs = plan_jobs(find_checkpoints(args.input_dir), args.output_dir,
                         pattern="{parent}_{stem}.safetensors")
        print(f"{len(jobs)} checkpoints under {args.input_dir}")

        def report_line(result: FileResult) -> None:
            if result.ok:
                print(f"ok     {result.src} -> {result.dst} ({result.tensors} tensors, {result.seconds:.2f} s)")
            else:
                print(f"failed {result.src}: {result.error}")

        report = run_batch(
            jobs,
            workers=args.workers,
            on_result=report_line,
            dtype=None if args.dtype == "keep" else args.dtype,
            force=args.demo,
        )

        for result in report.succeeded:  # independent re-check of what landed on disk
            verified = verify_file(result.files[-1])
            if not verified.ok:
                print(f"CORRUPT {result.dst}: {', '.join(m.name for m in verified.mismatches)}")

        args.output_dir.mkdir(parents=True, exist_ok=True)
        (args.output_dir / "report.json").write_text(json.dumps(report.to_json(), indent=1))
        print(f"{len(report.succeeded)} converted, {len(report.failed)} failed in {report.seconds:.1f} s; "
              f"report: {args.output_dir / 'report.json'}")
    return 0 if report.ok else 1


if __name__ == "__main__":  # required: worker processes are spawned and re-import this file
    sys.exit(main())
