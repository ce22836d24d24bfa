"""safetensors: a single file, or a Hugging Face sharded set read through its index JSON.

A file is an 8-byte little-endian header length, a JSON header (at most 100 MB) mapping each
tensor name to ``{dtype, shape, data_offsets}`` plus an optional ``__metadata__`` of strings,
then the tensors' raw little-endian C-order bytes, contiguous. Opening reads the header only;
every entry carries a :class:`~ckptconv.store.ByteRange`, so reading a tensor is one ``pread``
(no memory map of the whole file, whose touched pages would count as resident memory) and a
writer can copy it file to file. bf16 and float8 read as ``ml_dtypes`` arrays, without torch.

A sharded set (``model-00001-of-00003.safetensors`` ... plus ``model.safetensors.index.json``
= ``{"metadata": {...}, "weight_map": {name: file}}``) is opened through its index; the shards
must lie in the index's directory. A directory (a Hugging Face model directory) opens as
``transformers`` would load it: ``model.safetensors``, else its index, else the directory's only
``*.safetensors.index.json``; safetensors weights win over ``pytorch_model.bin`` beside them.

Names are the file's keys unchanged. ``layer`` is the name without its last ``/``- or
``.``-separated part (``encoder.layer.0.attention.self.query.weight`` ->
``encoder.layer.0.attention.self.query``) and ``index`` follows Keras' order of known weight
names (:func:`ckptconv.store.keras_order`). Every entry is a weight: safetensors holds weights.
When the file carries ckptconv's checksums (``__metadata__["ckptconv.crc32c"]``), each entry's
``crc32c`` is set and :meth:`~ckptconv.store.Entry.read` checks it.

A set written by ckptconv records its identity (``ckptconv.set``, 32 hex digits) in every
shard's ``__metadata__`` and in the index's ``metadata``: a set whose shards come from two
different writes (an interrupted replace, two writers racing) is refused as incomplete, never
read as a mix. The names of a set's files are built and parsed here only
(:func:`shard_names`, :func:`parse_shard_name`, :func:`index_path`).
"""

from __future__ import annotations

import builtins
import json
import os
import re
from collections.abc import Iterable, Mapping

from .. import strictjson
from ..dtypes import from_safetensors
from ..errors import FETCH_AGAIN, CorruptFileError, UnsafeInputError, UnsupportedError, truncated
from ..store import KINDS, ByteRange, Entry, Kind, Store, keras_order, layer_of
from . import load_index

TYPE_CHECKING = False  # pathlib is imported where a set or a directory needs it, not for a file
if TYPE_CHECKING:
    from pathlib import Path
    from typing import BinaryIO

__all__ = [
    "FORMAT",
    "SHARDED_FORMAT",
    "sniff",
    "open",
    "read_header",
    "Header",
    "CRC_KEY",
    "SET_KEY",
    "KINDS_KEY",
    "OWN_PREFIX",
    "check_metadata",
    "looks_like_safetensors",
    "cut_in_length",
    "named_but_damaged",
    "load_index",
    "shard_files",
    "weights_in_directory",
    "index_path",
    "shard_names",
    "parse_shard_name",
    "index_set_id",
    "check_set",
]

FORMAT = "safetensors"
SHARDED_FORMAT = "safetensors-sharded"
CRC_KEY = "ckptconv.crc32c"
"""The ``__metadata__`` key holding the per-tensor CRC-32Cs (a JSON object as a string)."""
SOURCE_CHECKSUMS_KEY = "ckptconv.source_checksums"
"""The ``__metadata__`` key recording that the source's own checksums (a TF checkpoint's
CRC-32C, a zip's CRC-32, ckptconv's recorded CRC-32C) were not checked (``check_crc=False``):
the output's checksums are then of the bytes as read, damaged or not, and verify clean
(``verify`` says so)."""
SET_KEY = "ckptconv.set"
"""The key of a sharded set's identity, in every shard's ``__metadata__`` and in the index's
``metadata``: 32 hex digits, the same throughout one write of the set."""
KINDS_KEY = "ckptconv.kinds"
"""The ``__metadata__`` key holding the kind of every tensor that is not a weight
(``{"adam/iteration": "bookkeeping", ...}``, a JSON object as a string): ``convert --all``
keeps the training state's kind, and the reader gives it back as ``Entry.kind``."""
OWN_PREFIX = "ckptconv."
"""``__metadata__`` keys ckptconv writes itself (version, source, checksums, set identity)."""
MAX_HEADER_BYTES = 100_000_000  # the format's own limit


