"""Format detection imports only the readers that may claim a path (issue 18): the Keras
readers (and h5py) are skipped when a path's head shows they cannot claim it, the
safetensors, TF and torch readers when a directory holds none of the names they look for,
the Orbax reader for anything but a directory; and that skip never changes which format
claims a path."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from ckptconv import formats

ROOT = Path(__file__).parent.parent
GATED = formats.FORMAT_MODULES  # every reader is offered a path only through _may_claim


def _corpus(generated, tmp_path: Path) -> list[Path]:
    """Every file and directory the real writers wrote (torch.save files included), the
    examples, and a few odd paths (empty, a zip and a JSON of no known kind, a directory
    with a config.json only)."""
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "empty").write_bytes(b"")
    (odd / "list.json").write_text("[1, 2]")
    (odd / "index.json").write_text(json.dumps({"weight_map": {"a": "x.weights.h5"}}))
    with zipfile.ZipFile(odd / "other.zip", "w") as z:
        z.writestr("config.json", "{}")
    (odd / "config_only").mkdir()
    (odd / "config_only" / "config.json").write_text("{}")
    # directories claimed by a name the Hugging Face loaders look for, other than the usual
    (odd / "st_index").mkdir()
    save_file({"w": np.ones(2, np.float32)}, str(odd / "st_index" / "part-1.safetensors"))
    (odd / "st_index" / "custom.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"w": "part-1.safetensors"}})
    )
    (odd / "bin_index").mkdir()
    (odd / "bin_index" / "custom.bin.index.json").write_text(json.dumps({"weight_map": {"w": "a.bin"}}))
    # an Orbax checkpoint whose only step is still being written
    (odd / "unfinished" / "3.orbax-checkpoint-tmp-17").mkdir(parents=True)
    roots = [generated("keras"), generated("keras315"), generated("tf"), ROOT / "examples", ROOT / "tests" / "fixtures", odd]
    paths = []
    for root in roots:
        paths += [root, *sorted(p for p in root.rglob("*") if not p.name.startswith("."))]
    return paths


def test_skipped_readers_would_not_have_claimed(generated, tmp_path: Path) -> None:
    import importlib

    modules = {name: importlib.import_module(f"ckptconv.formats.{name}") for name in GATED}
    claims = {name: 0 for name in GATED}
    for path in _corpus(generated, tmp_path):
        head = formats._head(path)
        for name, module in modules.items():
            try:
                claimed = module.sniff(path, head)
            except Exception:  # noqa: BLE001 - detect counts a raising sniff as no claim
                claimed = False
            if claimed:
                claims[name] += 1
                assert formats._may_claim(name, path, head), (name, path)
    assert all(claims.values()), claims  # each reader claims something: the check is not empty


_PROBE = """
import json, sys
from ckptconv import formats
store = formats.open(sys.argv[1])
print(json.dumps({"format": store.format, "imported": [m for m in sys.modules if m in ("h5py", "ml_dtypes")
      or m.startswith("ckptconv.formats.keras_")]}))
"""


_DETECT_PROBE = """
import json, sys
from ckptconv import formats
print(json.dumps({"format": formats.detect(sys.argv[1]).FORMAT,
                  "imported": sorted(m for m in sys.modules if m.startswith("ckptconv.formats.")
                                     and not m.startswith("ckptconv.formats._"))}))
"""


@pytest.mark.parametrize(
    ("where", "kind", "readers"),
    [
        ("orbax_zoo", "keras-orbax", ["keras_orbax", "keras_weights"]),
        ("orbax_zoo/1", "keras-orbax", ["keras_orbax", "keras_weights"]),
        ("orbax_zoo/1/pytree", "keras-orbax", ["keras_orbax", "keras_weights"]),
    ],
)
def test_orbax_directories_import_no_other_reader(where, kind, readers, generated) -> None:
    """Detecting an Orbax checkpoint imports the Orbax reader (and keras_weights, whose
    config walk orders its layers) and no safetensors, TF or torch reader."""
    path = generated("keras315") / where
    done = subprocess.run([sys.executable, "-c", _DETECT_PROBE, str(path)], capture_output=True, text=True,
                          timeout=120)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"format": kind, "imported": [f"ckptconv.formats.{r}" for r in readers]}, done.stderr


def test_a_torch_file_imports_no_tf_reader() -> None:
    """A torch.save file is offered to the TF checkpoint reader only by a TF checkpoint's file
    name (``checkpoint``, ``*.index``, ``*.data-*``): detecting it imports the safetensors
    reader (which its head rules out) and the torch reader, not the TF modules."""
    path = ROOT / "tests" / "fixtures" / "pytorch" / "cnn.pt"
    done = subprocess.run([sys.executable, "-c", _DETECT_PROBE, str(path)], capture_output=True, text=True,
                          timeout=120)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"format": "pytorch", "imported": ["ckptconv.formats.pytorch", "ckptconv.formats.safetensors"]}


@pytest.mark.parametrize("kind", ["safetensors", "tf-checkpoint", "pytorch"])
def test_safetensors_tf_and_torch_files_import_no_keras_reader(kind, generated, tmp_path: Path) -> None:
    """(Nor ml_dtypes for a file of float32 tensors: it loads when a bfloat16 or float8 name
    or code is first met. A torch.save archive is a zip, like a .keras file: its
    first member's name tells them apart.)"""
    if kind == "safetensors":
        path = tmp_path / "model.safetensors"
        save_file({"dense/kernel": np.ones((2, 3), np.float32)}, str(path))
    elif kind == "pytorch":
        path = ROOT / "tests" / "fixtures" / "pytorch" / "cnn.pt"
    else:
        path = generated("tf") / "tfkeras"
    done = subprocess.run([sys.executable, "-c", _PROBE, str(path)], capture_output=True, text=True,
                          timeout=120)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"format": kind, "imported": []}, done.stderr


_METADATA_PROBE = """
import json, sys
from ckptconv import formats
rows = []
for path in sys.argv[1:]:
    with formats.open(path) as store:
        rows.append([store.format, len(store.entries(include_all=True)), "h5py" in sys.modules])
print(json.dumps(rows))
"""


@pytest.mark.parametrize(
    "names",
    [
        ["k3_zoo.weights.h5"],
        ["k3_zoo.keras"],
        ["sharded/k3_zoo.weights.json"],
        ["tk_zoo.h5"],
        ["tk_zoo_w.h5"],
        ["tk_small.keras"],
    ],
)
def test_keras_files_h5py_writes_by_default_are_read_without_h5py(names, generated) -> None:
    """The metadata of Keras files of plain datasets in old-style groups (h5py's defaults,
    what Keras and tf-keras write) is read by ckptconv alone: opening them imports no h5py
    (which costs a tenth of a second). A file with compressed datasets needs libhdf5."""
    directory = generated("keras")
    paths = [str(directory / name) for name in names]
    done = subprocess.run([sys.executable, "-c", _METADATA_PROBE, *paths], capture_output=True, text=True,
                          timeout=120)
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    assert [row[2] for row in rows] == [False] * len(paths), (rows, done.stderr)
    assert all(row[1] > 0 for row in rows), rows
    chunked = [str(directory / "tk_chunked.h5")]
    done = subprocess.run([sys.executable, "-c", _METADATA_PROBE, *chunked], capture_output=True, text=True,
                          timeout=120)
    assert json.loads(done.stdout.strip().splitlines()[-1])[0][2] is True, done.stderr
