"""Every example in README.md and docs/*.md runs, so the documentation cannot silently break.

The extractor reads each page's fenced blocks in order and runs them in one scratch directory
per page, the way a reader would type them:

* ```` ```console ```` / ```` ```sh ```` blocks: ``$ cmd`` lines are commands, the lines after
  one up to the next ``$`` its expected output (stdout and stderr, as a terminal shows them);
  in a ``sh`` block without ``$`` every line is a command. ``ckptconv ...`` runs in-process
  through ``ckptconv.cli.main``; other commands run in bash. A command must exit 0 unless its
  shown output has a ``ckptconv: error:`` line or the next command is ``echo $?``.
* ```` ```python ```` blocks run with ``exec`` in one namespace per page; a block followed by
  ``<!-- output -->`` and a ```` ```text ```` block must print exactly that text.

Shown output is compared after normalising the scratch directory's path (pages write it as
``/home/me``), durations
(``3.10 s``) and rates (``1.2 GB/s``); a line ``...`` stands for any lines, ``...`` inside a
line for any text.

Markers, an HTML comment on the line before a fence:

* ``<!-- not-run: REASON -->``: the block cannot run here (installation, the benchmark, a
  cluster); keep these few.
* ``<!-- file: NAME -->``: write the block to ``NAME`` in the scratch directory (a spec or a
  script the next commands use) instead of running it.
* ``<!-- output -->``: the ```` ```text ```` block that follows is the previous Python block's output.

Each page's scratch directory holds a copy of ``examples/`` (the sample checkpoints written by
``scripts/make_example.py``, the specs) plus the files named in ``PAGES`` below (real
checkpoints from the session's fixture generators, under the names the page uses) and those
its ``SETUP`` code writes with Keras.

All pages run in one subprocess (``python tests/test_docs.py --run``), so TensorFlow and Keras
are imported once and never in the pytest process; each block is then one test reporting that
subprocess's result for it.

Not run here, because other tests already run them (no example runs twice):

* the Python blocks and spec blocks of docs/spec.md and docs/cookbook-mapping.md:
  tests/test_mapping_docs.py (their shell blocks do run here);
* docs/cli.md and docs/api.md are generated; the tests at the end check they are up to date
  (cli.md has no examples; api.md's docstring snippets do run here, after
  ``from ckptconv import *``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

# page -> files its examples use: name in the scratch directory -> (fixture generator, path in
# its output; or "examples", a path in examples/; or "fixtures", a committed file in tests/fixtures/).
# Every page also gets examples/.
PAGES: dict[str, dict[str, tuple[str, str]]] = {
    "README.md": {},
    "docs/index.md": {},
    "docs/getting-started.md": {},
    "docs/cookbook.md": {
        "keras2.h5": ("mapping", "keras2.h5"),
        "keras3_target.keras": ("mapping", "keras3_target.keras"),
        "torch_layout.safetensors": ("mapping", "torch_layout.safetensors"),
        "torch_fused.safetensors": ("mapping", "torch_fused.safetensors"),
        "torch_target.keras": ("mapping", "torch_target.keras"),
        "train": ("tf", "tf1"),
        "cnn.pt": ("fixtures", "pytorch/cnn.pt"),
        "cnn_input.npy": ("fixtures", "pytorch/cnn_input.npy"),
        "cnn_output.npy": ("fixtures", "pytorch/cnn_output.npy"),
    },
    "docs/api.md": {},
    "docs/formats-keras.md": {
        "quantized.keras": ("keras315", "q_int8.keras"),
        "checkpoints": ("keras315", "orbax_docs"),
    },
    "docs/formats-tensorflow.md": {
        "train": ("tf", "tf1"),
        "ckpt.index": ("tf", "tfkeras/ckpt.index"),
        "ckpt.data-00000-of-00001": ("tf", "tfkeras/ckpt.data-00000-of-00001"),
        "exported_model": ("tf", "sm_tfkeras"),
    },
    "docs/formats-safetensors.md": {},
    "docs/formats-pytorch.md": {
        "cnn.pt": ("fixtures", "pytorch/cnn.pt"),
        "training.pt": ("fixtures", "pytorch/training.pt"),
        "tied.pt": ("fixtures", "pytorch/zoo.pt"),
        "module.pt": ("fixtures", "pytorch/module.pt"),
        "expanded.pt": ("fixtures", "pytorch/expanded.pt"),
        "hf_sharded": ("fixtures", "pytorch/hf_sharded"),
    },
    "docs/spec.md": {},
    "docs/cookbook-mapping.md": {
        "seq3.weights.h5": ("mapping", "seq3.weights.h5"),
        "pretrained.weights.h5": ("mapping", "pretrained.weights.h5"),
        "new_model.keras": ("mapping", "transfer_target.keras"),
        "conv_test.weights.h5": ("mapping", "conv_test.weights.h5"),
        "torch_layout.safetensors": ("mapping", "torch_layout.safetensors"),
        "torch_target.keras": ("mapping", "torch_target.keras"),
        "torch_fused.safetensors": ("mapping", "torch_fused.safetensors"),
        "keras2.h5": ("mapping", "keras2.h5"),
        "keras3_model.keras": ("mapping", "keras3_target.keras"),
    },
    "docs/cookbook-seed-question.md": {},
    "docs/load-into.md": {
        "old_tf_keras_model.h5": ("examples", "sample_tf_keras.h5"),
        "new_architecture.keras": ("examples", "sample.keras"),
    },
    "docs/batch.md": {},
    "docs/suggest.md": {
        "pretrained.keras": ("suggest", "pretrained.keras"),
        "new_model.keras": ("suggest", "new_model.keras"),
        "state_dict.safetensors": ("fixtures", "torch_sequential/state_dict.safetensors"),
        "keras2.h5": ("mapping", "keras2.h5"),
        "keras3_model.keras": ("mapping", "keras3_target.keras"),
    },
    "docs/diff.md": {},
    "docs/performance.md": {},
    "docs/troubleshooting.md": {},
    "docs/architecture.md": {},
}
# committed files a page may use, by the first item of a PAGES entry
SOURCES = {"examples": ROOT / "examples", "fixtures": ROOT / "tests" / "fixtures"}
# Python run in a page's scratch directory and namespace before its blocks: files a page's
# commands use that its own examples make elsewhere (in a temporary directory of their own), or
# the imports a reference page's short snippets take for granted
SETUP: dict[str, str] = {
    "docs/api.md": "from ckptconv import *",
    "docs/suggest.md": """
