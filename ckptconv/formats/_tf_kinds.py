"""Names and kinds in a TensorFlow checkpoint: what the object graph (or, in TF1 checkpoints,
the naming conventions) says each tensor is.

* :func:`object_roles` walks a ``TrackableObjectGraph``: variables reached from the root without
  entering an optimizer or a metrics container are weights, what only an optimizer reaches is
  optimizer state, the rest bookkeeping; the walk's order is the order objects were attached.
* :func:`tf1_kind` gives the kinds of name-based (TF1 ``Saver``) checkpoints from naming rules.
* :func:`object_path` and :func:`object_path_name`: a variable's object path in its checkpoint
  key (the structural key TensorFlow restores by), and a name made from it.

Source of truth: TensorFlow's ``trackable_object_graph.proto`` and
``tensorflow/python/checkpoint/`` (how keys are escaped and how slots are recorded).
"""

from __future__ import annotations

import re
from typing import NamedTuple

from ..store import Kind
from ._protowire import BundleEntry, TrackableObject

__all__ = ["Role", "object_roles", "tf1_optimizer_scopes", "tf1_kind", "natural_key", "object_path",
           "object_path_name", "INTEGER_CODES"]


# Object-graph edges that lead to an optimizer's step counter, or a checkpoint's.
_COUNTER_EDGES = {"iter", "_iterations", "iterations", "iteration", "global_step", "save_counter"}
# Edges under which Keras keeps metric objects (their count/total are bookkeeping).
_METRIC_EDGES = {"metrics", "_metrics", "layer_metrics", "compiled_metrics", "_compile_metrics",
                 "_metrics_container", "metrics_container"}
_TF1_COUNTERS = {"global_step"}
_TF1_OPTIMIZER_COUNTERS = {"iter", "iterations"}
INTEGER_CODES = {3, 9, 22, 23}  # int32, int64, uint32, uint64
_TF1_OPTIMIZER_LEAF = re.compile(r"^beta[12]_power(_\d+)?$")


class Role(NamedTuple):
    full_name: str
    kind: Kind
    order: int
    counter: bool  # reached by a step-counter edge (bookkeeping when it holds an integer)


_new = tuple.__new__  # _new(Role, (...)): no Python-level __new__ per variable


def _dfs(
    nodes: list[TrackableObject],
    starts: list[int],
    seen: set[int],
    *,
    blocked_nodes: set[int] | frozenset[int] = frozenset(),
    blocked_edges: set[str] | frozenset[str] = frozenset(),
) -> list[int]:
    """Node ids in depth-first, child-list order (the order objects were attached: a
    model's layers, then each layer's weights), not entering the nodes ``blocked_nodes``
    holds nor following edges named in ``blocked_edges``."""
    out = []
    count = len(nodes)
    stack = list(reversed(starts))
    while stack:
        node = stack.pop()
        if node in seen or not 0 <= node < count:
            continue
        seen.add(node)
        out.append(node)
        children = nodes[node].children
        if children:  # a variable has none
            stack += [
                child for child, edge in reversed(children)
                if child not in seen and child not in blocked_nodes and edge not in blocked_edges
            ]
    return out


def object_roles(nodes: list[TrackableObject]) -> dict[str, Role]:
    """checkpoint key -> full name, kind and order, from the object graph's structure.

    Weights are the variables reached from the root without entering an optimizer (a node
    with slot variables or an ``iter``/``_iterations`` counter, or the root's ``optimizer``)
    or a metrics container; Keras 3 optimizers also hold references to the model's
    variables, which therefore stay weights. What only an optimizer reaches is
    ``optimizer``; the rest (metrics, non-variable state) is ``bookkeeping``.
    """
    if not nodes:
        return {}

    def is_variable(i: int) -> bool:
        return any(a.name == "VARIABLE_VALUE" for a in nodes[i].attributes)

    optimizers = set()
    counter_nodes = set()
    slots: list[int] = []
    count = len(nodes)
    counter_edges = _COUNTER_EDGES
    for i, (children, _, slot_variables) in enumerate(nodes):
        if children:  # a variable has none
            for child, edge in children:
                if edge in counter_edges and 0 <= child < count:
                    counter_nodes.add(child)
                    if edge != "save_counter" and is_variable(child):
                        optimizers.add(i)
        if slot_variables:
            optimizers.add(i)
            slots += [s.slot_variable_node_id for s in slot_variables]
    optimizers.update(c.node_id for c in nodes[0].children if c.local_name == "optimizer")
    slot_set = set(slots)

    seen: set[int] = set()
    weights = _dfs(
        nodes, [0], seen, blocked_nodes=optimizers | slot_set, blocked_edges=_METRIC_EDGES
    )
    optimizer_part = _dfs(nodes, sorted(optimizers) + slots, seen, blocked_edges=_METRIC_EDGES)
    rest = _dfs(nodes, [0], seen)
    if len(seen) < len(nodes):  # nodes no edge reaches
        rest += [i for i in range(len(nodes)) if i not in seen]
    phases: list[tuple[list[int], Kind]] = [
        (weights, "weight"), (optimizer_part, "optimizer"), (rest, "bookkeeping")
    ]
    roles: dict[str, Role] = {}
    for members, kind in phases:
        for i in members:
            for name, full_name, key in nodes[i][1]:  # its attributes
                if key not in roles:
                    roles[key] = _new(Role, (
                        full_name, kind if name == "VARIABLE_VALUE" else "bookkeeping",
                        len(roles), i in counter_nodes,
                    ))
    return roles


