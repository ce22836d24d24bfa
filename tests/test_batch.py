"""``ckptconv batch`` and :mod:`ckptconv.batch`: many real checkpoints, one damaged, in worker
processes; every good file converts bit-exactly, the damaged one is reported, exit status 1."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import ckptconv
from ckptconv.batch import (
    FileResult,
    Job,
    convert_one,
    expand_inputs,
    output_name,
    plan_jobs,
    run_batch,
    stem_of,
)
from tests.helpers import run_cli
from tests.helpers import assert_bit_exact, load_expected

GOOD = {  # input name -> (file in the generated fixtures, its expected label)
    "k3_zoo.weights.h5": ("k3_zoo.weights.h5", "k3_zoo.weights.h5"),
    "k3_seq.weights.h5": ("k3_seq.weights.h5", "k3_seq.weights.h5"),
    "archive.keras": ("k3_zoo.keras", "k3_zoo.keras"),
    "tk_zoo_w.h5": ("tk_zoo_w.h5", "tk_zoo_w.h5"),
}


@pytest.fixture(scope="module")
def keras_dir(generated) -> Path:
    return generated("keras")


@pytest.fixture
def inputs(keras_dir: Path, tmp_path: Path) -> Path:
    """A directory of real checkpoints plus one damaged (truncated) copy."""
    directory = tmp_path / "in"
    directory.mkdir()
    for name, (fixture, _) in GOOD.items():
        shutil.copy(keras_dir / fixture, directory / name)
    raw = (keras_dir / "k3_zoo.weights.h5").read_bytes()
    (directory / "broken.weights.h5").write_bytes(raw[: len(raw) // 3])
    return directory


def check_outputs(out: Path, keras_dir: Path) -> None:
    for name, (_, label) in GOOD.items():
        dst = out / f"{stem_of(name)}.safetensors"
        expected = load_expected(keras_dir, label)
        with ckptconv.open(dst) as store:
            assert sorted(store) == sorted(e.name for e in expected), name
            for want in expected:
                assert_bit_exact(store[want.name].read(), want.array, want.name)
        assert ckptconv.verify_file(dst).ok


def test_batch_with_one_damaged_file(inputs: Path, keras_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_cli("batch", f"{inputs}/*", "-o", out, "-j", "2")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    ok = [line for line in lines if line.startswith("ok ")]
    assert len(ok) == len(GOOD) and len(lines) == len(GOOD) + 1, proc.stdout  # and the summary
    # the failure: one error line on stderr naming the input, as every command's errors
    errors = proc.stderr.splitlines()
    assert len(errors) == 1 and errors[0].startswith(f"ckptconv: error: {inputs}/broken.weights.h5: "), errors
    assert "broken.weights.h5" not in proc.stdout
    for name in GOOD:
        assert any(f"{name} -> " in line and "tensors" in line for line in ok), name
    assert lines[-1].startswith("5 files: 4 converted, 1 failed")
    check_outputs(out, keras_dir)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{stem_of(n)}.safetensors" for n in GOOD)


def test_batch_json_report_and_list_file(inputs: Path, tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text(
        "# inputs\n" + f"{inputs / 'k3_seq.weights.h5'}\n\n{inputs / 'broken.weights.h5'}\n"
    )
    out = tmp_path / "out"
    proc = run_cli("batch", "--from-file", listing, "-o", out, "--json", "--dtype", "bfloat16")
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)  # stdout: the one JSON document; the failure also on stderr
    assert proc.stderr.startswith(f"ckptconv: error: {inputs / 'broken.weights.h5'}: ") and proc.stderr.count("\n") == 1
    assert doc["ok"] is False
    assert doc["summary"]["files"] == 2 and doc["summary"]["failed"] == 1
    by_src = {Path(f["src"]).name: f for f in doc["files"]}
    assert by_src["k3_seq.weights.h5"]["ok"] is True
    assert by_src["k3_seq.weights.h5"]["tensors"] == 4
    assert by_src["broken.weights.h5"]["ok"] is False
    assert by_src["broken.weights.h5"]["error"]
    with ckptconv.open(out / "k3_seq.safetensors") as store:  # the options reached the job
        assert all(e.dtype == np.dtype(ml_dtypes.bfloat16) for e in store.entries())


def test_existing_outputs_fail_without_force(inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "k3_seq.safetensors").write_bytes(b"keep me")
    proc = run_cli("batch", inputs / "k3_seq.weights.h5", "-o", out)
    assert proc.returncode == 1
    assert "already exists" in proc.stderr and "already exists" not in proc.stdout
    assert (out / "k3_seq.safetensors").read_bytes() == b"keep me"
    proc = run_cli("batch", inputs / "k3_seq.weights.h5", "-o", out, "--force", "--max-shard-size", "20B")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (out / "k3_seq.safetensors.index.json").is_file()
    assert not (out / "k3_seq.safetensors").exists()  # the old single file was replaced by the set


def test_usage_errors(inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_cli("batch", f"{inputs}/*.h5", "-o", out, "--name-pattern", "same.safetensors")
    assert proc.returncode == 2 and "both write" in proc.stderr
    proc = run_cli("batch", f"{inputs}/*.h5", "-o", out, "--name-pattern", "{nope}.safetensors")
    assert proc.returncode == 2 and "{nope}" in proc.stderr
    proc = run_cli("batch", "-o", out)
    assert proc.returncode == 2
    proc = run_cli("batch", inputs / "k3_seq.weights.h5", "-o", out, "--max-shard-size", "lots")
    assert proc.returncode == 2 and "size" in proc.stderr
    assert not out.exists()


def test_unmatched_glob_is_reported(inputs: Path, tmp_path: Path) -> None:
    proc = run_cli("batch", inputs / "k3_seq.weights.h5", f"{tmp_path}/none/*.h5", "-o", tmp_path / "o")
    assert proc.returncode == 1
    assert proc.stderr == f"ckptconv: error: {tmp_path}/none/*.h5: no input matches this pattern\n"
    assert "no input matches" not in proc.stdout
    assert "2 files: 1 converted, 1 failed" in proc.stdout


def test_name_pattern_fields() -> None:
    assert stem_of("a/model.weights.h5") == "model"
    assert stem_of("a/model.keras") == "model"
    assert stem_of("ckpt/model.ckpt-10.index") == "model.ckpt-10"
    assert stem_of("x/model.safetensors.index.json") == "model"
    assert stem_of("x/saved_model_dir/") == "saved_model_dir"
    assert output_name("runs/r1/best.h5", 3, "{parent}_{stem}_{index}.safetensors") == "r1_best_3.safetensors"
    assert output_name("runs/r1/best.h5", 0, "{name}.safetensors") == "best.h5.safetensors"
    with pytest.raises(ValueError, match="inside OUTDIR"):
        plan_jobs(["a.h5"], "out", pattern="../{stem}.safetensors")


def test_expand_inputs_drops_parts_of_listed_checkpoints(tmp_path: Path) -> None:
    for name in ("ckpt-1.index", "ckpt-1.data-00000-of-00001", "m.safetensors.index.json",
                 "m-00001-of-00002.safetensors", "m-00002-of-00002.safetensors", "lone-00001-of-00002.safetensors"):
        (tmp_path / name).write_bytes(b"")
    found, unmatched = expand_inputs([f"{tmp_path}/*", f"{tmp_path}/ckpt-1.index", f"{tmp_path}/zz*"])
    assert sorted(Path(p).name for p in found) == [
        "ckpt-1.index", "lone-00001-of-00002.safetensors", "m.safetensors.index.json",
    ]
    assert unmatched == [f"{tmp_path}/zz*"]


def test_per_file_job_is_plain_and_picklable(inputs: Path, keras_dir: Path, tmp_path: Path) -> None:
    """What a Dask or Ray task would run: a top-level function, picklable in and out."""
    assert pickle.loads(pickle.dumps(convert_one)) is convert_one
    good = convert_one(str(inputs / "k3_seq.weights.h5"), str(tmp_path / "sub" / "seq.safetensors"))
    bad = convert_one(str(inputs / "broken.weights.h5"), str(tmp_path / "broken.safetensors"))
    for result in (good, bad):
        assert isinstance(pickle.loads(pickle.dumps(result)), FileResult)
    assert good.ok and good.tensors == 4 and good.files == [str(tmp_path / "sub" / "seq.safetensors")]
    assert not bad.ok and bad.error_type in ("CorruptFileError", "FormatError")
    assert not (tmp_path / "broken.safetensors").exists()


def test_run_batch_in_process(inputs: Path, keras_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    jobs = plan_jobs([f"{inputs}/*"], out)
    assert Job(str(inputs / "archive.keras"), str(out / "archive.safetensors")) in jobs
    seen: list[str] = []
    report = run_batch(jobs, workers=1, on_result=lambda r: seen.append(r.src))
    assert seen == [j.src for j in jobs]
    assert [Path(r.src).name for r in report.failed] == ["broken.weights.h5"]
    assert len(report.succeeded) == len(GOOD)
    check_outputs(out, keras_dir)


def test_worked_script_demo(tmp_path: Path) -> None:
    """scripts/batch_convert_example.py --demo: two runs convert and verify, the damaged one
    is reported, exit status 1, and the JSON report says the same."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, str(root / "scripts" / "batch_convert_example.py"), "--demo", "-j", "2"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("3 checkpoints under ")
    assert sum(line.startswith("ok ") for line in lines) == 2
    failed = [line for line in lines if line.startswith("failed ")]
    assert len(failed) == 1 and "run3" in failed[0] and "truncated" in failed[0]
    assert not any(line.startswith("CORRUPT") for line in lines)
    assert lines[-1].startswith("2 converted, 1 failed")


