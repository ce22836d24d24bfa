"""The mapper: rules (a spec) turn a store's entries into outputs, checked as a plan first.

::

    from ckptconv.mapping import load_spec, build_plan
    plan = build_plan(store, load_spec("map.yaml"))
    plan.raise_if_problems()          # every problem at once, before any data is read
    for output in plan.outputs:       # output.compute() reads the sources and runs the ops
        ...

Building a spec or a plan reads no tensor data; ``Output.compute()`` does. :func:`suggest`
proposes a spec by aligning a source with a target; :func:`diff` compares two checkpoints.

Each name is imported from its module on first use (PEP 562): ``diff`` without a mapping spec
then imports no spec, op or plan machinery, and ``suggest``'s alignment tables are imported
only by ``suggest``.
"""

from __future__ import annotations

from .._lazy import lazy_package

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)

if TYPE_CHECKING:
    from .diff import diff
    from .diff_report import DiffReport, TensorDiff, TensorInfo
    from .ops import OpError
    from .plan import Plan, TargetTensor, build_plan
    from .report import OutputRecord, PlanReport, SourceRecord, TargetMismatch
    from .spec import Rule, Spec, load_spec
    from .suggest import LayerMatch, Leftover, Suggestion, align, suggest

# name -> the module (of this package) that defines it
_LAZY = {
    "OpError": "ops",
    "Plan": "plan",
    "TargetTensor": "plan",
    "build_plan": "plan",
    "OutputRecord": "report",
    "PlanReport": "report",
    "SourceRecord": "report",
    "TargetMismatch": "report",
    "Rule": "spec",
    "Spec": "spec",
    "load_spec": "spec",
    "LayerMatch": "suggest",
    "Leftover": "suggest",
    "Suggestion": "suggest",
    "align": "suggest",
    "suggest": "suggest",
    "DiffReport": "diff_report",
    "TensorDiff": "diff_report",
    "TensorInfo": "diff_report",
    "diff": "diff",
}

__getattr__, __dir__ = lazy_package(__name__, _LAZY, functions=("diff", "suggest"))
del lazy_package


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
