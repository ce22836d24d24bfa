"""Write the PyTorch fixtures with torch itself, plus what ``torch.load(weights_only=True)`` reads.

Usage (by hand, where torch is installed; the files are committed, so the suite needs no torch)::

    python tests/generators/gen_pytorch.py tests/fixtures/pytorch

Every checkpoint is written by ``torch.save`` (or derived from one as a user's tool would: a
re-zip with deflate, a big-endian rewrite that torch itself loads back) and every expected record
is what ``torch.load(path, weights_only=True)`` returns for it, as contiguous arrays, under the
name ckptconv gives it (state-dict keys; nested containers joined with ``/``) and with the kind the
checkpoint's structure says (model weights, optimizer state, bookkeeping counters).
``manifest.json`` records torch's version and, per label, the file a user would open.

Cases (label: file):
    zoo: zoo.pt                      every dtype safetensors has, scalars, empty tensors, views
                                     (transposed, narrowed, at a storage offset, strided), tied
    zoo_legacy: zoo_legacy.pt        the dtypes the pre-1.6 layout can write, same views
                                     (``_use_new_zipfile_serialization=False``)
    zoo_big: zoo_big.pt              the zoo rewritten big-endian (byteorder record ``big``,
                                     every storage byte-swapped); torch loads it back equal
                                     (without uint16/32/64, which torch 2.13 does not swap back)
    zoo_deflated: zoo_deflated.pt    zoo.pt re-zipped with every member deflated
    training: training.pt            {"model": state_dict, "optimizer": Adam after two steps,
                                     "scheduler": StepLR, "epoch": 3, "global_step": tensor, ...}
    sharded: hf_sharded/             pytorch_model-0000k-of-00002.bin + pytorch_model.bin.index.json
    hf_repo: hf_repo/                config.json + pytorch_model.bin (a model directory)
    hf_both: hf_both/                pytorch_model.bin and model.safetensors (other values)
    cnn: cnn.pt                      the cookbook's CNN (state_dict), with cnn_input.npy and
                                     cnn_output.npy: torch's forward pass in eval mode
    torch_layout: torch_layout.pt    modules named as examples/specs/pytorch-to-keras.yaml expects,
                                     with torch_layout_{image,tokens,bn,logits}.npy forward values
    (refusals) module.pt             torch.save(model): a pickled nn.Module
               module_legacy.pt      the same in the legacy layout
               expanded.pt           an expanded (stride-0) view larger than its storage
               expanded_legacy.pt    the same in the legacy layout, beside a plain tensor
    fnuz: fnuz.pt                    float8_e4m3fnuz and float8_e5m2fnuz tensors (which safetensors
                                     cannot store: converted with a cast)

``cnn_module()`` and ``torch_layout_module()`` build the modules (seeded) for other tests.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import dump_expected  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

SEED = 1234
D_MODEL, HEADS, HEAD_DIM, CLASSES, CONV_OUT = 16, 2, 8, 4, 8


def as_numpy(t: torch.Tensor) -> np.ndarray:
    """A tensor's values as a numpy array of the same dtype (ml_dtypes for bf16/float8)."""
    import ml_dtypes

    special = {torch.bfloat16: ml_dtypes.bfloat16, torch.float8_e4m3fn: ml_dtypes.float8_e4m3fn,
               torch.float8_e5m2: ml_dtypes.float8_e5m2, torch.float8_e4m3fnuz: ml_dtypes.float8_e4m3fnuz,
               torch.float8_e5m2fnuz: ml_dtypes.float8_e5m2fnuz, torch.uint16: np.uint16,
               torch.uint32: np.uint32, torch.uint64: np.uint64}
    t = t.detach().contiguous()
    if t.dtype in special:
        width = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
        raw = t.view(width).numpy()
        return raw.view(np.dtype(special[t.dtype]))
    return t.numpy().copy()


