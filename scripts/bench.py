#!/usr/bin/env python3
"""Benchmark ckptconv against a file copy and against the ways people convert today.

    .venv/bin/python scripts/bench.py                 # the 2 GiB model, 3 rounds (~15 min)
    .venv/bin/python scripts/bench.py --quick         # a 256 MiB model, 3 rounds (~4 min)
    .venv/bin/python scripts/bench.py --size 1GiB --rounds 5 --json out.json --markdown
    .venv/bin/python scripts/bench.py --only batch [--batch-files 64] [--batch-scheduler ADDR]
    .venv/bin/python scripts/bench.py --only many,scale,start  # many tensors, start-up time

It builds the benchmark model (N Dense layers of 4096x4096 fp32, seeded weights) with the real
writers, each in a subprocess: Keras 3 ``.weights.h5`` and ``.keras``, tf-keras legacy ``.h5``
and a TF checkpoint, a model twice as large as ``.weights.h5``, a BERT-style Hugging Face
directory and, where torch is installed, a ``torch.save`` ``.pt`` of the same weights (converted
side by side with ``torch.load(mmap=True)`` + ``safetensors.torch.save_file``); for the
many-tensor groups, a Keras 3 model of 5000 small Dense layers side by side (10,000 tensors) as
``.weights.h5``, ``.keras``, a sharded ``.weights.json`` and safetensors, in tf-keras as legacy
``.h5`` and a TF checkpoint, and generated sets of 10,000 and 100,000 small tensors
(TensorFlow's own SaveV2 op, and safetensors.numpy); for the ``batch`` group, 64 copies of an 8
MiB Keras 3 file. Then it runs every case in a fresh subprocess, all cases one after the other in
each round (so the machine's noise spreads over all of them), and reports the median wall
time, the ratio to ``dd bs=16M conv=fsync`` (and to plain ``dd``) of the same file, and the
peak RSS (``ru_maxrss`` of the finished child, from ``wait4``). The ``batch`` group reports
files per second of ``run_batch`` over the same inputs in the local pool and on a Dask
cluster (``scripts/bench_batch.py``: ``local:N`` started before the clock, or a running
cluster given with ``--batch-scheduler``).

Page cache: ``--cache warm`` (the default) reads every input file through before each run, so
all runs read from the page cache and the copy is bound by memory and by writing the output
(which is fsynced by ``dd conv=fsync`` and by ``ckptconv``). ``--cache cold`` evicts the
input files from the page cache before each run instead (``posix_fadvise(DONTNEED)``, no root
needed, other files untouched), so runs read from the disk.

Everything is written under a temporary directory in /tmp (``--tmp`` to choose), removed at
the end, also on failure or Ctrl-C, unless ``--workdir`` names a directory to keep and reuse.
This script itself never imports TensorFlow or Keras.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PY = sys.executable
# the `ckptconv` command users run (the console script beside this interpreter), as installed
# by `pip install -e .`; `python -m ckptconv` where there is none (its runpy costs ~8 ms more)
_SCRIPT = os.path.join(os.path.dirname(PY), "ckptconv")
CKPTCONV = [_SCRIPT] if os.path.isfile(_SCRIPT) and os.access(_SCRIPT, os.X_OK) else [PY, "-m", "ckptconv"]
MiB = 1 << 20
UNITS = 4096

# The targets.
CONVERT_RATIO = 1.3
DIFF_RATIO = 1.3  # diff: about the time of reading both files
TORCH_CONVERT_RATIO = 1.0  # a stored zip member is a byte range: nothing to decode
OPS_RATIO = 2.0
RSS_LIMIT = 256 * MiB
META_SECONDS = 1.0
MANY_LAYERS = 5000  # Dense layers of the many-tensor model: 10,000 tensors
MANY_UNITS = 32
MANY_INSPECT_SECONDS = 0.5
MANY_CONVERT_RATIO = 1.0  # against the h5py + save_file script on the same tensors
HELP_SECONDS = 0.1
SMALL_INSPECT_SECONDS = 0.25
SCALE_COUNTS = (10_000, 100_000)
SAMPLE = os.path.join(ROOT, "examples", "sample.keras")

CHILD_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "KERAS_BACKEND": "tensorflow",
    "PYTHONUNBUFFERED": "1",
}

TRANSPOSE_SPEC = """\
version: 1
description: every Dense kernel transposed (the PyTorch-layout case)
rules:
  - from: "*/kernel"
    to: "{1}/kernel"
    ops: [transpose]
