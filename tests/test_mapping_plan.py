"""build_plan: identity, default dtype, ownership, problems collected together, execution."""

from __future__ import annotations

import numpy as np
import pytest
from ml_dtypes import bfloat16

import ckptconv
from ckptconv import PlanError, SpecError, Store, UsageError
from ckptconv.mapping import Rule, Spec, TargetTensor, build_plan, load_spec
from ckptconv.store import Entry
from tests.helpers import assert_bit_exact


def _arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "dense_1/kernel": rng.standard_normal((5, 10)).astype(np.float32),
        "dense_1/bias": rng.standard_normal(10).astype(np.float32),
        "dense_2/kernel": rng.standard_normal((10, 20)).astype(np.float32),
        "dense_2/bias": rng.standard_normal(20).astype(np.float32),
        "steps": np.array(7, dtype=np.int64),
    }


def _all_arrays(plan) -> dict[str, np.ndarray]:
    return {o.name: o.compute() for o in plan.outputs}


class CountingStore:
    """A store whose entries count their reads (wrapping real entries)."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.reads: dict[str, int] = {}
        entries = []
        for name, value in arrays.items():
            def load(name=name, value=value):
                self.reads[name] = self.reads.get(name, 0) + 1
                return value.copy()

            entries.append(Entry(name, key=name, shape=value.shape, dtype=value.dtype, path="<mem>", loader=load))
        ckptconv.store.keras_order(entries)
        self.store = Store(entries, format="memory", path="<mem>")


def test_identity_plan_passes_every_weight_through_unchanged():
    arrays = _arrays()
    store = Store.from_arrays(arrays)
    plan = build_plan(store)
    assert plan.ok and plan.problems == []
    assert [o.name for o in plan.outputs] == list(arrays)
    for output in plan.outputs:
        assert output.source is store[output.name]  # writers may copy the bytes file to file
        assert_bit_exact(output.compute(), arrays[output.name], output.name)
    statuses = {s.name: s.status for s in plan.report.sources}
    assert set(statuses.values()) == {"passthrough"}


def test_identity_with_default_dtype_casts_floating_weights_only():
    arrays = _arrays()
    plan = build_plan(Store.from_arrays(arrays), dtype="bfloat16")
    assert plan.ok
    out = _all_arrays(plan)
    for name, value in arrays.items():
        if value.dtype.kind == "f":
            assert_bit_exact(out[name], value.astype(bfloat16), name)
            assert next(o for o in plan.outputs if o.name == name).source is None
        else:
            assert_bit_exact(out[name], value, name)
    assert "cast bfloat16" in plan.report.outputs[0].ops


def test_cli_dtype_overrides_spec_dtype_and_keep_keeps():
    arrays = _arrays()
    store = Store.from_arrays(arrays)
    spec = {"dtype": "float16", "rules": []}
    assert build_plan(store, spec).outputs[0].dtype == np.float16
    assert build_plan(store, spec, dtype="bfloat16").outputs[0].dtype == np.dtype(bfloat16)
    assert build_plan(store, spec, dtype="keep").outputs[0].dtype == np.float32


def test_include_all_decides_whether_training_state_takes_part():
    kernel = np.ones((2, 2), np.float32)
    entries = [
        Entry("d/kernel", key="a", shape=(2, 2), dtype=np.float32, path="<m>", loader=lambda: kernel.copy()),
        Entry("optimizer/m", key="b", shape=(2, 2), dtype=np.float32, path="<m>", loader=lambda: kernel.copy(),
              kind="optimizer"),
    ]
    store = Store(entries, format="memory", path="<m>")
    assert [o.name for o in build_plan(store).outputs] == ["d/kernel"]
    plan = build_plan(store, include_all=True, dtype="float16")
    assert {o.name: o.dtype for o in plan.outputs} == {"d/kernel": np.float16, "optimizer/m": np.float32}


def test_first_matching_rule_owns_and_statuses_are_reported():
    arrays = _arrays()
    spec = {
        "passthrough": False,
        "rules": [
            {"drop": "dense_2/*"},
            {"layer": "dense_*", "to_layer": "new_{1}"},
        ],
    }
    plan = build_plan(Store.from_arrays(arrays), spec)
    assert plan.ok, plan.problems
    assert [o.name for o in plan.outputs] == ["new_1/kernel", "new_1/bias"]
    status = {s.name: (s.status, s.rule) for s in plan.report.sources}
    assert status == {
        "dense_1/kernel": ("used", 2),
        "dense_1/bias": ("used", 2),
        "dense_2/kernel": ("dropped", 1),
        "dense_2/bias": ("dropped", 1),
        "steps": ("dropped", None),  # passthrough: false
    }
    assert plan.report.dropped == ["dense_2/kernel", "dense_2/bias", "steps"]
    assert plan.report.unused == []
    out = _all_arrays(plan)
    assert_bit_exact(out["new_1/kernel"], arrays["dense_1/kernel"])


def test_problems_are_collected_together_and_nothing_is_read():
    arrays = _arrays()
    counting = CountingStore(arrays)
    spec = {
        "rules": [
            {"from": "dense_1/kernal", "to": "x"},  # typo: owns nothing
            {"layer": "dense_1", "to_layer": "d1"},
            {"layer": "dense_1", "index": 0, "to": "d1_again/kernel"},  # shadowed by #2
            {"from": "dense_2/kernel", "to": "d1/kernel"},  # same name as rule #2's output
            {"from": "dense_2/bias", "ops": [{"reshape": [3, 7]}]},  # 20 elements
            {"from": "nothing/*", "optional": True},
        ]
    }
    plan = build_plan(counting.store, spec)
    assert not plan.ok
    text = "\n".join(plan.problems)
    assert len(plan.problems) == 4, text
    assert "rule #1 (from 'dense_1/kernal'): matches no entry" in plan.problems[0]
    assert "'dense_1/kernel'" in plan.problems[0]  # the nearest name
    assert "rule #3" in text and "earlier rule(s) #2" in text
    assert "2 outputs are named 'd1/kernel'" in text
    assert "rule #5" in text and "'dense_2/bias'" in text and "[20]" in text and "reshape [3, 7]" in text
    assert "rule #6" not in text
    assert counting.reads == {}
    with pytest.raises(PlanError) as info:
        plan.raise_if_problems()
    assert info.value.problems == plan.problems
    assert "4 problems" in str(info.value)
    # the same problems as data: what kind, which rule, which output
    assert [(p.kind, p.rule, p.name) for p in plan.problems] == [
        ("no-match", "rule #1 (from 'dense_1/kernal')", None),
        ("shadowed", "rule #3 (layer 'dense_1', index 0)", None),
        ("op", "rule #5 (from 'dense_2/bias')", "dense_2/bias"),
        ("duplicate", None, "d1/kernel"),
    ]
    details = plan.report.to_json()["problem_details"]  # what plan --json prints besides "problems"
    assert details[0] == {"kind": "no-match", "rule": "rule #1 (from 'dense_1/kernal')", "name": None,
                          "message": plan.problems[0]}


def test_a_problem_is_its_message_and_its_data():
    import json
    import pickle

    from ckptconv import Problem

    p = Problem("no-match", "rule #1 (from 'x')", None, "rule #1 (from 'x'): matches no entry")
    assert p == "rule #1 (from 'x'): matches no entry" and str(p) == p.message and "matches" in p
    assert json.loads(json.dumps([p])) == [p.message]
    back = pickle.loads(pickle.dumps(p))
    assert (back.kind, back.rule, back.name, back.message) == (p.kind, p.rule, p.name, p.message)
    assert p.to_dict() == {"kind": "no-match", "rule": "rule #1 (from 'x')", "name": None, "message": p.message}


def test_index_selector_message_names_the_indices_there_are():
    plan = build_plan(Store.from_arrays(_arrays()), {"rules": [{"layer": "dense_2", "index": 5, "to": "k"}]})
    assert len(plan.problems) == 1
    assert "have index 0, 1, not 5" in plan.problems[0]


def test_layer_typo_names_nearest_layers():
    plan = build_plan(Store.from_arrays(_arrays()), {"rules": [{"layer": "dens_2", "to_layer": "x"}]})
    assert "nearest layers in the source: 'dense_2'" in plan.problems[0]


def test_split_reads_its_source_once_and_forgets_it_after_the_last_part():
    rng = np.random.default_rng(1)
    qkv = rng.standard_normal((12, 4)).astype(np.float32)
    counting = CountingStore({"attn.qkv.weight": qkv, "other": np.zeros(3, np.float32)})
    spec = {
        "rules": [
            {
                "from": "re:(.*)\\.qkv\\.weight",
                "split": {"axis": 0, "parts": 3},
                "to": ["{1}/q/kernel", "{1}/k/kernel", "{1}/v/kernel"],
                "ops": ["transpose"],
            }
        ]
    }
    plan = build_plan(counting.store, spec)
    assert plan.ok, plan.problems
    assert [o.name for o in plan.outputs] == ["attn/q/kernel", "attn/k/kernel", "attn/v/kernel", "other"]
    results = [o.compute() for o in plan.outputs[:3]]
    assert counting.reads == {"attn.qkv.weight": 1}
    for part, result in zip(np.split(qkv, 3, axis=0), results):
        assert_bit_exact(result, np.ascontiguousarray(part.T))
    # nothing of the source stays cached once its last consumer ran: computing again re-reads
    plan.outputs[0].compute()
    assert counting.reads == {"attn.qkv.weight": 2}


def test_concat_groups_by_the_captures_the_template_uses():
    rng = np.random.default_rng(2)
    arrays = {}
    for block in (0, 1):
        for w in ("w1", "w3"):
            arrays[f"blocks.{block}.mlp.{w}"] = rng.standard_normal((4, 3 + block)).astype(np.float32)
    spec = {
        "passthrough": False,
        "rules": [
            {"from": ["re:blocks\\.(\\d+)\\.mlp\\.w1", "re:blocks\\.(\\d+)\\.mlp\\.w3"],
             "concat": {"axis": 1}, "to": "block_{1}/gate_up/kernel"},
        ],
    }
    plan = build_plan(Store.from_arrays(arrays), spec)
    assert plan.ok, plan.problems
    out = _all_arrays(plan)
    assert list(out) == ["block_0/gate_up/kernel", "block_1/gate_up/kernel"]
    for block in (0, 1):
        want = np.concatenate([arrays[f"blocks.{block}.mlp.w1"], arrays[f"blocks.{block}.mlp.w3"]], axis=1)
        assert_bit_exact(out[f"block_{block}/gate_up/kernel"], want)
    assert plan.report.outputs[0].sources == ("blocks.0.mlp.w1", "blocks.0.mlp.w3")


def test_stack_orders_numbers_naturally():
    arrays = {f"experts/{i}/w": np.full((2,), i, np.float32) for i in (10, 2, 1, 0)}
    plan = build_plan(Store.from_arrays(arrays), {"rules": [{"from": "experts/*/w", "stack": {"axis": 0}, "to": "w"}]})
    assert plan.ok, plan.problems
    assert_bit_exact(plan.outputs[0].compute(), np.stack([np.full((2,), i, np.float32) for i in (0, 1, 2, 10)]))


def test_concat_group_lacking_a_source_is_a_problem():
    arrays = {"a.w1": np.zeros((2, 2), np.float32), "a.w3": np.zeros((2, 2), np.float32), "b.w1": np.zeros((2, 2), np.float32)}
    spec = {"rules": [{"from": ["re:(.)\\.w1", "re:(.)\\.w3"], "concat": 1, "to": "{1}/w"}]}
    plan = build_plan(Store.from_arrays(arrays), spec)
    assert len(plan.problems) == 1
    assert "output 'b/w' has no source for pattern(s) 're:(.)\\\\.w3'" in plan.problems[0]


def test_target_checks_shape_dtype_missing_and_unused():
    arrays = _arrays()
    target = {
        "dense_1/kernel": TargetTensor((5, 10), np.float32),
        "dense_1/bias": TargetTensor((10,), "float16"),
        "dense_2/kernel": TargetTensor((20, 10), np.float32),
        "head/kernel": TargetTensor((3, 3), np.float32),
    }
    plan = build_plan(Store.from_arrays(arrays), None, target=target)
    assert [m.name for m in plan.report.mismatched] == ["dense_1/bias", "dense_2/kernel"]
    assert plan.report.missing == ["head/kernel"]
    assert plan.report.unused == ["dense_2/bias", "steps"]
    assert len(plan.problems) == 2
    assert "does not fit the target" in plan.problems[0] and "{cast: float16}" in plan.problems[0]
    strict = build_plan(Store.from_arrays(arrays), None, target=target, strict=True)
    assert len(strict.problems) == 4
    # dtype: target casts floating outputs to what the target holds; transpose fixes the kernel
    fixed = build_plan(
        Store.from_arrays(arrays),
        {"rules": [{"from": "dense_2/kernel", "ops": ["transpose"]}]},
        target=target,
        dtype="target",
    )
    assert fixed.ok, fixed.problems
    out = _all_arrays(fixed)
    assert_bit_exact(out["dense_1/bias"], arrays["dense_1/bias"].astype(np.float16))
    assert_bit_exact(out["dense_2/kernel"], arrays["dense_2/kernel"].T.copy())


def test_explicit_output_absent_from_target_is_a_problem():
    arrays = _arrays()
    target = {"dense_1/kernel": TargetTensor((5, 10), np.float32)}
    plan = build_plan(Store.from_arrays(arrays), {"rules": [{"from": "dense_1/kernel", "to": "dense1/kernel"}]},
                      target=target)
    assert any("'dense1/kernel' is not a weight of the target; nearest target names: 'dense_1/kernel'" in p
               for p in plan.problems)


def test_reshape_target_needs_a_target():
    store = Store.from_arrays({"q": np.zeros((6, 4), np.float32)})
    spec = {"rules": [{"from": "q", "to": "att/query/kernel", "ops": ["transpose", {"reshape": "target"}]}]}
    plan = build_plan(store, spec)
    assert "reshape: target needs a target" in plan.problems[0]
    plan = build_plan(store, spec, target={"att/query/kernel": TargetTensor((4, 2, 3), np.float32)})
    assert plan.ok, plan.problems
    assert plan.outputs[0].shape == (4, 2, 3)
    assert_bit_exact(plan.outputs[0].compute(), np.zeros((4, 6), np.float32).reshape(4, 2, 3))


def test_cast_overflow_fails_at_execution_unless_allowed():
    store = Store.from_arrays({"w": np.array([1.0, 70000.0, np.inf], np.float32)})
    plan = build_plan(store, {"rules": [{"from": "w", "ops": [{"cast": "float16"}]}]})
    assert plan.ok
    with pytest.raises(PlanError, match=r"rule #1 .*output 'w'.*1 finite value\(s\) overflow to inf in float16"):
        plan.outputs[0].compute()
    plan = build_plan(store, {"rules": [{"from": "w", "ops": [{"cast": "float16"}], "allow_overflow": True}]})
    assert_bit_exact(plan.outputs[0].compute(), np.array([1.0, np.inf, np.inf], np.float16))
    # the default dtype overflows the same way
    with pytest.raises(PlanError, match="overflow"):
        build_plan(store, dtype="float16").outputs[0].compute()


def test_python_callables_infer_by_probe_or_declaration():
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3)}
    store = Store.from_arrays(arrays)
    spec = Spec(rules=[Rule(from_="a", to="b", ops=[lambda a: a * 2, {"fn": lambda a: a.sum(axis=0), "shape": (3,), "dtype": "float32"}])])
    plan = build_plan(store, spec)
    assert plan.ok, plan.problems
    assert plan.outputs[0].shape == (3,)
    assert_bit_exact(plan.outputs[0].compute(), (arrays["a"] * 2).sum(axis=0))
    # a declaration that lies is caught at execution
    lying = Spec(rules=[Rule(from_="a", ops=[{"fn": lambda a: a, "shape": (6,), "dtype": "float32"}])])
    with pytest.raises(PlanError, match="returned shape"):
        build_plan(store, lying).outputs[0].compute()
    # a callable that cannot run on the probe is a plan problem naming what to do
    def needs_data(a):
        if not a.any():
            raise ValueError("all zero")
        return a

    plan = build_plan(store, Spec(rules=[Rule(from_="a", ops=[needs_data])]))
    assert "needs_data failed on a zero probe" in plan.problems[0] and "'shape'" in plan.problems[0]


def test_plan_json_and_table_describe_everything():
    plan = build_plan(Store.from_arrays(_arrays()), {"rules": [{"drop": "steps"}, {"from": "dense_1/*", "to": "x/{1}"}]})
    data = plan.report.to_json()
    assert data["ok"] is True
    assert data["counts"] == {"used": 2, "dropped": 1, "passthrough": 2, "unused": 0}
    assert {o["name"] for o in data["outputs"]} == {"x/kernel", "x/bias", "dense_2/kernel", "dense_2/bias"}
    table = str(plan.report)
    assert "x/kernel" in table and "dropped" in table and "no problems" in table


def test_load_spec_accepts_spec_dict_and_text():
    spec = load_spec({"rules": [{"from": "a", "to": "b"}]})
    assert load_spec(spec) is spec
    assert load_spec("rules:\n  - {from: a, to: b}\n") == spec
    with pytest.raises(ckptconv.NoSuchFileError, match="no such spec file"):
        load_spec("no/such/spec.yaml")


def test_build_plan_on_a_thousand_entries_is_fast_enough_to_not_matter():
    arrays = {f"encoder.layer.{i}.attention.self.{w}.weight": np.zeros((2, 2), np.float32)
              for i in range(250) for w in ("query", "key", "value", "dense")}
    spec = {"rules": [
        {"from": "re:encoder\\.layer\\.(\\d+)\\.attention\\.self\\.(query|key|value)\\.weight",
         "to": "layer_{1}/attention/{2}/kernel", "ops": ["transpose", {"reshape": [2, 1, 2]}]},
        {"from": "encoder.layer.*.attention.self.dense.weight", "to": "layer_{1}/out/kernel", "ops": ["transpose"]},
    ]}
    plan = build_plan(Store.from_arrays(arrays), spec)
    assert plan.ok and len(plan.outputs) == 1000


def test_rule_shape_is_checked_and_feeds_reshape_target():
    store = Store.from_arrays({"q": np.arange(24, dtype=np.float32).reshape(6, 4)})
    ok = build_plan(store, {"rules": [{"from": "q", "ops": ["transpose", {"reshape": "target"}], "shape": [4, 2, 3]}]})
    assert ok.ok, ok.problems
    assert_bit_exact(ok.outputs[0].compute(), np.arange(24, dtype=np.float32).reshape(6, 4).T.reshape(4, 2, 3))
    bad = build_plan(store, {"rules": [{"from": "q", "ops": ["transpose"], "shape": [6, 4]}]})
    assert bad.problems == ["rule #1 (from 'q'): entry 'q': the result is [4, 6], the rule declares shape [6, 4]"]


def test_dtype_target_without_a_target_is_refused():
    # as the dtype= option: a usage error (exit status 2 on the command line)
    with pytest.raises(UsageError, match="dtype='target' means each target tensor's dtype, and there is no target"):
        build_plan(Store.from_arrays(_arrays()), dtype="target")
    # as the spec's dtype: key, an error of the spec
    with pytest.raises(SpecError, match="dtype: target .* there is no target"):
        build_plan(Store.from_arrays(_arrays()), {"dtype": "target"})


def test_a_complex_default_dtype_is_refused():
    """The default dtype casts real floating-point weights: complex could only make them complex."""
    with pytest.raises(UsageError, match=r"^'complex64' is complex, and the default dtype casts real weights only: give keep or a "
                       r"real dtype \(float32, float16, bfloat16, \.\.\.\); received dtype='complex64'$"):
        build_plan(Store.from_arrays(_arrays()), dtype="complex64")
    with pytest.raises(UsageError, match="a conversion has none"):
        ckptconv.convert("/nonexistent/x.safetensors", "/nonexistent/y.safetensors", dtype="target")


def test_split_parts_computed_on_threads_read_the_source_once():
    from concurrent.futures import ThreadPoolExecutor

    qkv = np.arange(48, dtype=np.float32).reshape(12, 4)
    counting = CountingStore({"qkv": qkv, **{f"w{i}": np.full(3, i, np.float32) for i in range(6)}})
    spec = {"rules": [{"from": "qkv", "split": {"axis": 0, "parts": 3}, "to": ["q", "k", "v"]},
                      {"from": "w*", "ops": [{"cast": "float16"}]}]}
    plan = build_plan(counting.store, spec)
    with ThreadPoolExecutor(4) as pool:
        results = dict(zip([o.name for o in plan.outputs], pool.map(lambda o: o.compute(), plan.outputs)))
    assert counting.reads["qkv"] == 1
    assert all(counting.reads[f"w{i}"] == 1 for i in range(6))
    for name, part in zip("qkv", np.split(qkv, 3)):
        assert_bit_exact(results[name], part)


def test_report_records_are_compact_and_behave_as_frozen_values():
    """The per-tensor records of a report (and the planner's per-output state) hold no
    ``__dict__`` (100,000 tensors make 200,000 records); they stay frozen, comparable,
    hashable, copyable and picklable, and their JSON is unchanged."""
    import copy
    import dataclasses
    import pickle

    from ckptconv.mapping import plan as plan_module

    target = {"dense_1/kernel": TargetTensor((5, 10), np.float32), "dense_1/bias": TargetTensor((10,), "float16")}
    plan = build_plan(Store.from_arrays(_arrays()), {"rules": [{"from": "dense_2/kernel", "ops": ["transpose"]}]},
                      target=target)
    report = plan.report
    records = [*report.outputs, *report.sources, *report.mismatched]
    assert {type(r).__name__ for r in records} == {"OutputRecord", "SourceRecord", "TargetMismatch"}
    for record in records:
        assert not hasattr(record, "__dict__"), type(record).__name__
        with pytest.raises(dataclasses.FrozenInstanceError):
            record.name = "x"  # type: ignore[misc]
        again = pickle.loads(pickle.dumps(record))
        assert again == record and hash(again) == hash(record) and copy.copy(record) == record
        assert again.to_json() == record.to_json() if hasattr(record, "to_json") else True
        assert dataclasses.replace(record, name="other").name == "other"
    out = next(r for r in report.outputs if r.name == "dense_2/kernel")
    assert (out.sources, out.ops, out.shape, out.dtype, out.rule, out.unchanged) == (
        ("dense_2/kernel",), "transpose", (20, 10), "float32", 1, False)
    assert out.to_json()["sources"] == ["dense_2/kernel"]
    assert pickle.loads(pickle.dumps(report)).to_json() == report.to_json()
    assert "__slots__" in vars(plan_module._Planned)


def test_first_match_ownership_with_rules_indexed_by_literal_names_and_layers():
    """The plan tries only the rules that can match an entry (rules of literal names and layers
    are looked up, the others tried in turn); which rule owns each entry is still the first in
    the spec that matches, as trying every rule in order says: random mixes of literal names,
    literal layers, globs, regexes and index selections, in random orders."""
    import random

    from ckptconv.mapping.ownership import match_rule

    names = [f"block_{b}/dense_{d}/{w}" for b in range(3) for d in range(3) for w in ("kernel", "bias")]
    arrays = {n: np.zeros((2,), np.float32) for n in names}
    store = Store.from_arrays(arrays)
    entries = store.entries()
    layers = sorted({e.layer for e in entries})
    kinds = [
        lambda r: {"from": r.choice(names), "drop": True},
        lambda r: {"from": [r.choice(names), r.choice(names)], "drop": True},
        lambda r: {"layer": r.choice(layers), "drop": True},
        lambda r: {"layer": r.choice(layers), "index": r.choice([0, 1]), "drop": True},
        lambda r: {"from": f"block_{r.choice('012')}/*/kernel", "drop": True},
        lambda r: {"from": f"re:block_{r.choice('012')}/dense_[01]/.*", "drop": True},
        lambda r: {"layer": f"block_{r.choice('012')}/*", "drop": True},
        lambda r: {"from": r.choice(names), "layer": r.choice(layers), "drop": True},
    ]
    for seed in range(60):
        rng = random.Random(seed)
        rules = [rng.choice(kinds)(rng) for _ in range(rng.randrange(1, 12))]
        spec = Spec.from_dict({"version": 1, "rules": [dict(r, optional=True) for r in rules]})
        expected = {}
        for entry in entries:
            owner = next((rule.number for rule in spec.rules if match_rule(rule, entry) is not None), None)
            expected[entry.name] = owner
        plan = build_plan(store, spec)
        assert {s.name: s.rule for s in plan.report.sources} == expected, (seed, rules)
