"""The mapper: rules (a spec) turn a store's entries into outputs, checked as a plan first.

::

    from ckptconv.mapping import load_spec, build_plan
    plan = build_plan(store, load_spec("map.yaml"))
    plan.raise_if_problems()          # every problem at once, before any data is read
    for output in plan.outputs:       # output.compute() reads the sources and runs the ops
        ...

Building a spec or a plan reads no tensor data; ``Output.compute()`` does. :func:`suggest`
proposes a spec by aligning a source with a target; :func:`diff` compares two checkpoints.
"""

from __future__ import annotations

from .ops import OpError
from .plan import Plan, TargetTensor, build_plan
from .report import TargetMismatch, OutputRecord, PlanReport, SourceRecord
from .spec import Rule, Spec, load_spec
from .diff import DiffReport, TensorDiff, TensorInfo, diff
from .suggest import LayerMatch, Leftover, Suggestion, align, suggest

__all__ = [
    "Spec",
    "Rule",
    "load_spec",
    "build_plan",
    "Plan",
    "TargetTensor",
    "PlanReport",
    "OutputRecord",
    "SourceRecord",
    "TargetMismatch",
    "OpError",
    "suggest",
    "align",
    "Suggestion",
    "LayerMatch",
    "Leftover",
    "diff",
    "DiffReport",
    "TensorDiff",
    "TensorInfo",
]