"""


# --- cases -------------------------------------------------------------------------------------


@dataclass
class Case:
    """One measured program.

    Attributes:
        id: Short identifier (``convert:weights.h5``).
        group: ``copy``, ``convert``, ``peer``, ``meta``, ``load``, ``diff``, ``large``, ``bert``,
            ``many``, ``scale``, ``start``.
        label: What the table shows.
        argv: The command.
        inputs: Files to warm (or evict) before each run.
        outputs: Files or directories removed after each run.
        baseline: For ratios: the id of the ``dd conv=fsync`` case of the same file (copy,
            convert, peer, large), of the reference load (load, bert), or of reading both
            files (diff).
        plain: The id of the plain ``dd`` case of the same file.
        inner: The program reports its own timed part (``BENCH {"seconds": ...}``); the table
            shows that instead of the process' wall time.
        rounds: Run this case only so many times (a slow reference).
        target: ``copy``, ``ratio:<x>``, ``meta``, ``load``, ``seconds:<x>`` (median at most x
            seconds), ``linear:<n>`` (at most n times the run over n times fewer tensors,
            named by baseline: the cost per tensor does not grow), or None (a reference).
        status: The exit status of a good run.
        files: Files the case converts (a batch): the table shows files per second.
    """

    id: str
    group: str
    label: str
    argv: list[str]
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    baseline: str | None = None
    plain: str | None = None
    inner: bool = False
    rounds: int | None = None
    target: str | None = None
    files: int | None = None
    status: int = 0


@dataclass
class Run:
    wall: float
    seconds: float  # the reported time: inner when the case reports one, else wall
    rss: int  # bytes
    cpu: float = 0.0  # user + system CPU seconds of the whole process
    load: float = 0.0  # 1-minute load average when the run started
    ok: bool | None = None
    error: str | None = None


@dataclass
class Files:
    """The benchmark inputs in the work directory."""

    root: str
    layers: int
    large_layers: int
    torch: bool = False  # torch is installed: write and convert a PyTorch .pt too
    batch_files: int = 64
    batch_workers: int = 2
    batch_scheduler: str | None = None
    batch_dask: bool = True  # the Dask cases (ckptconv[dask] installed)

    def p(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    @property
    def sources(self) -> dict[str, tuple[str, list[str]]]:
        """format label -> (path given to ckptconv, the files holding its bytes)."""
        ckpt = self.p("tf", "ckpt", "model")
        return {
            ".weights.h5": (self.p("k3", "model.weights.h5"), [self.p("k3", "model.weights.h5")]),
            "legacy .h5": (self.p("tf", "legacy.h5"), [self.p("tf", "legacy.h5")]),
            ".keras": (self.p("k3", "model.keras"), [self.p("k3", "model.keras")]),
            "TF checkpoint": (ckpt, [ckpt + ".index", ckpt + ".data-00000-of-00001"]),
        }

    @property
    def torch_pt(self) -> str:
        return self.p("pt", "model.pt")

    @property
    def large(self) -> str:
        return self.p("large", "large.weights.h5")

    @property
    def safetensors(self) -> str:
        return self.p("st", "model.safetensors")

    @property
    def bert(self) -> str:
        return self.p("bert")

    @property
    def batch_inputs(self) -> list[str]:
        """The batch group's inputs (written by ``bench_batch.py make``)."""
        return [self.p("batch", "in", f"m{i:03d}.weights.h5") for i in range(self.batch_files)]

    @property
    def many(self) -> dict[str, tuple[str, list[str]]]:
        """The 10,000-tensor model: format label -> (path, the files holding its bytes)."""
        m = self.p("many")
        ckpt = os.path.join(m, "ckpt", "many")
        sharded = os.path.join(m, "sharded")
        shards = sorted(os.path.join(sharded, n) for n in os.listdir(sharded)) \
            if os.path.isdir(sharded) else [os.path.join(sharded, "many.weights.json")]
        return {
            ".weights.h5": (os.path.join(m, "many.weights.h5"), [os.path.join(m, "many.weights.h5")]),
            ".keras": (os.path.join(m, "many.keras"), [os.path.join(m, "many.keras")]),
            "sharded .weights.json": (os.path.join(sharded, "many.weights.json"), shards),
            "legacy .h5": (os.path.join(m, "many_legacy.h5"), [os.path.join(m, "many_legacy.h5")]),
            "TF checkpoint": (ckpt, [ckpt + ".index", ckpt + ".data-00000-of-00001"]),
            "safetensors": (os.path.join(m, "many.safetensors"), [os.path.join(m, "many.safetensors")]),
            **({"PyTorch .pt": (os.path.join(m, "many.pt"), [os.path.join(m, "many.pt")])} if self.torch else {}),
        }

    def generated(self, count: int) -> dict[str, tuple[str, list[str]]]:
        """``count`` generated tensors: TF checkpoint and safetensors."""
        d = self.p(f"gen{count}")
        prefix = os.path.join(d, "gen")
        return {
            "TF checkpoint": (prefix, [prefix + ".index", prefix + ".data-00000-of-00001"]),
            "safetensors": (os.path.join(d, "gen.safetensors"), [os.path.join(d, "gen.safetensors")]),
        }


def bulk(paths: list[str]) -> str:
    """The largest file of a source: what ``dd`` copies (the last one if none exists yet)."""
    if not all(os.path.exists(p) for p in paths):
        return paths[-1]
    return max(paths, key=os.path.getsize)


