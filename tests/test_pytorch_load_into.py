"""PyTorch state dicts into their Keras twins through specs: the forward pass equals torch's.

``cnn.pt`` (the cookbook's CNN) goes through ``examples/specs/pytorch-cnn-to-keras.yaml`` into the
Keras model built here; ``torch_layout.pt`` (Conv2d, BatchNorm2d, BERT-style attention, Linear,
named as ``examples/specs/pytorch-to-keras.yaml`` expects) into ``torch_target.keras`` of
``generators/gen_mapping.py``. torch's outputs on fixed inputs were committed by
``generators/gen_pytorch.py`` (``test_pytorch.py`` recomputes them where torch is installed).
"""

from __future__ import annotations

import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest

import ckptconv
from tests.helpers import assert_bit_exact, load_expected

keras = pytest.importorskip("keras")

FIXTURES = Path(__file__).parent / "fixtures" / "pytorch"
SPECS = Path(__file__).resolve().parent.parent / "examples" / "specs"


def cnn_twin():
    """The Keras twin of gen_pytorch.cnn_module(), as the cookbook builds it."""
    layers = keras.layers
    keras.backend.clear_session()
    return keras.Sequential([
        keras.Input((16, 16, 3)),
        layers.Conv2D(8, 3, padding="same", name="conv1"),
        layers.BatchNormalization(epsilon=1e-5, name="bn1"),
        layers.ReLU(), layers.MaxPooling2D(2),
        layers.Conv2D(16, 3, padding="same", name="conv2"),
        layers.ReLU(), layers.GlobalAveragePooling2D(),
        layers.Dense(10, name="classifier"),
    ])


def test_cnn_into_its_keras_twin_forward_pass_equal() -> None:
    model = cnn_twin()
    report = ckptconv.load_into(model, FIXTURES / "cnn.pt", SPECS / "pytorch-cnn-to-keras.yaml")
    assert report.ok and len(report.loaded) == 10
    state = {e.name: e.array for e in load_expected(FIXTURES, "cnn")}
    assert_bit_exact(np.asarray(model.get_layer("conv1").kernel), state["features.0.weight"].transpose(2, 3, 1, 0))
    assert_bit_exact(np.asarray(model.get_layer("bn1").moving_variance), state["features.1.running_var"])
    assert_bit_exact(np.asarray(model.get_layer("classifier").kernel), state["classifier.weight"].T)
    x = np.load(FIXTURES / "cnn_input.npy")  # NCHW, as torch was given it
    y = np.asarray(model(x.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(y, np.load(FIXTURES / "cnn_output.npy"), rtol=1e-5, atol=1e-5)


def test_cnn_without_the_counter_rule_is_refused_before_loading() -> None:
    """Strict: without its drop rule, and passing unmatched entries through, the spec leaves
    num_batches_tracked without a place in the model: refused, nothing changes."""
    import yaml

    spec = yaml.safe_load((SPECS / "pytorch-cnn-to-keras.yaml").read_text())
    spec["rules"] = [r for r in spec["rules"] if "drop" not in r]
    spec["passthrough"] = True
    model = cnn_twin()
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ckptconv.LoadError, match="num_batches_tracked"):
        ckptconv.load_into(model, FIXTURES / "cnn.pt", spec)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(before, model.get_weights()))


def test_cookbook_spec_loads_a_torch_written_state_dict(generated) -> None:
    """examples/specs/pytorch-to-keras.yaml on a file torch wrote: Keras computes what torch did."""
    model = keras.saving.load_model(generated("mapping") / "torch_target.keras")
    report = ckptconv.load_into(model, FIXTURES / "torch_layout.pt", SPECS / "pytorch-to-keras.yaml")
    assert report.ok and len(report.loaded) == 16
    image = np.load(FIXTURES / "torch_layout_image.npy").transpose(0, 2, 3, 1)
    tokens = np.load(FIXTURES / "torch_layout_tokens.npy")
    bn, logits = model([image, tokens], training=False)
    want_bn = np.load(FIXTURES / "torch_layout_bn.npy").transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(bn), want_bn, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(logits), np.load(FIXTURES / "torch_layout_logits.npy"), rtol=1e-5, atol=1e-5)


def test_training_checkpoint_model_part_with_a_prefix_rule() -> None:
    """A training checkpoint's weights are under model/: a rule strips the prefix; the
    optimizer's and scheduler's entries are not weights and never count as unused."""
    layers = keras.layers
    keras.backend.clear_session()
    model = keras.Sequential([
        keras.Input((6, 6, 3)), layers.Conv2D(4, 3, name="conv"), layers.BatchNormalization(epsilon=1e-5, name="bn"),
        layers.ReLU(), layers.GlobalAveragePooling2D(), layers.Dense(3, name="fc"),
    ])
    spec = {"passthrough": False, "rules": [
        {"drop": "model/*.num_batches_tracked"},
        {"from": "model/features.0.weight", "to": "conv/kernel", "ops": [{"transpose": [2, 3, 1, 0]}]},
        {"from": "model/features.0.bias", "to": "conv/bias"},
        {"from": "model/features.1.weight", "to": "bn/gamma"},
        {"from": "model/features.1.bias", "to": "bn/beta"},
        {"from": "model/features.1.running_mean", "to": "bn/moving_mean"},
        {"from": "model/features.1.running_var", "to": "bn/moving_variance"},
        {"from": "model/classifier.weight", "to": "fc/kernel", "ops": ["transpose"]},
        {"from": "model/classifier.bias", "to": "fc/bias"},
    ]}
    report = ckptconv.load_into(model, FIXTURES / "training.pt", spec)
    assert report.ok and len(report.loaded) == 8
    state = {e.name: e.array for e in load_expected(FIXTURES, "training")}
    assert_bit_exact(np.asarray(model.get_layer("fc").kernel), state["model/classifier.weight"].T)


@pytest.mark.skipif(find_spec("torch") is None, reason="torch is not installed")
def test_committed_forward_passes_are_torchs() -> None:
    """Where torch is installed: the committed outputs are what the modules compute today
    (in a subprocess: this process never imports torch), to float32 rounding: torch picks its
    convolution and matmul kernels by the CPU's instruction set, so another machine's sums
    round differently (7 of the CNN's 20 outputs by 3e-8 between two x86-64 machines)."""
    code = (
        "import sys, numpy as np, torch\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "import gen_pytorch as g\n"
        "f = sys.argv[2]\n"
        "cnn = g.cnn_module(); cnn.load_state_dict(torch.load(f + '/cnn.pt', weights_only=True))\n"
        "y = cnn(torch.from_numpy(np.load(f + '/cnn_input.npy'))).detach().numpy()\n"
        "assert np.allclose(y, np.load(f + '/cnn_output.npy'), rtol=1e-6, atol=1e-6), 'cnn'\n"
        "m = g.torch_layout_module(); m.load_state_dict(torch.load(f + '/torch_layout.pt', weights_only=True))\n"
        "bn, logits = m(*(torch.from_numpy(np.load(f + f'/torch_layout_{n}.npy')) for n in ('image', 'tokens')))\n"
        "assert np.allclose(logits.detach().numpy(), np.load(f + '/torch_layout_logits.npy'), rtol=1e-6, atol=1e-6), 'layout'\n"
        "print('ok')\n"
    )
    generators = Path(__file__).parent / "generators"
    proc = subprocess.run([sys.executable, "-c", code, str(generators), str(FIXTURES)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