def records_of(obj, kinds=None, prefix=()) -> list[dict]:
    """Expected records of what torch.load returned: every tensor, named by its container path."""
    kinds = kinds or {}
    out = []
    if isinstance(obj, torch.Tensor):
        name = "/".join(prefix)
        out.append({"name": name, "kind": kinds.get(prefix[0] if prefix else "", "weight"), "array": as_numpy(obj)})
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.extend(records_of(v, kinds, (*prefix, str(k))))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.extend(records_of(v, kinds, (*prefix, str(i))))
    return out


def expect(outdir: Path, label: str, path: Path, kinds=None, **extra) -> None:
    loaded = torch.load(path, weights_only=True, map_location="cpu")
    dump(outdir, label, records_of(loaded, kinds), **extra)


def dump(outdir: Path, label: str, records: list[dict], **extra) -> None:
    """dump_expected, keeping scalars 0-d (its ascontiguousarray makes them shape [1])."""
    dump_expected(outdir, label, records, **extra)
    meta_path = outdir / f"{label}.expected.json"
    meta = json.loads(meta_path.read_text())
    for item, record in zip(meta["tensors"], records):
        item["shape"] = list(record["array"].shape)
    meta_path.write_text(json.dumps(meta, indent=1))


# -- the zoo ----------------------------------------------------------------------------------


def zoo(legacy: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(SEED)
    sd: dict[str, torch.Tensor] = {}
    dtypes = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8, torch.int16,
              torch.int32, torch.int64, torch.uint8, torch.bool, torch.complex64]
    if not legacy:  # the legacy layout has storage classes only for the old dtypes
        dtypes += [torch.float8_e4m3fn, torch.float8_e5m2, torch.uint16, torch.uint32, torch.uint64]
    for dtype in dtypes:
        base = torch.randn(3, 5, generator=g) * 40
        if dtype == torch.bool:
            t = base > 0
        elif dtype == torch.complex64:
            t = torch.complex(base, -base)
        elif dtype in (torch.uint8, torch.uint16, torch.uint32, torch.uint64):
            t = base.abs().to(torch.int64).to(dtype)
        else:
            t = base.to(dtype)
        name = str(dtype).removeprefix("torch.")
        sd[f"dtype.{name}"] = t
        sd[f"scalar.{name}"] = t[1, 2].clone()
    weight = torch.randn(6, 4, generator=g)
    big = torch.randn(8, 10, generator=g)
    sd.update({
        "empty.vector": torch.zeros(0),
        "empty.matrix": torch.zeros(3, 0, dtype=torch.float16),
        "view.transposed": weight.t(),                     # strides (1, 4)
        "view.narrowed": big[2:5, 1:7],                    # offset 21, strides (10, 1)
        "view.offset_row": big[6],                         # contiguous at storage offset 60
        "view.every_other": big[:, ::2],                   # strides (10, 2)
        "view.permuted": torch.randn(2, 3, 4, generator=g).permute(2, 0, 1),
        "view.bf16_transposed": torch.randn(4, 6, generator=g).to(torch.bfloat16).t(),
        "tied.embed.weight": weight,
        "tied.lm_head.weight": weight,                     # the same tensor: tied
    })
    if not legacy:
        sd["view.f8_column"] = torch.randn(5, 3, generator=g).to(torch.float8_e4m3fn)[:, 1]
        sd["view.u16_transposed"] = torch.arange(12, dtype=torch.int64).to(torch.uint16).reshape(3, 4).t()
    return sd


def big_endian_copy(src: Path, dst: Path) -> None:
    """zoo.pt as a big-endian machine's torch writes it: byteorder ``big``, storages swapped."""
    loaded = torch.load(src, weights_only=True)
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as out:
        prefix = z.namelist()[0].split("/")[0]
        dtypes = storage_dtypes(z.read(f"{prefix}/data.pkl"))
        for info in z.infolist():
            data = z.read(info)
            name = info.filename[len(prefix) + 1:]
            if name == "byteorder":
                data = b"big"
            elif name.startswith("data/"):
                data = _swapped(data, dtypes[name[5:]])
            out.writestr(info.filename, data)
    back = torch.load(dst, weights_only=True)
    for k, v in loaded.items():
        assert as_numpy(back[k]).tobytes() == as_numpy(v).tobytes(), k


