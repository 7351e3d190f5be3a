"""One launch per experiment: the lock protocol (acquire, beat, release) that a folder lock and
the object store's lock (s3.ObjectLock) both follow, held with ONE heartbeat thread.

A folder's lock file names the holder's pid, host and a token, and is touched every 20 s. Taking
it (new, or stale: its process gone on this host, or its heartbeat older than STALE_S) is done
under an exclusive flock of a guard file beside the experiment, so exactly one of any number of
racing launches wins (flock is kernel-atomic on one host, and works across hosts on NFS with
lockd). The object store's version of the same guarantee is in s3.py's docstring.
"""
from __future__ import annotations

import json
import os
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from ..errors import GridrunError
from .safeio import atomic_save, exclusive, read_json

HEARTBEAT_S = 20.0  # how often a holder says it lives
STALE_S = 120.0  # a lock not touched for this long (another host) is a dead launch's


class Lock(Protocol):
    """What `held` needs of a lock: take it (or raise GridrunError naming the holder), say the
    holder lives, let it go."""

    def acquire(self) -> None: ...

    def beat(self) -> None: ...

    def release(self) -> None: ...


@contextmanager
def held(lock: Lock, heartbeat_s: float = HEARTBEAT_S):
    """Hold `lock` while the block runs, its heartbeat on one daemon thread."""
    lock.acquire()
    stop = threading.Event()

    def beat():
        while not stop.wait(heartbeat_s):
            lock.beat()

    beating = threading.Thread(target=beat, daemon=True)
    beating.start()
    try:
        yield lock
    finally:
        stop.set()
        try:
            beating.join(timeout=30)  # a beat in flight would replace the object the release deletes by its ETag
        finally:
            lock.release()  # even when a second Ctrl-C interrupts the wait


def fresh_refused(exp: str, holder: dict) -> str:
    return (f"{exp} is being launched by pid {holder.get('pid')} on {holder.get('host')}: --fresh cannot move it "
            f"away while it runs")


def holder_line(exp: str, holder: dict) -> str:
    return (f"{exp} is already being launched (pid {holder.get('pid')} on {holder.get('host')}): wait for it "
            f"(`gridrun status` shows it), or launch with --name NEW")


def lock_owner() -> dict:
    """What a lock says of its holder: this process, this host, since when, a token of its own."""
    return {"pid": os.getpid(), "host": os.uname().nodename, "since": time.time(), "token": uuid.uuid4().hex}


def dead_here(info: dict) -> bool:
    """True when the holder ran on this host and its process is gone."""
    if info.get("host") != os.uname().nodename:
        return False
    try:
        os.kill(int(info.get("pid", -1)), 0)
    except (ProcessLookupError, ValueError, OverflowError, TypeError):
        return True
    except PermissionError:
        pass
    return False


def folder_holder(file: Path, stale_s: float = STALE_S) -> dict | None:
    """The live launch holding the lock `file`, or None. A lock whose process is gone (same host) or
    whose heartbeat is older than `stale_s` (another host) is not held."""
    try:
        info = read_json(file)
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict):
        return None
    if info.get("host") == os.uname().nodename:
        return None if dead_here(info) else info
    try:
        fresh = time.time() - file.stat().st_mtime < stale_s
    except OSError:
        return None
    return info if fresh else None


class FolderLock:
    """The lock file `name` in the experiment folder `folder` (created with the lock if need be,
    and removed again when a refused launch leaves it empty)."""

    def __init__(self, folder: str | os.PathLike, name: str):
        self.folder = Path(folder)
        self.file, self.me, self.created = self.folder / name, lock_owner(), False

    def _guard(self):
        """The critical section in which a lock is checked and taken: a flock on a hidden file
        beside the experiment, never deleted, so every process locks the same file."""
        return exclusive(self.folder.parent / f".{self.folder.name}.gridrun-guard")

    def acquire(self) -> None:
        self.created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        with self._guard():
            holder = folder_holder(self.file) if self.file.exists() else None
            if holder:
                raise GridrunError(holder_line(str(self.folder), holder))
            atomic_save(self.file, json.dumps(self.me))  # the lock appears whole: never half written

    def beat(self) -> None:
        """Its modification time says the holder lives (other hosts read it)."""
        try:
            os.utime(self.file)
        except OSError:
            pass

    def release(self) -> None:
        with self._guard():
            try:
                if read_json(self.file).get("token") == self.me["token"]:
                    self.file.unlink()
                if self.created and not any(self.folder.iterdir()):
                    self.folder.rmdir()  # a launch refused before any work leaves nothing behind
            except (OSError, ValueError, AttributeError):
                pass
