"""Bad mapping specs fail before anything is read or written, with one line naming the rule.

Each spec is written by the test (YAML, JSON or TOML) and used with a real source file
(``generators/gen_load.py``'s ``k3.safetensors``): through ``ckptconv convert --map``,
``ckptconv plan --map`` and ``load_into(model, path, mapping)``. Syntax and schema errors
name the spec file; a rule that cannot apply to the source names the source and the rule
(``rule #N (from '...')``); nothing is written and the model is left as it was.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import ckptconv
from ckptconv import CkptconvError, PlanError, SpecError
from ckptconv.cli import main as cli_main
from tests.test_robustness_corpus import hashes, twin  # noqa: F401 - fixture

# name -> (file name, text, error class, what the line must say, names the spec file (else the source))
SPECS: dict[str, tuple[str, str, type[CkptconvError], str, bool]] = {
    "invalid-yaml": ("bad.yaml", 'version: 1\nrules:\n  - from: "a\n    to: [b\n', SpecError, "not valid YAML", True),
    "invalid-json": ("bad.json", '{"version": 1, "rules": [}', SpecError, "not valid JSON", True),
    "invalid-toml": ("bad.toml", "version = 1\n[[rules]\n", SpecError, "not valid TOML", True),
    "empty-file": ("empty.yaml", "", SpecError, "empty", True),
    "not-a-mapping": ("list.yaml", "- a\n- b\n", SpecError, "expected a mapping", True),
    "unknown-version": ("v.yaml", "version: 7\nrules: []\n", SpecError, "version", True),
    "unknown-top-level-key": ("k.yaml", "version: 1\nrulez: []\n", SpecError, "unknown top-level key 'rulez'", True),
    "unknown-rule-key": (
        "k.yaml", 'version: 1\nrules:\n  - from: "emb/*"\n    too: "x/{1}"\n', SpecError,
        "rule #1 (from 'emb/*'): unknown key 'too'", True,
    ),
    "unknown-op": (
        "op.yaml", 'version: 1\nrules:\n  - from: emb/embeddings\n    to: e\n    ops: [transpoze]\n', SpecError,
        "rule #1 (from 'emb/embeddings'): unknown op 'transpoze'", True,
    ),
    "invalid-regex": (
        "re.yaml", 'version: 1\nrules:\n  - from: "re:emb/(emb"\n    to: e\n', SpecError,
        "rule #1 (from 're:emb/(emb'): invalid regular expression", True,
    ),
    "unknown-dtype": (
        "dt.yaml", "version: 1\nrules:\n  - from: emb/embeddings\n    to: e\n    ops: [{cast: float7}]\n", SpecError,
        "rule #1 (from 'emb/embeddings'): cast: unknown dtype 'float7'", True,
    ),
    "template-capture-missing": (
        "cap.yaml", "version: 1\nrules:\n  - from: emb/embeddings\n    to: e/{3}\n", SpecError,
        "rule #1 (from 'emb/embeddings'): template 'e/{3}' uses {3}", True,
    ),
    "slice-index-out-of-range": (
        "sl.yaml", 'version: 1\nrules:\n  - from: emb/embeddings\n    to: e\n    ops: [{slice: "[:, 9]"}]\n', PlanError,
        "rule #1 (from 'emb/embeddings')", False,
    ),
    "slice-too-many-axes": (
        "sl.yaml", 'version: 1\nrules:\n  - from: emb/embeddings\n    to: e\n    ops: [{slice: "[:, :, :, 1]"}]\n',
        PlanError, "rule #1 (from 'emb/embeddings')", False,
    ),
    "slice-not-an-index": (
        "sl.yaml", 'version: 1\nrules:\n  - from: emb/embeddings\n    to: e\n    ops: [{slice: "[:, import os]"}]\n',
        SpecError, "rule #1 (from 'emb/embeddings')", True,
    ),
    "reshape-impossible": (
        "rs.yaml", "version: 1\nrules:\n  - from: emb/embeddings\n    to: e\n    ops: [{reshape: [7, 7]}]\n", PlanError,
        "rule #1 (from 'emb/embeddings')", False,
    ),
    "rule-matches-nothing": (
        "nm.yaml", 'version: 1\nrules:\n  - from: "encoder/*"\n    to: "e/{1}"\n', PlanError,
        "rule #1 (from 'encoder/*'): matches no entry", False,
    ),
    "yaml-tab-indent": (
        "tab.yaml", "version: 1\nrules:\n\t- {from: emb/embeddings, to: e}\n", SpecError,
        "not valid YAML at line 3, column 1: found character that cannot start any token (a tab: YAML indents with spaces only)",
        True,
    ),
    # a 300-byte "billion laughs": each line repeats the previous one nine times
    "yaml-alias-bomb": (
        "bomb.yaml",
        "version: 1\na: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
        + "".join(f"{b}: &{b} [{', '.join(['*' + a] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi"))
        + "rules: []\n",
        SpecError, "YAML aliases are not allowed in a spec (*a at line 3)", True,
    ),
    "regex-catastrophic-backtracking": (
        "re.yaml", 'version: 1\nrules:\n  - from: "re:(e+)+mb/embeddings"\n    to: e\n', SpecError,
        "rule #1 (from 're:(e+)+mb/embeddings'): regular expression '(e+)+mb/embeddings' can take "
        "exponential time to match (catastrophic backtracking", True,
    ),
    # the pattern as written: its backslashes single, not doubled as a Python repr shows them
    "regex-catastrophic-with-backslashes": (
        "re.yaml", "version: 1\nrules:\n  - from: 're:(\\w+\\.)*embeddings'\n    to: e\n", SpecError,
        r"rule #1 (from 're:(\w+\.)*embeddings'): regular expression '(\w+\.)*embeddings' can take "
        "exponential time to match", True,
    ),
    "regex-overlapping-alternatives": (
        "re.yaml", 'version: 1\nrules:\n  - from: "re:(?:e|em)*b/embeddings"\n    to: e\n', SpecError,
        "catastrophic backtracking: a repeated part holds alternatives that can match the same text", True,
    ),
    "reshape-to-101-dimensions": (
        "rs.yaml", "version: 1\nrules:\n  - from: emb/embeddings\n    to: e\n    ops: [{reshape: [20, 8"
        + ", 1" * 99 + "]}]\n", PlanError, "would have 101 dimensions, more than the 64 an array can have", False,
    ),
    "two-outputs-one-name": (
        "dup.yaml", "version: 1\nrules:\n  - from: head/kernel\n    to: x\n  - from: head/bias\n    to: x\n", PlanError,
        "'x'", False,
    ),
}


@pytest.fixture(scope="module")
def source(generated) -> Path:
    return generated("load") / "k3.safetensors"


def write_spec(tmp_path: Path, name: str) -> tuple[Path, type[CkptconvError], str, bool]:
    file_name, text, error, says, names_spec = SPECS[name]
    spec = tmp_path / "specs" / file_name
    spec.parent.mkdir()
    spec.write_text(text)
    return spec, error, says, names_spec


def one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("ckptconv: error: ") and "Traceback" not in stderr
    return lines[0]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_bad_spec(name: str, source: Path, twin, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    spec, error, says, names_spec = write_spec(tmp_path, name)
    named = str(spec) if names_spec else str(source)
    out = tmp_path / "out"
    out.mkdir()
    before = hashes(spec.parent) | {"source": hashes(source.parent)[source.name]}

    status = cli_main(["convert", str(source), str(out / "model.safetensors"), "--map", str(spec)])
    line = one_line(capsys.readouterr().err)
    assert status == 1
    assert named in line and says in line, line
    assert os.listdir(out) == []

    # the dry run lists every problem (one per line), here the one there is
    status = cli_main(["plan", str(source), "--map", str(spec)])
    captured = capsys.readouterr()
    assert status == 1, captured.out
    assert says in captured.err and "Traceback" not in captured.err
    assert all(line.startswith("ckptconv: ") for line in captured.err.splitlines())

    with pytest.raises(error, match=None) as info:
        ckptconv.convert(source, out / "model.safetensors", mapping=spec)
    assert says in str(info.value) and info.value.path is not None
    assert os.listdir(out) == []

    weights = [w.copy() for w in twin.get_weights()]
    with pytest.raises(CkptconvError) as info:
        ckptconv.load_into(twin, source, spec)
    assert "\n" not in str(info.value)
    if names_spec:  # a broken spec is the same error whatever it is used for
        assert isinstance(info.value, error) and says in str(info.value)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(weights, twin.get_weights()))
    assert hashes(spec.parent) | {"source": hashes(source.parent)[source.name]} == before


@pytest.mark.parametrize("libyaml", [True, False])
def test_yaml_specs_read_alike_with_and_without_libyaml(libyaml: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """libyaml's parser when PyYAML has it, PyYAML's own otherwise: the same spec, the same
    refusal of an alias (at its line)."""
    import yaml

    from ckptconv.mapping import load_spec

    if not libyaml:
        monkeypatch.delattr(yaml, "CSafeLoader", raising=False)
    elif not hasattr(yaml, "CSafeLoader"):
        pytest.skip("PyYAML without libyaml")
    spec = load_spec("version: 1\nrules:\n  - {from: dense.weight, to: dense/kernel, ops: [transpose]}\n  - drop: x\n")
    assert [(r.from_, r.to) for r in spec.rules[:1]] == [("dense.weight", "dense/kernel")] and len(spec.rules) == 2
    with pytest.raises(SpecError, match=r"YAML aliases are not allowed in a spec \(\*a at line 3\)"):
        load_spec("version: 1\na: &a [1]\nb: *a\nrules: []\n")