def storage_dtypes(pkl: bytes) -> dict[str, torch.dtype]:
    """Storage key -> the dtype its bytes hold (the storage class's, or _rebuild_tensor_v3's)."""
    import pickle

    found: dict[str, torch.dtype] = {}

    class Ref:
        def __init__(self, storage_type, key):
            self.key = key
            if storage_type is not torch.UntypedStorage:
                found[key] = storage_type(0).dtype

    class Walk(pickle.Unpickler):
        def persistent_load(self, pid):
            return Ref(pid[1], pid[2])

        def find_class(self, module, name):
            if module == "torch._utils" and name == "_rebuild_tensor_v3":
                def v3(storage, offset, size, stride, grad, hooks, dtype, metadata=None):
                    found[storage.key] = dtype
                return v3
            if module == "torch._utils" and name == "_rebuild_tensor_v2":
                return lambda *args: None
            return super().find_class(module, name)

    Walk(io.BytesIO(pkl)).load()
    return found


def _swapped(data: bytes, dtype: torch.dtype) -> bytes:
    size = torch.empty(0, dtype=dtype).element_size()
    if dtype.is_complex:
        size //= 2
    if size == 1:
        return data
    return np.frombuffer(data, dtype=f"<u{size}").astype(f">u{size}").tobytes()


def deflated_copy(src: Path, dst: Path) -> None:
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as out:
        for info in z.infolist():
            out.writestr(info.filename, z.read(info), compress_type=zipfile.ZIP_DEFLATED)


# -- a training checkpoint ---------------------------------------------------------------------


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.classifier = nn.Linear(4, 3)

    def forward(self, x):
        return self.classifier(self.features(x).mean(dim=(2, 3)))


