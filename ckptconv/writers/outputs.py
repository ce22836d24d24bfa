"""Output files, safely: names, the lock, temporary files, and replacing a set crash-safely.

Every writer (the safetensors streamer, ``transplant``'s Keras save) puts its files in place
through this module, so the rules are the same everywhere:

* **Temporary files.** New files are written under hidden names in the target directory
  (``.NAME.XXXXXXXX.tmp``, shortened with a hash when ``NAME`` is long, so the name always
  fits the file system's 255-byte limit) and get the usual mode (0666 minus the umask, read
  without changing it).
* **The lock.** While it writes an output, a writer holds an exclusive ``flock`` on the hidden
  file ``.NAME.lock`` next to it: a second writer of the same output fails at once, in one line.
  (A file system without ``flock`` gets no lock; the lock file is removed by whoever made it.)
* **Sweeping what a killed writer left.** The lock file is also the writer's journal: who holds
  it (host, boot, process id) and every temporary file it creates (name, device and inode),
  written as each is created. A writer killed outright (SIGKILL, the out-of-memory killer)
  leaves both behind; the next writer of the output, once it holds the lock, removes the
  temporary files that journal records, provided the dead writer ran on this host and its
  process is gone (another boot, or no such process) and each file is still the very file it
  created (a regular file, same device and inode). A file the journal does not name (another
  program's, or one an older ckptconv left) is never touched.
* **What may be replaced.** Without ``force`` nothing that exists is touched. With ``force``
  the output path itself and its index are replaced, and of the other files in the way (named
  by an old index, or left by an interrupted replace) only those that are provably a ckptconv
  shard of an output of this name: a regular file named ``STEM-NNNNN-of-NNNNN.safetensors``
  whose header records ckptconv's set identity. Anything else (``train.py``, ``README.md``, a
  directory a stale index names) is never deleted; a file in the way of a new shard is refused.
* **The replace protocol.** The new files are complete and flushed before any old one moves.
  Then, with SIGINT and SIGTERM held back: each old file whose name a new one takes is first
  linked aside under ``.NAME.XXXXXXXX.old``; the new shards take their names; the index (or
  the single file) is renamed into place last: that rename is the commit. Only then are the
  old files set aside and the old shards no longer named removed. A crash (SIGKILL, power
  loss) before the commit leaves the old index naming shards some of which may already be new:
  readers refuse that set as incomplete (the shards record another set identity than the
  index), and the ``.old`` files are the old shards, to rename back or delete.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from ..errors import CkptconvError, OutputError
from ..interrupts import deferred_interrupts
from . import _journal as journal

__all__ = [
    "OutputLock",
    "TempFiles",
    "leftover_temporaries",
    "OutputSet",
    "plan_output_set",
    "commit",
    "atomic_file",
    "check_name_lengths",
    "check_not_inputs",
    "check_free_space",
    "is_ckptconv_shard",
    "hidden_name",
    "process_umask",
    "fsync_dir",
    "same_file",
    "input_files",
]

_DEFAULT_NAME_MAX = 255


# --- names -----------------------------------------------------------------------------------


def _name_max(directory: str) -> int:
    try:
        return int(os.pathconf(directory, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return _DEFAULT_NAME_MAX


def hidden_name(final_name: str, suffix: str, *, directory: str, room: int = 0) -> str:
    """``.FINAL{suffix}``, or, when that (plus ``room`` bytes a caller adds, such as
    mkstemp's random part) would not fit the file system's name limit, ``.PREFIX~HASH{suffix}``
    with ``PREFIX`` cut at a character boundary and ``HASH`` from the whole final name."""
    limit = _name_max(directory) - room
    name = f".{final_name}{suffix}"
    if len(os.fsencode(name)) <= limit:
        return name
    digest = hashlib.sha256(os.fsencode(final_name)).hexdigest()[:8]
    keep = limit - len(os.fsencode(f".~{digest}{suffix}"))
    prefix = os.fsencode(final_name)[: max(keep, 0)].decode("utf-8", "ignore")
    return f".{prefix}~{digest}{suffix}"


def check_name_lengths(paths: Iterable[str]) -> None:
    """Refuse final names the file system cannot hold, before anything is written.

    Raises:
        OutputError: a file name is longer than the directory's limit (255 bytes on most
            file systems), naming it and the limit.
    """
    for path in paths:
        directory, name = os.path.split(path)
        limit = _name_max(directory or ".")
        size = len(os.fsencode(name))
        if size > limit:
            raise OutputError(
                f"the file name {name[:40]}... is {size} bytes, longer than the {limit} this "
                "file system allows; choose a shorter output name",
                path=path,
            )


# --- small file-system helpers ------------------------------------------------------------


def process_umask() -> int:
    """The process umask, read without changing it where the system allows (a umask changed
    even for an instant applies to files other threads create meanwhile)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: read it by setting it, and put it back at once
    os.umask(mask)
    return mask


