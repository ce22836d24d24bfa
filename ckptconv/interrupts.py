"""Signals while ckptconv works: SIGTERM that cleans up, and interrupts held over a critical step.

Two rules, one place:

* :func:`sigterm_raises`: while a command or a write runs, SIGTERM raises :class:`Terminated`
  (a :class:`SystemExit` with status 143) instead of killing the process, so every ``finally``
  runs and temporary files go. An uncaught ``Terminated`` ends the process with status 143,
  as the signal would have. A SIGTERM handler someone else installed is left alone.
* :func:`deferred_interrupts`: SIGINT and SIGTERM that arrive during a step that must not be
  cut in half (assigning a model's variables, renaming a set's files into place) are held and
  delivered when it ends, to whatever handler was in place: Ctrl-C then raises
  ``KeyboardInterrupt`` after the step, not in the middle of it.

Both act in the main thread only (Python delivers signals there); elsewhere they do nothing.
"""

from __future__ import annotations

import contextlib
import signal

TYPE_CHECKING = False  # typing is not imported for `ckptconv --help`
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

__all__ = ["Terminated", "sigterm_raises", "deferred_interrupts"]


class Terminated(SystemExit):
    """SIGTERM, raised so that cleanup runs; exit status 128 + SIGTERM (143) when uncaught."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """While the block runs, SIGTERM raises :class:`Terminated` (main thread, default handler
    only: a handler installed by the application, or an enclosing ``sigterm_raises``, stays)."""
    if not _main_thread():
        yield
        return
    try:
        previous = signal.getsignal(signal.SIGTERM)
    except (ValueError, OSError):
        yield
        return
    if previous is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


_DEFERRED = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then deliver them (once each, in the order
    they came) to the handlers that were in place: the block is never interrupted half-way."""
    if not _main_thread():
        yield
        return
    received: list[int] = []

    def hold(signum: int, frame: object) -> None:
        if signum not in received:
            received.append(signum)

    previous: dict[int, Any] = {}
    try:
        for sig in _DEFERRED:
            previous[sig] = signal.signal(sig, hold)
    except (ValueError, OSError):  # pragma: no cover - not the main interpreter
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        for sig in received:
            signal.raise_signal(sig)  # the restored handler acts now, as if it came just now
