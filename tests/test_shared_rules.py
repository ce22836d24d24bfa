"""One implementation per rule, and the behaviour that differed while there were two.

* shard names are built and parsed in ``formats/safetensors.py`` only (the writer, ``verify``
  and ``batch``'s input listing each had their own, and ``batch`` took ``x-best-of-3`` for a
  shard);
* index JSON is read by ``formats.load_index`` only (the writer's own reader took bare strings
  only, so a Keras ``.weights.json`` index, whose groups map to lists, protected none of its
  shards);
* files are put in place by ``writers/outputs.py`` only (``transplant`` had its own atomic save,
  which set the process umask to 0 for an instant to read it);
* SIGTERM is turned into an exception by ``ckptconv.interrupts`` only (the CLI raised a
  KeyboardInterrupt of its own, the writer a SystemExit, and only the writer left an
  application's own handler alone);
* no module imports a private name from another package.
"""

from __future__ import annotations

import ast
import os
import signal
from pathlib import Path

import numpy as np
import pytest

import ckptconv
from ckptconv import Output, OutputError, write_safetensors
from ckptconv.batch import expand_inputs
from ckptconv.formats.safetensors import parse_shard_name, shard_names
from ckptconv.interrupts import Terminated, deferred_interrupts, sigterm_raises
from ckptconv.writers.outputs import atomic_file

PACKAGE = Path(ckptconv.__file__).parent


def test_shard_names_round_trip_and_nothing_else_is_a_shard(tmp_path: Path) -> None:
    for count in (1, 3, 12345, 123456):
        names = shard_names(tmp_path / "model.safetensors", count)
        for i, path in enumerate(names[:2] + names[-1:], start=1):
            stem, number, total = parse_shard_name(os.path.basename(path))  # type: ignore[misc]
            assert stem == "model" and total == count and number in (1, 2, count)
    for name in ("x-best-of-3.safetensors", "x-1-of-3.safetensors", "x-00004-of-00003.safetensors",
                 "x-00001-of-00003.safetensor", "-00001-of-00003.safetensors"):
        assert parse_shard_name(name) is None, name


def test_one_shard_name_rule_for_pytorch_bin_sets() -> None:
    """The same rule parses PyTorch's ``.bin`` shard names (``suffix=".bin"``), and a shard
    belongs to the set named ``dst`` by the stem left once that suffix is cut."""
    name = "pytorch_model-00002-of-00003.bin"
    assert parse_shard_name(name, suffix=".bin") == ("pytorch_model", 2, 3)
    assert parse_shard_name(name) is None  # not a safetensors shard
    assert parse_shard_name(name, "pytorch_model.bin", suffix=".bin") == ("pytorch_model", 2, 3)
    assert parse_shard_name(name, "/some/dir/pytorch_model.bin", suffix=".bin") == ("pytorch_model", 2, 3)
    assert parse_shard_name(name, "other.bin", suffix=".bin") is None
    assert parse_shard_name("model-00001-of-00002.safetensors", "model.safetensors") == ("model", 1, 2)
    assert parse_shard_name("model-00001-of-00002.safetensors", "model.bin") is None


def test_batch_keeps_an_input_that_only_looks_like_a_shard(tmp_path: Path) -> None:
    """``x-best-of-3.safetensors`` is no shard of ``x.safetensors.index.json`` (batch used to
    drop it from the inputs as one); ``x-00002-of-00003.safetensors`` is."""
    for name in ("x.safetensors.index.json", "x-best-of-3.safetensors", "x-00002-of-00003.safetensors"):
        (tmp_path / name).write_bytes(b"")
    inputs, _ = expand_inputs([str(tmp_path / "*")])
    assert sorted(os.path.basename(p) for p in inputs) == ["x-best-of-3.safetensors", "x.safetensors.index.json"]