def fsync_dir(directory: str) -> None:
    """Flush a directory's entries (renames, links) to disk, where the file system can."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a directory; the files themselves are synced
    finally:
        os.close(fd)


def same_file(a: str, b: str) -> bool:
    """Whether two paths are one file (same path after links, or the same inode)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def input_files(inputs: Iterable[str | os.PathLike[str]]) -> list[str]:
    """Absolute paths of input files, with the shards a sharded input's index names."""
    from ..formats import load_index

    paths = []
    for p in inputs:
        path = os.path.abspath(os.fspath(p))
        paths.append(path)
        if path.endswith(".json") and os.path.isfile(path):
            try:
                index = load_index(path)
            except (CkptconvError, OSError):  # not an index: just a file
                continue
            directory = os.path.dirname(path)
            for value in index["weight_map"].values():
                for name in [value] if isinstance(value, str) else value if isinstance(value, list) else []:
                    if isinstance(name, str) and name and os.path.basename(name) == name:
                        paths.append(os.path.join(directory, name))
    return paths


def check_not_inputs(outputs: Iterable[str], inputs: Iterable[str | os.PathLike[str]]) -> None:
    """Refuse to write (or remove) any file that is one of the inputs.

    Raises:
        OutputError: an output path is an input file, a link to it, or a shard of a sharded
            input (given by its index).
    """
    protected = input_files(inputs)
    for path in outputs:
        for source in protected:
            if same_file(path, source):
                raise OutputError(
                    f"the output would overwrite the input {source}; choose another output path",
                    path=path,
                )


def check_free_space(directory: str, need: int, *, path: str) -> None:
    """Refuse a write that cannot fit: some writers (libhdf5, under Keras' save) crash the
    process on a full disk instead of raising.

    Raises:
        OutputError: fewer than ``need`` bytes are free for this user in ``directory``.
    """
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return
    if free < need:
        raise OutputError(
            f"not enough free space: the output needs about {need} bytes and {free} are free; "
            "nothing was written (free some space or choose another directory)",
            path=path,
        )


# --- the lock --------------------------------------------------------------------------------