def make_cases(files: Files, groups: set[str]) -> list[Case]:
    out = files.p("out")
    cases: list[Case] = []
    layers, large = files.layers, files.large_layers
    spec = files.p("transpose.yaml")
    short = {".weights.h5": "weights.h5", "legacy .h5": "legacy.h5", ".keras": "keras",
             "TF checkpoint": "tf-ckpt"}

    def copies(tag: str, label: str, paths: list[str]) -> None:
        src = bulk(paths)
        dst = os.path.join(out, f"dd-{tag}")
        cases.append(Case(f"dd:{tag}", "copy", f"dd bs=16M, {label}",
                          ["dd", f"if={src}", f"of={dst}", "bs=16M", "status=none"],
                          inputs=paths, outputs=[dst]))
        cases.append(Case(f"ddsync:{tag}", "copy", f"dd bs=16M conv=fsync, {label}",
                          ["dd", f"if={src}", f"of={dst}", "bs=16M", "conv=fsync", "status=none"],
                          inputs=paths, outputs=[dst], plain=f"dd:{tag}"))

    for label, (path, paths) in files.sources.items():
        tag = short[label]
        if "copy" in groups or "convert" in groups or "peer" in groups:
            copies(tag, label, paths)
        if "convert" in groups:
            dst = os.path.join(out, f"{tag}.safetensors")
            cases.append(Case(f"convert:{tag}", "convert", f"ckptconv convert, {label}",
                              CKPTCONV + ["convert", path, dst, "--quiet"], inputs=paths,
                              outputs=[dst], baseline=f"ddsync:{tag}", plain=f"dd:{tag}",
                              target=f"ratio:{CONVERT_RATIO}"))
    if files.torch:
        pt = files.torch_pt
        if groups & {"copy", "convert", "peer"}:
            copies("pt", "PyTorch .pt", [pt])
        if "convert" in groups:
            dst = os.path.join(out, "pt.safetensors")
            cases.append(Case("convert:pt", "convert", "ckptconv convert, PyTorch .pt (torch.save zip)",
                              CKPTCONV + ["convert", pt, dst, "--quiet"], inputs=[pt], outputs=[dst],
                              baseline="ddsync:pt", plain="dd:pt", target=f"ratio:{TORCH_CONVERT_RATIO}"))
        if "peer" in groups:
            dst = os.path.join(out, "peer-pt.safetensors")
            cases.append(Case("peer:torch", "peer",
                              "torch.load(mmap=True) + safetensors.torch save_file, PyTorch .pt",
                              [PY, os.path.join(HERE, "bench_run.py"), "torch_save_file", pt, dst],
                              inputs=[pt], outputs=[dst], baseline="ddsync:pt", plain="dd:pt"))
        if "meta" in groups:
            cases.append(Case("inspect:pt", "meta", "ckptconv inspect, PyTorch .pt",
                              CKPTCONV + ["inspect", pt], inputs=[pt], target="meta"))
    w_path, w_files = files.sources[".weights.h5"]
    if "convert" in groups:
        for what, extra in (("--dtype bfloat16", ["--dtype", "bfloat16"]),
                            ("--dtype float16", ["--dtype", "float16"]),
                            ("transpose every kernel", ["--map", spec])):
            tag = what.split()[-1] if what.startswith("--") else "transpose"
            dst = os.path.join(out, f"{tag}.safetensors")
            cases.append(Case(f"convert:{tag}", "convert", f"ckptconv convert {what}, .weights.h5",
                              CKPTCONV + ["convert", w_path, dst, "--quiet"] + extra,
                              inputs=w_files, outputs=[dst], baseline="ddsync:weights.h5",
                              plain="dd:weights.h5", target=f"ratio:{OPS_RATIO}"))
    if "peer" in groups:
        run = [PY, os.path.join(HERE, "bench_run.py")]
        dst = os.path.join(out, "peer.safetensors")
        cases.append(Case("peer:h5py", "peer", "h5py + safetensors save_file, .weights.h5",
                          run + ["h5py_save_file", w_path, dst], inputs=w_files, outputs=[dst],
                          baseline="ddsync:weights.h5", plain="dd:weights.h5"))
        cases.append(Case("peer:keras", "peer",
                          "rebuild + Keras load_weights + save_file, .weights.h5",
                          run + ["keras_save_file", w_path, dst, str(layers), str(UNITS)],
                          inputs=w_files, outputs=[dst], baseline="ddsync:weights.h5",
                          plain="dd:weights.h5"))
        t_path, t_files = files.sources["TF checkpoint"]
        cases.append(Case("peer:tf", "peer", "tf.train.load_checkpoint + save_file, TF checkpoint",
                          run + ["tf_save_file", t_path, dst], inputs=t_files, outputs=[dst],
                          baseline="ddsync:tf-ckpt", plain="dd:tf-ckpt"))
        cases.append(Case("peer:import-tf", "peer", "import tensorflow (nothing else)",
                          run + ["import_tf"]))
    if "meta" in groups:
        for label, (path, paths) in files.sources.items():
            tag = short[label]
            cases.append(Case(f"inspect:{tag}", "meta", f"ckptconv inspect, {label}",
                              CKPTCONV + ["inspect", path], inputs=paths, target="meta"))
            cases.append(Case(f"plan:{tag}", "meta", f"ckptconv plan (transpose spec), {label}",
                              CKPTCONV + ["plan", path, "--map", spec], inputs=paths,
                              target="meta"))
    if "load" in groups:
        run = [PY, os.path.join(HERE, "bench_run.py")]
        size = [str(layers), str(UNITS)]
        cases.append(Case("load_weights:weights.h5", "load",
                          "Keras model.load_weights, .weights.h5 (reference)",
                          run + ["load_weights", w_path] + size, inputs=w_files, inner=True))
        cases.append(Case("load_weights:legacy.h5", "load", "Keras model.load_weights, legacy .h5",
                          run + ["load_weights", files.sources["legacy .h5"][0]] + size,
                          inputs=files.sources["legacy .h5"][1], inner=True,
                          baseline="load_weights:weights.h5"))
        sources = dict(files.sources)
        sources["safetensors"] = (files.safetensors, [files.safetensors])
        for label, (path, paths) in sources.items():
            tag = short.get(label, label)
            cases.append(Case(f"load_into:{tag}", "load", f"ckptconv load_into, {label}",
                              run + ["load_into", path] + size, inputs=paths, inner=True,
                              baseline="load_weights:weights.h5", target="load"))
        for label, (path, paths) in sources.items():
            tag = short.get(label, label)
            cases.append(Case(f"load_into_norb:{tag}", "load",
                              f"ckptconv load_into check_first=False, {label}",
                              run + ["load_into_nocheck", path] + size, inputs=paths,
                              inner=True, baseline="load_weights:weights.h5", target="load"))
        k_path, k_files = files.sources[".keras"]
        cases.append(Case("load_weights:keras", "load", "Keras model.load_weights, .keras",
                          run + ["load_weights", k_path] + size, inputs=k_files, inner=True,
                          baseline="load_weights:weights.h5", rounds=1))
    if "diff" in groups:
        both = w_files + [files.safetensors]
        cases.append(Case("read:diff", "diff", "cat .weights.h5 and its .safetensors > /dev/null",
                          ["sh", "-c", 'cat "$0" "$1" > /dev/null', w_path, files.safetensors],
                          inputs=both))
        cases.append(Case("diff:weights.h5-st", "diff",
                          "ckptconv diff .weights.h5 .safetensors (equal: every byte compared)",
                          CKPTCONV + ["diff", w_path, files.safetensors], inputs=both,
                          baseline="read:diff", target=f"ratio:{DIFF_RATIO}"))
    if "large" in groups:
        dst = os.path.join(out, "large.safetensors")
        copies("large", f"{large}-layer .weights.h5", [files.large])
        cases.append(Case("convert:large", "large",
                          f"ckptconv convert, {large}-layer .weights.h5 (twice as large)",
                          CKPTCONV + ["convert", files.large, dst, "--quiet"], inputs=[files.large],
                          outputs=[dst], baseline="ddsync:large", plain="dd:large",
                          target=f"ratio:{CONVERT_RATIO}"))
    if "bert" in groups:
        run = [PY, os.path.join(HERE, "bench_run.py")]
        inputs = [os.path.join(files.bert, "model.safetensors")]
        cases.append(Case("bert:keras-hub", "bert",
                          "BERT: keras-hub BertBackbone.from_preset(dir) (reference)",
                          run + ["bert_keras_hub", files.bert], inputs=inputs, inner=True))
        cases.append(Case("bert:load_into", "bert",
                          "BERT: BertBackbone(**config) + ckptconv load_into(spec)",
                          run + ["bert_load_into", files.bert], inputs=inputs, inner=True,
                          baseline="bert:keras-hub", target="load"))
        cases.append(Case("bert:set_weights", "bert",
                          "BERT: BertBackbone(**config) + hand-written assign loop",
                          run + ["bert_set_weights", files.bert], inputs=inputs, inner=True,
                          baseline="bert:keras-hub"))
    if "batch" in groups:
        run = [PY, os.path.join(HERE, "bench_batch.py"), "run", files.p("batch", "in"),
               os.path.join(out, "batch")]
        n, workers = files.batch_files, files.batch_workers
        where = [("pool", f"local pool -j {workers}", ["--workers", str(workers)])]
        if files.batch_dask:
            where.append(("dask-local", f"Dask local:{workers}", ["--scheduler", f"local:{workers}"]))
        if files.batch_dask and files.batch_scheduler:
            where.append(("dask", f"Dask {files.batch_scheduler}",
                          ["--scheduler", files.batch_scheduler]))
        for tag, label, extra in where:
            cases.append(Case(f"batch:{tag}", "batch",
                              f"batch of {n} 8 MiB .weights.h5, {label}", run + extra,
                              inputs=files.batch_inputs, outputs=[os.path.join(out, "batch")],
                              inner=True, files=n))
    if "many" in groups:
        many_cases(cases, files, out)
    if "scale" in groups:
        scale_cases(cases, files, out)
    if "start" in groups:
        cases.append(Case("start:python", "start", "python -c pass (the floor)", [PY, "-c", "pass"]))
        cases.append(Case("start:numpy", "start", "python -c 'import numpy' (what reading needs)",
                          [PY, "-c", "import numpy"]))
        cases.append(Case("start:h5py", "start", "python -c 'import numpy, h5py' (what reading needed before)",
                          [PY, "-c", "import numpy, h5py"]))
        cases.append(Case("start:help", "start", "ckptconv --help", CKPTCONV + ["--help"],
                          target=f"seconds:{HELP_SECONDS}"))
        cases.append(Case("start:usage", "start", "ckptconv convert (a usage error, exit 2)",
                          CKPTCONV + ["convert"], target=f"seconds:{HELP_SECONDS}", status=2))
        cases.append(Case("start:inspect", "start", "ckptconv inspect examples/sample.keras (9 KiB)",
                          CKPTCONV + ["inspect", SAMPLE], inputs=[SAMPLE],
                          target=f"seconds:{SMALL_INSPECT_SECONDS}"))
    return cases