# --- the names of a sharded set's files ------------------------------------------------------



def index_path(dst: str | os.PathLike[str]) -> str:
    """The index of the sharded set named ``dst``: ``model.safetensors.index.json``."""
    return os.fspath(dst) + ".index.json"


def _stem(name: str, suffix: str = ".safetensors") -> str:
    return name.removesuffix(suffix)


def shard_names(dst: str | os.PathLike[str], count: int) -> list[str]:
    """The Hugging Face shard paths of the set named ``dst``: ``model.safetensors`` ->
    ``model-00001-of-00003.safetensors``, ... (numbers of at least five digits)."""
    directory, base = os.path.split(os.fspath(dst))
    stem = _stem(base)
    return [
        os.path.join(directory, f"{stem}-{i:05d}-of-{count:05d}.safetensors")
        for i in range(1, count + 1)
    ]


def parse_shard_name(
    name: str, dst: str | os.PathLike[str] | None = None, *, suffix: str = ".safetensors"
) -> tuple[str, int, int] | None:
    """``(stem, number, count)`` when the file name ``name`` is a Hugging Face shard name
    (``model-00002-of-00003.safetensors`` -> ``("model", 2, 3)``; ``suffix=".bin"`` for
    PyTorch's), else None. With ``dst``, only a shard of the set named ``dst`` counts (same
    stem: ``dst`` ends with ``suffix``; ``name`` is then a base name)."""
    match = re.match(rf"^(?P<stem>.+)-(?P<number>\d{{5,}})-of-(?P<count>\d{{5,}}){re.escape(suffix)}$", name)
    if match is None:
        return None
    number, count = int(match["number"]), int(match["count"])
    if not 1 <= number <= count:
        return None
    if dst is not None and match["stem"] != _stem(os.path.basename(os.fspath(dst)), suffix):
        return None
    return match["stem"], number, count


def check_metadata(metadata: Mapping[object, object] | None, *, own: bool = False) -> dict[str, str]:
    """The one rule for ``__metadata__`` entries: the format allows strings to strings only,
    and keys starting with ``ckptconv.`` are ckptconv's own (``own=True`` is ckptconv
    writing them: any but :data:`CRC_KEY` and :data:`SET_KEY`, which the writer itself fills).

    Returns:
        The entries as a new dict.

    Raises:
        ValueError: a key or value that is not a string, or a reserved key.
    """
    checked: dict[str, str] = {}
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"metadata must map strings to strings; received {key!r}: {value!r}")
        if key in (CRC_KEY, SET_KEY) or (key.startswith(OWN_PREFIX) and not own):
            raise ValueError(f"metadata key {key!r}: keys starting with {OWN_PREFIX!r} are ckptconv's own")
        checked[key] = value
    return checked


class Header:
    """A safetensors file's parsed header.

    Attributes:
        path: The file.
        data_start: Byte offset where tensor data begins (8 + header length).
        tensors: ``{name: (dtype code, shape, begin, end)}`` in stored (data offset) order.
        metadata: ``__metadata__`` (string to string).
        checksums: ckptconv's recorded CRC-32Cs by name (empty if the file has none).
    """

    def __init__(
        self,
        path: str,
        data_start: int,
        tensors: dict[str, tuple[str, tuple[int, ...], int, int]],
        metadata: dict[str, str],
        checksums: dict[str, int],
    ) -> None:
        self.path = path
        self.data_start = data_start
        self.tensors = tensors
        self.metadata = metadata
        self.checksums = checksums


def sniff(path: str | os.PathLike[str], head: bytes) -> bool:
    """A file starting with a plausible safetensors header, or an index JSON whose
    ``weight_map`` maps names to ``.safetensors`` files (or a directory holding one)."""
    if os.path.isdir(path):
        return weights_in_directory(path) is not None
    if not os.path.isfile(path):
        return False
    if looks_like_safetensors(head) or named_but_damaged(path, head):
        return True
    if head.lstrip().startswith(b"{"):
        try:
            index = load_index(path)
        except (CorruptFileError, OSError, UnicodeError):
            return False
        return _names_safetensors(path, index)
    return False