def training(out: Path) -> None:
    torch.manual_seed(SEED)
    net = SmallNet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(2):
        loss = net(torch.randn(2, 3, 6, 6)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    ckpt = {
        "model": net.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "epoch": 3,
        "global_step": torch.tensor(200),
        "best_metric": 0.875,
        "note": "trained for the test suite",
    }
    torch.save(ckpt, out / "training.pt")
    expect(out, "training", out / "training.pt",
           kinds={"optimizer": "optimizer", "scheduler": "bookkeeping", "global_step": "bookkeeping"},
           skipped=["epoch", "best_metric", "note"])


# -- Hugging Face layouts ----------------------------------------------------------------------


def hf_layouts(out: Path) -> None:
    import safetensors.torch

    torch.manual_seed(SEED)
    sd = {
        "embeddings.word_embeddings.weight": torch.randn(20, 8),
        "encoder.layer.0.dense.weight": torch.randn(8, 8),
        "encoder.layer.0.dense.bias": torch.randn(8),
        "encoder.layer.1.dense.weight": torch.randn(8, 8),
        "encoder.layer.1.dense.bias": torch.randn(8),
        "pooler.dense.weight": torch.randn(8, 8),
    }
    config = {"model_type": "bert", "hidden_size": 8, "architectures": ["BertModel"]}
    shards = [dict(list(sd.items())[:3]), dict(list(sd.items())[3:])]
    sharded = out / "hf_sharded"
    sharded.mkdir()
    weight_map = {}
    for i, part in enumerate(shards, 1):
        name = f"pytorch_model-{i:05d}-of-{len(shards):05d}.bin"
        torch.save(part, sharded / name)
        weight_map.update({k: name for k in part})
    total = sum(t.numel() * t.element_size() for t in sd.values())
    (sharded / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (sharded / "config.json").write_text(json.dumps(config))
    loaded = {}
    for name in sorted(set(weight_map.values())):
        loaded.update(torch.load(sharded / name, weights_only=True))
    dump(out, "sharded", records_of(loaded))

    repo = out / "hf_repo"
    repo.mkdir()
    (repo / "config.json").write_text(json.dumps(config))
    torch.save(sd, repo / "pytorch_model.bin")
    expect(out, "hf_repo", repo / "pytorch_model.bin")

    both = out / "hf_both"
    both.mkdir()
    (both / "config.json").write_text(json.dumps(config))
    torch.save(sd, both / "pytorch_model.bin")
    other = {k: (v + 1).contiguous() for k, v in sd.items()}
    safetensors.torch.save_file(other, str(both / "model.safetensors"), metadata={"format": "pt"})
    dump(out, "hf_both", records_of(other))


# -- the cookbook CNN and the spec's module ----------------------------------------------------


def cnn_module() -> nn.Module:
    """The cookbook's CNN (seeded), in eval mode with non-trivial BatchNorm statistics."""
    torch.manual_seed(SEED)
    model = nn.Sequential()
    model.features = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
    )
    model.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model.classifier = nn.Linear(16, 10)
    with torch.no_grad():
        bn = model.features[1]
        bn.running_mean.copy_(torch.randn(8) * 0.1)
        bn.running_var.copy_(torch.rand(8) + 0.5)
        bn.weight.copy_(torch.rand(8) + 0.5)
        bn.bias.copy_(torch.randn(8) * 0.1)
        bn.num_batches_tracked.fill_(100)
    return model.eval()


class _SelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query, self.key, self.value = (nn.Linear(D_MODEL, D_MODEL) for _ in range(3))


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self = _SelfAttention()
        self.output = nn.Module()
        self.output.dense = nn.Linear(D_MODEL, D_MODEL)


class TorchLayout(nn.Module):
    """Conv2d + BatchNorm2d, BERT-style self-attention, a Linear head: the module whose names
    examples/specs/pytorch-to-keras.yaml maps onto the Keras model of tests/generators/gen_mapping.py."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, CONV_OUT, 3), nn.BatchNorm2d(CONV_OUT))
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList([nn.Module()])
        self.encoder.layer[0].attention = _Attention()
        self.classifier = nn.Linear(D_MODEL, CLASSES)

    def forward(self, image, tokens):
        bn = self.features(image)
        att = self.encoder.layer[0].attention
        b, s, _ = tokens.shape

        def heads(x):
            return x.reshape(b, s, HEADS, HEAD_DIM).transpose(1, 2)

        q, k, v = (heads(m(tokens)) for m in (att.self.query, att.self.key, att.self.value))
        scores = torch.softmax(q @ k.transpose(-1, -2) / HEAD_DIM**0.5, dim=-1)
        ctx = (scores @ v).transpose(1, 2).reshape(b, s, D_MODEL)
        return bn, self.classifier(att.output.dense(ctx).mean(dim=1))


def torch_layout_module() -> nn.Module:
    torch.manual_seed(SEED + 1)
    model = TorchLayout()
    with torch.no_grad():
        bn = model.features[1]
        bn.running_mean.copy_(torch.randn(CONV_OUT) * 0.1)
        bn.running_var.copy_(torch.rand(CONV_OUT) + 0.5)
        bn.num_batches_tracked.fill_(100)
    return model.eval()


def forward_fixtures(out: Path) -> None:
    cnn = cnn_module()
    torch.save(cnn.state_dict(), out / "cnn.pt")
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(SEED))
    with torch.no_grad():
        y = cnn(x)
    np.save(out / "cnn_input.npy", x.numpy())
    np.save(out / "cnn_output.npy", y.numpy())
    expect(out, "cnn", out / "cnn.pt")

    layout = torch_layout_module()
    torch.save(layout.state_dict(), out / "torch_layout.pt")
    g = torch.Generator().manual_seed(SEED + 2)
    image, tokens = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 5, D_MODEL, generator=g)
    with torch.no_grad():
        bn, logits = layout(image, tokens)
    for name, value in (("image", image), ("tokens", tokens), ("bn", bn), ("logits", logits)):
        np.save(out / f"torch_layout_{name}.npy", value.numpy())
    expect(out, "torch_layout", out / "torch_layout.pt")


def refusals(out: Path) -> None:
    torch.manual_seed(SEED)
    torch.save(SmallNet(), out / "module.pt")
    torch.save(SmallNet(), out / "module_legacy.pt", _use_new_zipfile_serialization=False)
    expanded_views(out)


def expanded_views(out: Path) -> None:
    """Broadcast (stride-0) views larger than their storages, in both layouts."""
    torch.save({"expanded": torch.zeros(4).expand(1000, 4)}, out / "expanded.pt")
    # the legacy layout keys its storages by memory address: messages must not show one
    state = {"bias": torch.zeros(3), "layer.scale": torch.ones(1).expand(16)}
    torch.save(state, out / "expanded_legacy.pt", _use_new_zipfile_serialization=False)


def fnuz_dtypes(out: Path) -> None:
    """torch's float8 types without infinities or negative zero (AMD's), which safetensors
    has no code for: read as ml_dtypes' types of the same layout, converted with a cast."""
    values = [[1.5, -2.25, 0.015625], [0.0, 0.5, float("nan")]]
    state = {
        "e4m3fnuz": torch.tensor([*values, [240.0, -240.0, 3.0]]).to(torch.float8_e4m3fnuz),
        "e5m2fnuz": torch.tensor([*values, [57344.0, -57344.0, 3.0]]).to(torch.float8_e5m2fnuz),
    }
    torch.save(state, out / "fnuz.pt")
    expect(out, "fnuz", out / "fnuz.pt")