def test_a_keras_index_protects_its_shards(generated, tmp_path: Path) -> None:
    """``protect=`` a Keras ``.weights.json``: its groups map to lists of shards, which the
    writer's own index reader skipped, so a shard could be overwritten."""
    import shutil

    for p in generated("load").glob("k3sharded*"):
        shutil.copyfile(p, tmp_path / p.name)
    shard = tmp_path / "k3sharded_00001.weights.h5"
    before = shard.read_bytes()
    outputs = [Output("a", (2,), np.float32, lambda: np.ones(2, np.float32))]
    with pytest.raises(OutputError, match="would overwrite the input"):
        write_safetensors(outputs, shard, force=True, protect=[tmp_path / "k3sharded.weights.json"])
    assert shard.read_bytes() == before


def test_files_get_the_umask_mode_without_the_umask_changing(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Both writers (streamed safetensors, a file written by Keras through ``atomic_file``)
    read the umask without setting it: a umask set to 0 even for an instant applies to the
    files every other thread creates meanwhile."""
    mask = os.umask(0o027)
    try:
        def no_umask(value: int) -> int:
            raise AssertionError("the process umask was changed")

        monkeypatch.setattr(os, "umask", no_umask)
        with atomic_file(tmp_path / "m.weights.h5", suffix=".tmp.weights.h5") as tmp:
            Path(tmp).write_bytes(b"written by someone else's code")
        write_safetensors([Output("a", (2,), np.float32, lambda: np.ones(2, np.float32))], tmp_path / "s.safetensors")
        monkeypatch.undo()
    finally:
        os.umask(mask)
    for name in ("m.weights.h5", "s.safetensors"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o640, name
    assert sorted(os.listdir(tmp_path)) == ["m.weights.h5", "s.safetensors"]


def test_sigterm_raises_terminated_a_systemexit_of_143() -> None:
    with pytest.raises(Terminated) as info:
        with sigterm_raises():
            os.kill(os.getpid(), signal.SIGTERM)  # Python runs the handler at the next bytecode
    assert isinstance(info.value, SystemExit) and not isinstance(info.value, Exception)
    assert info.value.code == 143
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_sigterm_raises_leaves_an_applications_handler_alone() -> None:
    seen: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with sigterm_raises():
            os.kill(os.getpid(), signal.SIGTERM)
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_deferred_interrupts_deliver_after_the_block() -> None:
    steps: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupts():
            os.kill(os.getpid(), signal.SIGINT)
            steps.append("still running after Ctrl-C")
            os.kill(os.getpid(), signal.SIGINT)  # twice: delivered once
            steps.append("done")
    assert steps == ["still running after Ctrl-C", "done"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_no_private_name_is_imported_from_another_package() -> None:
    """``from ..formats.safetensors import _load_index`` in verify.py and
    ``from .writers.safetensors import _sigterm_as_exit`` in batch.py are gone for good."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        module = path.relative_to(PACKAGE.parent).with_suffix("")
        package = list(module.parts[:-1])  # a module's package; for __init__, its own
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.startswith("ckptconv"):
                target = node.module.split(".")
            else:
                continue
            for alias in node.names:
                private_module = any(part.startswith("_") and not part.startswith("__") for part in target[1:])
                private_name = alias.name.startswith("_") and not alias.name.startswith("__")
                target_package = target if (PACKAGE.parent.joinpath(*target)).is_dir() else target[:-1]
                if (private_name or private_module) and target_package != package:
                    offenders.append(f"{module}: from {'.' * node.level}{node.module or ''} import {alias.name}")
    assert offenders == []


def test_one_atomic_save_puts_files_in_place() -> None:
    """Files get their final names in ``writers/outputs.py`` only (``atomic_file``, ``commit``):
    ``suggest -o`` had a third atomic save of its own, without the lock, the input check or
    the signal rules."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path == PACKAGE / "writers" / "outputs.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and (node.value.id, node.attr) in {("os", "replace"), ("os", "rename"), ("os", "link"),
                                                   ("tempfile", "mkstemp"), ("tempfile", "NamedTemporaryFile")}
            ):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {node.value.id}.{node.attr}")
    assert offenders == []