def looks_like_safetensors(head: bytes) -> bool:
    """Whether a file's first bytes (at least 10) start a plausible safetensors header."""
    if len(head) < 10:
        return False
    n = int.from_bytes(head[:8], "little")
    # a header longer than the file is still safetensors: a truncated one, which
    # read_header reports as such
    return 2 <= n <= MAX_HEADER_BYTES and head[8:9] == b"{"


def cut_in_length(path: str | os.PathLike[str], head: bytes) -> bool:
    """Whether a file too short for its content to tell (1 to 9 bytes, ``head`` being all of
    it) is a ``.safetensors`` file cut short in its 8-byte header length: its name says so
    and its bytes could start one (a length within the limit, then ``{``).

    The one place the name counts: so few bytes match anything, and without it the user of
    a cut-short download would hear "not a checkpoint" instead of "truncated".
    """
    if not 0 < len(head) < 10 or not os.fspath(path).endswith(".safetensors"):
        return False
    smallest = int.from_bytes(head[:8], "little")  # the missing high bytes may be zeros
    if smallest > MAX_HEADER_BYTES or (len(head) >= 8 and smallest < 2):
        return False
    return head[8:9] in (b"", b"{")


def named_but_damaged(path: str | os.PathLike[str], head: bytes) -> bool:
    """Whether a file whose first bytes start no plausible header is safetensors whose header
    length was cut (:func:`cut_in_length`) or damaged: 10 bytes or more, the JSON header's
    ``{`` in place, but a length beyond the format's limit (a flipped byte) in a
    ``.safetensors`` file, or a length below 2 or beyond the limit before what is plainly a
    safetensors header (``{"__metadata__":`` or ``{"NAME": {"dtype":`` at byte 8), whatever
    the name. Such a file is opened, and refused as damaged, instead of called "not a
    checkpoint"."""
    if cut_in_length(path, head):
        return True
    if len(head) < 10 or head[8:9] != b"{":
        return False
    n = int.from_bytes(head[:8], "little")
    if n > MAX_HEADER_BYTES and os.fspath(path).endswith(".safetensors"):
        return True
    # whatever its name: the JSON header of a tensor table at byte 8, after a length that cannot
    # be its (read_header then says the length is damaged)
    return (n < 2 or n > MAX_HEADER_BYTES) and _TABLE_HEAD.match(head, 8) is not None


# the start of a safetensors header: ``{"__metadata__":`` or ``{"NAME":{"dtype":``
_TABLE_HEAD = re.compile(rb'\{\s*"(?:__metadata__"\s*:|(?:[^"\\]|\\.)*"\s*:\s*\{\s*"dtype"\s*:)')


def _truncated(detail: str) -> str:
    """The message for a cut-short file, worded as the other readers word it."""
    return truncated(detail)


def _names_safetensors(path: str | os.PathLike[str], index: dict) -> bool:
    values = list(index["weight_map"].values())
    if not values or not all(isinstance(v, str) for v in values):
        return False
    if any(v.endswith(".safetensors") for v in values):
        return True
    first = os.path.join(os.path.dirname(path), values[0])
    try:
        with builtins.open(first, "rb") as f:
            return looks_like_safetensors(f.read(16))
    except OSError:
        return False


def weights_in_directory(path: str | os.PathLike[str]) -> Path | None:
    """The safetensors weights of a directory, as Hugging Face ``transformers`` picks them:
    ``model.safetensors``, else ``model.safetensors.index.json``, else the directory's only
    ``*.safetensors.index.json``; None when there is none (or several indexes)."""
    from pathlib import Path

    path = Path(path)
    for name in ("model.safetensors", "model.safetensors.index.json"):
        if (path / name).is_file():
            return path / name
    try:
        found = sorted(path.glob("*.safetensors.index.json"))
    except OSError:
        return None
    return found[0] if len(found) == 1 else None


