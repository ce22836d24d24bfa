"""``diff``: the same weights in every format compare equal (exit 0); one changed value, a
missing tensor, another shape or dtype do not (exit 1, naming the tensor); tolerances; a live
model on one side; a big tensor in bounded memory."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

import ckptconv
from ckptconv import DiffReport, Entry, diff
from tests.helpers import run_cli

TORCH = Path(__file__).resolve().parent / "fixtures" / "torch_sequential"
DIFF = sys.modules["ckptconv.mapping.diff"]  # the module (ckptconv.mapping.diff is the function)

# every file of the twin architecture holds the same values (tests/generators/gen_load.py)
SAME_AS_K3 = ["k3.keras", "k3legacy.h5", "k3.safetensors", "k3ckpt", "k3sharded.weights.json", "tk.h5", "tkw.h5"]


@pytest.fixture(scope="module")
def twin(generated) -> Path:
    return generated("load")


def st_copy(src: Path, dst: Path, change=None) -> dict[str, np.ndarray]:
    """Copy a safetensors file through numpy, letting ``change`` edit the arrays."""
    arrays = safetensors.numpy.load_file(str(src))
    if change is not None:
        change(arrays)
    safetensors.numpy.save_file(arrays, str(dst))
    return arrays


@pytest.mark.parametrize("other", SAME_AS_K3)
def test_the_same_weights_in_every_format_are_equal(twin, other):
    result = run_cli("diff", twin / "k3.weights.h5", twin / other)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.rstrip().endswith("\nequal")
    assert "29 tensor(s) compared: 29 bit-exact; 0 only in A, 0 only in B" in result.stdout


def test_a_torch_file_and_its_safetensors_twin_are_equal():
    """torch.save's zip and safetensors.torch.save_file of one state dict (committed files)."""
    result = run_cli("diff", TORCH / "state_dict.pt", TORCH / "state_dict.safetensors")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "11 tensor(s) compared: 11 bit-exact; 0 only in A, 0 only in B" in result.stdout
    report = diff(TORCH / "state_dict.pt", TORCH / "state_dict.safetensors")
    assert (report.format_a, report.format_b) == ("pytorch", "safetensors") and report.equal


def test_names_that_differ_are_listed_and_a_map_fixes_them(twin, tmp_path):
    """tf-keras records a nested model's variables without its name (inner_a/kernel)."""
    plain = run_cli("diff", twin / "tkckpt", twin / "k3.keras", "--json")
    assert plain.returncode == 1
    report = json.loads(plain.stdout)
    assert report["equal"] is False
    assert [t["name"] for t in report["only_in_a"]] == ["inner_a/kernel", "inner_a/bias", "inner_b/kernel", "inner_b/bias"]
    assert [t["name"] for t in report["only_in_b"]] == ["block/inner_a/kernel", "block/inner_a/bias", "block/inner_b/kernel", "block/inner_b/bias"]
    spec = tmp_path / "nest.yaml"
    spec.write_text('rules:\n  - {from: "re:(inner_.)/(.*)", to: "block/{1}/{2}"}\n')
    mapped = run_cli("diff", twin / "tkckpt", twin / "k3.keras", "--map", spec, "--json")
    assert mapped.returncode == 0, mapped.stdout
    report = json.loads(mapped.stdout)
    assert report["equal"] and report["counts"]["equal"] == 29
    renamed = next(t for t in report["tensors"] if t["name"] == "block/inner_a/kernel")
    assert renamed["sources"] == ["inner_a/kernel"]


def test_one_changed_value_is_named(twin, tmp_path):
    changed = tmp_path / "changed.safetensors"

    def change(arrays):
        arrays["conv/kernel"][1, 2, 0, 1] += np.float32(0.5)

    arrays = st_copy(twin / "k3.safetensors", changed, change)
    result = run_cli("diff", twin / "k3.keras", changed)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    (row,) = [line for line in lines if line.startswith("different")]
    assert "conv/kernel" in row and "1 of 27 values differ" in row and "first at [1, 2, 0, 1]" in row
    assert lines[-1] == "NOT equal"
    report = diff(twin / "k3.keras", changed)
    (d,) = report.differences
    assert d.name == "conv/kernel" and d.status == "different" and d.mismatched == 1
    assert d.max_abs == pytest.approx(0.5, rel=1e-6) and d.first == (1, 2, 0, 1)
    assert d.first_b == float(arrays["conv/kernel"][1, 2, 0, 1])


