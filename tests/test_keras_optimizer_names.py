"""A ``.keras`` archive's optimizer variables are named as Keras 3 names them.

``generators/gen_optimizers.py`` trains one step with each optimizer (and each option that
changes the variables it creates), saves the model, and records ``optimizer.variables``:
their Keras paths and values, the oracle here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import ckptconv
from ckptconv.cli import main as cli_main
from tests.helpers import assert_bit_exact, load_expected

CASES = [
    "seq_adam_amsgrad", "func_sgd_momentum", "func_rmsprop_frozen", "seq_adamw_ema",
    "seq_adam_schedule", "seq_adam_accumulate", "func_adamax", "func_adagrad", "func_adadelta",
    "func_ftrl", "func_lion", "func_lamb", "func_nadam",
]


@pytest.fixture(scope="module")
def opt_dir(generated) -> Path:
    return generated("optimizers")


def _state(store: ckptconv.Store) -> list[ckptconv.Entry]:
    return [e for e in store.entries(include_all=True) if e.layer != "seed_generator" and e.kind != "weight"]


@pytest.mark.parametrize("label", CASES)
def test_optimizer_variables_are_named_and_valued_as_keras_has_them(opt_dir: Path, label: str) -> None:
    expected = load_expected(opt_dir, label)
    with ckptconv.open(opt_dir / f"{label}.keras") as store:
        state = _state(store)
        assert [e.name for e in state] == [x.name for x in expected]
        for entry, want in zip(state, expected):
            assert_bit_exact(entry.read(), want.array.reshape(entry.shape), entry.name)  # scalars are stored as [1]
            assert entry.kind == ("bookkeeping" if entry.name.endswith("/iteration") else "optimizer")


def test_a_model_whose_weight_names_are_unknown_keeps_slot_positions(opt_dir: Path) -> None:
    """A subclassed model's config.json does not describe its layers: the weights are
    ``d1/0``..., so the slots cannot be named; the iteration and learning rate still are."""
    expected = load_expected(opt_dir, "sub_adam")
    with ckptconv.open(opt_dir / "sub_adam.keras") as store:
        names = [e.name for e in _state(store)]
    prefix = expected[0].name.split("/")[0]  # Keras numbers a fresh optimizer's name: adam_3
    assert names[:2] == [f"{prefix}/iteration", f"{prefix}/learning_rate"]
    assert names[2:] == [f"optimizer/{i}" for i in range(2, len(expected))]


def test_convert_all_keeps_the_training_states_kind(opt_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "state.safetensors"
    assert cli_main(["convert", str(opt_dir / "seq_adam_amsgrad.keras"), str(out), "--all"]) == 0
    with ckptconv.open(opt_dir / "seq_adam_amsgrad.keras") as source, ckptconv.open(out) as written:
        want = {e.name: e.kind for e in source.entries(include_all=True)}
        assert {e.name: e.kind for e in written.entries(include_all=True)} == want
        assert [e.name for e in written.entries()] == [e.name for e in source.entries()]
        assert "ckptconv.kinds" not in written.metadata  # read into the entries, not metadata
    from safetensors import safe_open

    with safe_open(str(out), "np") as f:
        kinds = json.loads(f.metadata()["ckptconv.kinds"])
    assert kinds["adam/iteration"] == "bookkeeping"
    assert kinds["adam/sequential_dense_kernel_velocity_hat"] == "optimizer"
    assert not any(name.startswith(("dense/", "bn/", "head/")) for name in kinds)
    capsys.readouterr()
    assert cli_main(["inspect", str(out)]) == 0
    assert "optimizer/bookkeeping entries not shown; use --all" in capsys.readouterr().out
