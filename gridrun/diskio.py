"""A disk that can fill up: one line for a full disk, the reserve that keeps room for a launch
record, and the user's cache folder. (Atomic writes are storage/safeio.py's.)

ENOSPC (disk full), EDQUOT (quota) and EROFS (read-only) are the errors a user fixes outside
gridrun: disk_line() says which folder and what to do.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

from .storage.safeio import atomic_write

DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
RESERVE = ".gridrun-reserve"  # kept in an experiment folder so the launch record fits on a full disk
RESERVE_BYTES = 256 * 1024


def cache_dir(*parts: str) -> Path:
    """A folder of gridrun's in the user's cache: $XDG_CACHE_HOME/gridrun/..., else ~/.cache/gridrun/...
    (the XDG base directories; platformdirs would say the same on Linux, but is not a dependency,
    and on macOS it would move users' caches to ~/Library/Caches)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "gridrun", *parts).expanduser()


def disk_error(exc: BaseException | None) -> OSError | None:
    """The full-disk, quota or read-only OSError in an exception's chain, if there is one."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def free_bytes(folder: str | os.PathLike) -> int | None:
    """Bytes an unprivileged user may still write under `folder` (None when it cannot be asked)."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


# Where each command can be pointed at another disk (the fix a full-disk line offers).
ELSEWHERE = {"launch": "launch with --storage", "restore": "restore with --storage", "report": "give --out",
             "export": "give --out", "train": "give --out"}


def disk_line(folder: str | os.PathLike, err: OSError | None = None, cmd: str = "launch") -> str:
    """One line: what happened to which folder, and the fix the command `cmd` offers."""
    code = err.errno if err is not None else errno.ENOSPC
    other = ELSEWHERE.get(cmd)
    if code == errno.EROFS:
        return (f"{folder} is on a read-only file system: {f'{other} on a writable disk, or ' if other else ''}"
                f"remount it read-write, then run the same command again")
    what = "the disk quota is used up" if code == errno.EDQUOT else "the disk is full"
    free = free_bytes(folder) if Path(folder).exists() else None
    left = f" ({free / 2**20:.1f} MiB free)" if free is not None else ""
    again = " to resume" if cmd == "launch" else ""
    return (f"{folder}: {what}{left}: free space there{f' (or {other} on a larger disk)' if other else ''}, then run "
            f"the same command again{again}")


def reserve(folder: str | os.PathLike) -> None:
    """Hold RESERVE_BYTES in `folder` (written, not sparse) for the launch record after a full disk."""
    atomic_write(Path(folder, RESERVE), lambda f: f.write(b"\0" * RESERVE_BYTES))


def release(folder: str | os.PathLike) -> None:
    Path(folder, RESERVE).unlink(missing_ok=True)
