"""Where experiments live, behind one interface the launch driver calls: LocalStorage (a local
path or file://, shared by NFS or not) and S3Storage (s3://, any S3-compatible server). Each
gives a launch its lock (with --fresh's set-aside), the disk reserve, a folder view of the
experiment, where Ray writes, and the clean-up after Tune's fit. `open_storage` is the one
place in the launch driver that tells the two apart (outside it: export.restore and the CLI's
`--storage` checks, and the trial worker, which writes through Ray's filesystem either way)."""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from .. import diskio
from ..errors import GridrunError
from . import locks
from .layout import LOCK, ExperimentDir
from .s3 import Remote, split_uri
from .sweep import sweep_half_files, sweep_temp_files


def is_uri(storage: str) -> bool:
    return "://" in str(storage)


def local_path(storage: str) -> str | None:
    """The folder a storage names on this machine (a path or file:///path), or None for an object store."""
    if not is_uri(storage):
        return os.path.abspath(storage)
    parts = urlsplit(storage)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise GridrunError(f"--storage {storage}: a file:// URI names a folder on this machine "
                               f"(file:///abs/path); use a shared folder or s3:// for other hosts")
        return os.path.abspath(parts.path)
    if parts.scheme != "s3":
        raise GridrunError(f"--storage {storage}: unknown scheme {parts.scheme!r}: give a folder, file:///path or "
                           f"s3://bucket/prefix")
    return None


class Storage(Protocol):
    """What the launch driver asks of an experiment's storage (LocalStorage, S3Storage).
    shown: its name in messages; uri, query: where trials write and the store's options; here:
    the experiment's folder on this machine, where the driver marks trials as they end (stopped
    early, failed), or None (an object store: the driver marks its mirror after the fit)."""

    name: str
    shown: str
    uri: str
    query: str
    here: str | None

    def claim(self, fresh: bool, out):
        """A context: the launch's lock (with --fresh's set-aside and any disk reserve)."""

    def mirror(self):
        """A context yielding the experiment as a folder here (Path)."""

    def push(self, view: Path, names: list[str] | None = None) -> None: ...

    def discard(self, names: list[str]) -> None:
        """Top-level files the view no longer holds, gone from the storage too."""

    def pull(self, view: Path) -> None: ...

    def make_room(self) -> None: ...

    def ray_storage(self) -> dict: ...

    def full(self) -> OSError | None: ...

    def after_fit(self, full: OSError | None) -> OSError | None: ...


def open_storage(name: str, storage: str | None) -> Storage:
    """The experiment `name` in `storage` (a folder by default: runs/)."""
    where = local_path(storage or "runs")
    return LocalStorage(where, name) if where is not None else S3Storage(Remote(storage, name))


def storage_full(exp_dir: str) -> OSError | None:
    """ENOSPC when the experiment's disk has under 1 MiB left for anyone but root (its reserve still
    held): trials there fail to write or sync their files, whatever error Ray shows for them."""
    free = diskio.free_bytes(exp_dir)
    if free is not None and free < 2**20:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), exp_dir)
    return None