MANY_SHORT = {".weights.h5": "weights.h5", ".keras": "keras", "sharded .weights.json": "sharded",
              "legacy .h5": "legacy.h5", "TF checkpoint": "tf-ckpt", "safetensors": "safetensors",
              "PyTorch .pt": "pt"}


def many_cases(cases: list[Case], files: Files, out: str) -> None:
    """10,000 tensors: inspect of every format, and convert against the h5py walk +
    ``safetensors.numpy.save_file`` script on the same tensors (on the same file where h5py
    reads it: ``.weights.h5``, and the ``.keras`` archive's weights member); diff of the
    ``.weights.h5`` and the safetensors file (the cost per pair of tensors)."""
    run = [PY, os.path.join(HERE, "bench_run.py")]
    sources = files.many
    w_path, w_files = sources[".weights.h5"]
    k_path, k_files = sources[".keras"]
    dst = os.path.join(out, "many.safetensors")
    cases.append(Case("many-peer:h5py", "many", "h5py walk + save_file, 10k tensors, .weights.h5",
                      run + ["h5py_save_file", w_path, dst], inputs=w_files, outputs=[dst]))
    cases.append(Case("many-peer:h5py-keras", "many",
                      "h5py walk + save_file, 10k tensors, .keras (its weights member)",
                      run + ["h5py_save_file", k_path, dst], inputs=k_files, outputs=[dst]))
    for label, (path, paths) in sources.items():
        tag = MANY_SHORT[label]
        cases.append(Case(f"many-inspect:{tag}", "many", f"ckptconv inspect, 10k tensors, {label}",
                          CKPTCONV + ["inspect", path], inputs=paths,
                          target=f"seconds:{MANY_INSPECT_SECONDS}"))
        peer = "many-peer:h5py-keras" if label == ".keras" else "many-peer:h5py"
        cases.append(Case(f"many-convert:{tag}", "many", f"ckptconv convert, 10k tensors, {label}",
                          CKPTCONV + ["convert", path, dst, "--quiet"], inputs=paths,
                          outputs=[dst], baseline=peer, target=f"ratio:{MANY_CONVERT_RATIO}"))
    st_path, st_files = sources["safetensors"]
    cases.append(Case("many-diff:weights.h5-st", "many",
                      "ckptconv diff, 10k tensors, .weights.h5 and its safetensors (every byte compared)",
                      CKPTCONV + ["diff", w_path, st_path], inputs=[*w_files, *st_files]))

    if "PyTorch .pt" in sources:  # a spec of 10,000 rules (what suggest writes for it)
        pt_path, pt_files = sources["PyTorch .pt"]
        spec = files.p("many", "suggested.yaml")
        cases.append(Case("many-plan:suggested", "many",
                          "ckptconv plan, 10k tensors, .pt, the suggested 10,000-rule spec",
                          CKPTCONV + ["plan", pt_path, "--map", spec], inputs=[*pt_files, spec]))
        cases.append(Case("many-convert:suggested", "many",
                          "ckptconv convert, 10k tensors, .pt, the suggested 10,000-rule spec",
                          CKPTCONV + ["convert", pt_path, dst, "--map", spec, "--quiet"],
                          inputs=[*pt_files, spec], outputs=[dst], baseline="many-convert:pt"))