class OutputLock:
    """An exclusive lock on an output, held while it is written (``flock`` on ``.NAME.lock``).

    Raises (on entry):
        OutputError: another process holds it, or the lock file cannot be created.
    """

    def __init__(self, final: str) -> None:
        directory, name = os.path.split(os.path.abspath(final))
        self.final = final
        self.path = os.path.join(directory, hidden_name(name, ".lock", directory=directory))
        self._fd: int | None = None
        self._journal = False  # whether this writer journals its temporary files (lock held)

    def __enter__(self) -> OutputLock:
        directory = os.path.dirname(self.path)
        if not os.path.isdir(directory):
            raise OutputError("the output directory does not exist; create it first", path=directory)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - no flock on this platform: no lock
            return self
        # a signal between the lock file's creation and self._fd being set would leave the
        # file behind with nobody to remove it: held until then, it is raised here, and a
        # raise from __enter__ gets no __exit__, so the lock is released on the way out
        try:
            with deferred_interrupts():
                self._acquire(fcntl)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _acquire(self, fcntl) -> None:  # type: ignore[no-untyped-def]
        cloexec = getattr(os, "O_CLOEXEC", 0)
        while True:
            created = True  # whether this process made the lock file (and so may remove it)
            try:
                try:
                    fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | cloexec, 0o666)
                except FileExistsError:
                    created = False
                    try:
                        fd = os.open(self.path, os.O_RDWR | cloexec)
                    except FileNotFoundError:
                        continue  # its holder removed it between our two opens: create it then
            except OSError as e:
                # (ENOENT from a create in a directory that takes no new files, as /proc: not a
                # race to retry, which would spin forever)
                raise OutputError(
                    f"cannot create a file here: {e.strerror}", path=os.path.dirname(self.path)
                ) from e
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise OutputError(
                        "another ckptconv process is writing this output right now (it holds "
                        f"the lock {os.path.basename(self.path)}); wait for it to finish or "
                        "choose another output path",
                        path=self.final,
                    ) from None
                # a file system without flock: go on unlocked, and remove the file on exit
                # only if it is ours
                if created:
                    self._fd = fd
                else:
                    os.close(fd)
                return
            # the holder before us may have removed the file after we opened it: retry then
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    self._fd = fd
                    if not created:
                        journal.sweep(fd, os.path.dirname(self.path))
                    self._journal = journal.start(fd)
                    return
            except FileNotFoundError:
                pass
            os.close(fd)

    def record(self, fd: int, path: str) -> None:
        """Journal a temporary file this writer created (``fd`` open on it), so that the next
        writer of the output removes it if this process is killed before it can."""
        if self._fd is not None and self._journal:  # else no lock: nothing may be swept later
            journal.append(self._fd, fd, path)

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            with deferred_interrupts():  # a second Ctrl-C does not cut the release short
                with contextlib.suppress(OSError):
                    os.unlink(self.path)  # removed while still held: the next one retries
                os.close(self._fd)
                self._fd = None
                self._journal = False


# --- temporary files -------------------------------------------------------------------------


_RANDOM = re.compile(r"[a-z0-9_]{8}")  # the random part of a name tempfile.mkstemp makes


def _temp_prefix(final_name: str, directory: str, suffix: str) -> str:
    """A temporary file of ``final_name`` is named ``PREFIX + 8 random characters + suffix``."""
    return hidden_name(final_name, ".", directory=directory, room=8 + len(suffix))


def leftover_temporaries(dst: str | os.PathLike[str]) -> list[str]:
    """Temporary files of an unfinished write of the output ``dst`` (its file, its sharded
    set's shards or index), named as :class:`TempFiles` names them.

    A write removes its own temporary files when it fails or is interrupted, so the ones
    found were left by a process killed while writing (SIGKILL, the out-of-memory killer, a
    machine that went down). Lists ``dst``'s directory; opens nothing. (A shard whose name
    is too long for the file system's limit has a shortened, hashed temporary name: not
    found.)

    Returns:
        Paths of the hidden temporaries (``.model.safetensors.XXXXXXXX.tmp``), sorted.
    """
    from ..formats.safetensors import index_path, parse_shard_name

    directory, base = os.path.split(os.fspath(dst))
    where = directory or os.curdir
    try:
        names = os.listdir(where)
    except OSError:
        return []
    own = {_temp_prefix(name, where, ".tmp") for name in (base, os.path.basename(index_path(base)))}
    found = []
    for name in names:
        prefix, random = name[: -len("XXXXXXXX.tmp")], name[-len("XXXXXXXX.tmp") : -len(".tmp")]
        if not (name.endswith(".tmp") and prefix.startswith(".") and _RANDOM.fullmatch(random)):
            continue
        shard = prefix.endswith(".") and parse_shard_name(prefix[1:-1], base) is not None
        if prefix in own or shard:
            found.append(os.path.join(directory, name))
    return sorted(found)