def dies_on_poison(src: str, dst: str, **options: object) -> FileResult:
    """A per-file job whose process dies (as under the out-of-memory killer) for one input."""
    import os

    if "poison" in src:
        os._exit(137)
    return convert_one(src, dst, **options)


def test_a_dying_worker_fails_only_its_file(inputs: Path, keras_dir: Path, tmp_path: Path) -> None:
    shutil.copy(inputs / "k3_seq.weights.h5", inputs / "poison.weights.h5")
    out = tmp_path / "out"
    jobs = plan_jobs([f"{inputs}/*"], out)
    report = run_batch(jobs, workers=2, job=dies_on_poison)
    failed = {Path(r.src).name: r for r in report.failed}
    assert set(failed) == {"broken.weights.h5", "poison.weights.h5"}
    assert failed["poison.weights.h5"].error_type == "WorkerDied"
    assert "worker process died" in (failed["poison.weights.h5"].error or "")
    assert [r.src for r in report.results] == [j.src for j in jobs]
    check_outputs(out, keras_dir)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary files


def test_a_file_the_batch_did_not_write_is_replaced_only_with_force(inputs: Path, tmp_path: Path) -> None:
    """Outputs absent before the batch are its own (a retry may replace them); a file already
    there under one of an output's names, a stray shard included, is not."""
    out = tmp_path / "out"
    out.mkdir()
    stray = out / "k3_seq-00001-of-00002.safetensors"
    stray.write_bytes(b"not ours")
    jobs = plan_jobs([str(inputs / "k3_seq.weights.h5"), str(inputs / "k3_zoo.weights.h5")], out)
    report = run_batch(jobs, max_shard_size="20B")
    assert [Path(r.src).name for r in report.failed] == ["k3_seq.weights.h5"]
    assert "did not write it" in (report.failed[0].error or "")  # a stranger: --force would not help
    assert stray.read_bytes() == b"not ours"
    assert (out / "k3_zoo.safetensors.index.json").is_file()