def main(outdir: str) -> None:
    out = Path(outdir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    files = {}
    torch.save(zoo(), out / "zoo.pt")
    expect(out, "zoo", out / "zoo.pt", tied=[["tied.embed.weight", "tied.lm_head.weight"]])
    torch.save(zoo(legacy=True), out / "zoo_legacy.pt", _use_new_zipfile_serialization=False)
    expect(out, "zoo_legacy", out / "zoo_legacy.pt", tied=[["tied.embed.weight", "tied.lm_head.weight"]])
    # torch 2.13 does not byte-swap uint16/32/64 (stored as untyped storages) when it loads a
    # big-endian file, so the oracle is wrong for them: the big-endian zoo leaves them out
    unswapped = ("uint16", "uint32", "uint64", "u16")
    torch.save({k: v for k, v in zoo().items() if not any(u in k for u in unswapped)}, out / "zoo_le.tmp")
    big_endian_copy(out / "zoo_le.tmp", out / "zoo_big.pt")
    (out / "zoo_le.tmp").unlink()
    expect(out, "zoo_big", out / "zoo_big.pt")
    deflated_copy(out / "zoo.pt", out / "zoo_deflated.pt")
    expect(out, "zoo_deflated", out / "zoo_deflated.pt")
    training(out)
    hf_layouts(out)
    forward_fixtures(out)
    refusals(out)
    fnuz_dtypes(out)  # not in files: safetensors cannot hold them without a cast
    files = {"zoo": "zoo.pt", "zoo_legacy": "zoo_legacy.pt", "zoo_big": "zoo_big.pt",
             "zoo_deflated": "zoo_deflated.pt", "training": "training.pt", "sharded": "hf_sharded",
             "hf_repo": "hf_repo", "hf_both": "hf_both", "cnn": "cnn.pt", "torch_layout": "torch_layout.pt"}
    manifest = {"torch": torch.__version__, "numpy": np.__version__, "python": sys.version.split()[0],
                "seed": SEED, "files": files}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).resolve().parents[1] / "fixtures" / "pytorch"))
