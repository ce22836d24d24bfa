"""A spec's YAML is built from libyaml's events (``ckptconv.mapping._yaml``): it must give what
PyYAML's own safe loader gives, value for value and error for error, and refuse aliases."""

from __future__ import annotations

import datetime

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import ckptconv
from ckptconv import strictjson
from ckptconv.mapping._yaml import DuplicateKey, YamlAlias, read_yaml

pytestmark = pytest.mark.skipif(not hasattr(yaml, "CSafeLoader"), reason="PyYAML without libyaml")


def _pyyaml(text: str) -> tuple:
    """What PyYAML's safe loader (libyaml) makes of ``text``: the value, or the error."""
    try:
        return ("value", yaml.load(text, Loader=yaml.CSafeLoader))  # noqa: S506
    except yaml.YAMLError as e:
        return ("error", type(e).__name__, str(e))


def _ours(text: str) -> tuple:
    try:
        return ("value", read_yaml(text))
    except yaml.YAMLError as e:
        return ("error", type(e).__name__, str(e))


EDGE_CASES = [
    "",
    "a: 1",
    "# only a comment\n",
    # every implicit scalar type the safe resolver knows, plain, quoted and tagged
    "- 1\n- 2.5\n- true\n- null\n- ~\n- 2024-01-02\n- 0x1F\n- 1_000\n- .inf\n- -.5\n- 1e3\n- 0o17\n"
    "- yes\n- Off\n- '3'\n- \"4\"\n- !!str 5\n- !!int '6'\n- !!float 7\n- !!binary aGVsbG8=\n- 2001-12-14t21:59:43.10-05:00\n",
    "- =\n",  # the value tag: PyYAML has no constructor for it
    "'': 1\n~: [a, ~]\n'null': x\n3: y\ntrue: z\n",  # empty, null, int and bool keys
    "a: &x 1\nb: 2",  # an anchor without an alias
    "a: !!set {x, y}",
    "!!omap [a: 1, b: 2]",
    "!!pairs [a: 1, a: 2]",
    "- !!map {a: 1}\n- !!seq [1]",  # the default tags, written out
    "? [1, 2]\n: 3",  # a sequence as a key
    "? {a: 1}\n: 3",
    "<<: {a: 1}\nb: 2",  # a merge key
    "a: 1\n---\nb: 2\n",  # two documents
    "a: !foo 1",
    "a: !!python/name:os.system ''",
    "x: {a: [1, {b: c}], d: [], e: {}}\ny:\n  - - 1\n    - 2\n  - {f: g}\n",
    "rules:\n  - {from: dense_0.weight, to: dense_0/kernel, ops: [transpose]}\n  - drop: 're:.*num_batches_tracked'\n",
    "a: [1, 2\n",  # a syntax error
    "a: 'unterminated\n",
    "\t- tab",
]


@pytest.mark.parametrize("text", EDGE_CASES)
def test_every_edge_case_is_what_pyyaml_makes_of_it(text: str) -> None:
    assert _ours(text) == _pyyaml(text)


_scalars = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False) | st.dates() | st.text(max_size=12)
    | st.sampled_from(["yes", "No", "~", "null", "0x10", "1_0", ".NaN"[:-3] + "inf", "2020-01-01", "<<", "=", "-", "'", "#"])
)
_keys = st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=8) | st.dates()
_documents = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(document=_documents, flow=st.sampled_from([None, True, False]))
def test_any_dumped_document_reads_back_as_pyyaml_reads_it(document: object, flow: bool | None) -> None:
    text = yaml.safe_dump(document, default_flow_style=flow, allow_unicode=True)
    assert _ours(text) == _pyyaml(text)


@pytest.mark.parametrize(
    "text",
    [
        "a: &x [1]\nb: *x\n",
        "a: !!set {x}\nb: &y 1\nc: *y\n",  # after something PyYAML must build itself
        "a: 1\n---\nb: &z 2\nc: *z\n",  # in a second document
    ],
)
def test_aliases_are_refused_wherever_they_are(text: str) -> None:
    with pytest.raises(YamlAlias, match=r"YAML aliases are not allowed in a spec \(\*\w at line \d\)"):
        read_yaml(text)


@pytest.mark.parametrize(
    "text",
    [
        "a: &x {f: 1}\nb:\n  <<: *x\n  g: 2\n",
        "a: &x {f: 1}\nc: &y {h: 1}\nb: {<<: [*x, *y], g: 2}\n",
    ],
)
def test_merge_keys_are_refused_as_aliases_saying_so(text: str) -> None:
    """``<<: *x`` copies through an alias: refused, and the message names the merge key."""
    with pytest.raises(YamlAlias, match=r"^YAML merge keys copy through an alias, and aliases are not allowed "
                       r"in a spec \(<<: \*x at line 3\)"):
        read_yaml(text)


def test_a_merge_of_a_mapping_written_in_place_reads_as_pyyaml_reads_it() -> None:
    text = "a:\n  <<: {f: 1, g: 1}\n  g: 2\n"
    assert read_yaml(text) == {"a": {"f": 1, "g": 2}} and _pyyaml(text) == ("value", read_yaml(text))


def test_a_date_key_and_value_are_dates() -> None:
    assert read_yaml("2024-01-02: 2024-01-03T04:05:06Z") == {
        datetime.date(2024, 1, 2): datetime.datetime(2024, 1, 3, 4, 5, 6, tzinfo=datetime.timezone.utc)
    }


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ("version: 1\nrules:\n  - drop: x\nrules:\n  - {from: a, to: b}\n", "rules", 4),  # PyYAML keeps the last
        ("rules:\n  - {from: conv_2/kernel, from: conv_2/bias, to: x}\n", "from", 2),
        ("a:\n  b: 1\n  c: 2\n  b: 3\n", "b", 4),
        ("1: x\n0x1: y\n", 1, 2),  # equal once resolved
    ],
)
def test_a_key_given_twice_in_one_mapping_is_refused(text: str, key: object, line: int) -> None:
    with pytest.raises(DuplicateKey, match=rf"key {key!r} appears twice in one mapping \(line {line}\)"):
        read_yaml(text)


def test_a_json_key_given_twice_is_refused_and_a_spec_says_so(tmp_path) -> None:
    with pytest.raises(strictjson.RepeatedKey, match="'from'"):
        strictjson.loads('{"rules": [{"from": "a", "from": "b"}]}')
    assert strictjson.loads('{"a": {"b": 1}, "b": [1, {"a": 2}]}') == {"a": {"b": 1}, "b": [1, {"a": 2}]}
    for name, text in (("s.json", '{"version": 1, "version": 1}'), ("s.yaml", "version: 1\nversion: 1\n")):
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(ckptconv.SpecError, match="key 'version' appears twice") as caught:
            ckptconv.load_spec(path)
        assert str(path) in str(caught.value)