def scale_cases(cases: list[Case], files: Files, out: str) -> None:
    """Generated 10,000 and 100,000 tensors: inspect and convert, the larger against the
    smaller (linear: at most 10x its time), within 256 MiB."""
    small, large = SCALE_COUNTS
    dst = os.path.join(out, "gen.safetensors")
    for label, tag in (("TF checkpoint", "tf-ckpt"), ("safetensors", "safetensors")):
        for command in ("inspect", "convert"):
            for count in SCALE_COUNTS:
                path, paths = files.generated(count)[label]
                big = count == large
                argv = ["inspect", path] if command == "inspect" else ["convert", path, dst, "--quiet"]
                cases.append(Case(
                    f"scale-{command}:{tag}-{count // 1000}k", "scale",
                    f"ckptconv {command}, {count:,} tensors, {label}", CKPTCONV + argv,
                    inputs=paths, outputs=[dst] if command == "convert" else [],
                    baseline=f"scale-{command}:{tag}-{small // 1000}k" if big else None,
                    target=f"linear:{large // small}" if big else None,
                ))


# --- building the inputs -----------------------------------------------------------------------


def compile_package() -> None:
    """Write ckptconv's byte-code caches before timing, as ``pip install`` does (an editable
    install or a checkout writes them on first import, unless PYTHONDONTWRITEBYTECODE forbids)."""
    import compileall

    if not compileall.compile_dir(os.path.join(ROOT, "ckptconv"), quiet=1):
        raise SystemExit("bench: ckptconv's modules do not compile")


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(CHILD_ENV)
    # Users' Pythons keep byte-code caches (pip compiles at install); a shell that forbids
    # writing them would make every run recompile ckptconv and time the compiler.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def build(files: Files, groups: set[str], bert_layers: int) -> None:
    """Write every input the chosen groups need, each writer in its own process."""
    writer = [PY, os.path.join(HERE, "bench_write.py")]
    size = ["--layers", str(files.layers), "--units", str(UNITS)]
    jobs: list[tuple[str, list[str], str]] = []
    need_main = groups & {"copy", "convert", "peer", "meta", "load", "diff"}  # the big model
    if need_main:
        jobs.append(("Keras 3 .weights.h5 and .keras", writer + ["keras3", files.p("k3")] + size,
                     files.p("k3", "model.keras")))
        jobs.append(("tf-keras legacy .h5 and TF checkpoint",
                     writer + ["tfkeras", files.p("tf")] + size,
                     files.p("tf", "ckpt", "model.index")))
    if files.torch and groups & {"copy", "convert", "peer", "meta"}:
        jobs.append(("PyTorch torch.save (zip) .pt", writer + ["torch", files.p("pt")] + size,
                     files.torch_pt))
    if "large" in groups:
        jobs.append((f"Keras 3 .weights.h5, {files.large_layers} layers",
                     writer + ["keras3", files.p("large"), "--layers", str(files.large_layers),
                               "--units", str(UNITS), "--name", "large", "--weights-only"],
                     files.large))
    if "bert" in groups:
        jobs.append(("BERT-style Hugging Face directory (safetensors, PyTorch layout)",
                     writer + ["bert", files.bert, "--layers", str(bert_layers)],
                     os.path.join(files.bert, "model.safetensors")))
    if "many" in groups:
        many = ["--layers", str(MANY_LAYERS), "--units", str(MANY_UNITS)]
        jobs.append((f"Keras 3, {2 * MANY_LAYERS:,} tensors: .weights.h5, .keras, sharded, safetensors",
                     writer + ["many-keras3", files.p("many")] + many,
                     files.many["safetensors"][0]))
        jobs.append((f"tf-keras, {2 * MANY_LAYERS:,} tensors: legacy .h5 and TF checkpoint",
                     writer + ["many-tfkeras", files.p("many")] + many,
                     files.many["TF checkpoint"][0] + ".index"))
        if files.torch:
            jobs.append((f"PyTorch torch.save, {2 * MANY_LAYERS:,} tensors",
                         writer + ["many-torch", files.p("many")] + many, files.many["PyTorch .pt"][0]))
    if "scale" in groups:
        for count in SCALE_COUNTS:
            jobs.append((f"{count:,} generated tensors: TF checkpoint (SaveV2) and safetensors",
                         writer + ["generated", files.p(f"gen{count}"), "--tensors", str(count)],
                         files.generated(count)["safetensors"][0]))
    for what, argv, marker in jobs:
        if os.path.exists(marker):
            continue
        os.makedirs(argv[3], exist_ok=True)
        started = time.perf_counter()
        log(f"writing {what} ...")
        subprocess.run(argv, check=True, env=child_env(), stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE)
        log(f"  done in {time.perf_counter() - started:.0f} s")
    if "batch" in groups and not all(os.path.exists(f) for f in files.batch_inputs):
        log(f"writing the batch inputs ({files.batch_files} files) ...")
        subprocess.run([PY, os.path.join(HERE, "bench_batch.py"), "make", files.p("batch"),
                        "--files", str(files.batch_files)], check=True, env=child_env(),
                       stdout=subprocess.DEVNULL)
    if groups & {"load", "diff"} and not os.path.exists(files.safetensors):
        os.makedirs(os.path.dirname(files.safetensors), exist_ok=True)
        subprocess.run(CKPTCONV + ["convert", files.sources[".weights.h5"][0], files.safetensors,
                                   "--quiet"], check=True, env=child_env())
    suggested = files.p("many", "suggested.yaml")
    if "many" in groups and files.torch and not os.path.exists(suggested):
        log("writing the suggested spec of the many-tensor torch.save file (one rule per weight) ...")
        subprocess.run(CKPTCONV + ["suggest", files.many["PyTorch .pt"][0], "--target",
                                   files.many["safetensors"][0], "-o", suggested], check=True,
                       env=child_env(), stdout=subprocess.DEVNULL)
    with open(files.p("transpose.yaml"), "w", encoding="utf-8") as f:
        f.write(TRANSPOSE_SPEC)
    os.makedirs(files.p("out"), exist_ok=True)


