"""Pausing Python's cyclic garbage collector while a checkpoint's metadata is built.

Opening a checkpoint of 100,000 tensors, or planning its conversion, creates several hundred
thousand small objects (entries, shapes, byte ranges, outputs) and no reference cycles. Each
allocation burst triggers the cyclic collector, whose full passes walk every object alive: a
quarter of the CPU time at 100,000 tensors. Reference counting still frees everything as
before; only the cycle search waits until the work is done.

When the collector comes back, the objects made meanwhile are handed to its oldest
generation at once (``gc.freeze()`` then ``gc.unfreeze()``, two list splices): left in the
youngest, the first allocation after the pause would make the collector walk every one of them
(0.1-0.2 s after opening a 10,000-tensor file). They are still searched for cycles, by the
oldest generation's collections, like any long-lived object. A process that froze objects
itself (``gc.get_freeze_count()`` > 0) keeps them frozen: the hand-over is skipped.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["paused_gc"]


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Disable the cyclic collector for the block (re-enabled after it, unless the caller had
    it disabled already; nested uses are fine)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            if gc.get_freeze_count() == 0:
                gc.freeze()
                gc.unfreeze()
            gc.enable()