class TempFiles:
    """Hidden temporary files in one directory, removed on exit unless committed; each is
    journaled in ``lock`` (the output's :class:`OutputLock`, held), so that the next writer
    removes it if this process is killed before it can."""

    def __init__(self, directory: str, *, lock: OutputLock | None = None) -> None:
        self.directory = directory
        self.paths: list[str] = []
        self._open: set[int] = set()
        self._mode = 0o666 & ~process_umask()
        self._lock = lock

    def create(self, final_name: str, *, suffix: str = ".tmp") -> tuple[int, str]:
        """A new empty file for ``final_name``: ``(descriptor, path)``."""
        prefix = _temp_prefix(final_name, self.directory, suffix)
        # The name is in the directory as soon as the kernel creates it, before mkstemp returns
        # it: a SIGINT or SIGTERM arriving meanwhile would raise inside mkstemp and lose the
        # name, leaving the file behind. Held until the path is recorded, it raises here after,
        # and __exit__ removes the file.
        with deferred_interrupts():
            try:
                fd, path = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=self.directory)
            except OSError as e:
                raise OutputError(f"cannot create a file here: {e.strerror}", path=self.directory) from e
            self.paths.append(path)
            self._open.add(fd)
            if self._lock is not None:
                self._lock.record(fd, path)
        os.fchmod(fd, self._mode)  # mkstemp makes 0600; outputs get the usual mode
        return fd, path

    def close(self, fd: int) -> None:
        self._open.discard(fd)
        os.close(fd)

    def placed(self, path: str) -> None:
        """``path`` has its final name now: nothing to remove."""
        self.paths.remove(path)

    def __enter__(self) -> TempFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        # often run because of a Ctrl-C; a second one (impatient users press it twice) is
        # held until every file is removed, not raised half-way through the removal
        with deferred_interrupts():
            for fd in self._open:
                with contextlib.suppress(OSError):
                    os.close(fd)
            for path in self.paths:
                with contextlib.suppress(OSError):
                    os.unlink(path)


# --- which existing files an output may replace --------------------------------------------


def is_ckptconv_shard(path: str, dst: str) -> bool:
    """Whether ``path`` is provably a shard ckptconv wrote for an output named ``dst``: a
    regular file (not a link) named ``STEM-NNNNN-of-NNNNN.safetensors`` after ``dst``, whose
    safetensors header records ckptconv's set identity."""
    from ..formats.safetensors import SET_KEY, parse_shard_name, read_header

    if os.path.dirname(os.path.abspath(path)) != os.path.dirname(os.path.abspath(dst)):
        return False
    if parse_shard_name(os.path.basename(path), dst) is None:
        return False
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        return SET_KEY in read_header(path).metadata
    except Exception:  # noqa: BLE001 - unreadable or not safetensors: not provably ours
        return False


@dataclass
class OutputSet:
    """What writing an output at ``dst`` creates, replaces and removes.

    Attributes:
        dst: The output path asked for.
        finals: The new files' paths, in placing order (shards, then the index; or ``dst``).
        replaced: Existing files at those paths (each moved aside before it is replaced).
        stale: Old files of the output the new one does not reuse (removed after the commit).
    """

    dst: str
    finals: list[str]
    replaced: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)


