"""The mapping docs' examples run: every spec block loads, every Python block executes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ckptconv.mapping import load_spec

DOCS = Path(__file__).parent.parent / "docs"
PAGES = ("spec.md", "cookbook-mapping.md")
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


WRITTEN = re.compile(r"<!--\s*file\s*:?.*?-->\s*\n$")


def blocks(kind: str) -> list[tuple[str, str]]:
    """The pages' blocks of ``kind``, but for those a ``<!-- file: NAME -->`` marker writes to
    a file: tests/test_docs.py runs those with the commands after them (a spec shown with
    the error it gets, such as a YAML merge key's)."""
    found = []
    for page in PAGES:
        for m in FENCE.finditer((DOCS / page).read_text()):
            if m.group(1) == kind and not WRITTEN.search(m.string[: m.start()]):
                found.append((f"{page}:{m.string[: m.start()].count(chr(10)) + 1}", m.group(2)))
    return found


SPEC_BLOCKS = [(where, kind, text) for kind in ("yaml", "json", "toml") for where, text in blocks(kind)
               if "rules" in text]
PYTHON_BLOCKS = blocks("python")


def test_the_pages_have_examples():
    assert len(SPEC_BLOCKS) >= 10 and len(PYTHON_BLOCKS) >= 3


@pytest.mark.parametrize(("where", "kind", "text"), SPEC_BLOCKS, ids=[w for w, _, _ in SPEC_BLOCKS])
def test_spec_blocks_load(tmp_path, where, kind, text):
    path = tmp_path / f"spec.{kind}"
    path.write_text(text)
    spec = load_spec(path)
    assert spec.rules or "rules = []" in text or "rules: []" in text


@pytest.mark.parametrize(("where", "code"), PYTHON_BLOCKS, ids=[w for w, _ in PYTHON_BLOCKS])
def test_python_blocks_run(tmp_path, monkeypatch, where, code):
    if "import keras" in code:
        # a live-model example: run it where Keras may be imported, not in the test process
        script = tmp_path / "example.py"
        script.write_text(code)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="", KERAS_BACKEND="tensorflow")
        proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{where}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        return
    monkeypatch.chdir(tmp_path)  # blocks that write files write them here
    exec(compile(code, where, "exec"), {"__name__": "__docs__"})


def test_json_report_example_is_valid_json():
    reports = [text for where, text in blocks("json") if '"counts"' in text]
    assert reports
    for text in reports:
        json.loads(text)
