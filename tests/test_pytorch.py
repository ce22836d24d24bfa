"""The PyTorch reader on files written by torch itself, compared bit-exactly with what
``torch.load(weights_only=True)`` returned for them (committed records, so torch is not needed).

Fixtures: ``tests/fixtures/pytorch/``, written by ``tests/generators/gen_pytorch.py`` (its
docstring lists them; ``manifest.json`` records torch's version). Tests that run torch itself
(is the committed record still what torch reads? does a converted file load back in torch?)
run in a subprocess and are skipped where torch is not installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

import ckptconv
from ckptconv.store import read_byte_range
from tests.helpers import assert_bit_exact, load_expected, run_cli

FIXTURES = Path(__file__).parent / "fixtures" / "pytorch"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
LABELS = list(MANIFEST["files"])
ROOT = Path(__file__).resolve().parent.parent


def source(label: str) -> Path:
    return FIXTURES / MANIFEST["files"][label]


def has_torch() -> bool:
    from importlib.util import find_spec

    return find_spec("torch") is not None


@pytest.mark.parametrize("label", LABELS)
def test_every_tensor_equals_torch_load(label: str) -> None:
    """Names (in torch's order), kinds, shapes, dtypes and bytes: what torch.load gave."""
    expected = load_expected(FIXTURES, label)
    with ckptconv.open(source(label)) as store:
        entries = store.entries(include_all=True)
        if store.format.startswith("pytorch"):
            assert [e.name for e in entries] == [x.name for x in expected]
        else:  # hf_both: safetensors' own order
            assert sorted(e.name for e in entries) == sorted(x.name for x in expected)
        for want in expected:
            entry = store[want.name]
            assert entry.kind == want.kind, want.name
            assert (entry.shape, entry.dtype) == (want.array.shape, want.array.dtype), want.name
            assert_bit_exact(entry.read(), want.array, want.name)
            out = np.empty(entry.shape, entry.dtype)
            assert_bit_exact(entry.read_into(out), want.array, want.name)


def test_formats_and_layouts() -> None:
    layouts = {}
    for label in LABELS:
        with ckptconv.open(source(label)) as store:
            layouts[label] = (store.format, store.metadata.get("layout"), store.metadata.get("byteorder"))
    assert layouts["zoo"] == ("pytorch", "zip", "little")
    assert layouts["zoo_legacy"] == ("pytorch", "legacy", "little")
    assert layouts["zoo_big"] == ("pytorch", "zip", "big")
    assert layouts["sharded"][0] == "pytorch-sharded"
    assert layouts["hf_repo"] == ("pytorch", "zip", "little")
    assert layouts["hf_both"][0] == "safetensors"  # transformers' choice: safetensors first


def test_contiguous_stored_tensors_are_byte_ranges_in_the_zip() -> None:
    """The file-to-file fast path: a contiguous tensor of a stored member is a plain byte range
    of the .pt file (at its storage offset), views and transformed storages are not."""
    with ckptconv.open(source("zoo")) as store:
        ranged = {e.name for e in store.entries() if e.byte_range is not None}
        for e in store.entries():
            if e.byte_range is not None:
                assert e.byte_range.path == os.fspath(source("zoo"))
                assert_bit_exact(read_byte_range(e.byte_range, e.dtype, e.shape), e.read(), e.name)
    assert {"dtype.float32", "dtype.bfloat16", "scalar.float8_e5m2", "view.offset_row", "tied.embed.weight"} <= ranged
    assert not {"view.transposed", "view.narrowed", "view.every_other", "view.permuted"} & ranged
    with ckptconv.open(source("zoo_legacy")) as store:  # the legacy layout's storages too
        assert store["dtype.float32"].byte_range is not None
    for label in ("zoo_big", "zoo_deflated"):
        with ckptconv.open(source(label)) as store:
            ranged = [e.name for e in store.entries() if e.byte_range is not None and e.dtype.itemsize > 1]
            assert not ranged if label == "zoo_deflated" else all("bool" in n or "int8" in n for n in ranged)


def test_tied_weights_are_each_an_entry_and_reported() -> None:
    for label in ("zoo", "zoo_legacy", "zoo_big", "zoo_deflated"):
        with ckptconv.open(source(label)) as store:
            assert store.tied == [("tied.embed.weight", "tied.lm_head.weight")], label
            assert_bit_exact(store["tied.embed.weight"].read(), store["tied.lm_head.weight"].read())
    result = run_cli("inspect", source("zoo"))
    assert result.returncode == 0, result.stderr
    assert "tied (one stored tensor): tied.embed.weight = tied.lm_head.weight" in result.stdout
    doc = json.loads(run_cli("inspect", source("zoo"), "--json").stdout)
    assert doc["tied"] == [["tied.embed.weight", "tied.lm_head.weight"]]


def test_training_checkpoint_names_kinds_and_skipped_values() -> None:
    with ckptconv.open(source("training")) as store:
        weights = [e.name for e in store.entries()]
        assert weights[:2] == ["model/features.0.weight", "model/features.0.bias"]
        conv = store["model/features.0.weight"]
        assert (conv.layer, conv.index) == ("model/features.0", 0)
        bn = {e.name.rsplit(".", 1)[1]: e.index for e in store.layers()["model/features.1"]}
        assert bn == {"weight": 0, "bias": 1, "running_mean": 2, "running_var": 3, "num_batches_tracked": 4}
        assert store["optimizer/state/0/exp_avg"].kind == "optimizer"
        assert store["optimizer/state/0/exp_avg"].layer == "optimizer/state/0"
        assert store["global_step"].kind == "bookkeeping"
        skipped = dict(store.skipped)
    assert skipped["epoch"] == "int 3"
    assert skipped["best_metric"] == "float 0.875"
    assert skipped["optimizer/param_groups/0/params"] == "list [0, 1, 2, 3, 4, 5]"
    assert "scheduler/gamma" in skipped
    shown = run_cli("inspect", source("training"))
    assert "(19 optimizer/bookkeeping entries not shown; use --all)" in shown.stdout
    assert "values that are not tensors skipped; --all lists them" in shown.stdout
    listed = run_cli("inspect", source("training"), "--all")
    assert "  epoch: int 3" in listed.stdout and "optimizer/state/0/exp_avg" in listed.stdout
    doc = json.loads(run_cli("inspect", source("training"), "--all", "--json").stdout)
    assert {"name": "note", "value": "str 'trained for the test suite'"} in doc["skipped"]


@pytest.mark.parametrize("given", ["hf_sharded", "hf_sharded/pytorch_model.bin.index.json"])
def test_sharded_set_through_index_or_directory(given: str) -> None:
    expected = {x.name: x.array for x in load_expected(FIXTURES, "sharded")}
    with ckptconv.open(FIXTURES / given) as store:
        assert store.format == "pytorch-sharded"
        assert store.metadata["total_size"] == str(sum(a.nbytes for a in expected.values()))
        assert len(store.files) == 3
        for name, array in expected.items():
            assert_bit_exact(store[name].read(), array, name)


def test_directory_with_safetensors_and_bin_reads_safetensors(tmp_path: Path) -> None:
    """As transformers does; the .bin is still readable when named."""
    with ckptconv.open(FIXTURES / "hf_both") as store:
        assert store.format == "safetensors"
    with ckptconv.open(FIXTURES / "hf_both" / "pytorch_model.bin") as store:
        assert store.format == "pytorch"
        for want in load_expected(FIXTURES, "hf_repo"):
            assert_bit_exact(store[want.name].read(), want.array, want.name)


def test_sharded_index_disagreeing_with_its_shards(tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "set"
    shutil.copytree(FIXTURES / "hf_sharded", copy)
    index = json.loads((copy / "pytorch_model.bin.index.json").read_text())
    index["weight_map"]["encoder.layer.9.dense.weight"] = "pytorch_model-00001-of-00002.bin"
    (copy / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    with pytest.raises(ckptconv.CorruptFileError, match="which does not hold it"):
        ckptconv.open(copy)
    index["weight_map"].pop("encoder.layer.9.dense.weight")
    index["weight_map"]["pooler.dense.weight"] = "pytorch_model-00001-of-00002.bin"
    (copy / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    with pytest.raises(ckptconv.CorruptFileError, match="the set is inconsistent"):
        ckptconv.open(copy)


@pytest.mark.parametrize("label", ["zoo", "zoo_legacy", "zoo_big", "zoo_deflated", "training"])
def test_convert_writes_format_pt_bit_exact(label: str, tmp_path: Path) -> None:
    out = tmp_path / "out.safetensors"
    result = ckptconv.convert(source(label), out, include_all=True)
    assert result.source_format == "pytorch"
    header = json.loads(_header(out))
    assert header["__metadata__"]["format"] == "pt"
    expected = {x.name: x.array for x in load_expected(FIXTURES, label)}
    with ckptconv.open(out) as written:
        assert sorted(written) == sorted(expected)
        for name, array in expected.items():
            assert_bit_exact(written[name].read(), array, name)
    assert ckptconv.verify_file(out).ok


def _header(path: Path) -> str:
    raw = path.read_bytes()
    return raw[8 : 8 + int.from_bytes(raw[:8], "little")].decode()


def test_convert_format_can_be_overridden(tmp_path: Path) -> None:
    out = tmp_path / "np.safetensors"
    ckptconv.convert(source("cnn"), out, metadata={"format": "np"})
    assert json.loads(_header(out))["__metadata__"]["format"] == "np"
    ckptconv.convert(FIXTURES / "hf_repo", tmp_path / "pt.safetensors")
    assert json.loads(_header(tmp_path / "pt.safetensors"))["__metadata__"]["format"] == "pt"


def test_convert_cli_file_to_file_and_safetensors_numpy(tmp_path: Path) -> None:
    out = tmp_path / "cnn.safetensors"
    result = run_cli("convert", source("cnn"), out)
    assert result.returncode == 0, result.stderr
    assert "(pytorch)" in result.stdout
    loaded = safetensors.numpy.load_file(str(out))
    for want in load_expected(FIXTURES, "cnn"):
        assert_bit_exact(loaded[want.name], want.array, want.name)


def test_weight_order_within_a_nested_layer() -> None:
    """index follows Keras' order of the weight's own name, after its layer (``model/lin`` +
    ``.weight``), whatever the stored order."""
    from ckptconv.store import Entry, keras_order

    entries = [
        Entry(name, key=name, shape=(1,), dtype=np.dtype("float32"), path="x", layer=name.rsplit(".", 1)[0],
              loader=lambda: np.zeros(1, np.float32))
        for name in ("model/bn.running_var", "model/bn.bias", "model/bn.weight", "model/bn.running_mean")
    ]
    keras_order(entries)
    assert {e.name.rsplit(".", 1)[1]: e.index for e in entries} == {
        "weight": 0, "bias": 1, "running_mean": 2, "running_var": 3}


def test_scalars_and_empty_tensors_keep_their_shapes() -> None:
    with ckptconv.open(source("zoo")) as store:
        assert store["scalar.bfloat16"].shape == () and store["scalar.bfloat16"].read().shape == ()
        assert store["empty.matrix"].shape == (3, 0) and store["empty.matrix"].read().size == 0
        assert store["view.permuted"].read().flags.c_contiguous


# -- torch itself: the oracle, where it is installed --------------------------------------------

TORCH_CHECK = r'''
import json, sys
import numpy as np, torch
sys.path.insert(0, sys.argv[2])
from gen_pytorch import as_numpy, records_of
import ckptconv
fixtures, manifest = sys.argv[1], json.load(open(sys.argv[1] + "/manifest.json"))
problems, count = [], 0
for label, rel in manifest["files"].items():
    path = f"{fixtures}/{rel}"
    with ckptconv.open(path) as store:
        if not store.format.startswith("pytorch"):
            continue
        torch_files = store.files[1:] if store.format == "pytorch-sharded" else store.files
        loaded = {}
        for file in torch_files:
            loaded.update(torch.load(file, weights_only=True, map_location="cpu"))
        records = records_of(loaded)
        for r in records:
            count += 1
            got = store[r["name"]].read()
            if got.dtype != r["array"].dtype or got.shape != r["array"].shape or got.tobytes() != r["array"].tobytes():
                problems.append(f"{label}: {r['name']}")
# a converted file loads back in torch's safetensors
import safetensors.torch
out = sys.argv[3]
ckptconv.convert(f"{fixtures}/zoo.pt", out)
back = safetensors.torch.load_file(out)
for name, t in torch.load(f"{fixtures}/zoo.pt", weights_only=True).items():
    count += 1
    if as_numpy(back[name]).tobytes() != as_numpy(t).tobytes():
        problems.append(f"converted: {name}")
print(json.dumps({"problems": problems, "count": count}))
'''


@pytest.mark.skipif(not has_torch(), reason="torch is not installed")
def test_fixtures_still_equal_torch_load_and_convert_loads_in_torch(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", TORCH_CHECK, str(FIXTURES), str(ROOT / "tests" / "generators"), str(tmp_path / "z.safetensors")],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["count"] > 150 and result["problems"] == []


BLOCKER = '''
import sys

class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("torch", "tensorflow", "keras", "jax"):
            raise ImportError(f"{name} is blocked: this test runs without torch")
        return None

sys.meta_path.insert(0, _NoTorch())
'''

WITHOUT_TORCH = r'''
import json, sys
import ckptconv
from ckptconv.cli import main
fixtures, manifest, out = sys.argv[1], json.load(open(sys.argv[1] + "/manifest.json")), sys.argv[2]
digests = {}
for label, rel in manifest["files"].items():
    with ckptconv.open(f"{fixtures}/{rel}") as store:
        for entry in store.entries(include_all=True):
            digests[f"{label}:{entry.name}"] = entry.read().tobytes().hex()
    assert main(["inspect", f"{fixtures}/{rel}", "--all"]) == 0
    assert main(["convert", f"{fixtures}/{rel}", f"{out}/{label}.safetensors", "--all", "--quiet"]) == 0
leaked = [m for m in sys.modules if m.partition(".")[0] in ("torch", "tensorflow", "keras", "jax")]
assert not leaked, leaked
print(json.dumps(digests))
'''


def test_reading_and_converting_without_torch(tmp_path: Path) -> None:
    """Every fixture read, inspected and converted with torch (and TF, Keras, JAX) unimportable."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]))
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "blocked" in probe.stderr
    proc = subprocess.run([sys.executable, "-c", WITHOUT_TORCH, str(FIXTURES), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    digests = json.loads(proc.stdout.splitlines()[-1])
    for label in LABELS:
        for want in load_expected(FIXTURES, label):
            assert digests[f"{label}:{want.name}"] == np.ascontiguousarray(want.array).tobytes().hex()


def test_batch_converts_pytorch_files_and_a_bin_set_once(tmp_path: Path) -> None:
    """batch takes .pt files and a Hugging Face .bin set (its shards are part of the index)."""
    from ckptconv.batch import expand_inputs, plan_jobs, run_batch

    found, _ = expand_inputs([f"{FIXTURES}/hf_sharded/*.bin*", f"{FIXTURES}/cnn.pt"])
    assert [Path(p).name for p in found] == ["pytorch_model.bin.index.json", "cnn.pt"]
    jobs = plan_jobs(found, tmp_path / "out", expand=False)
    assert [Path(j.dst).name for j in jobs] == ["pytorch_model.safetensors", "cnn.safetensors"]
    report = run_batch(jobs, workers=1)
    assert all(r.ok for r in report.results), [r.error for r in report.results]
    with ckptconv.open(tmp_path / "out" / "pytorch_model.safetensors") as store:
        assert len(store) == 6


def test_complex128_is_read_and_refused_by_name_for_safetensors(tmp_path: Path) -> None:
    """torch's ComplexDoubleStorage reads as complex128; safetensors has no such dtype."""
    from tests.test_pytorch_hostile import rezip, tensor_pickle

    path = tmp_path / "c128.pt"
    rezip(FIXTURES / "cnn.pt", path,
          replace={"data.pkl": tensor_pickle(("0", 54, 0, (6, 9), (9, 1)), name="z", storage_type="ComplexDoubleStorage")})
    with ckptconv.open(path) as store, ckptconv.open(FIXTURES / "cnn.pt") as original:
        z = store["z"].read()
        assert z.dtype == np.complex128 and z.shape == (6, 9)
        assert z.tobytes() == original["features.0.weight"].read().tobytes()
    with pytest.raises(ckptconv.CkptconvError, match="complex128"):
        ckptconv.convert(path, tmp_path / "z.safetensors")
    assert not (tmp_path / "z.safetensors").exists()


def test_fnuz_float8_is_read_and_converts_with_a_cast(tmp_path: Path) -> None:
    """torch's float8_e4m3fnuz and float8_e5m2fnuz (written by torch 2.13, gen_pytorch.fnuz_dtypes)
    are read as ml_dtypes' types of the same layout; safetensors has no code for them, so
    convert asks for a cast, and --dtype float32 gives their exact values."""
    expected = load_expected(FIXTURES, "fnuz")
    with ckptconv.open(FIXTURES / "fnuz.pt") as store:
        assert [e.name for e in store.entries()] == [x.name for x in expected]
        for want in expected:
            assert store[want.name].dtype_name == want.array.dtype.name  # float8_e4m3fnuz, float8_e5m2fnuz
            assert_bit_exact(store[want.name].read(), want.array, want.name)
    refused = run_cli("convert", FIXTURES / "fnuz.pt", tmp_path / "x.safetensors")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "tensor 'e4m3fnuz': safetensors has no float8_e4m3fnuz dtype" in refused.stderr and "cast it" in refused.stderr
    assert not (tmp_path / "x.safetensors").exists()
    done = run_cli("convert", FIXTURES / "fnuz.pt", tmp_path / "x.safetensors", "--dtype", "float32")
    assert done.returncode == 0, done.stderr
    with ckptconv.open(tmp_path / "x.safetensors") as written:
        for want in expected:
            with np.errstate(invalid="ignore"):
                assert_bit_exact(written[want.name].read(), want.array.astype(np.float32), want.name)
