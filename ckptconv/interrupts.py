"""Signals while ckptconv works: SIGTERM that cleans up, and interrupts held over a critical step.

Three rules, one place:

* :func:`sigterm_raises`: while a command or a write runs, SIGTERM raises :class:`Terminated`
  (a :class:`SystemExit` with status 143) instead of killing the process, so every ``finally``
  runs and temporary files go. An uncaught ``Terminated`` ends the process with status 143,
  as the signal would have. A SIGTERM handler someone else installed is left alone.
* :func:`deferred_interrupts`: SIGINT and SIGTERM that arrive during a step that must not be
  cut in half (assigning a model's variables, renaming a set's files into place) are held and
  delivered when it ends, to whatever handler was in place: Ctrl-C then raises
  ``KeyboardInterrupt`` after the step, not in the middle of it.
* :func:`interrupts_noted`: the command line notes every Ctrl-C, so that one a library turned
  into another error still ends the command as an interrupt (:func:`report_interrupt`).

Both act in the main thread only (Python delivers signals there); elsewhere they do nothing.
"""

from __future__ import annotations

import contextlib
import signal

TYPE_CHECKING = False  # typing is not imported for `ckptconv --help`
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

__all__ = ["Terminated", "sigterm_raises", "deferred_interrupts", "Noted", "interrupts_noted", "report_interrupt"]


class Terminated(SystemExit):
    """SIGTERM, raised so that cleanup runs; exit status 128 + SIGTERM (143) when uncaught."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


def report_interrupt(error: BaseException, *, json: bool = False) -> int:
    """What the command line says when Ctrl-C (``KeyboardInterrupt``) or SIGTERM
    (:class:`Terminated`) ends a command: one line on stderr, with ``json`` also the
    ``{"ok": false, "error": {...}}`` object on stdout. Returns the exit status, 128 + the
    signal's number (130, 143)."""
    import sys

    terminated = isinstance(error, Terminated)
    what = "terminated (SIGTERM)" if terminated else "interrupted"
    status = 128 + (signal.SIGTERM if terminated else signal.SIGINT)
    print(f"ckptconv: {what}; no partial output was left behind", file=sys.stderr, flush=True)
    if json:
        import json as json_module

        doc = {"ok": False, "error": {"type": type(error).__name__, "message": what, "exit": status}}
        json_module.dump(doc, sys.stdout, indent=1)
        sys.stdout.write("\n")
        sys.stdout.flush()
    return status


def report_early_interrupt(error: KeyboardInterrupt, argv: list[str]) -> int:
    """A Ctrl-C before the command's arguments are parsed (while its modules load), reported
    as :func:`report_interrupt` reports it later, reading ``--json`` and ``--debug`` from the
    raw ``argv``; with ``--debug`` the interrupt is raised again (a traceback)."""
    if "--debug" in argv:
        raise error
    return report_interrupt(error, json="--json" in argv)


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def _install(signum: int, handler: Any) -> bool:
    """Install ``handler`` for ``signum``; False, and nothing installed, outside the main
    thread of the main interpreter (where Python delivers signals, and where alone it lets a
    handler be installed). Telling the thread this way spares importing ``threading``."""
    try:
        signal.signal(signum, handler)
    except ValueError:
        return False
    return True


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """While the block runs, SIGTERM raises :class:`Terminated` (main thread, default handler
    only: a handler installed by the application, or an enclosing ``sigterm_raises``, stays)."""
    try:
        previous = signal.getsignal(signal.SIGTERM)
    except (ValueError, OSError):
        previous = None
    if previous is not signal.SIG_DFL or not _install(signal.SIGTERM, _raise_terminated):
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Noted:
    """Whether Ctrl-C came while :func:`interrupts_noted` watched (``seen``)."""

    seen = False


@contextlib.contextmanager
def interrupts_noted() -> Iterator[Noted]:
    """While the block runs, Ctrl-C raises ``KeyboardInterrupt`` as usual and is also noted
    (``seen``), so that an error a library made of it (numpy, interrupted while it imports its
    C extension, raises ImportError instead) is still known to be the Ctrl-C (main thread, and
    Python's own SIGINT handler only: another one installed stays)."""
    noted = Noted()
    try:
        previous = signal.getsignal(signal.SIGINT)
    except (ValueError, OSError):  # pragma: no cover - not the main interpreter
        previous = None

    def note(signum: int, frame: Any) -> None:
        noted.seen = True
        signal.default_int_handler(signum, frame)

    if previous is not signal.default_int_handler or not _install(signal.SIGINT, note):
        yield noted
        return
    try:
        yield noted
    finally:
        signal.signal(signal.SIGINT, previous)


_DEFERRED = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then deliver them (once each, in the order
    they came) to the handlers that were in place: the block is never interrupted half-way."""
    received: list[int] = []

    def hold(signum: int, frame: object) -> None:
        if signum not in received:
            received.append(signum)

    previous: dict[int, Any] = {}
    try:
        for sig in _DEFERRED:
            previous[sig] = signal.signal(sig, hold)
    except (ValueError, OSError):  # another thread, or not the main interpreter
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