def plan_output_set(
    dst: str,
    finals: Sequence[str],
    *,
    force: bool,
    inputs: Iterable[str | os.PathLike[str]] = (),
    index: str | None = None,
) -> OutputSet:
    """Decide, before anything is written, what a write of ``finals`` for ``dst`` may touch.

    Args:
        dst: The output path asked for.
        finals: The new files, the commit point last.
        force: Whether existing output may be replaced.
        inputs: Input files, which are never written or removed.
        index: The output's index path, when it has one (a sharded set's, old or new).

    Raises:
        OutputError: the directory is missing; a final path is a directory; the output exists
            and ``force`` is off; a file in the way was not written by ckptconv; a file to
            write or remove is an input; a name is too long for the file system.
    """
    directory = os.path.dirname(dst)
    if not os.path.isdir(directory):
        raise OutputError("the output directory does not exist; create it first", path=directory)
    check_name_lengths(finals)
    own = {dst} | ({index} if index else set())
    for path in finals:
        if os.path.isdir(path):
            raise OutputError("the output path is a directory", path=path)
    replaced = [p for p in finals if os.path.lexists(p)]
    old = [p for p in sorted(own) if os.path.lexists(p) and p not in replaced]
    for path in old:
        if os.path.isdir(path) and not os.path.islink(path):
            raise OutputError("the output path is a directory", path=path)
    inputs = input_files(inputs)
    named = _shards_named_by(index, dst) if index and os.path.isfile(index) else []
    check_not_inputs([*finals, *replaced, *old, *named], inputs)
    if index and force:  # shards of this output an interrupted replace left behind (not inputs)
        named += [
            p for p in _orphan_shards(dst)
            if p not in named and not any(same_file(p, source) for source in inputs)
        ]
    # a file ckptconv may not replace is named first: --force would not help with it
    for path in replaced:
        if path not in own and not is_ckptconv_shard(path, dst):
            raise OutputError(
                "this file is in the way of the output's shards and ckptconv did not write it "
                "(not a shard of an output of this name); move it away, even {opt:force=True} "
                "does not replace it",
                path=path,
            )
    if (replaced or old) and not force:
        first = (replaced + old)[0]
        raise OutputError("the output already exists; pass {opt:force=True} to replace it", path=first)
    stale = old + [p for p in named if p not in replaced and p not in old]
    return OutputSet(dst, list(finals), replaced, stale)


def _shards_named_by(index: str, dst: str) -> list[str]:
    """The files an old index names that are provably ckptconv shards of this output."""
    from ..formats import load_index

    try:
        weight_map = load_index(index)["weight_map"]
    except (CkptconvError, OSError):
        return []  # a damaged or foreign index names nothing ckptconv may remove
    directory = os.path.dirname(index)
    found: list[str] = []
    for value in weight_map.values():
        if not isinstance(value, str) or os.path.basename(value) != value or value in (".", ".."):
            continue
        path = os.path.join(directory, value)
        if path not in found and is_ckptconv_shard(path, dst):
            found.append(path)
    return found


def _orphan_shards(dst: str) -> list[str]:
    """Provable ckptconv shards of the output ``dst`` in its directory, named by any index or
    none (a replace killed after its commit leaves the old set's shards behind)."""
    from ..formats.safetensors import parse_shard_name

    directory = os.path.dirname(dst)
    try:
        names = sorted(e.name for e in os.scandir(directory))
    except OSError:
        return []
    return [
        os.path.join(directory, name)
        for name in names
        if parse_shard_name(name, dst) is not None and is_ckptconv_shard(os.path.join(directory, name), dst)
    ]


# --- the commit ------------------------------------------------------------------------------


def commit(pairs: Sequence[tuple[str, str]], plan: OutputSet, temps: TempFiles, *, fsync: bool) -> None:
    """Move complete temporary files to their final names; the last pair is the commit point.

    SIGINT and SIGTERM wait until this returns. Existing files the new ones replace are linked
    (or, where the file system has no hard links, renamed) aside first, and removed with the
    stale files once the commit is done and flushed.

    Raises:
        OutputError: a rename fails (the old files are put back first), or a file appeared
            under a final name meanwhile (without ``force``).
    """
    directory = temps.directory
    with deferred_interrupts():
        aside: list[tuple[str, str]] = []  # (aside path, final path)
        placed: list[str] = []
        try:
            for final in plan.replaced:
                aside.append((_set_aside(final, directory), final))
            replacing = set(plan.replaced)
            for tmp, final in pairs:
                _place(tmp, final, replace=final in replacing)
                temps.placed(tmp)
                placed.append(final)
        except BaseException as e:  # a rename failed, or a file appeared under a final name
            _roll_back(placed, aside, set(plan.replaced))
            if isinstance(e, OSError):
                where = e.filename if isinstance(e.filename, str) else plan.dst
                raise OutputError(f"cannot put the output in place: {e.strerror or e}", path=where) from e
            raise
        if fsync:
            fsync_dir(directory)
        for path in [*plan.stale, *(a for a, _ in aside)]:
            with contextlib.suppress(OSError):  # committed: what is left over is only clutter
                os.unlink(path)
        if fsync and (plan.stale or aside):
            fsync_dir(directory)


