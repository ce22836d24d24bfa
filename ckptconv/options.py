"""Keyword options of the public entry points: explicit, and an unknown one is an error.

Every public function declares its options as keyword-only parameters. Python would reject a
misspelt one with a bare ``TypeError``; :func:`keyword_options` makes that an
:class:`~ckptconv.OptionError` that names the option, the nearest known one and all of them,
before the function runs (so a typo never costs a file read).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from .errors import OptionError, UsageError, nearest

__all__ = ["keyword_options", "check_options", "option_names", "option_value"]

T = TypeVar("T")

F = TypeVar("F", bound=Callable[..., Any])

_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def option_names(func: Callable[..., Any]) -> list[str]:
    """The keyword options ``func`` takes (its keyword-only parameters), in order."""
    parameters = inspect.signature(func).parameters.values()
    return [p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY]


def check_options(
    what: str, given: Iterable[str], accepted: Iterable[str], options: Iterable[str]
) -> None:
    """Raise :class:`~ckptconv.OptionError` for the first name in ``given`` that is not in
    ``accepted``; the message lists ``options`` (the keyword options ``what`` documents)."""
    accepted = set(accepted)
    options = list(options)
    for name in given:
        if name in accepted:
            continue
        near = nearest(name, options, count=1)
        guess = f" (did you mean {near[0]}=?)" if near else ""
        known = ", ".join(options) if options else "none"
        raise OptionError(f"{what} takes no option {name}={guess}; its options: {known}", option=name)


def keyword_options(func: F) -> F:
    """Decorate a public function so an unknown keyword argument raises
    :class:`~ckptconv.OptionError` naming it and the known options (the signature, shown by
    ``help()`` and the API reference, stays the function's own)."""
    parameters = inspect.signature(func).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        raise TypeError(f"{func.__name__} takes **kwargs: check them where they are forwarded")
    accepted = frozenset(p.name for p in parameters if p.kind in _NAMED)
    options = option_names(func)
    what = f"{func.__name__}()"

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not accepted.issuperset(kwargs):
            check_options(what, kwargs, accepted, options)
        return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def option_value(option: str, value: Any, parse: Callable[[Any], T]) -> T:
    """``parse(value)``, the one check of an option's value, with its ``ValueError`` turned
    into a :class:`~ckptconv.UsageError` that names the option as the caller spells it
    (``dtype='bfloa16'`` from Python, ``--dtype bfloa16`` on the command line, which runs the
    same ``parse`` as its argument type)."""
    try:
        return parse(value)
    except UsageError:
        raise
    except ValueError as e:
        raise UsageError(f"{e}; received {{opt:{option}={value!r}}}", option=option) from None