class LocalStorage:
    """An experiment in a folder here. `shown` names it in messages and is where Ray writes;
    `query` is the store's options (none)."""

    query = ""

    def __init__(self, root: str, name: str):
        self.name, self.shown = name, os.path.join(root, name)
        self.uri = self.here = self.shown

    @contextmanager
    def claim(self, fresh: bool, out):
        """The launch's hold on the folder: --fresh's set-aside (before the lock: the folder moves
        away whole), the lock, and room for the launch record should the disk fill up (no room
        to begin with is a full disk before anything else is written)."""
        if fresh:
            self._set_aside(out)
        with ExperimentDir(self.shown).lock():
            diskio.reserve(self.shown)
            try:
                yield
            finally:
                diskio.release(self.shown)

    def _set_aside(self, out) -> None:
        """--fresh: start over, but never delete results (the old experiment becomes NAME.prev-N)."""
        if not os.path.exists(self.shown):
            return
        holder = ExperimentDir(self.shown).lock_holder()
        if holder:
            raise GridrunError(locks.fresh_refused(self.shown, holder))
        k = 1
        while os.path.exists(f"{self.shown}.prev-{k}"):
            k += 1
        os.rename(self.shown, f"{self.shown}.prev-{k}")
        out(f"--fresh: the previous experiment is kept as {self.shown}.prev-{k}")

    @contextmanager
    def mirror(self):
        """The experiment as a folder here: itself."""
        yield Path(self.shown)

    def push(self, view: Path, names: list[str] | None = None) -> None:
        """Nothing to write back: the view is the folder."""

    def discard(self, names: list[str]) -> None:
        """Nothing to do: removed from the view, they are gone from the folder."""

    def pull(self, view: Path) -> None:
        """Nothing to fetch: the trials wrote into the view."""

    def make_room(self) -> None:
        """The reserve given up, so the launch record fits on a full disk."""
        diskio.release(self.shown)

    def ray_storage(self) -> dict:
        """Where Ray Tune writes the trials (RunConfig's name and storage)."""
        return dict(name=os.path.basename(self.shown), storage_path=os.path.dirname(self.shown))

    def full(self) -> OSError | None:
        return storage_full(self.shown)

    def after_fit(self, full: OSError | None) -> OSError | None:
        """Once Tune's fit returns: a disk that filled up (found here if Ray's error hid it) gets
        its half-written files removed before they are counted, else stray temp files go."""
        full = full or self.full()
        if full is not None:
            diskio.release(self.shown)
            sweep_half_files(Path(self.shown))
        else:
            sweep_temp_files(Path(self.shown))
        return full


class S3Storage:
    """An experiment in an object store, worked on in a private local mirror (s3.Remote)."""

    def __init__(self, remote: Remote):
        self.remote, self.name = remote, remote.name
        self.shown, self.uri, self.query = remote.uri, remote.uri, remote.query
        self.here = None

    @contextmanager
    def claim(self, fresh: bool, out):
        """The lock, then --fresh's set-aside under it (objects are copied away one by one)."""
        with self.remote.lock():
            if fresh:
                self.remote.set_aside(out)
            yield

    @contextmanager
    def mirror(self):
        """A private mirror of the store's copy, removed afterwards."""
        tmp = tempfile.mkdtemp(prefix="gridrun-mirror-")
        try:
            yield self.remote.pull(Path(tmp, self.remote.name))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def push(self, view: Path, names: list[str] | None = None) -> None:
        """The mirror's top-level files (all but the lock, or `names`) back to the object store."""
        self.remote.push(view, names if names is not None else
                         [p.name for p in view.iterdir() if p.is_file() and p.name != LOCK])

    def pull(self, view: Path) -> None:
        """The trials' files, as the nodes wrote them to the store."""
        self.remote.pull(view)

    def discard(self, names: list[str]) -> None:
        """Best effort (an unreachable store must not hide what ended the launch)."""
        for n in names:
            try:
                self.remote.fs.delete_file(f"{self.remote.path}/{n}")
            except OSError:  # FileNotFoundError included: nothing to delete
                pass

    def make_room(self) -> None:
        """No reserve is held on a store."""

    def ray_storage(self) -> dict:
        """Ray writes through gridrun's pyarrow filesystem (endpoint and options from the URI),
        which it ships to every node with the trials."""
        return dict(name=self.remote.name, storage_path=self.remote.root, storage_filesystem=self.remote.fs)

    def full(self) -> OSError | None:
        return None  # a store's refusals reach gridrun as errors, not as a disk found full

    def after_fit(self, full: OSError | None) -> OSError | None:
        return full


def cache_root() -> Path:
    return diskio.cache_dir("storage")


def local_view(storage: str, targets: list[str] | None = None) -> str:
    """A folder that holds the experiments of `storage` for the readers (status, report): the
    storage itself when it is a folder, else a mirror in the cache of the named (or all) ones."""
    where = local_path(storage)
    if where is not None:
        return where
    root = Remote(storage, "x")
    mirror = cache_root() / split_uri(storage)[0].replace("://", "/")
    names = list(targets or [])
    if not names:
        import pyarrow.fs as pafs

        sel = pafs.FileSelector(root.root, allow_not_found=True)
        names = [os.path.basename(i.path) for i in root.fs.get_file_info(sel) if i.type == pafs.FileType.Directory]
    for n in names:
        rem = Remote(storage, n)
        if rem.exists():
            rem.pull(mirror / n)
    return str(mirror)