def open(path: str | os.PathLike[str], *, check_crc: bool = True) -> Store:  # noqa: A001
    """Open a safetensors file or sharded set as a lazy store. Reads headers only.

    Args:
        path: A ``.safetensors`` file, an ``*.safetensors.index.json``, or a directory (a
            Hugging Face model directory) holding ``model.safetensors`` or exactly one such
            index (:func:`weights_in_directory`).
        check_crc: Check ckptconv's recorded CRC-32C (when present) on every ``read()``, and
            expose it as ``Entry.crc32c`` (writers check it when copying bytes unchanged).

    Raises:
        CorruptFileError: a bad header, offsets with holes or overlaps or beyond the file, a
            missing shard, or a tensor the index and its shard disagree on.
        UnsafeInputError: the index names a shard outside its directory.
        UnsupportedError: a dtype ckptconv does not know.
    """
    if os.path.isdir(path):
        found = weights_in_directory(path)
        if found is None:
            raise CorruptFileError(
                "the directory holds no model.safetensors and no single *.safetensors.index.json",
                path=path,
            )
        if found.name.endswith(".index.json"):
            return _open_sharded(found, check_crc=check_crc)
        return _open_single(found, check_crc=check_crc)
    with builtins.open(path, "rb") as f:
        head = f.read(16)
    if looks_like_safetensors(head) or not head.lstrip().startswith(b"{"):
        return _open_single(path, check_crc=check_crc)
    return _open_sharded(path, check_crc=check_crc)


def _open_single(path: str | os.PathLike[str], *, check_crc: bool) -> Store:
    header = read_header(path)
    entries = _entries(header, check_crc=check_crc)
    keras_order(entries)
    return Store(
        entries,
        format=FORMAT,
        path=path,
        files=[path],
        metadata=_user_metadata(header.metadata),
    )


def _open_sharded(index_file: str | os.PathLike[str], *, check_crc: bool) -> Store:
    from pathlib import Path

    index_file = Path(index_file)
    index = load_index(index_file)
    weight_map: dict[str, str] = index["weight_map"]
    shards = shard_files(index_file, index)
    entries: list[Entry] = []
    headers: list[Header] = []
    seen: set[str] = set()
    for shard in shards:
        header = read_header(shard)
        headers.append(header)
        check_shard_holds(index_file, weight_map, shard, header.tensors)
        seen.update(header.tensors)
        entries.extend(_entries(header, check_crc=check_crc))
    check_set(index_file, index, headers)
    check_every_mapped_held(index_file, weight_map, seen)
    keras_order(entries)
    metadata = _user_metadata(headers[0].metadata) if headers else {}
    metadata.update(index_total_size(index))
    return Store(
        entries,
        format=SHARDED_FORMAT,
        path=index_file,
        files=[index_file, *shards],
        metadata=metadata,
    )


def check_shard_holds(index_file: Path, weight_map: Mapping[str, str], shard: Path, names: Iterable[str]) -> None:
    """Every tensor ``shard`` holds is one the index maps to that shard (a Hugging Face
    sharded set, safetensors or ``pytorch_model.bin``).

    Raises:
        CorruptFileError: naming the shard and the tensor the index places elsewhere.
    """
    resolved = shard.resolve()
    for name in names:
        mapped = weight_map.get(name)
        if mapped is None or (index_file.parent / mapped).resolve() != resolved:
            raise CorruptFileError(
                f"the shard holds this tensor but the index {index_file.name} maps it to "
                f"{mapped!r}: the set is inconsistent or damaged; {FETCH_AGAIN}",
                path=shard,
                tensor=name,
            )


def check_every_mapped_held(index_file: Path, weight_map: Mapping[str, str], seen: set[str]) -> None:
    """Every tensor the index maps is held by a shard (``seen``: the names the shards hold).

    Raises:
        CorruptFileError: naming the index and the first tensor no shard holds.
    """
    for name, file in weight_map.items():
        if name not in seen:
            raise CorruptFileError(
                f"the index maps this tensor to {file!r}, which does not hold it: the set is inconsistent "
                f"or damaged; {FETCH_AGAIN}",
                path=index_file, tensor=name,
            )


def index_total_size(index: Mapping[str, object]) -> dict[str, str]:
    """The index's ``metadata.total_size`` as store metadata, when it records one."""
    meta = index.get("metadata")
    if isinstance(meta, dict) and "total_size" in meta:
        return {"total_size": str(meta["total_size"])}
    return {}