def test_a_missing_tensor(twin, tmp_path):
    fewer = tmp_path / "fewer.safetensors"
    st_copy(twin / "k3.safetensors", fewer, lambda arrays: arrays.pop("head/bias"))
    result = run_cli("diff", twin / "k3.weights.h5", fewer)
    assert result.returncode == 1
    assert any(line.startswith("only in A") and "head/bias" in line for line in result.stdout.splitlines())
    report = diff(fewer, twin / "k3.weights.h5")
    assert [t.name for t in report.only_in_b] == ["head/bias"] and not report.only_in_a
    assert all(t.ok for t in report.tensors) and not report.equal


def test_tolerances(tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    base = np.linspace(-2, 2, 101, dtype=np.float32)
    safetensors.numpy.save_file({"w": base}, str(a))
    near = base.copy()
    near[10] += np.float32(1e-4)                       # |a - b| ~ 1e-4 at an element of ~ -1.6
    safetensors.numpy.save_file({"w": near}, str(b))
    assert run_cli("diff", a, b).returncode == 1
    assert run_cli("diff", a, b, "--atol", "1e-3").returncode == 0
    assert run_cli("diff", a, b, "--atol", "1e-5").returncode == 1
    assert run_cli("diff", a, b, "--rtol", "1e-3").returncode == 0     # relative to |b| ~ 1.6
    assert run_cli("diff", a, b, "--rtol", "1e-6").returncode == 1
    close = diff(a, b, atol=1e-3).tensors[0]
    assert close.status == "close" and close.mismatched == 0 and close.max_abs == pytest.approx(1e-4, rel=0.05)
    assert close.max_rel == pytest.approx(1e-4 / abs(float(near[10])), rel=0.05)
    # the value of a number: -0.0 is 0.0, two NaNs are equal; a NaN is not a number
    z = np.array([0.0, np.nan, 1.0, np.inf], np.float32)
    safetensors.numpy.save_file({"w": z}, str(a))
    safetensors.numpy.save_file({"w": np.array([-0.0, np.nan, 1.0, np.inf], np.float32)}, str(b))
    t = diff(a, b).tensors[0]
    assert t.status == "close" and t.max_abs == 0.0 and t.values_equal
    safetensors.numpy.save_file({"w": np.array([0.0, 5.0, 1.0, np.inf], np.float32)}, str(b))
    t = diff(a, b, atol=1e9).tensors[0]
    assert (t.status, t.mismatched, t.nan_mismatched, t.first) == ("different", 1, 1, (1,))
    assert t.max_abs is None and not t.values_equal  # a NaN against a number has no distance
    safetensors.numpy.save_file({"w": np.array([0.0, np.nan, 1.0, 3e38], np.float32)}, str(b))
    t = diff(a, b, atol=1e9, rtol=1.0).tensors[0]
    assert t.status == "different" and t.first == (3,)      # inf against a finite number
    t = diff(b, a, atol=1e9, rtol=1.0).tensors[0]
    assert t.status == "different" and t.first == (3,)      # a finite number against inf


def test_signed_zeros_and_nans_say_what_they_are(capsys, tmp_path):
    """-0.0 against 0.0 (bytes differ, values equal) is said to be equal in value, not "within
    tolerance"; a NaN against a number is a NaN mismatch with no infinite max abs; NaN against
    NaN is equal, whatever the bits (numpy's array_equal(equal_nan=True))."""
    from ckptconv.cli import main

    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    other_nan = np.array([np.nan, 1.0], np.float32)
    other_nan.view(np.uint32)[0] = 0x7FC00001
    safetensors.numpy.save_file({"z": np.array([0.0, 1.0], np.float32), "q": np.array([np.nan, 1.0], np.float32)}, str(a))
    safetensors.numpy.save_file({"z": np.array([-0.0, 1.0], np.float32), "q": other_nan}, str(b))
    assert main(["diff", "-v", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    lines = [" ".join(line.split()) for line in out.splitlines()]
    for name in ("z", "q"):
        assert f"close {name} values equal, bytes differ (-0.0 against 0.0, or NaNs with other bits)" in lines
    assert "2 tensor(s) compared: 0 bit-exact, 2 equal in value but not bit-exact; 0 only in A" in out
    assert "tolerance" not in out and "max abs" not in out, out

    safetensors.numpy.save_file({"z": np.array([0.0, 1.0], np.float32), "q": np.array([1.0, 1.0], np.float32),
                                 "one": np.array([np.nan], np.float32), "mixed": np.array([np.nan, 2.0, 3.0])}, str(a))
    safetensors.numpy.save_file({"z": np.array([0.0, 1.0], np.float32), "q": np.array([np.nan, 1.0], np.float32),
                                 "one": np.array([7.0], np.float32), "mixed": np.array([1.0, 2.5, 3.0])}, str(b))
    assert main(["diff", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    lines = [" ".join(line.split()) for line in out.splitlines()]
    assert "different q 1 of 2 values differ, a NaN against a number; first at [0]: 1.0 vs nan" in lines
    assert "different one 1 of 1 values differ, a NaN against a number; first at [0]: nan vs 7.0" in lines
    assert ("different mixed 2 of 3 values differ (1 of them a NaN against a number); max abs 0.5, max rel 0.2 "
            "(NaNs aside); first at [0]: nan vs 1.0") in lines
    assert "inf" not in out, out
    assert main(["diff", "--json", str(a), str(b)]) == 1
    tensors = {t["name"]: t for t in json.loads(capsys.readouterr().out)["tensors"]}
    # every difference of q is a NaN against a number: no largest difference, though its other
    # element is equal (docs/diff.md: null "when every difference is a NaN")
    assert [(tensors[n]["mismatched"], tensors[n]["nan_mismatched"], tensors[n]["max_abs"]) for n in ("q", "one", "mixed")] == [
        (1, 1, None), (1, 1, None), (2, 1, 0.5)]
    assert (tensors["z"]["status"], tensors["z"]["nan_mismatched"]) == ("equal", 0)

    safetensors.numpy.save_file({"w": np.array([0.0, np.nan, 1.0], np.float32),
                                 "s": np.array([-0.0, 2.0], np.float32)}, str(a))
    safetensors.numpy.save_file({"w": np.full(3, np.nan, np.float32), "s": np.array([0.0, 2.0], np.float32)}, str(b))
    assert main(["diff", "--json", str(a), str(b)]) == 1
    tensors = {t["name"]: t for t in json.loads(capsys.readouterr().out)["tensors"]}
    assert [tensors["w"][k] for k in ("mismatched", "nan_mismatched", "max_abs", "max_rel")] == [2, 2, None, None]
    assert [tensors["s"][k] for k in ("status", "max_abs", "max_rel")] == ["close", 0.0, 0.0]  # equal in value


def _zoo() -> list:
    import ml_dtypes

    wide = np.array([2**62, -(2**62), 5], np.int64)  # 2**62 + 1 is the same float64 as 2**62
    return [
        pytest.param(np.array(1.5, np.float32), (), id="scalar"),
        pytest.param(np.zeros((0, 3), np.float32), None, id="empty"),
        pytest.param(np.linspace(-1, 1, 7).astype(np.float16), (6,), id="float16"),
        pytest.param(np.linspace(-1, 1, 7).astype(ml_dtypes.bfloat16), (3,), id="bfloat16"),
        pytest.param(wide, (0,), id="int64-beyond-float64"),
        pytest.param(np.array([True, False, True]), (1,), id="bool"),
        pytest.param(np.arange(24, dtype=np.float64).reshape(4, 6)[:, ::2], (3, 2), id="non-contiguous"),
    ]


@pytest.mark.parametrize("array, where", _zoo())
def test_dtype_and_shape_zoo(array, where):
    """Equal to a copy of itself; one element changed (by the least step its dtype has) is
    found at its index, at tolerance 0."""
    same = diff({"t": array}, {"t": array.copy()})
    assert same.equal and same.tensors[0].status == "equal"
    if where is None:
        return
    changed = array.copy()  # C order, as the bit view below needs
    if changed.dtype == bool:
        changed[where] = not changed[where]
    elif changed.dtype.kind in "iu":
        changed[where] += 1
    else:  # the last bit of the stored value: one step of its own dtype
        bits = changed.view(f"u{changed.dtype.itemsize}")
        bits[where] ^= 1
    assert changed[where] != array[where]
    (t,) = diff({"t": array}, {"t": changed}).tensors
    assert t.status == "different" and t.mismatched == 1 and t.first == tuple(where)
    assert t.max_abs is not None and t.max_abs > 0


def test_shape_and_dtype_differences(tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    w = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    safetensors.numpy.save_file({"w": w, "v": w[0]}, str(a))
    safetensors.numpy.save_file({"w": np.ascontiguousarray(w.T), "v": w[0].astype(np.float16)}, str(b))
    report = diff(a, b)
    by_name = {t.name: t for t in report.tensors}
    assert by_name["w"].status == "shape" and by_name["w"].size == 0
    assert by_name["v"].status == "dtype" and by_name["v"].max_abs > 0
    assert not report.equal
    result = run_cli("diff", a, b)
    assert result.returncode == 1
    assert "shape [3, 4] in A, [4, 3] in B" in result.stdout
    assert "dtype float32 in A, float16 in B" in result.stdout


def test_dtype_option_checks_a_cast_exactly(twin, tmp_path):
    """``convert --dtype bfloat16`` then ``diff --dtype bfloat16``: B is exactly A cast."""
    out = tmp_path / "bf16.safetensors"
    assert run_cli("convert", twin / "k3.keras", out, "--dtype", "bfloat16").returncode == 0
    assert run_cli("diff", twin / "k3.keras", out).returncode == 1        # float32 vs bfloat16
    cast = run_cli("diff", twin / "k3.keras", out, "--dtype", "bfloat16")
    assert cast.returncode == 0, cast.stdout
    assert run_cli("diff", twin / "k3.keras", out, "--dtype", "target").returncode == 0


def test_blocks_of_a_big_tensor(tmp_path, monkeypatch):
    """Streamed in blocks (small ones here): the difference in a later block is found with
    its index; a recorded CRC-32C that fails is reported as damage."""
    monkeypatch.setattr(DIFF, "BLOCK_BYTES", 4096)
    w = np.random.default_rng(0).standard_normal((300, 100)).astype(np.float32)
    a = tmp_path / "a.safetensors"
    safetensors.numpy.save_file({"w": w, "small": w[0, :3].copy()}, str(a))
    c = tmp_path / "c.safetensors"
    ckptconv.convert(a, c)  # records CRC-32Cs
    assert diff(a, c).equal
    w2 = w.copy()
    w2[250, 7] = 0.0
    b = tmp_path / "b.safetensors"
    safetensors.numpy.save_file({"w": w2, "small": w[0, :3].copy()}, str(b))
    t = {t.name: t for t in diff(a, b).tensors}["w"]
    assert t.status == "different" and t.mismatched == 1 and t.first == (250, 7)
    assert t.size == 30000
    # flip a byte of c inside w's data, far from its start: the CRC check names the tensor
    header = ckptconv.open(c)
    offset = header["w"].byte_range.offset + 4 * 25007
    header.close()
    data = bytearray(c.read_bytes())
    data[offset] ^= 0x01
    c.write_bytes(bytes(data))
    with pytest.raises(ckptconv.IntegrityError, match="'w'"):
        diff(a, c)


# The child's own peak: VmHWM belongs to the address space exec made. (ru_maxrss would not
# do: it survives exec, so a child forked from a test process that holds TensorFlow starts
# with that process' size.)
_MEMORY_SCRIPT = r"""
import json, sys
from ckptconv import diff
report = diff(sys.argv[1], sys.argv[2])
(t,) = report.tensors
with open("/proc/self/status") as f:
    peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) // 1024
print(json.dumps({"status": t.status, "first": t.first, "mismatched": t.mismatched, "nbytes": report.nbytes,
                  "peak_mib": peak}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the peak from /proc")
def test_big_tensor_in_bounded_memory(tmp_path):
    """Two files of one 256 MiB tensor, differing in its last element: the comparison's peak
    memory stays far below one tensor (reading them whole would take 512 MiB)."""
    n = 64 << 20  # float32 elements: 256 MiB
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    w = np.zeros(n, dtype=np.float32)
    safetensors.numpy.save_file({"big": w}, str(a))
    w[-1] = 1.0
    safetensors.numpy.save_file({"big": w}, str(b))
    del w
    proc = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, str(a), str(b)], capture_output=True, text=True,
                          timeout=600, cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["status"] == "different" and result["first"] == [n - 1] and result["mismatched"] == 1, result
    assert result["nbytes"] == 2 * 4 * n, result
    assert result["peak_mib"] < 160, f"peak RSS {result['peak_mib']} MiB"


def test_a_live_model_against_a_file(twin):
    keras = pytest.importorskip("keras")
    from tests.generators.gen_load import build_keras3

    keras.backend.clear_session()
    model = build_keras3(keras)
    ckptconv.load_into(model, twin / "k3.keras")
    report = diff(model, twin / "k3.weights.h5")
    assert report.equal and len(report.tensors) == 29 and report.format_a == "keras-model"
    kernel = model.get_layer("head").kernel
    kernel.assign(np.array(kernel) * 2)
    report = diff(twin / "k3.weights.h5", model)
    assert [t.name for t in report.differences] == ["head/kernel"]


def test_usage_errors_and_json_failures(twin, tmp_path):
    for bad in (["--atol", "-1"], ["--rtol", "abc"], ["--atol", "nan"], ["--dtype", "floot32"], ["--atl", "1"]):
        result = run_cli("diff", twin / "k3.keras", twin / "k3.keras", *bad)
        assert result.returncode == 2, (bad, result.stderr)
    missing = run_cli("diff", twin / "k3.keras", tmp_path / "nope.safetensors")
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and "nope.safetensors" in missing.stderr
    as_json = run_cli("diff", twin / "k3.keras", tmp_path / "nope.safetensors", "--json")
    assert as_json.returncode == 1
    doc = json.loads(as_json.stdout)
    assert doc["ok"] is False and "nope.safetensors" in doc["error"]["message"] and doc["error"]["exit"] == 1
    bad_spec = tmp_path / "bad.yaml"
    bad_spec.write_text("rules:\n  - {from: nothing/like/this, to: x}\n")
    result = run_cli("diff", twin / "k3.keras", twin / "k3.keras", "--map", bad_spec)
    assert result.returncode == 1 and "matches no entry" in result.stderr
    with pytest.raises(ValueError, match="atol"):
        diff(twin / "k3.keras", twin / "k3.keras", atol=-1)
    with pytest.raises(ckptconv.UsageError, match=r"^B: expected a checkpoint path.*received builtins.object"):
        diff({"x": np.zeros(2)}, object())


def test_report_json_is_one_object(twin):
    result = run_cli("diff", twin / "k3.keras", twin / "k3ckpt", "--json", "-v")
    assert result.returncode == 0
    report = json.loads(result.stdout)
    assert report["equal"] is True and report["a"]["format"] == "keras-archive"
    assert report["b"]["format"] == "tf-checkpoint" and len(report["tensors"]) == 29
    assert all(t["status"] == "equal" for t in report["tensors"])
    assert isinstance(DiffReport, type)
    assert os.path.basename(report["b"]["path"]) == "k3ckpt"


def test_json_tells_a_difference_from_a_failure(twin, tmp_path):
    """Both exit 1 with "ok": false; "result" says "different" when the comparison ran (and
    the report says how), "error" replaces it when the comparison could not run."""
    same = json.loads(run_cli("diff", twin / "k3.keras", twin / "k3.safetensors", "--json").stdout)
    assert same["ok"] is True and same["result"] == "equal" and same["equal"] is True and "error" not in same
    changed = tmp_path / "changed.safetensors"
    st_copy(twin / "k3.safetensors", changed, lambda arrays: arrays.pop("head/bias"))
    differ = run_cli("diff", twin / "k3.keras", changed, "--json")
    assert differ.returncode == 1
    doc = json.loads(differ.stdout)
    assert doc["ok"] is False and doc["result"] == "different" and doc["equal"] is False and "error" not in doc
    assert [t["name"] for t in doc["only_in_a"]] == ["head/bias"]
    api = diff(twin / "k3.keras", changed).to_json()  # the object the CLI prints after "ok"
    assert api["result"] == "different" and {"ok": False, **api} == doc
    changed.write_bytes(changed.read_bytes()[:-4])  # the last tensor's data cut short
    failed = run_cli("diff", twin / "k3.keras", changed, "--json")
    assert failed.returncode == 1
    doc = json.loads(failed.stdout)
    assert doc["ok"] is False and doc["error"]["exit"] == 1 and "changed.safetensors" in doc["error"]["message"]
    assert "result" not in doc and "equal" not in doc and "tensors" not in doc


ALIAS_CASES = {
    # tf-keras spells a DepthwiseConv2D kernel depthwise_kernel, Keras 3 kernel
    "depthwise": ({"dw/depthwise_kernel": (2, 3), "dw/bias": (3,)}, {"dw/kernel": (2, 3), "dw/bias": (3,)}),
    # tf-keras records a TimeDistributed layer's variables without the inner layer's name
    "wrapper": ({"td/kernel": (2, 3), "other": (1,)}, {"td/fc/kernel": (2, 3), "more": (1,)}),
    "none": ({"a/kernel": (2, 3)}, {"b/kernel": (2, 3)}),
    "two-take-one-name": ({"d/kernel": (2, 3), "d/depthwise_kernel": (2, 3)}, {"d/kernel": (2, 3)}),
}


@pytest.mark.parametrize("case", list(ALIAS_CASES))
def test_without_a_spec_entries_pair_as_the_identity_plan_pairs_them(case):
    """diff without --map or --dtype skips planning: A's entries pair under the names the
    identity plan gives them (a Keras 2 / Keras 3 alias B spells them by), or, when two would
    take one name, the plan decides (and reports it)."""
    def store(shapes):
        return ckptconv.Store.from_arrays({n: np.ones(s, np.float32) for n, s in shapes.items()})

    a, b = (store(shapes) for shapes in ALIAS_CASES[case])
    entries_b = {e.name: e for e in b.entries()}
    fast = DIFF._as_stored(a.entries(), entries_b)
    if case == "two-take-one-name":
        assert fast is None
        with pytest.raises(ckptconv.PlanError, match="2 outputs are named 'd/kernel'"):
            diff(a, b)
        return
    planned = DIFF._planned(a, entries_b, mapping=None, dtype=None, include_all=False)
    assert [(o.name, o.source.name, renamed) for o, renamed in fast] == [
        (o.name, o.source.name, renamed) for o, renamed in planned
    ]
    report = diff(a, b)
    compared = [(o.name, renamed) for o, renamed in planned if o.name in entries_b]
    assert [(t.name, t.sources) for t in report.tensors] == compared
    assert [t.name for t in report.only_in_a] == [o.name for o, _ in planned if o.name not in entries_b]


def test_training_state_keeps_its_names_as_in_the_identity_plan():
    """--all: an optimizer slot keeps its name (no alias), a weight takes B's spelling."""
    def store(names):
        entries = [
            Entry(name, key=name, shape=(2,), dtype=np.dtype("float32"), path="<memory>",
                  loader=lambda: np.ones(2, np.float32), kind=kind)
            for name, kind in names
        ]
        return ckptconv.Store(entries, format="memory", path="<memory>")

    a = store([("dw/depthwise_kernel", "weight"), ("slots/depthwise_kernel", "optimizer")])
    b = store([("dw/kernel", "weight"), ("slots/kernel", "optimizer")])
    entries_b = {e.name: e for e in b.entries(include_all=True)}
    fast = DIFF._as_stored(a.entries(include_all=True), entries_b)
    planned = DIFF._planned(a, entries_b, mapping=None, dtype=None, include_all=True)
    named = [(o.name, o.source.name, renamed) for o, renamed in fast]
    assert named == [(o.name, o.source.name, renamed) for o, renamed in planned]
    assert named == [("dw/kernel", "dw/depthwise_kernel", ("dw/depthwise_kernel",)),
                     ("slots/depthwise_kernel", "slots/depthwise_kernel", ())]
    report = diff(a, b, include_all=True)
    assert [t.name for t in report.tensors] == ["dw/kernel"]
    assert [t.name for t in report.only_in_a] == ["slots/depthwise_kernel"]


def test_without_a_spec_diff_imports_no_plan_and_no_keras_loader(twin, tmp_path):
    """diff of two files without --map or --dtype imports neither the spec, op and plan
    machinery nor ckptconv.keras (start-up is part of "as fast as reading both files")."""
    probe = (
        "import sys\n"
        "from ckptconv.cli import main\n"
        "status = main(sys.argv[1:])\n"
        "print(status, sorted(m for m in sys.modules if m.startswith(('ckptconv.keras', 'ckptconv.mapping.'))))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(Path(ckptconv.__file__).parents[1]), os.environ.get("PYTHONPATH")])))

    def modules(*argv):
        done = subprocess.run([sys.executable, "-c", probe, "diff", *map(str, argv)], env=env, capture_output=True, text=True, timeout=300)
        status, _, listed = done.stdout.splitlines()[-1].partition(" ")
        assert status == "0", done.stdout + done.stderr
        return set(ast.literal_eval(listed))

    plain = modules(twin / "k3.weights.h5", twin / "k3.safetensors")
    assert plain == {
        "ckptconv.mapping.diff", "ckptconv.mapping.diff_report", "ckptconv.mapping.aliases", "ckptconv.mapping.tables"
    }, plain  # not the plan report (mapping.report) either
    spec = tmp_path / "same.yaml"
    spec.write_text("rules:\n  - {from: '**', to: '{0}'}\n")
    mapped = modules(twin / "k3.weights.h5", twin / "k3.safetensors", "--map", spec)
    assert {"ckptconv.mapping.plan", "ckptconv.mapping.spec", "ckptconv.mapping.ops"} <= mapped, mapped
    assert not any(m.startswith("ckptconv.keras") for m in mapped), mapped


def test_strings_compare_by_value_and_odd_sizes_byte_by_byte():
    """A TensorFlow checkpoint's string tensors read as arrays of Python bytes objects, which
    have no bytes of their own to compare: their values are; fixed-width strings and sizes
    that are no multiple of 8 bytes compare byte by byte."""
    a = {
        "s": np.array([b"ab", b"cd"], dtype=object),
        "same": np.array([b"x", b"yz"], dtype=object),
        "u": np.array(["x", "y"]),
        "odd": np.arange(3, dtype=np.uint8),
    }
    b = {
        "s": np.array([b"ab", b"ce"], dtype=object),
        "same": np.array([b"x", b"yz"], dtype=object),
        "u": np.array(["x", "z"]),
        "odd": np.array([0, 1, 7], dtype=np.uint8),
    }
    report = diff(a, b)
    got = {t.name: (t.status, t.mismatched, t.first, t.first_a, t.first_b) for t in report.tensors}
    assert got == {
        "s": ("different", 1, (1,), "cd", "ce"),
        "same": ("equal", 0, None, None, None),
        "u": ("different", 1, (1,), "y", "z"),
        "odd": ("different", 1, (2,), 2, 7),
    }
    assert diff(a, a).equal


def test_no_name_in_common_points_at_suggest() -> None:
    """Two sides with no name in common (the same weights under PyTorch and Keras names) say
    how to pair them; sides that share names do not."""
    import numpy as np

    from ckptconv import Store, diff

    keras_side = Store.from_arrays({"dense/kernel": np.ones((2, 3), np.float32)})
    torch_side = Store.from_arrays({"dense.weight": np.ones((3, 2), np.float32)})
    text = diff(keras_side, torch_side).format_text()
    assert "no tensor name is in both" in text and "ckptconv suggest A --target B" in text
    assert text.splitlines()[-1] == "NOT equal"
    both = Store.from_arrays({"dense/kernel": np.ones((2, 3), np.float32), "x": np.zeros(1, np.float32)})
    assert "no tensor name is in both" not in diff(keras_side, both).format_text()
