"""The lock file's journal: what a writer killed outright left, and who may remove it.

A writer holding an output's lock (:class:`~ckptconv.writers.outputs.OutputLock`) writes into
the lock file one JSON line saying who it is (host name, boot id, process id), then one line
per temporary file as it creates it (its name, device and inode). A writer that ends in any
other way removes its temporary files and the lock file itself; one killed outright (SIGKILL,
the out-of-memory killer, a crash in native code) leaves both. The next writer of that output,
once it holds the lock (so no process is writing there any more), reads the journal and removes
each temporary file it names, provided the writer ran on this host and is provably gone (another
boot, or its process id is no process now) and the file is still the very file that writer
created (a regular file, same device and inode): never a file ckptconv did not write.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat

__all__ = ["start", "append", "sweep"]

_JOURNAL_LIMIT = 1 << 20  # a journal is a line per temporary file: read no more than this


def _this_host() -> dict[str, object]:
    """Who writes: this machine (its name, and the boot, whose process ids are unique)."""
    boot = ""
    with contextlib.suppress(OSError), open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
        boot = f.read().strip()
    return {"host": os.uname().nodename, "boot": boot}


def start(fd: int) -> bool:
    """Begin the lock file's journal (``fd``: the lock file, held) with this writer's record;
    False if it cannot be written (then nothing of this writer's is swept)."""
    line = json.dumps({"ckptconv-writer": 1, **_this_host(), "pid": os.getpid()}) + "\n"
    try:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, line.encode("utf-8"))  # written at the descriptor's offset: appends follow
    except OSError:
        return False
    return True


def _writer_gone(writer: dict[str, object]) -> bool:
    """Whether the process a journal names is provably gone: it ran on this host, and either
    in another boot or with a process id no process has now."""
    here = _this_host()
    if writer.get("host") != here["host"]:
        return False  # another machine's process: not ours to judge (the lock may be local)
    if writer.get("boot") and here["boot"] and writer.get("boot") != here["boot"]:
        return True
    pid = writer.get("pid")
    if not isinstance(pid, int) or pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: it exists, under another user
        return False
    return False


def sweep(fd: int, directory: str) -> None:
    """Remove the temporary files a dead writer's journal (the lock file, open at ``fd``)
    records, each only if it is still the file that writer created."""
    try:
        lines = os.pread(fd, _JOURNAL_LIMIT, 0).decode("utf-8").splitlines()
        writer = json.loads(lines[0]) if lines else None
    except (OSError, UnicodeDecodeError, ValueError):
        return
    if not isinstance(writer, dict) or writer.get("ckptconv-writer") != 1 or not _writer_gone(writer):
        return
    for line in lines[1:]:
        try:
            temp = json.loads(line)
            name, dev, ino = temp["temp"], temp["dev"], temp["ino"]
        except (ValueError, TypeError, KeyError):
            continue  # the line the writer was killed while writing
        if not isinstance(name, str) or not name.startswith(".") or os.sep in name or name in (".", ".."):
            continue
        path = os.path.join(directory, name)
        with contextlib.suppress(OSError):
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) == (dev, ino):
                os.unlink(path)


def append(fd: int, temp_fd: int, path: str) -> None:
    """Journal the temporary file ``path`` (open at ``temp_fd``) at the end of the journal
    (``fd``); a journal that cannot grow leaves that file unrecorded (not swept)."""
    st = os.fstat(temp_fd)
    line = json.dumps({"temp": os.path.basename(path), "dev": st.st_dev, "ino": st.st_ino}) + "\n"
    with contextlib.suppress(OSError):
        os.write(fd, line.encode("utf-8"))