def shard_files(index_file: str | os.PathLike[str], index: dict) -> list[Path]:
    """The shards an index names, sorted by file name, each checked to lie in the index's
    directory and to be a regular file there. Each is the index's directory as given joined
    with the shard's name, so messages and reports name shards as the user gave the index."""
    from pathlib import Path

    index_file = Path(index_file)
    base = index_file.parent.resolve()
    names: list[str] = []
    for name, file in index["weight_map"].items():
        if not isinstance(file, str) or not file:
            raise CorruptFileError(
                f"bad shard file {file!r} in the index: it is damaged; {FETCH_AGAIN}", path=index_file, tensor=name
            )
        if file not in names:
            names.append(file)
    if not names:
        raise CorruptFileError(f"the index names no shards: it is damaged or incomplete; {FETCH_AGAIN}", path=index_file)
    shards = []
    for file in sorted(names):
        candidate = (base / file).resolve()
        if os.path.isabs(file) or candidate.parent != base:
            raise UnsafeInputError(
                f"the index names a shard outside its directory: {file!r}; refusing to follow it",
                path=index_file,
            )
        if not candidate.is_file():
            what = "is not a regular file" if candidate.exists() else "is missing"
            raise CorruptFileError(
                f"shard {file!r} named by the index {what}: the set is incomplete; restore it "
                "or re-download the set (after an interrupted ckptconv replace, run it again)",
                path=index_file,
            )
        shards.append(index_file.parent / file)
    return shards


def index_set_id(index: dict) -> str | None:
    """The set identity an index records (``metadata["ckptconv.set"]``), or None."""
    meta = index.get("metadata")
    value = meta.get(SET_KEY) if isinstance(meta, dict) else None
    return value if isinstance(value, str) else None


def check_set(index_file: str | os.PathLike[str], index: dict, headers: list[Header]) -> None:
    """Refuse a sharded set whose files come from more than one write.

    Every shard must record the identity the index records; an index without one (another
    writer) still needs its shards to agree among themselves where they record one.

    Raises:
        CorruptFileError: naming the first shard that belongs to another write.
    """
    expected = index_set_id(index)
    source = f"the index {os.path.basename(os.fspath(index_file))}"
    for header in headers:
        found = header.metadata.get(SET_KEY)
        if expected is None and found is not None:
            expected, source = found, os.path.basename(header.path)
            continue
        if found != expected:
            raise CorruptFileError(
                f"the set is incomplete: this shard comes from another write than {source} "
                f"({SET_KEY} {found or 'missing'}, expected {expected}): the set mixes two "
                f"conversions (an interrupted or concurrent replace) or is damaged; write the set "
                f"again, or {FETCH_AGAIN}",
                path=header.path,
            )


def read_header(path: str | os.PathLike[str]) -> Header:
    """Read and check a safetensors file's header (no tensor bytes).

    Raises:
        CorruptFileError: the header is malformed, or tensor offsets have holes, overlap, or
            lie beyond the end of the file.
        UnsupportedError: a tensor has a dtype ckptconv does not know.
    """
    path = os.fspath(path)
    size = os.path.getsize(path)
    with builtins.open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CorruptFileError(
                _truncated(f"it ends after {len(prefix)} of the 8 bytes of the header length"),
                path=path,
            )
        n = int.from_bytes(prefix, "little")
        if n > MAX_HEADER_BYTES:
            raise CorruptFileError(
                f"the header claims {n} bytes, above safetensors' limit of {MAX_HEADER_BYTES}: "
                f"its 8-byte length is damaged; {FETCH_AGAIN}",
                path=path,
            )
        if 8 + n > size:
            raise _damaged_length(f, n, size, path) or CorruptFileError(
                _truncated(f"the header claims {n} bytes, the file has {size - 8} after the length"),
                path=path,
            )
        raw = f.read(n)
        try:
            header = strictjson.loads(raw.decode("utf-8"))
        except strictjson.RepeatedKey as e:
            raise CorruptFileError(
                f"the header names this tensor twice: the file is damaged; {FETCH_AGAIN}", path=path, tensor=e.key
            ) from None
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise _damaged_length(f, n, size, path) or CorruptFileError(
                f"the header is not valid JSON ({e}): the file is damaged; {FETCH_AGAIN}", path=path
            ) from e
    if not isinstance(header, dict):
        raise CorruptFileError(f"the header is not a JSON object: the file is damaged; {FETCH_AGAIN}", path=path)
    metadata = _metadata(header.pop("__metadata__", None), path)
    _check_text(header, metadata, path)
    data_start = 8 + n
    tensors = _tensors(header, path)
    _check_layout(tensors, path, size - data_start)
    return Header(path, data_start, tensors, metadata, _checksums(metadata, tensors, path))