import keras
L = keras.layers
keras.Sequential([keras.Input((3, 8, 8)), L.Conv2D(4, 3, data_format="channels_first", name="conv"),
                  L.BatchNormalization(axis=1, epsilon=1e-5, name="bn"), L.ReLU(), L.Flatten(),
                  L.Dense(16, name="fc1"), L.ReLU(), L.Dense(5, name="fc2")], name="twin").save("twin.keras")
""",
    "docs/cookbook-seed-question.md": """
import keras
L = keras.layers
keras.Sequential([keras.Input((28, 28, 1)), L.Conv2D(32, (3, 3), activation="relu", name="conv_1_pretrained"),
                  L.MaxPooling2D((2, 2), name="pool_1_pretrained"), L.Flatten(name="flatten_pretrained"),
                  L.Dense(10, activation="softmax", name="dense_pretrained")]).save("pretrained.keras")
keras.Sequential([keras.Input((28, 28, 1)), L.Conv2D(32, (3, 3), activation="relu", name="conv_1"),
                  L.MaxPooling2D((2, 2), name="pool_1"), L.Flatten(name="flatten"),
                  L.Dense(20, activation="relu", name="dense_1"),
                  L.Dense(5, activation="softmax", name="dense_2")]).save("target.keras")
""",
}
# languages whose blocks run; others (text, yaml, json, toml, plain) are data or output
RUN_LANGS = {"python", "console", "sh", "shell", "bash"}
# Python blocks another test runs (see the module docstring)
PYTHON_RUN_ELSEWHERE = {"docs/spec.md", "docs/cookbook-mapping.md"}

FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
MARKER = re.compile(r"<!--\s*(not-run|file|output)\s*:?\s*(.*?)\s*-->\s*$")


@dataclass
class Block:
    page: str
    line: int
    lang: str
    text: str
    action: str                 # run | skip | file | output
    detail: str = ""            # not-run reason, or file name
    output: str | None = None   # expected stdout of a python block (from its <!-- output --> block)

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def extract(page: str) -> list[Block]:
    """The page's fenced blocks in order, with their markers resolved."""
    text = (ROOT / page).read_text()
    blocks: list[Block] = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").splitlines()
        marker = MARKER.search(before[-1]) if before else None
        lang = m.group(1).lower()
        block = Block(page, text[: m.start()].count("\n") + 1, lang, m.group(2), "run")
        if marker:
            block.action = {"not-run": "skip", "file": "file", "output": "output"}[marker.group(1)]
            block.detail = marker.group(2)
        if block.action == "output":
            runs = [b for b in blocks if b.lang == "python" and b.action == "run"]
            assert runs and runs[-1] is blocks[-1], f"{block.id}: <!-- output --> must follow a python block"
            runs[-1].output = block.text
            continue
        if block.action == "run" and lang not in RUN_LANGS:
            block.action = "data"
        if block.action == "run" and lang == "python" and page in PYTHON_RUN_ELSEWHERE:
            block.action = "elsewhere"
        blocks.append(block)
    return blocks


