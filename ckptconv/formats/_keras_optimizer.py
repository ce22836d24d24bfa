"""Names of a Keras 3 optimizer's saved variables, as Keras gives them.

A ``.keras`` archive stores the optimizer's variables under ``optimizer/vars/0`` ... in the
order the optimizer created them, without their names. Keras 3 (``BaseOptimizer``) creates
them in a fixed order, so ``config.json``'s ``compile_config`` (the optimizer's class and
options) and the model's trainable variables name them all:

1. ``iteration`` (an integer scalar), then ``learning_rate`` unless the learning rate is a
   schedule;
2. with ``use_ema``, an ``average`` per trainable variable; with
   ``gradient_accumulation_steps``, a ``gradient_accumulator`` per trainable variable;
3. the class's own slots, one ``add_optimizer_variables`` call at a time, each interleaving
   its slot names per trainable variable (Adam: ``momentum``, ``velocity`` for the first
   variable, then for the second, ...; with ``amsgrad`` a ``velocity_hat`` per variable after
   those);
4. a class's own scalars made after its slots (Nadam's running product, an unnamed
   ``variable``).

A slot of the variable at ``path`` is named ``{optimizer name}/{path with / as _}_{slot}``
(``adam/dense_kernel_momentum``). The variable path is the model's weight name, after the
model's own name for Sequential and subclassed models (their layers are built inside the
model's name scope: ``sequential/dense/kernel``), without it for functional ones.

Whatever cannot be named with certainty keeps its index name (``optimizer/12``): an
optimizer class not listed here, trainable weights whose names are not known, a count or a
shape that does not fit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..store import Entry

__all__ = ["name_optimizer_variables", "slot_groups"]

# Scalars an optimizer class creates after its slots, by their Keras names.
_TAIL = {"Nadam": ["variable"]}

# Weights Keras' built-in layers create with trainable=False: never an optimizer's.
_NON_TRAINABLE = {"moving_mean", "moving_variance", "mean", "variance", "count"}


def slot_groups(class_name: str, config: Mapping[str, Any]) -> list[list[str]] | None:
    """The slot names each ``add_optimizer_variables`` call of a Keras 3.15 optimizer
    creates, in order (``[["momentum", "velocity"], ["velocity_hat"]]`` for Adam with
    amsgrad), or None for an optimizer whose variables this does not know."""
    groups: list[list[str]] = []
    if config.get("use_ema"):
        groups.append(["average"])
    if config.get("gradient_accumulation_steps"):
        groups.append(["gradient_accumulator"])
    if class_name == "SGD":
        own = [["momentum"]] if config.get("momentum", 0) else []
    elif class_name in ("Adam", "AdamW"):
        own = [["momentum", "velocity"]] + ([["velocity_hat"]] if config.get("amsgrad") else [])
    elif class_name in ("Nadam", "Lamb"):
        own = [["momentum", "velocity"]]
    elif class_name == "Adamax":
        own = [["momentum", "norm"]]
    elif class_name == "Adagrad":
        own = [["accumulator"]]
    elif class_name == "Adadelta":
        own = [["accumulated_grad", "accumulated_delta_var"]]
    elif class_name == "RMSprop":
        own = [["velocity"]]
        if config.get("momentum", 0):
            own.append(["momentum"])
        if config.get("centered"):
            own.append(["average_gradient"])
    elif class_name == "Ftrl":
        own = [["accumulator", "linear"]]
    elif class_name == "Lion":
        own = [["momentum"]]
    else:
        return None
    return groups + own


def name_optimizer_variables(entries: list[Entry], config: Any) -> list[Entry]:
    """``entries`` with the optimizer's variables (layer ``optimizer``, index names) renamed
    as Keras names them, where ``config`` (the archive's ``config.json``) says enough."""
    optimizer = [e for e in entries if e.layer == "optimizer"]
    named = _names(optimizer, entries, config) if optimizer else None
    if not named:
        return entries
    return [e.renamed(named[id(e)]) if id(e) in named else e for e in entries]


def _names(optimizer: list[Entry], entries: list[Entry], config: Any) -> dict[int, str] | None:
    compiled = config.get("compile_config") if isinstance(config, Mapping) else None
    spec = compiled.get("optimizer") if isinstance(compiled, Mapping) else None
    if not isinstance(spec, Mapping) or not isinstance(spec.get("config"), Mapping):
        return None
    class_name, options = spec.get("class_name"), spec["config"]
    prefix = options.get("name")
    groups = slot_groups(class_name, options) if isinstance(class_name, str) else None
    if groups is None or not isinstance(prefix, str) or not prefix:
        return None
    variables = sorted(optimizer, key=lambda e: e.index)
    names: dict[int, str] = {}
    head = ["iteration"] + (["learning_rate"] if isinstance(options.get("learning_rate"), (int, float)) else [])
    for entry, name in zip(variables, head):
        if entry.shape != () or (name == "iteration") != (entry.dtype.kind in "iu"):
            return None
        names[id(entry)] = f"{prefix}/{name}"
    trainable = _trainable_paths(entries, config)
    if trainable is None:
        return names  # the head is certain; the slots are not
    slots = variables[len(head):]
    expected = [(path, shape, slot) for group in groups for path, shape in trainable for slot in group]
    if len(slots) < len(expected):
        return names
    for entry, (path, shape, slot) in zip(slots, expected):
        if entry.shape != shape:
            return names
        names[id(entry)] = f"{prefix}/{path.replace('/', '_')}_{slot}"
    tail = variables[len(head) + len(expected):]
    if len(tail) == len(_TAIL.get(class_name, [])) and all(e.shape == () for e in tail):
        for entry, name in zip(tail, _TAIL.get(class_name, [])):
            names[id(entry)] = f"{prefix}/{name}"
    return names


def _trainable_paths(entries: list[Entry], config: Mapping[str, Any]) -> list[tuple[str, tuple[int, ...]]] | None:
    """The model's trainable variables as Keras orders them (layer order, each layer's own
    order): their variable paths and shapes; None when a name is not known."""
    model = config.get("config")
    if not isinstance(model, Mapping):
        return None
    frozen = _frozen_layers(model)
    scope = "" if config.get("class_name") == "Functional" else f"{model.get('name')}/"
    if scope != "" and not isinstance(model.get("name"), str):
        return None
    found = []
    for entry in entries:
        if entry.kind != "weight":
            continue
        leaf = entry.name.rsplit("/", 1)[-1]
        if leaf.isdigit():  # a weight of a class whose variable names are not known
            return None
        if leaf in _NON_TRAINABLE or any(entry.layer == f or entry.layer.startswith(f + "/") for f in frozen):
            continue
        found.append((scope + entry.name, entry.shape))
    return found


def _frozen_layers(model: Mapping[str, Any]) -> list[str]:
    """Paths of the layers ``config.json`` records as ``trainable: false``."""
    frozen: list[str] = []
    stack: list[tuple[Any, str, int]] = [(model.get("layers"), "", 0)]
    while stack:
        layers, parent, depth = stack.pop()
        if not isinstance(layers, list) or depth > 50:
            continue
        for layer in layers:
            cfg = layer.get("config") if isinstance(layer, Mapping) else None
            if not isinstance(cfg, Mapping) or not isinstance(cfg.get("name"), str):
                continue
            path = f"{parent}{cfg['name']}"
            if cfg.get("trainable") is False:
                frozen.append(path)
            stack.append((cfg.get("layers"), path + "/", depth + 1))
    return frozen
