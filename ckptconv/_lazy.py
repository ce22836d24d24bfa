"""Names a package imports from its modules on first use (PEP 562): one rule for ``ckptconv``
and ``ckptconv.mapping``.

A package's ``__init__`` lists ``name -> module`` and calls :func:`lazy_package`; a name is
imported from its module when it is first read, then kept as a plain attribute. A function
named like its own module (``ckptconv.convert``, ``ckptconv.mapping.diff``) stays the
package's attribute when the module is imported (``import ckptconv.convert`` sets the
package's attribute to the module: the package keeps the function instead).
"""

from __future__ import annotations

import importlib
import sys
import types

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping


def lazy_package(
    name: str, lazy: Mapping[str, str], *, functions: tuple[str, ...] = ()
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The module ``__getattr__`` and ``__dir__`` of the package ``name`` (imported already),
    whose attributes ``lazy`` maps to the module (relative to the package) defining each;
    ``functions`` are the names that are both a module and the function it defines.

    Raises (from ``__getattr__``):
        AttributeError: the package has no such attribute, as Python words it.
    """
    package = sys.modules[name]

    class _Package(types.ModuleType):
        def __setattr__(self, attr: str, value: object) -> None:
            if attr in functions and isinstance(value, types.ModuleType):
                value = getattr(value, attr)
            super().__setattr__(attr, value)

    package.__class__ = _Package
    found = package.__dict__

    def __getattr__(attr: str) -> object:
        module = lazy.get(attr)
        if module is None:
            raise AttributeError(f"module {name!r} has no attribute {attr!r}")
        value = getattr(importlib.import_module(f"{name}.{module}"), attr)
        found[attr] = value  # the next access is a plain attribute
        return value

    def __dir__() -> list[str]:
        return sorted(set(found) | set(lazy))

    return __getattr__, __dir__
