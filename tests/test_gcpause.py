"""``paused_gc``: the cyclic collector waits while metadata is built, then takes the objects
made meanwhile into its oldest generation without walking them, still collecting their cycles."""

from __future__ import annotations

import gc
import weakref

import pytest

from ckptconv.gcpause import paused_gc


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


@pytest.fixture(autouse=True)
def _collector_on():
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_objects_made_in_the_pause_are_not_left_in_the_youngest_generation() -> None:
    """Left there, the first allocations after the pause would start a collection walking
    all 50,000 of them."""
    gc.collect()
    started = []

    def note(phase: str, info: dict) -> None:
        if phase == "start":
            started.append(info["generation"])

    gc.callbacks.append(note)
    try:
        with paused_gc():
            assert not gc.isenabled()
            kept = [[i] for i in range(50_000)]
        after = [[] for _ in range(10)]
    finally:
        gc.callbacks.remove(note)
    assert gc.isenabled()
    assert started == []
    assert len(kept) == 50_000 and len(after) == 10


def test_a_cycle_made_in_the_pause_is_still_collected() -> None:
    freed = []
    with paused_gc():
        a, b = _Node(), _Node()
        a.other, b.other = b, a
        weakref.finalize(a, freed.append, "a")
        del a, b
    gc.collect()
    assert freed == ["a"]


def test_objects_the_process_froze_stay_frozen() -> None:
    gc.collect()
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        assert frozen > 0
        with paused_gc():
            made = [[i] for i in range(1_000)]
        assert gc.get_freeze_count() == frozen
        assert len(made) == 1_000
    finally:
        gc.unfreeze()


def test_nested_pauses_enable_the_collector_once_at_the_outermost_end() -> None:
    with paused_gc():
        with paused_gc():
            pass
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with paused_gc():
            pass
        assert not gc.isenabled()  # the caller had it off: it stays off
    finally:
        gc.enable()
