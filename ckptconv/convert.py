"""Whole-file conversion: open a checkpoint, plan, stream into safetensors.

:func:`convert` is the job behind ``ckptconv convert`` and each file of ``ckptconv batch``;
it is importable and free of global state, so it can run in worker processes or on a cluster.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import OutputError, UsageError
from .formats import open as open_store
from .formats.safetensors import KINDS_KEY, SOURCE_CHECKSUMS_KEY, check_metadata
from .options import keyword_options, option_value

__all__ = ["convert", "ConvertResult", "output_name", "SOURCE_CHECKSUMS_KEY"]

_SUFFIX = ".safetensors"
_INDEX_SUFFIX = ".safetensors.index.json"


def output_name(dst: str | os.PathLike[str], *, any_suffix: bool = False) -> str:
    """The ``.safetensors`` path to write for ``dst``: itself, or the set's name for a
    ``.safetensors.index.json``.

    Raises:
        OutputError: ``dst`` is a directory.
        UsageError: ``dst`` ends in neither and ``any_suffix`` is False.
    """
    text = os.fspath(dst)
    if os.path.isdir(text):
        raise OutputError(
            "is a directory, not an output file: name the file to write in it "
            f"({os.path.join(text, 'model.safetensors')}, for example)",
            path=text,
        )
    if text.endswith(_INDEX_SUFFIX):
        return text[: -len(".index.json")]
    if text.endswith(_SUFFIX) or any_suffix:
        return text
    suffix = "".join(Path(text).suffixes[-2:]) or "no suffix"
    raise UsageError(
        f"the output is a safetensors file but its name ends in {suffix}: name it "
        f"{Path(text).name.split('.')[0] or 'out'}.safetensors, or pass {{opt:any_suffix=True}} "
        "to keep this name",
        option="dst",
        path=text,
    )

PYTORCH_FORMATS = ("pytorch", "pytorch-sharded")



@dataclass
class ConvertResult:
    """What :func:`convert` wrote.

    Attributes:
        source: The input path. source_format: its detected format.
        files: Every file written (shards and index for a sharded set).
        tensors: Number of tensors written. nbytes: their total size in bytes.
        skipped: Entries not written, with the reason (string tensors have no safetensors dtype).
        seconds: Wall time.
    """

    source: str
    source_format: str
    files: list[str]
    tensors: int
    nbytes: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The result as JSON-ready data, as ``convert --json`` prints it."""
        data = asdict(self)
        data["skipped"] = [list(pair) for pair in self.skipped]
        data["seconds"] = round(self.seconds, 3)
        return data