# --- measuring ---------------------------------------------------------------------------------


def warm(paths: list[str]) -> None:
    """Read every file through, so the run reads it from the page cache."""
    buf = bytearray(16 * MiB)
    view = memoryview(buf)
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(view):
                pass


def evict(paths: list[str]) -> None:
    """Drop the files' pages from the page cache (clean pages only; inputs are never dirty)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def remove(paths: list[str]) -> None:
    for path in paths:
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def measure(case: Case, cache: str, logdir: str) -> Run:
    """Run the case once in a fresh process: wall time and the child's peak RSS."""
    remove(case.outputs)
    os.sync()  # the previous run's writeback must not land in this run
    if cache == "warm":
        warm(case.inputs)
    else:
        evict(case.inputs)
    load = os.getloadavg()[0]
    out_path = os.path.join(logdir, "stdout")
    err_path = os.path.join(logdir, "stderr")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(case.argv, stdout=out, stderr=err, env=child_env(), cwd=ROOT)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # Ctrl-C or SIGTERM: stop the child before the cleanup
            proc.kill()
            proc.wait()
            raise
        wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    remove(case.outputs)
    rss = usage.ru_maxrss * 1024  # kilobytes on Linux
    cpu = usage.ru_utime + usage.ru_stime
    with open(out_path, encoding="utf-8", errors="replace") as f:
        stdout = f.read()
    if proc.returncode != case.status:
        with open(err_path, encoding="utf-8", errors="replace") as f:
            lines = [ln for ln in f.read().splitlines() if ln.strip()]
        return Run(wall, wall, rss, cpu, load, False,
                   (lines[-1] if lines else f"exit {proc.returncode}")[:300])
    seconds, ok = wall, None
    if case.inner:
        for line in stdout.splitlines():
            if line.startswith("BENCH "):
                values = json.loads(line[6:])
                seconds = float(values["seconds"])
                ok = values.get("ok")
    return Run(wall, seconds, rss, cpu, load, ok)


# --- results -----------------------------------------------------------------------------------


@dataclass
class Row:
    case: Case
    runs: list[Run]

    @property
    def good(self) -> list[Run]:
        return [r for r in self.runs if r.error is None]

    @property
    def median(self) -> float | None:
        good = self.good
        return statistics.median(r.seconds for r in good) if good else None

    @property
    def cpu(self) -> float | None:
        good = self.good
        return statistics.median(r.cpu for r in good) if good else None

    @property
    def rss(self) -> int | None:
        good = self.good
        return max(r.rss for r in good) if good else None


def ratio(rows: dict[str, Row], row: Row, other: str | None) -> float | None:
    """The median over rounds of this run's time over the reference's run in the same round.

    The two ran minutes apart at most, under the same load, so their ratio is steadier than
    the ratio of the medians when the machine is shared (both are in the JSON).
    """
    if other is None or other not in rows:
        return None
    pairs = [a.seconds / b.seconds for a, b in zip(row.runs, rows[other].runs)
             if a.error is None and b.error is None and b.seconds > 0]
    return statistics.median(pairs) if pairs else None


def ratio_of_medians(rows: dict[str, Row], row: Row, other: str | None) -> float | None:
    if other is None or other not in rows or row.median is None:
        return None
    base = rows[other].median
    return row.median / base if base else None


def verdict(rows: dict[str, Row], row: Row) -> str:
    target = row.case.target
    if target is None:
        return ""
    if row.median is None:
        return "FAILED"
    if any(r.ok is False for r in row.runs):
        return "WRONG VALUES"
    if target.startswith("ratio:"):
        limit = float(target.split(":")[1])
        r = ratio(rows, row, row.case.baseline)
        met = r is not None and r <= limit and (row.rss or 0) <= RSS_LIMIT
        return f"{'yes' if met else 'NO'} (≤ {limit:g}×, ≤ 256 MiB)"
    if target == "meta":
        return f"{'yes' if row.median < META_SECONDS else 'NO'} (< 1 s)"
    if target == "load":
        r = ratio(rows, row, row.case.baseline)
        return f"{'yes' if r is not None and r <= 1.0 else 'NO'} (≤ 1×)"
    if target.startswith("seconds:"):
        limit = float(target.split(":")[1])
        return f"{'yes' if row.median <= limit else 'NO'} (≤ {limit:g} s)"
    if target.startswith("linear:"):
        n = float(target.split(":")[1])
        r = ratio(rows, row, row.case.baseline)
        met = r is not None and r <= n and (row.rss or 0) <= RSS_LIMIT
        return f"{'yes' if met else 'NO'} (≤ {n:g}× the {n:g}x smaller set, ≤ 256 MiB)"
    return ""