def _damaged_length(f: BinaryIO, n: int, size: int, path: str) -> CorruptFileError | None:
    """When the header length (the first 8 bytes) says ``n`` but a JSON header of a tensor
    table starts at byte 8 and ends elsewhere, the error saying the length is damaged (a
    flipped byte); None when no such header is there (then it is the JSON that is damaged, or
    the file that is cut). Runs only once the header has failed."""
    f.seek(8)
    data = f.read(min(size - 8, MAX_HEADER_BYTES))
    text = data.decode("utf-8", "surrogateescape")  # tensor bytes after the header: any bytes
    try:
        header, end = json.JSONDecoder().raw_decode(text)
    except (json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(header, dict) or not header or not all(
        key == "__metadata__" or (isinstance(value, dict) and "dtype" in value) for key, value in header.items()
    ):
        return None
    length = len(text[:end].encode("utf-8", "surrogateescape"))
    padding = data[length : length + 8]
    length += len(padding) - len(padding.lstrip(b" "))  # writers pad it to 8 bytes with spaces
    if length == n:
        return None
    return CorruptFileError(
        f"the header length (the file's first 8 bytes) is damaged: it says {n} bytes, but the JSON "
        f"header at byte 8 takes {length}; {FETCH_AGAIN}",
        path=path,
    )


def _metadata(value: object, path: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise CorruptFileError(
            f"__metadata__ must map strings to strings: the header is damaged; {FETCH_AGAIN}", path=path
        )
    return value


def _check_text(header: dict, metadata: dict[str, str], path: str) -> None:
    """Names and metadata must be Unicode text: JSON's ``\\ud800`` escapes can make lone
    surrogates, which no UTF-8 file (an output's header, a report) can hold."""
    for text in (*header, *metadata, *metadata.values()):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise CorruptFileError(
                f"the header holds {text!r}, which is not valid Unicode text (a lone surrogate "
                f"escape), which no safetensors writer gives: the file is damaged; {FETCH_AGAIN}",
                path=path,
            ) from None


def _tensors(header: dict, path: str) -> dict[str, tuple[str, tuple[int, ...], int, int]]:
    tensors: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
    dtypes: dict[str, object] = {}  # each code looked up once
    in_order, last = True, (0, 0)
    for name, info in header.items():
        if not isinstance(info, dict):
            raise CorruptFileError(
                f"the header entry is not an object: the header is damaged; {FETCH_AGAIN}", path=path, tensor=name
            )
        code = info.get("dtype")
        shape = info.get("shape")
        offsets = info.get("data_offsets")
        if not isinstance(code, str):
            raise CorruptFileError(
                f"the header entry has no dtype: the header is damaged; {FETCH_AGAIN}", path=path, tensor=name
            )
        # json gives exact ints (``type(x) is int`` leaves bools out); plain loops: this runs
        # once per tensor
        count = 1
        if type(shape) is not list:
            count = -1
        else:
            for d in shape:
                if type(d) is not int or d < 0:
                    count = -1
                    break
                count *= d
        if count < 0:
            raise CorruptFileError(
                f"bad shape {shape!r} in the header: it is damaged; {FETCH_AGAIN}", path=path, tensor=name
            )
        if (
            type(offsets) is not list
            or len(offsets) != 2
            or type(offsets[0]) is not int
            or type(offsets[1]) is not int
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise CorruptFileError(
                f"bad data_offsets {offsets!r} in the header: it is damaged; {FETCH_AGAIN}", path=path, tensor=name
            )
        dtype = dtypes.get(code)
        if dtype is None:
            try:
                dtype = dtypes[code] = from_safetensors(code)
            except KeyError:
                raise UnsupportedError(
                    f"dtype {code!r} is not one ckptconv reads (it reads BOOL, U8..U64, I8..I64, "
                    "F16, BF16, F32, F64, F8_E4M3, F8_E5M2, C64)",
                    path=path,
                    tensor=name,
                ) from None
        if count * dtype.itemsize != offsets[1] - offsets[0]:
            raise CorruptFileError(
                f"data_offsets span {offsets[1] - offsets[0]} bytes but shape {shape} of {code} "
                f"needs {count * dtype.itemsize}: the header is damaged; {FETCH_AGAIN}",
                path=path,
                tensor=name,
            )
        tensors[name] = (code, tuple(shape), offsets[0], offsets[1])
        if in_order:
            here = (offsets[0], offsets[1])
            in_order = here >= last
            last = here
    if in_order:  # as writers lay them out: no sort needed
        return tensors
    return dict(sorted(tensors.items(), key=lambda item: (item[1][2], item[1][3])))


def _check_layout(
    tensors: dict[str, tuple[str, tuple[int, ...], int, int]], path: str, data_size: int
) -> None:
    """Tensors tile the data area from 0 without holes or overlaps, within the file."""
    end = 0
    for name, (_, _, begin, stop) in tensors.items():
        if begin != end:
            what = "overlaps the previous tensor" if begin < end else "leaves a hole before it"
            raise CorruptFileError(
                f"data_offsets [{begin}, {stop}] {what} (expected to start at {end}): the header is "
                f"damaged; {FETCH_AGAIN}",
                path=path,
                tensor=name,
            )
        end = stop
        if end > data_size:
            raise CorruptFileError(
                _truncated(
                    f"the tensor's data ends at byte {end} of the data area, which has "
                    f"{data_size} bytes"
                ),
                path=path,
                tensor=name,
            )


def _checksums(
    metadata: dict[str, str], tensors: dict[str, tuple[str, tuple[int, ...], int, int]], path: str
) -> dict[str, int]:
    text = metadata.get(CRC_KEY)
    if text is None:
        return {}
    try:
        table = json.loads(text)
        checksums = {name: int(value, 16) for name, value in table.items() if name in tensors}
    except (ValueError, TypeError, AttributeError, RecursionError) as e:
        raise CorruptFileError(
            f"__metadata__[{CRC_KEY!r}] is malformed ({e}): the header is damaged; {FETCH_AGAIN}", path=path
        ) from e
    if len(checksums) < len(table) and len(checksums) < len(tensors):
        # names the file lacks while some of its tensors go unlisted: a name in the table was
        # damaged (a file another tool dropped tensors from lists every tensor it kept)
        unknown = next(name for name in table if name not in tensors)
        unlisted = next(name for name in tensors if name not in checksums)
        raise CorruptFileError(
            f"__metadata__[{CRC_KEY!r}] names a tensor the file lacks ({unknown!r}) and none "
            f"for {unlisted!r}: the header is damaged; {FETCH_AGAIN}",
            path=path,
        )
    return checksums


def _user_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """``__metadata__`` without the tables ckptconv reads into the entries themselves."""
    return {k: v for k, v in metadata.items() if k not in (CRC_KEY, KINDS_KEY)}


def _kinds(header: Header) -> dict[str, Kind]:
    """The kinds ckptconv recorded (:data:`KINDS_KEY`); a malformed table is ignored (kinds
    only sort entries into weights and training state)."""
    text = header.metadata.get(KINDS_KEY)
    if text is None:
        return {}
    try:
        table = json.loads(text)
    except (ValueError, RecursionError):
        return {}
    if not isinstance(table, dict):
        return {}
    return {name: kind for name, kind in table.items() if kind in KINDS and name in header.tensors}


def _entries(header: Header, *, check_crc: bool) -> list[Entry]:
    kinds = _kinds(header)
    checksums = header.checksums if check_crc else {}  # Entry.read() checks a crc32c it has
    path, data_start = header.path, header.data_start
    dtypes: dict[str, object] = {}
    entries = []
    for name, (code, shape, begin, end) in header.tensors.items():
        dtype = dtypes.get(code)
        if dtype is None:
            dtype = dtypes[code] = from_safetensors(code)
        entry = Entry.of(
            name, layer_of(name), 0, name, shape, dtype, kinds.get(name, "weight"), path,
            ByteRange(path, data_start + begin, end - begin), checksums.get(name), None, None,
        )
        entries.append(entry)
    return entries
