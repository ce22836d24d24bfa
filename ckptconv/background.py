"""A check run on a thread beside the work, its error raised when the work is done.

``convert`` and ``diff`` check a source's whole-file checksums (a ``.keras`` archive's or a
``torch.save`` file's zip CRC-32, :meth:`Store.check_integrity
<ckptconv.Store.check_integrity>`) while they read and write tensors, instead of reading every
byte once more before starting.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["Background"]


class Background:
    """Run ``check`` (if any) on a daemon thread; :meth:`result` waits for it and re-raises
    its error."""

    def __init__(self, check: Callable[[], None] | None, *, name: str = "ckptconv-source-check") -> None:
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if check is not None:
            self._thread = threading.Thread(target=self._run, args=(check,), daemon=True, name=name)
            self._thread.start()

    def _run(self, check: Callable[[], None]) -> None:
        try:
            check()
        except BaseException as e:  # noqa: BLE001 - handed to the thread that waits
            self._error = e

    def result(self) -> None:
        """Wait for the check; raise what it raised."""
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error