def fmt_s(x: float | None) -> str:
    return "—" if x is None else (f"{x:.2f}" if x >= 0.1 else f"{x:.3f}")


def fmt_r(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}×"


def table(rows: dict[str, Row]) -> list[list[str]]:
    header = ["group", "what", "median s", "min–max s", "runs", "ratio", "× plain dd",
              "CPU s", "peak RSS MiB", "target met"]
    batches = any(row.case.files for row in rows.values())
    if batches:
        header.insert(3, "files/s")
    body = [header]
    for row in rows.values():
        good = row.good
        spread = f"{fmt_s(min(r.seconds for r in good))}–{fmt_s(max(r.seconds for r in good))}" \
            if good else ""
        base = ratio(rows, row, row.case.baseline)
        if base is not None and row.case.baseline:
            base_text = f"{fmt_r(base)} {row.case.baseline.split(':')[0].replace('ddsync', 'dd fsync')}"
        else:
            base_text = ""
        if row.case.id.startswith("ddsync:"):
            base_text = "1.00× dd fsync"
        rss = row.rss
        status = verdict(rows, row)
        errors = [r.error for r in row.runs if r.error]
        if errors:
            status = (status + " " if status else "") + f"error: {errors[0]}"
        per_second = []
        if batches:
            per_second = [f"{row.case.files / row.median:.1f}"
                          if row.case.files and row.median else ""]
        body.append([
            row.case.group,
            row.case.label + (" [timed part]" if row.case.inner else ""),
            fmt_s(row.median),
            *per_second,
            spread,
            f"{len(good)}/{len(row.runs)}",
            base_text,
            fmt_r(ratio(rows, row, row.case.plain)),
            fmt_s(row.cpu),
            "—" if rss is None else f"{rss / MiB:.0f}",
            status,
        ])
    return body


def print_text(body: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in body) for i in range(len(body[0]))]
    for n, r in enumerate(body):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def print_markdown(body: list[list[str]]) -> None:
    print("| " + " | ".join(body[0]) + " |")
    print("|" + "|".join("---" for _ in body[0]) + "|")
    for r in body[1:]:
        print("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |")


def machine() -> dict[str, object]:
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    mem = None
    with contextlib.suppress(OSError):
        with open("/proc/meminfo", encoding="utf-8") as f:
            mem = int(f.readline().split()[1]) * 1024
    return {"cores": os.cpu_count(), "cpu": cpu, "memory_bytes": mem,
            "python": platform.python_version(), "kernel": platform.release()}


# --- main --------------------------------------------------------------------------------------


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def parse_size(text: str) -> int:
    units = {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "kb": 10**3, "mb": 10**6, "gb": 10**9}
    t = text.strip().lower()
    for u, f in units.items():
        if t.endswith(u):
            return int(float(t[: -len(u)]) * f)
    return int(t)


def report(results: dict, rows: dict[str, Row], *, markdown: bool) -> None:
    """Print the header line and the table (and the Markdown table)."""
    info = results["machine"]
    model = results["model"]
    loads = [r.load for row in rows.values() for r in row.runs]
    load_text = (f"; 1-min load average at run starts: median {statistics.median(loads):.1f}, "
                 f"max {max(loads):.1f}") if loads else ""
    print(f"\nckptconv benchmark, {results['date']}; {info['cores']} cores, {info['cpu']}; "
          f"model {model['layers']} x Dense {model['units']}x{model['units']} fp32 = "
          f"{model['bytes'] / 2**30:.2f} GiB; page cache {results['cache']}; medians of "
          f"{results['rounds']} rounds taken in turn{load_text}\n")
    body = table(rows)
    print_text(body)
    if markdown:
        print()
        print_markdown(body)


def rows_from_json(results: dict) -> dict[str, Row]:
    """Rebuild the rows of a saved run (``--from-json``)."""
    fields = set(Run.__dataclass_fields__)
    rows = {}
    for item in results["cases"]:
        case = Case(item["id"], item["group"], item["label"], item["argv"],
                    baseline=item.get("baseline"), plain=item.get("plain"),
                    inner=item.get("inner", item["group"] in ("load", "bert")),
                    target=item.get("target_kind", _target_of(item)), files=item.get("files"))
        rows[case.id] = Row(case, [Run(**{k: v for k, v in r.items() if k in fields})
                                   for r in item["runs"]])
    return rows


def _target_of(item: dict) -> str | None:
    """The target kind of a case saved before ``target_kind`` was recorded."""
    text = item.get("target") or ""
    if "1.3" in text:
        return f"ratio:{CONVERT_RATIO}"
    if "≤ 2×" in text:
        return f"ratio:{OPS_RATIO}"
    if "< 1 s" in text:
        return "meta"
    if "≤ 1×" in text:
        return "load"
    return None


def _installed(module: str) -> bool:
    """Whether the venv has ``module``, found without importing it (or TensorFlow with it)."""
    probe = subprocess.run([PY, "-c", f"import importlib.util, sys; "
                            f"sys.exit(importlib.util.find_spec({module!r}) is None)"])
    return probe.returncode == 0


