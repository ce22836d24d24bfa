"""Assigning matched values into a live model: all or nothing, layer by layer."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..dtypes import dtype_name
from ..errors import LoadError
from ..interrupts import deferred_interrupts
from ..mapping.patterns import Pattern, matches_path_or_parent
from .match import Assignment
from ..store import shape_text
from .targets import LiveModel, TargetVar

__all__ = ["assign", "freeze_loaded"]


def assign(live: LiveModel, assignments: list[Assignment], *, check_first: bool = True) -> None:
    """Read and assign layer by layer, after checking first whatever can fail on the data.

    With ``check_first`` (all or nothing), every value whose computation can fail on the data
    (a checksum, a decompressing read, an op, a cast that may overflow: see
    :attr:`Assignment.can_fail`) is computed and checked once before the first variable
    changes, and dropped; plain stored bytes are not read twice. This keeps no copy of the
    model's previous values, so it costs no memory. Then the next layer's tensors are read on
    a worker thread while this layer is assigned (file reads and Keras' copies both release
    the GIL), so at most two layers are in memory. Small layers are read in line: handing
    them to a thread costs more than it saves. On TensorFlow, which copies every numpy value
    it is given, stored bytes are read into two buffers used in turn rather than into new
    arrays (new memory is slow to touch, and Keras' own loader allocates it twice).
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    def check(a: Assignment) -> None:
        if a.raw is not None and a.raw.byte_range is not None:
            a.raw.verify_crc()  # stored bytes whose only risk is their checksum
        else:
            _checked_value(a)

    verified = False
    if check_first:
        # two at a time: reads and CRC-32C release the GIL; the first failure in order is raised
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="ckptconv-check") as checkers:
            for _ in checkers.map(check, [a for a in assignments if a.can_fail]):
                pass
        verified = True

    groups: dict[int, list[Assignment]] = {}
    for a in assignments:
        groups.setdefault(id(a.target.owner), []).append(a)
    layers = list(groups.values())
    arenas = (_Arena(), _Arena()) if copies_numpy_values(live) else None

    def read(i: int) -> list[np.ndarray]:
        if arenas is None:
            return [_checked_value(a) for a in layers[i]]
        arena = arenas[i % 2]  # layer i - 2, the last user of this arena, is assigned by now
        arena.reset()
        return [_checked_value(a, arena, verified=verified) for a in layers[i]]

    def start(pool: ThreadPoolExecutor, i: int) -> Future[list[np.ndarray]] | None:
        if i >= len(layers):
            return None
        if sum(_nbytes(a.target) for a in layers[i]) >= _PREFETCH_BYTES:
            return pool.submit(read, i)
        return None  # read in line when its turn comes

    # Ctrl-C or SIGTERM from here on waits until the last layer is assigned, then raises:
    # an interrupted load leaves the model fully loaded, never half
    with deferred_interrupts(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckptconv-read") as pool:
        pending = start(pool, 0)
        for i, items in enumerate(layers):
            values = pending.result() if pending is not None else read(i)
            pending = start(pool, i + 1)
            variables = [a.target.variable for a in items]
            _assign_layer(live, items[0].target.owner, variables, values)
            del values


class _Arena:
    """Reusable memory for one layer's values: arrays carved from one byte buffer, which grows
    to what the last layer needed when it is reset."""

    def __init__(self) -> None:
        self._buffer = np.empty(0, dtype=np.uint8)
        self._needed = 0

    def reset(self) -> None:
        if self._needed > len(self._buffer):
            self._buffer = np.empty(self._needed, dtype=np.uint8)
        self._needed = 0

    def take(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A C-contiguous array of this shape and dtype (new memory if the buffer is short)."""
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        start = -(-self._needed // 64) * 64  # aligned for any dtype
        self._needed = start + nbytes
        if self._needed > len(self._buffer):
            return np.empty(shape, dtype=dtype)
        return self._buffer[start : start + nbytes].view(dtype).reshape(shape)


def copies_numpy_values(live: LiveModel) -> bool:
    """Whether assigning a numpy value copies it (so a buffer can be reused right after):
    TensorFlow's tensor conversion copies every numpy array it is given (tf-keras, and Keras 3
    on the TensorFlow backend). Other backends may keep the array itself (numpy) or share its
    memory (JAX on the CPU), so they get new arrays."""
    if live.line == "tf_keras":
        return True
    import keras

    return bool(keras.backend.backend() == "tensorflow")


# Layers smaller than this are read in line rather than on the worker thread.
_PREFETCH_BYTES = 1 << 20


def _nbytes(target: TargetVar) -> int:
    return int(np.prod(target.shape, dtype=np.int64)) * target.dtype.itemsize


def _checked_value(a: Assignment, arena: _Arena | None = None, *, verified: bool = False) -> np.ndarray:
    raw = a.raw
    if arena is not None and raw is not None and raw.byte_range is not None:
        # plain stored bytes of the variable's own shape and dtype: read into the arena,
        # checking their recorded CRC-32C unless the check pass did already
        value = raw.read_into(arena.take(raw.shape, raw.dtype), check_crc=not verified)
    else:
        value = np.asarray(a.compute())
    if value.shape != a.target.shape or value.dtype != a.target.dtype:
        raise LoadError(
            f"the source produced {shape_text(value.shape)} {dtype_name(value.dtype)}, "
            f"expected {shape_text(a.target.shape)} {dtype_name(a.target.dtype)}",
            tensor=a.source,
        )
    return value


def _assign_layer(live: LiveModel, owner: Any, variables: list[Any], values: list[np.ndarray]) -> None:
    """One ``set_weights`` when the whole layer is loaded, else ``assign`` per variable."""
    layer_weights = owner.weights if (owner is not live.model or not live.is_model) else []
    if len(layer_weights) == len(variables) and all(
        w is v for w, v in zip(layer_weights, variables)
    ):
        owner.set_weights(values)
        return
    for variable, value in zip(variables, values):
        variable.assign(value)


def freeze_loaded(
    live: LiveModel, assignments: list[Assignment], freeze: bool | str
) -> tuple[list[str], list[str]]:
    """Set ``trainable=False`` on the layers that were loaded (those matching a pattern).

    Returns the frozen layers' paths, and those of them whose own weights were only partly
    loaded (the rest kept their values and are frozen too).
    """
    pattern = None if freeze is True else Pattern(str(freeze))
    loaded = {id(a.target.variable) for a in assignments}
    frozen: list[str] = []
    partly: list[str] = []
    seen: set[int] = set()
    for a in assignments:
        owner, path = a.target.owner, a.target.owner_path
        if id(owner) in seen or (owner is live.model and live.is_model):
            continue
        seen.add(id(owner))
        if pattern is not None and not matches_path_or_parent(pattern, path):
            continue
        owner.trainable = False
        frozen.append(path)
        if any(id(v) not in loaded for v in live.own_variables(owner)):
            partly.append(path)
    return frozen, partly
