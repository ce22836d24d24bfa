"""The spec language: files in YAML/JSON/TOML, Python-built specs, patterns, and SpecErrors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ckptconv import SpecError, Store
from ckptconv.mapping import Rule, Spec, build_plan, load_spec
from ckptconv.mapping.patterns import Pattern, Template
from tests.helpers import assert_bit_exact

ROOT = Path(__file__).parent.parent
SPECS = ROOT / "examples" / "specs"


def _design_store() -> tuple[Store, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)

    def r(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    arrays = {
        "embeddings.position_ids": np.arange(8, dtype=np.int64)[None],
        "encoder.layer.0.attn.q.weight": r(384, 384),
        "encoder.layer.0.attn.k.weight": r(384, 384),
        "encoder.layer.1.attn.v.weight": r(384, 384),
        "conv_1_pretrained/kernel": r(3, 3, 1, 4),
        "conv_1_pretrained/bias": r(4),
        "dense_2/kernel": r(20, 200),
        "dense_2/bias": r(200),
        "blocks.0.qkv.weight": r(12, 4),
        "w1": r(4, 6),
        "w3": r(4, 2),
        "head/kernel": r(3, 3),
    }
    return Store.from_arrays(arrays), arrays


def test_the_design_example_works_as_written():
    store, a = _design_store()
    spec = load_spec(SPECS / "design-example.yaml")
    assert spec.dtype is None and spec.passthrough is True and len(spec.rules) == 6
    plan = build_plan(store, spec)
    assert plan.ok, plan.problems
    out = {o.name: o.compute() for o in plan.outputs}
    assert "embeddings.position_ids" not in out
    assert_bit_exact(out["layer_0/attention/q/kernel"], a["encoder.layer.0.attn.q.weight"].T.reshape(384, 12, 32))
    assert_bit_exact(out["layer_1/attention/v/kernel"], a["encoder.layer.1.attn.v.weight"].T.reshape(384, 12, 32))
    assert_bit_exact(out["conv_1/kernel"], a["conv_1_pretrained/kernel"])
    assert_bit_exact(out["conv_1/bias"], a["conv_1_pretrained/bias"])
    assert_bit_exact(out["dense_2/kernel"], a["dense_2/kernel"][:, :128].astype(np.float16))
    assert_bit_exact(out["dense_2/bias"], a["dense_2/bias"])  # index 1: passed through
    for i, part in enumerate(("q", "k", "v")):
        assert_bit_exact(out[f"blocks.0/{part}/kernel"], a["blocks.0.qkv.weight"][4 * i : 4 * (i + 1)])
    assert_bit_exact(out["gate_up/kernel"], np.concatenate([a["w1"], a["w3"]], axis=1))
    assert_bit_exact(out["head/kernel"], a["head/kernel"])
    status = {s.name: s.status for s in plan.report.sources}
    assert status["embeddings.position_ids"] == "dropped"
    assert status["head/kernel"] == "passthrough"
    assert status["w3"] == "used"


DESIGN_AS_JSON = {
    "version": 1,
    "dtype": "keep",
    "passthrough": True,
    "rules": [
        {"drop": "*position_ids"},
        {"from": "re:encoder\\.layer\\.(\\d+)\\.attn\\.(q|k|v)\\.weight", "to": "layer_{1}/attention/{2}/kernel",
         "ops": ["transpose", {"reshape": [384, 12, 32]}]},
        {"layer": "conv_1_pretrained", "to_layer": "conv_1"},
        {"layer": "dense_2", "index": 0, "to": "dense_2/kernel", "ops": [{"slice": "[:, :128]"}, {"cast": "float16"}]},
        {"from": "re:(.*)\\.qkv\\.weight", "split": {"axis": 0, "parts": 3}, "to": ["{1}/q/kernel", "{1}/k/kernel", "{1}/v/kernel"]},
        {"from": ["w1", "w3"], "concat": {"axis": 1}, "to": "gate_up/kernel"},
    ],
}

DESIGN_AS_TOML = r'''
version = 1
dtype = "keep"
passthrough = true

[[rules]]
drop = "*position_ids"

[[rules]]
from = 're:encoder\.layer\.(\d+)\.attn\.(q|k|v)\.weight'
to = "layer_{1}/attention/{2}/kernel"
ops = ["transpose", {reshape = [384, 12, 32]}]

[[rules]]
layer = "conv_1_pretrained"
to_layer = "conv_1"

[[rules]]
layer = "dense_2"
index = 0
to = "dense_2/kernel"
ops = [{slice = "[:, :128]"}, {cast = "float16"}]

[[rules]]
from = 're:(.*)\.qkv\.weight'
split = {axis = 0, parts = 3}
to = ["{1}/q/kernel", "{1}/k/kernel", "{1}/v/kernel"]

[[rules]]
from = ["w1", "w3"]
concat = {axis = 1}
to = "gate_up/kernel"
'''


def test_yaml_json_toml_and_python_give_the_same_spec(tmp_path):
    from_yaml = load_spec(SPECS / "design-example.yaml")
    (tmp_path / "s.json").write_text(json.dumps(DESIGN_AS_JSON))
    (tmp_path / "s.toml").write_text(DESIGN_AS_TOML)
    (tmp_path / "noext").write_text(DESIGN_AS_TOML)  # detected by content
    (tmp_path / "noext2").write_text(json.dumps(DESIGN_AS_JSON))
    for path in ("s.json", "s.toml", "noext", "noext2"):
        assert load_spec(tmp_path / path) == from_yaml, path
    assert load_spec(DESIGN_AS_JSON) == from_yaml
    python = Spec(
        rules=[
            Rule(drop="*position_ids"),
            Rule(from_="re:encoder\\.layer\\.(\\d+)\\.attn\\.(q|k|v)\\.weight", to="layer_{1}/attention/{2}/kernel",
                 ops=["transpose", {"reshape": [384, 12, 32]}]),
            Rule(layer="conv_1_pretrained", to_layer="conv_1"),
            Rule(layer="dense_2", index=0, to="dense_2/kernel", ops=[{"slice": "[:, :128]"}, {"cast": "float16"}]),
            Rule(from_="re:(.*)\\.qkv\\.weight", split={"axis": 0, "parts": 3},
                 to=["{1}/q/kernel", "{1}/k/kernel", "{1}/v/kernel"]),
            Rule(from_=["w1", "w3"], concat={"axis": 1}, to="gate_up/kernel"),
        ]
    )
    assert python == from_yaml
    assert load_spec(python.to_dict()) == from_yaml


def test_every_spec_file_in_examples_loads():
    files = sorted(p for p in SPECS.iterdir() if p.suffix in (".yaml", ".yml", ".json", ".toml"))
    assert files
    for path in files:
        load_spec(path)


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"from": "a", "too": "b"}, r"rule #2 \(from 'a'\): unknown key 'too'; did you mean 'to'\?"),
        ({"from": "a", "transpose": True}, r"rule #2 \(from 'a'\): unknown key 'transpose'; put ops in a list"),
        ({"from": "a", "ops": ["transpos"]}, r"rule #2 \(from 'a'\): unknown op 'transpos'; did you mean 'transpose'\?"),
        ({"from": "re:a(b", "to": "x"}, r"rule #2 \(from 're:a\(b'\): invalid regular expression 'a\(b'"),
        ({"from": "a", "ops": [{"slice": ":, :128"}]}, r"rule #2 \(from 'a'\): slice ':, :128': write it in brackets"),
        ({"from": "a", "ops": [{"slice": "[:, x]"}]}, r"rule #2 .*'x' is not an integer"),
        ({"from": "a", "ops": [{"slice": "[::0]"}]}, r"rule #2 .*step cannot be zero"),
        ({"from": "a", "ops": [{"cast": "bfloat61"}]}, r"rule #2 .*unknown dtype 'bfloat61'; did you mean 'bfloat16'\?"),
        ({"from": "a", "ops": ["reshape"]}, r"rule #2 .*op 'reshape' needs an argument, like \{reshape: \[384, 12, 32\]\}"),
        ({"from": "a", "ops": [{"reshape": [-1, -1]}]}, r"rule #2 .*at most one -1"),
        ({"from": "a/*", "to": "b/{2}"}, r"rule #2 \(from 'a/\*'\): template 'b/\{2\}' uses \{2\} but pattern 'a/\*' has 1 capture"),
        ({"from": "re:(?P<blk>\\d+)", "to": "b/{block}"}, r"rule #2 .*uses \{block\}.*names \['blk'\]"),
        ({"from": "a", "to": "b/{"}, r"rule #2 .*unbalanced brace"),
        ({"from": "q", "split": {"axis": 0, "parts": 3}, "to": ["a", "b"]}, r"rule #2 .*split makes 3 parts but to lists 2 names"),
        ({"from": "q", "split": {"axis": 0}, "to": ["a"]}, r"rule #2 .*give either parts .* or sizes"),
        ({"drop": "a", "to": "b"}, r"rule #2 \(drop 'a'\): a drop rule cannot also have to"),
        ({"from": "a", "to": "b", "to_layer": "c"}, r"rule #2 .*give to or to_layer, not both"),
        ({"to": "b"}, r"rule #2 .*a rule needs a selector"),
        ({"from": ["a", "b"], "concat": 0, "stack": 0, "to": "c"}, r"rule #2 .*does one of split, concat, stack"),
        ({"from": "a", "index": "zero"}, r"rule #2 .*index: expected a list of integers"),
        ({"from": "a", "optional": "yes"}, r"rule #2 .*optional: expected true or false"),
        ({"from": "a", "to": ["b", "c"]}, r"rule #2 .*a list of names needs split"),
    ],
)
def test_spec_errors_name_the_rule_by_number_and_pattern(tmp_path, rule, message):
    spec = {"rules": [{"drop": "ok"}, rule]}
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(SpecError, match=message) as info:
        load_spec(path)
    assert info.value.path == str(path)
    assert "\n" not in str(info.value)


def test_yaml_values_that_are_not_strings_get_a_quoting_hint(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("rules:\n  - layer: on\n    to_layer: off\n")
    with pytest.raises(SpecError, match=r"layer: expected a pattern string, received True \(in YAML, quote names"):
        load_spec(path)
    path.write_text("rules:\n  - from: a\n    to: null_layer\n  - from: b\n    to: 12\n")
    with pytest.raises(SpecError, match=r"rule #2 \(from 'b'\): to: expected a name template, received 12"):
        load_spec(path)


def test_top_level_errors(tmp_path):
    with pytest.raises(SpecError, match=r"unknown top-level key 'rule'; did you mean 'rules'\?"):
        load_spec({"rule": []})
    with pytest.raises(SpecError, match="spec version 1, received 2"):
        load_spec({"version": 2, "rules": []})
    with pytest.raises(SpecError, match=r"dtype: unknown dtype 'flaot16'; did you mean 'float16'\?"):
        load_spec({"dtype": "flaot16"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - from: [a\n")
    with pytest.raises(SpecError, match="not valid YAML") as info:
        load_spec(bad)
    assert info.value.path == str(bad)
    bad = tmp_path / "bad.toml"
    bad.write_text("[[rules]\nfrom = 'a'\n")
    with pytest.raises(SpecError, match="not valid TOML"):
        load_spec(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    with pytest.raises(SpecError, match="empty"):
        load_spec(empty)


@pytest.mark.parametrize(
    ("pattern", "name", "groups"),
    [
        ("dense_*/kernel", "dense_1/kernel", ("1",)),
        ("dense_*/kernel", "dense_1/inner/kernel", None),  # * stays within a part
        ("**/kernel", "a/b/kernel", ("a/b",)),
        ("**/kernel", "kernel", ("",)),  # **/ may match no part at all
        ("block/**/kernel", "block/kernel", ("",)),
        ("block/**/kernel", "block/x/y/kernel", ("x/y",)),
        ("block/**", "block/x/y", ("x/y",)),
        ("*position_ids", "embeddings.position_ids", ("embeddings.",)),
        ("layer_?/bias", "layer_3/bias", ()),
        ("layer_?/bias", "layer_33/bias", None),
        ("a.b", "axb", None),  # a dot is a dot, not a regex wildcard
        ("re:enc\\.(\\d+)\\.w", "enc.12.w", ("12",)),
        ("re:enc\\.(\\d+)", "enc.12.w", None),  # anchored at both ends
        ("re:x(?P<n>\\d)", "x5", ("5",)),
    ],
)
def test_patterns(pattern, name, groups):
    m = Pattern(pattern).match(name)
    if groups is None:
        assert m is None
    else:
        assert m is not None and m.groups == groups


def test_templates_take_numbers_names_and_escaped_braces():
    m = Pattern("re:enc\\.(?P<blk>\\d+)\\.(q|k)").match("enc.3.q")
    assert m is not None
    assert Template("layer_{blk}/{2}/{{x}}/{0}").render(m.fields()) == "layer_3/q/{x}/enc.3.q"


def test_to_layer_keeps_each_weights_own_part_and_separator():
    arrays = {"conv.weight": np.zeros(2, np.float32), "old/inner/kernel": np.zeros(2, np.float32)}
    spec = {"rules": [{"layer": "conv", "to_layer": "stem"}, {"layer": "old/*", "to_layer": "new/{1}"}]}
    plan = build_plan(Store.from_arrays(arrays), spec)
    assert [o.name for o in plan.outputs] == ["stem.weight", "new/inner/kernel"]


def test_drop_true_with_selectors_and_index_lists():
    arrays = {"d/kernel": np.zeros((2, 2), np.float32), "d/bias": np.zeros(2, np.float32), "e/kernel": np.zeros(1, np.float32)}
    spec = {"rules": [{"layer": "d", "index": [1], "drop": True}]}
    plan = build_plan(Store.from_arrays(arrays), spec)
    assert plan.ok
    assert [o.name for o in plan.outputs] == ["d/kernel", "e/kernel"]
    assert plan.report.dropped == ["d/bias"]


def test_multiple_from_patterns_each_must_match_unless_optional():
    arrays = {"a": np.zeros(1, np.float32)}
    plan = build_plan(Store.from_arrays(arrays), {"rules": [{"from": ["a", "bb"]}]})
    assert plan.problems == ["rule #1 (from ['a', 'bb']): pattern 'bb' matches no entry; no similar names in the source"]
    assert build_plan(Store.from_arrays(arrays), {"rules": [{"from": ["a", "bb"], "optional": True}]}).ok


def test_every_wrong_rule_is_said_at_once(tmp_path: Path) -> None:
    """A spec with several wrong rules names each (it named the first only, so a user fixed
    one per run); one wrong rule is said as before."""
    path = tmp_path / "bad.yaml"
    path.write_text('rules:\n  - {from: "a/*", to: "b/{1}", ops: [transpse]}\n  - {frm: c, to: d}\n'
                    '  - {from: e, to: f}\n  - {from: g, to: h, dtype: flaot16}\n')
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value).startswith(
        f"{path}: 3 rules are wrong: (1) rule #1 (from 'a/*'): unknown op 'transpse'; did you mean "
        "'transpose'?; (2) rule #2 (no selector): unknown key 'frm'; did you mean 'from'?; (3) rule #4"), str(info.value)
    assert len(info.value.problems) == 3 and info.value.problems[2].startswith("rule #4 (from 'g'): ")
    many = {"rules": [{"from": f"x{i}", "to": "y", "opps": []} for i in range(8)]}
    with pytest.raises(SpecError, match=r"^8 rules are wrong: \(1\) .*\(5\) rule #5 .*; and 3 more$"):
        Spec.from_dict(many)
    with pytest.raises(SpecError, match=r"^rule #2 \(from 'c'\): unknown key 'opps'"):
        Spec.from_dict({"rules": [{"from": "a", "to": "b"}, {"from": "c", "to": "d", "opps": []}]})