def tf1_optimizer_scopes(entries: dict[str, BundleEntry]) -> set[str]:
    """Name scopes that hold an optimizer: those with an integer ``iter``/``iterations``
    counter (``training/Adam/iter``, Keras' ``Adam/iterations``), and Keras' ``training``."""
    scopes = {"training"}
    for key, entry in entries.items():
        scope, _, leaf = key.rpartition("/")
        if scope and leaf in _TF1_OPTIMIZER_COUNTERS and entry.dtype in INTEGER_CODES:
            scopes.add(scope)
    return scopes


def tf1_kind(
    key: str, entry: BundleEntry, entries: dict[str, BundleEntry], optimizer_scopes: set[str]
) -> Kind:
    """Kinds of name-based (TF1) checkpoints, which record no structure, from naming rules:

    * integer ``global_step`` and optimizer ``iter``/``iterations`` counters: bookkeeping;
    * everything under an optimizer scope (see :func:`tf1_optimizer_scopes`),
      ``beta1_power``/``beta2_power``, and slots — ``<variable>/<slot>`` with the shape and
      dtype of ``<variable>``, e.g. ``dense/kernel/Adam_1``: optimizer;
    * the rest: weight.
    """
    scope, _, leaf = key.rpartition("/")
    if entry.dtype in INTEGER_CODES and (
        leaf in _TF1_COUNTERS or (leaf in _TF1_OPTIMIZER_COUNTERS and scope in optimizer_scopes)
    ):
        return "bookkeeping"
    cut = key.find("/")
    while cut != -1:  # under an optimizer scope: some parent of the key is one
        if key[:cut] in optimizer_scopes:
            return "optimizer"
        cut = key.find("/", cut + 1)
    if _TF1_OPTIMIZER_LEAF.match(leaf):
        return "optimizer"
    owner = entries.get(scope) if scope else None
    if owner is not None and owner.shape == entry.shape and owner.dtype == entry.dtype:
        return "optimizer"
    return "weight"


_DIGIT_RUNS = re.compile(r"(\d+)")


def natural_key(text: str) -> list[object]:
    """Sort key that orders embedded numbers numerically (``w2`` before ``w10``): the text
    split at its digit runs, which ``split`` puts at the odd positions."""
    parts: list[object] = _DIGIT_RUNS.split(text)  # type: ignore[assignment]
    parts[1::2] = map(int, parts[1::2])  # type: ignore[arg-type]
    return parts


_VARIABLE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"


def object_path(key: str) -> str | None:
    """The object path of a variable's checkpoint key (``layer_with_weights-0/kernel`` of
    ``layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE``), escaped as TensorFlow
    writes it; None for other keys."""
    return key[: -len(_VARIABLE_SUFFIX)] if key.endswith(_VARIABLE_SUFFIX) else None


def object_path_name(key: str) -> str | None:
    """A name from a variable's object path, for variables whose recorded full names collide:
    the path below ``tf.train.Checkpoint(model=...)``'s ``model``, without the private
    containers Keras tracks layers in (``_functional``, ``_operations``; their positions are
    kept), and the leaf's leading underscore (Keras 3's Dense tracks ``_kernel``):
    ``model/d1/_kernel/.ATTRIBUTES/VARIABLE_VALUE`` -> ``d1/kernel``."""
    path = object_path(key)
    if path is None:
        return None
    parts = [_unescape(p) for p in path.split("/")]
    if len(parts) > 1 and parts[0] == "model":
        parts = parts[1:]
    leaf = parts[-1].lstrip("_") or parts[-1]
    if leaf.isdigit():  # a list position (a SavedModel's variables/N), no variable's name
        return None
    kept = [p for p in parts[:-1] if not p.startswith("_")]
    return "/".join([*kept, leaf])


def _unescape(part: str) -> str:
    """TensorFlow's escaping of object names in keys, undone (``.S`` is ``/``, ``..`` is ``.``)."""
    return part.replace(".S", "/").replace("..", ".")