def existing_pages() -> list[str]:
    return [p for p in PAGES if (ROOT / p).exists()]


# ---------------------------------------------------------------------------------------------
# the runner (runs in a subprocess: python tests/test_docs.py --run PLAN RESULTS)

DURATION = re.compile(r"\b\d+(?:\.\d+)? ?(?:s|ms|µs)\b")
RATE = re.compile(r"\b\d+(?:\.\d+)? ?[KMGT]i?B/s\b")


def normalise(text: str, workdir: str) -> str:
    text = text.replace(workdir, "/home/me")
    text = RATE.sub("<rate>", DURATION.sub("<time>", text))
    lines = [line.rstrip() for line in text.strip("\n").splitlines()]
    return "\n".join(lines)


def matches(expected: str, actual: str) -> bool:
    """``actual`` fits ``expected``, where a line ``...`` is any lines and ``...`` any text."""
    parts = []
    for line in expected.split("\n"):
        if line.strip() in ("...", "…"):
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append(re.escape(line).replace(r"\.\.\.", r"[^\n]*?").replace("…", r"[^\n]*?") + r"\n")
    return re.fullmatch("".join(parts), actual + "\n") is not None


def split_console(text: str, lang: str) -> list[tuple[str, str | None]]:
    """(command, shown output or None) pairs of a shell block."""
    lines = text.splitlines()
    if not any(line.startswith("$ ") for line in lines):
        cmds = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
        return [(c, None) for c in cmds]
    pairs: list[tuple[str, list[str]]] = []
    for line in lines:
        if line.startswith("$ "):
            pairs.append((line[2:], []))
        elif pairs and pairs[-1][0].endswith("\\") and not pairs[-1][1]:
            pairs[-1] = (pairs[-1][0][:-1] + " " + line.strip(), [])
        elif pairs:
            pairs[-1][1].append(line)
    return [(cmd, "\n".join(out) if any(o.strip() for o in out) else None) for cmd, out in pairs]


SHELL_SYNTAX = re.compile(r"\s(?:\||>|>>|<|&&|;|2>&1)\s|\$\(")  # needs bash: pipes, redirections


def run_ckptconv(argv: list[str]) -> tuple[int, str]:
    from ckptconv.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse usage errors and --help
            rc = e.code if isinstance(e.code, int) else 1
    return rc, buf.getvalue()