@keyword_options
def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    mapping: Any = None,
    dtype: str | None = None,
    include_all: bool = False,
    force: bool = False,
    fsync: bool = True,
    checksum: bool = True,
    max_shard_size: int | str | None = None,
    verify: bool = False,
    progress: bool = False,
    check_crc: bool = True,
    metadata: Mapping[str, str] | None = None,
    allow_lossy: bool = False,
    any_suffix: bool = False,
) -> ConvertResult:
    """Convert one checkpoint into a safetensors file (or a sharded set).

    The mapping plan is built and checked on metadata first; nothing is written unless it is
    free of problems. Tensors are then read and written one at a time (unchanged tensors are
    copied file to file), into a temporary file renamed into place at the end.

    Args:
        src: Any checkpoint :func:`ckptconv.open` reads.
        dst: The ``.safetensors`` path (its stem names the shards of a sharded set); a
            ``.safetensors.index.json`` path names the set by its index.
        mapping: A spec file path, a dict, a :class:`~ckptconv.mapping.Spec`, or None (every
            weight under its own name).
        dtype: Default output dtype for floating-point tensors (``bfloat16``, ``float16``, ...;
            ``keep``/None keeps each tensor's).
        include_all: Also write optimizer and bookkeeping entries.
        force: Replace an existing output.
        fsync: Flush the output to disk before returning.
        checksum: Record a CRC-32C per tensor in the file's ``__metadata__``.
        max_shard_size: Bytes (or text such as ``"5GB"``) per shard; None writes one file.
        verify: Before the output takes its name, read it back and check every tensor against
            the CRC-32C computed while writing (with or without ``checksum``): a failed
            verification leaves no output.
        progress: Show a progress bar on stderr.
        check_crc: Verify checksums the source records (TensorFlow checkpoints' CRC-32C, a
            ``.keras`` weights member's or a ``torch.save`` file's zip CRC-32, the CRC-32C of a
            safetensors file ckptconv wrote). False reads damaged data as it is and writes it
            with checksums of its own, which then verify clean: the output's ``__metadata__``
            records ``ckptconv.source_checksums: "not checked"``.
        metadata: Entries added to the output's ``__metadata__``, over ckptconv's own: for
            example ``{"format": "pt"}`` for Hugging Face ``transformers``, which loads only
            files whose ``format`` is ``pt``, ``tf``, ``flax`` or ``mlx`` (ckptconv writes
            ``pt`` for a PyTorch source, ``np`` otherwise). Keys starting with ``ckptconv.``
            are ckptconv's own and refused.
        allow_lossy: Let ``dtype`` be a cast that loses information (an integer or bool
            dtype: floats to integers or booleans); refused otherwise, before anything is read.
        any_suffix: Write safetensors under a name that does not end in ``.safetensors``
            (refused otherwise: ``out.h5`` would be a safetensors file under an HDF5 name).

    Returns:
        A :class:`ConvertResult`.

    Raises:
        UsageError: an option's value is wrong (``dtype``, ``target`` or complex among them,
            or lossy without ``allow_lossy``; ``max_shard_size``, ``metadata``, an output name
            that is not ``.safetensors``), before anything is read.
        CkptconvError: the source cannot be read, the plan has problems (``PlanError``), or
            the output cannot be written.
    """
    from . import __version__
    from .mapping import build_plan
    from .writers.safetensors import parse_size, write_safetensors

    started = time.perf_counter()
    dst = output_name(dst, any_suffix=any_suffix)
    check_output_dtype(dtype, allow_lossy=allow_lossy)
    extra = option_value("metadata", metadata, check_metadata)
    if max_shard_size is not None:
        max_shard_size = option_value("max_shard_size", max_shard_size, parse_size)
    with open_store(src, check_crc=check_crc) as store:
        plan = build_plan(store, mapping, include_all=include_all, dtype=dtype, allow_lossy=allow_lossy)
        plan.raise_if_problems()
        outputs = []
        skipped: list[tuple[str, str]] = []
        for output in plan.outputs:
            if output.dtype.kind == "O":
                skipped.append((output.name, "string or variant tensor: safetensors has no such dtype"))
            else:
                outputs.append(output)
        metadata = {
            # transformers loads only pt/tf/flax/mlx files: a PyTorch source's result is "pt"
            "format": "pt" if store.format in PYTORCH_FORMATS else "np",
            "ckptconv.version": __version__,
            "ckptconv.source_format": store.format,
            "ckptconv.source": Path(store.path).name,
            **extra,
        }
        if not check_crc or store.metadata.get(SOURCE_CHECKSUMS_KEY) == "not checked":
            # (carried on: a file written from unchecked data holds it, whatever checks it passes now)
            metadata[SOURCE_CHECKSUMS_KEY] = "not checked"
        kinds = _training_state(plan, store, {o.name for o in outputs})
        if kinds:  # the reader gives them back, so the training state stays apart
            metadata[KINDS_KEY] = json.dumps(kinds, separators=(",", ":"), ensure_ascii=False)
        # the report (a record per source and per output) is not needed any more: its memory
        # goes back for the writer's header and slots (tens of MB at 100,000 tensors)
        del plan
        result = write_safetensors(
            outputs,
            dst,
            metadata=metadata,
            force=force,
            fsync=fsync,
            checksum=checksum,
            max_shard_size=max_shard_size,  # type: ignore[arg-type]
            progress=progress,
            protect=store.files,
            verify=verify,
            check=store.check_integrity if check_crc and store.has_integrity_check else None,
        )
        source_format = store.format
    return ConvertResult(
        source=os.fspath(src),
        source_format=source_format,
        files=list(result.files),
        tensors=result.tensors,
        nbytes=result.nbytes,
        skipped=skipped,
        seconds=time.perf_counter() - started,
    )


def check_output_dtype(dtype: Any, *, allow_lossy: bool = False) -> str | None:
    """A conversion's default ``dtype``, checked before any file is read: its canonical name
    (None for keep). An integer or bool dtype casts every floating-point weight lossily
    (:func:`~ckptconv.mapping.cast.lossy_default`), so without ``allow_lossy`` it could only
    be refused (or, for a file without floating-point weights, change nothing).

    Raises:
        UsageError: not a dtype name, ``target``, complex, or lossy without ``allow_lossy``.
    """
    from .mapping.cast import lossy_default
    from .mapping.spec import parse_output_dtype
    from .dtypes import by_name

    name = option_value("dtype", dtype, parse_output_dtype)  # "target": a conversion has no target
    lost = None if name is None or allow_lossy else lossy_default(by_name(name))
    if lost:
        raise UsageError(
            f"{{opt:dtype={name!r}}} {lost} (a lossy cast); pass {{opt:allow_lossy=True}} to cast "
            "to it anyway, or give a floating-point dtype",
            option="dtype",
        )
    return name


def _training_state(plan: Any, store: Any, written: set[str]) -> dict[str, str]:
    """``{output: kind}`` for the outputs made only from optimizer or bookkeeping entries."""
    kinds: dict[str, str] = {}
    for record in plan.report.outputs:
        found = {store[s].kind for s in record.sources if s in store}
        if record.name in written and len(found) == 1 and "weight" not in found:
            kinds[record.name] = found.pop()
    return kinds