def _set_aside(final: str, directory: str) -> str:
    """Keep the old file under a hidden ``.old`` name (a hard link; the final name stays until
    the new file replaces it), or rename it there where links are not supported."""
    name = os.path.basename(final)
    for _ in range(100):
        aside = os.path.join(directory, hidden_name(name, f".{secrets.token_hex(4)}.old", directory=directory))
        try:
            os.link(final, aside, follow_symlinks=False)
            return aside
        except FileExistsError:
            continue
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOTSUP, errno.EXDEV):
                raise
            if os.path.lexists(aside):
                continue
            os.rename(final, aside)
            return aside
    raise OSError(errno.EEXIST, "no free name to set the old file aside", final)


def _place(tmp: str, final: str, *, replace: bool) -> None:
    if replace:
        os.replace(tmp, final)
        return
    try:
        os.link(tmp, final)  # fails if final appeared meanwhile: never clobber what was not checked
    except FileExistsError as e:
        raise OutputError(
            "the output already exists; pass {opt:force=True} to replace it", path=final
        ) from e
    except OSError:  # a file system without hard links
        if os.path.lexists(final):
            raise OutputError(
                "the output already exists; pass {opt:force=True} to replace it", path=final
            ) from None
        os.replace(tmp, final)
        return
    os.unlink(tmp)


def _roll_back(placed: list[str], aside: list[tuple[str, str]], replaced: set[str]) -> None:
    """Undo a commit that failed half-way: old files back under their names, new ones gone."""
    kept = {final: a for a, final in aside}
    for final in reversed(placed):
        with contextlib.suppress(OSError):
            if final in kept:
                os.replace(kept.pop(final), final)
            elif final not in replaced:
                os.unlink(final)
    for a, final in kept.items():
        with contextlib.suppress(OSError):
            if os.path.lexists(final):
                os.unlink(a)  # the old file never left its name: the link is not needed
            else:
                os.replace(a, final)


# --- one file written by someone else's code ------------------------------------------------


@contextlib.contextmanager
def atomic_file(
    final: str | os.PathLike[str],
    *,
    suffix: str = ".tmp",
    force: bool = False,
    fsync: bool = True,
    inputs: Iterable[str | os.PathLike[str]] = (),
    need: int = 0,
) -> Iterator[str]:
    """A temporary path to write ``final`` through, renamed into place when the block ends.

    For writers that want a path (Keras' ``save``): the block writes the file at the yielded
    path; on success it is flushed and committed like any output (locked, replacing only with
    ``force``), and on any exception it is removed. ``suffix`` ends the temporary name (Keras
    insists on ``.keras`` / ``.weights.h5``). ``need`` bytes must be free first.

    Raises:
        OutputError: as :func:`plan_output_set`; not enough free space; the write failed.
    """
    final = os.path.abspath(os.fspath(final))
    directory, name = os.path.split(final)
    with OutputLock(final) as lock:
        plan = plan_output_set(final, [final], force=force, inputs=inputs)
        if need:
            check_free_space(directory, need, path=final)
        with TempFiles(directory, lock=lock) as temps:
            fd, tmp = temps.create(name, suffix=suffix)
            temps.close(fd)
            try:
                yield tmp
            except OSError as e:
                raise OutputError(f"cannot write the output: {e.strerror or e}", path=final) from e
            if fsync:
                try:
                    fd = os.open(tmp, os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                except OSError as e:
                    raise OutputError(f"cannot write the output: {e.strerror or e}", path=final) from e
            os.chmod(tmp, 0o666 & ~process_umask())  # the writer may have made it anew
            commit([(tmp, final)], plan, temps, fsync=fsync)