def run_shell(cmd: str, workdir: Path) -> tuple[int, str]:
    env = dict(os.environ)
    bindir = Path(sys.executable).parent
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(["bash", "-c", cmd], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


def run_console(block: Block, workdir: Path) -> str | None:
    """Run a shell block's commands; return a failure message or None."""
    pairs = split_console(block.text, block.lang)
    last_rc = 0
    for i, (cmd, shown) in enumerate(pairs):
        argv = shlex.split(cmd, comments=True)
        if not argv:
            continue
        if argv == ["echo", "$?"] or cmd.strip() == "echo $?":
            out = f"{last_rc}\n"
            rc = 0
        elif argv[0] == "ckptconv" and not SHELL_SYNTAX.search(cmd):
            rc, out = run_ckptconv(argv[1:])
        else:
            rc, out = run_shell(cmd.split(" #")[0], workdir)
        last_rc = rc
        expect_failure = (shown is not None and "ckptconv: error:" in shown) or (
            i + 1 < len(pairs) and pairs[i + 1][0].strip() == "echo $?")
        if expect_failure and rc == 0 and shown is not None and "ckptconv: error:" in shown:
            return f"`{cmd}` succeeded but the page shows an error:\n{out}"
        if not expect_failure and rc != 0:
            return f"`{cmd}` exited with status {rc}:\n{out[-4000:]}"
        if shown is not None:
            got = normalise(out, str(workdir))
            want = normalise(shown, str(workdir))
            if not matches(want, got):
                return f"`{cmd}` printed something else than the page shows.\n--- page:\n{want}\n--- actual:\n{got}"
    return None


def run_python(block: Block, namespace: dict, workdir: Path) -> str | None:
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            exec(compile(block.text, block.id, "exec"), namespace)
    except BaseException:  # noqa: BLE001 - report whatever the example raised
        return f"raised:\n{traceback.format_exc()[-4000:]}\nprinted:\n{buf.getvalue()[-2000:]}"
    if block.output is not None:
        got = normalise(buf.getvalue(), str(workdir))
        want = normalise(block.output, str(workdir))
        if not matches(want, got):
            return f"printed something else than the page shows.\n--- page:\n{want}\n--- actual:\n{got}"
    return None


def prepare(workdir: Path, files: dict[str, str]) -> None:
    """Fill a page's scratch directory: examples/ (copied: the page may write next to it)
    and the fixture files it names."""
    workdir.mkdir(parents=True, exist_ok=True)
    examples = workdir / "examples"
    shutil.copytree(ROOT / "examples", examples, ignore=shutil.ignore_patterns("out"))
    for name, src in files.items():
        dest = workdir / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if Path(src).is_dir():
            shutil.copytree(src, dest)
        else:
            shutil.copy2(src, dest)


def runner(plan_path: str, results_path: str) -> None:
    plan = json.loads(Path(plan_path).read_text())
    results: dict[str, str | None] = {}
    for page in plan["pages"]:
        workdir = Path(page["workdir"])
        prepare(workdir, page["files"])
        os.chdir(workdir)
        if "keras" in sys.modules:  # fresh Keras names per page, as in a new session
            sys.modules["keras"].backend.clear_session()
        namespace: dict = {"__name__": "__main__"}
        if page["setup"]:
            exec(compile(page["setup"], f"SETUP[{page['blocks'][0]['page']!r}]", "exec"), namespace)
        for raw in page["blocks"]:
            block = Block(**raw)
            try:
                if block.action == "file":
                    (workdir / block.detail).write_text(block.text)
                    error = None
                elif block.lang == "python":
                    error = run_python(block, namespace, workdir)
                else:
                    error = run_console(block, workdir)
            except BaseException:  # noqa: BLE001 - one block's failure must not stop the others
                error = f"the test runner failed:\n{traceback.format_exc()[-4000:]}"
            results[block.id] = error
            Path(results_path).write_text(json.dumps(results))  # kept if a later block crashes
        os.chdir(ROOT)


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "--run":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    runner(sys.argv[2], sys.argv[3])
    sys.exit(0)


# ---------------------------------------------------------------------------------------------
# the tests

import pytest  # noqa: E402

ALL_BLOCKS = [b for page in existing_pages() for b in extract(page)]
RUN_BLOCKS = [b for b in ALL_BLOCKS if b.action in ("run", "file")]


@pytest.fixture(scope="session")
def doc_results(generated, tmp_path_factory) -> dict[str, str | None]:
    base = tmp_path_factory.mktemp("docs")
    pages = []
    only = os.environ.get("CKPTCONV_DOCS_ONLY")  # e.g. "README.md,docs/batch.md" while editing a page
    for page in existing_pages():
        blocks = [b for b in extract(page) if b.action in ("run", "file")]
        if not blocks or (only and page not in only.split(",")):
            continue
        files = {name: str((SOURCES[gen] if gen in SOURCES else generated(gen)) / rel)
                 for name, (gen, rel) in PAGES[page].items()}
        workdir = base / page.replace("/", "_").removesuffix(".md")
        pages.append({"workdir": str(workdir), "files": files, "setup": SETUP.get(page, ""),
                      "blocks": [asdict(b) for b in blocks]})
    plan = base / "plan.json"
    plan.write_text(json.dumps({"pages": pages}))
    results = base / "results.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="", KERAS_BACKEND="tensorflow",
               COLUMNS="100")
    proc = subprocess.run([sys.executable, __file__, "--run", str(plan), str(results)], cwd=base,
                          env=env, capture_output=True, text=True, timeout=1800)
    found = json.loads(results.read_text()) if results.exists() else {}
    found["__runner__"] = (None if proc.returncode == 0 else
                           f"runner exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return found


def test_every_page_is_covered():
    """A new page must be added to PAGES (with the files its examples need)."""
    pages = {f"docs/{p.name}" for p in DOCS.glob("*.md")} - {"docs/cli.md"}
    assert pages <= set(PAGES), f"add to PAGES in {__file__}: {sorted(pages - set(PAGES))}"


def test_few_blocks_are_not_run():
    skipped = [b.id for b in ALL_BLOCKS if b.action == "skip"]
    for b in ALL_BLOCKS:
        if b.action == "skip":
            assert b.detail, f"{b.id}: say why the block cannot run: <!-- not-run: REASON -->"
    assert len(skipped) <= 12, skipped


def test_the_runner_finished(doc_results):
    assert doc_results["__runner__"] is None, doc_results["__runner__"]


@pytest.mark.parametrize("block", RUN_BLOCKS, ids=[b.id for b in RUN_BLOCKS])
def test_doc_example(doc_results, block):
    assert block.id in doc_results, f"{block.id} was not run (the runner stopped early?)\n{doc_results['__runner__']}"
    error = doc_results[block.id]
    assert error is None, f"{block.id} ({block.lang}): {error}"


def _script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("script", "page"), [("gen_cli_docs", "docs/cli.md"), ("gen_api_docs", "docs/api.md")])
def test_generated_reference_is_up_to_date(script, page):
    text = _script(script).render()
    assert (ROOT / page).read_text() == text, (
        f"{page} is out of date: run .venv/bin/python scripts/{script}.py")


LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for a page's headings."""
    found = set()
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


@pytest.mark.parametrize("page", ["README.md", "CHANGELOG.md", *(f"docs/{p.name}" for p in sorted(DOCS.glob("*.md")))])
def test_links_resolve(page):
    """Every relative link of README, CHANGELOG and docs/ names a file that exists (and a
    heading that exists, for #anchors into Markdown pages)."""
    path = ROOT / page
    text = FENCE.sub("", path.read_text())
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # http(s):, mailto:
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(target)
    assert not broken, f"{page}: broken links {broken}"


HOME = re.compile(r"`((?:[a-z_]+/)*[a-z_]+\.py)(?:: ([^`]+))?`")


def test_architecture_homes_exist():
    """docs/architecture.md's table of rules names real modules and the names they define, so
    the page cannot outlive a move or a rename."""
    import ast

    missing = []
    for line in (DOCS / "architecture.md").read_text().splitlines():
        if not line.startswith("|"):
            continue
        for path, names in HOME.findall(line):
            file = ROOT / "ckptconv" / path
            if not file.exists():
                missing.append(path)
                continue
            tree = ast.parse(file.read_text())
            defined = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
            defined |= {  # and module constants (SOURCE_CHECKSUMS_KEY)
                target.id for n in tree.body if isinstance(n, (ast.Assign, ast.AnnAssign))
                for target in (n.targets if isinstance(n, ast.Assign) else [n.target]) if isinstance(target, ast.Name)
            }
            for name in filter(None, (n.strip() for n in names.split(","))):
                if name.split(".")[0] not in defined:
                    missing.append(f"{path}: {name}")
    assert not missing, f"docs/architecture.md names what does not exist: {missing}"


def test_readme_spec_is_the_demo_spec():
    """The README's tour shows examples/specs/demo_feature_extractor.yaml: the same spec."""
    import yaml

    shown = [b.text for b in extract("README.md") if b.lang == "yaml"]
    path = ROOT / "examples" / "specs" / "demo_feature_extractor.yaml"
    assert shown and yaml.safe_load(shown[0]) == yaml.safe_load(path.read_text())


def test_output_matching():
    """The comparison the page examples rely on: ``...`` lines and text, times, paths."""
    assert matches("a\n...\nd", "a\nb\nc\nd")
    assert matches("a\n...\nd", "a\nd")
    assert matches("x ... z", "x yyy z")
    assert not matches("a\nb", "a\nc")
    assert not matches("a", "a\nb")
    assert normalise("/tmp/w/out.safetensors in 3.10 s (1.5 GB/s)  \n", "/tmp/w") == \
        "/home/me/out.safetensors in <time> (<rate>)"