GROUPS = ("copy", "convert", "peer", "meta", "load", "diff", "large", "bert", "batch", "many", "scale", "start")
BATCH_FILE = (2 * 1024 * 1024 + 2 * 1024) * 4  # 2 Dense 1024x1024 fp32 layers


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="2GiB",
                   help="model size: Dense 4096x4096 fp32 layers adding up to this (default 2GiB)")
    p.add_argument("--quick", action="store_true", help="a 256 MiB model (sets --size 256MiB)")
    p.add_argument("--rounds", type=int, default=3, help="runs of every case, taken in turn (default 3)")
    p.add_argument("--only", default=",".join(GROUPS),
                   help=f"comma-separated groups to run (default all: {','.join(GROUPS)})")
    p.add_argument("--cache", choices=("warm", "cold"), default="warm",
                   help="warm: read inputs through before each run (default); cold: evict them")
    p.add_argument("--bert-layers", type=int, default=12, help="encoder layers of the BERT model")
    p.add_argument("--batch-files", type=int, default=64, help="inputs of the batch group (default 64)")
    p.add_argument("--batch-workers", type=int, default=os.cpu_count() or 1,
                   help="local pool processes and local:N Dask workers of the batch group (default: CPUs)")
    p.add_argument("--batch-scheduler", metavar="ADDRESS",
                   help="also run the batch group on this running Dask cluster (tcp://HOST:PORT; "
                        "the work directory must be on a filesystem its workers see)")
    p.add_argument("--tmp", default="/tmp", help="where the temporary work directory goes")
    p.add_argument("--workdir", help="keep inputs in this directory and reuse them (not removed)")
    p.add_argument("--json", metavar="PATH", help="write the raw numbers here")
    p.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    p.add_argument("--from-json", metavar="PATH", help="print the table of a saved --json run")
    args = p.parse_args(argv)

    if args.from_json:
        with open(args.from_json, encoding="utf-8") as f:
            results = json.load(f)
        report(results, rows_from_json(results), markdown=args.markdown)
        return 0

    size = parse_size("256MiB" if args.quick else args.size)
    layers = max(1, round(size / (UNITS * UNITS * 4)))
    groups = {g.strip() for g in args.only.split(",") if g.strip()}
    unknown = groups - set(GROUPS)
    if unknown:
        p.error(f"unknown group(s) {', '.join(sorted(unknown))}; choose from {', '.join(GROUPS)}")

    if "bert" in groups and not _installed("keras_hub"):
        log("keras-hub is not installed (pip install -e '.[bench]'): skipping the BERT group")
        groups.discard("bert")

    torch_groups = bool(groups & {"copy", "convert", "peer", "meta", "many"})
    with_torch = torch_groups and _installed("torch")
    if torch_groups and not with_torch:
        log("torch is not installed: skipping the PyTorch .pt cases")
    batch_dask = "batch" in groups and _installed("distributed")
    if "batch" in groups and not batch_dask:
        log("Dask is not installed (pip install -e '.[dask]'): the batch group runs the local pool only")
    model_bytes = layers * (UNITS * UNITS + UNITS) * 4
    base = args.workdir or args.tmp
    os.makedirs(base, exist_ok=True)
    need = model_bytes * (4 + 1 + 1 + (2 if "large" in groups else 0) + (2 if "large" in groups else 0)
                          + (2 if with_torch else 0))
    if not groups & {"copy", "convert", "peer", "meta", "load", "diff", "large"}:
        need = 0  # the many-tensor and start-up groups need a few hundred MB at most
    need += 512 * MiB
    need += 2 * args.batch_files * BATCH_FILE if "batch" in groups else 0
    free = shutil.disk_usage(base).free
    if free < need:
        log(f"not enough disk space in {base}: {free / 2**30:.1f} GiB free, about "
            f"{need / 2**30:.1f} GiB needed; use a smaller --size or another --tmp")
        return 1

    workdir = args.workdir or tempfile.mkdtemp(prefix="ckptconv-bench-", dir=args.tmp)
    files = Files(os.path.abspath(workdir), layers, 2 * layers, torch=with_torch,
                  batch_files=args.batch_files, batch_workers=args.batch_workers,
                  batch_scheduler=args.batch_scheduler, batch_dask=batch_dask)

    from ckptconv.interrupts import sigterm_raises

    rows: dict[str, Row] = {}
    terminating = contextlib.ExitStack()
    terminating.enter_context(sigterm_raises())  # SIGTERM cleans the work directory up too
    try:
        log(f"model: {layers} Dense {UNITS}x{UNITS} fp32 layers ({model_bytes / 2**30:.2f} GiB), "
            f"work directory {workdir}")
        build(files, groups, args.bert_layers)
        compile_package()
        cases = make_cases(files, groups)
        rows = {c.id: Row(c, []) for c in cases}
        logdir = tempfile.mkdtemp(prefix="logs-", dir=workdir)
        for rnd in range(args.rounds):
            log(f"round {rnd + 1}/{args.rounds}")
            for case in cases:
                if case.rounds is not None and rnd >= case.rounds:
                    continue
                run = measure(case, args.cache, logdir)
                rows[case.id].runs.append(run)
                extra = f"  ERROR {run.error}" if run.error else ""
                log(f"  {case.id:28s} {run.seconds:7.2f} s  cpu {run.cpu:6.2f} s  "
                    f"{run.rss / MiB:7.0f} MiB  load {run.load:4.1f}{extra}")
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            remove([files.p("out")])
        terminating.close()

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    results = {
        "date": stamp,
        "machine": machine(),
        "model": {"layers": layers, "units": UNITS, "bytes": model_bytes},
        "cache": args.cache,
        "rounds": args.rounds,
        "cases": [
            {"id": r.case.id, "group": r.case.group, "label": r.case.label,
             "argv": r.case.argv, "baseline": r.case.baseline, "plain": r.case.plain,
             "inner": r.case.inner, "target_kind": r.case.target,
             "median_seconds": r.median, "peak_rss_bytes": r.rss, "files": r.case.files,
             "files_per_second": r.case.files / r.median if r.case.files and r.median else None,
             "ratio": ratio(rows, r, r.case.baseline),
             "ratio_of_medians": ratio_of_medians(rows, r, r.case.baseline),
             "ratio_plain_dd": ratio(rows, r, r.case.plain),
             "target": verdict(rows, r),
             "runs": [vars(x) for x in r.runs]}
            for r in rows.values()
        ],
    }
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    report(results, rows, markdown=args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
