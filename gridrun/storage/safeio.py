"""The only code in gridrun that opens an experiment's files (tests/test_architecture.py checks it;
the one exception is a trial's TensorBoard scalars, which TensorBoard's SummaryWriter appends):
writes are atomic, reads are bounded.

A file is written to a temp name beside it, flushed and fsynced, then renamed over the target, so
a reader sees the old file or the whole new one, never a 0-byte or half file; a failed write
removes its temp file. Reads take regular files only (never a symlink, FIFO, device or folder),
at most a size the caller fixes per kind of file, .npy headers checked against the bytes before
any array is made; a malformed file raises Unreadable naming it. Never imports torch or pandas at
start-up (status must start fast); torch is imported where a torch file is written or read.
"""
from __future__ import annotations

import errno
import fcntl
import io
import json
import os
import stat
from contextlib import contextmanager
from pathlib import Path

import numpy as np

TEMP_SUFFIX = ".tmp"  # atomic_write's file before its rename (sweep.sweep_temp_files clears strays)
# What a file may cost to read: a trial's JSON is small; tables and arrays grow with the grid or
# the split (a 5,000-trial manifest is ~5 MB, 10,000 float16 logits 200 KB); of error.txt only
# its end is read (the exception line is the last one).
MAX_SMALL, MAX_LARGE, MAX_TAIL = 1 << 20, 64 << 20, 64 << 10


class Unreadable(ValueError):
    """A file that is not what it should be; its message names the file and why."""


# ---------------------------------------------------------------- atomic writes

def atomic_write(path: str | os.PathLike, write) -> None:
    """Write `path` through `write(f)` on a binary temp file, fsync it, rename it into place."""
    path = Path(path)
    tmp = path.with_name(path.name + TEMP_SUFFIX)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def atomic_save(path: str | os.PathLike, obj) -> None:
    """Write a file whole or not at all (atomic_write: temp file, fsync, rename): bytes or text as
    given, an array as .npy, a dict as .json, anything else with torch.save."""
    path = Path(path)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        atomic_write(path, lambda f: f.write(obj))
    elif isinstance(obj, str):
        atomic_write_text(path, obj)
    elif path.suffix == ".npy":  # through bytes: np.save to a file drops the errno of a full disk
        buf = io.BytesIO()
        np.save(buf, obj)
        atomic_write(path, lambda f: f.write(buf.getbuffer()))
    elif path.suffix == ".json":
        atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, sort_keys=True, default=str).encode()))
    else:
        import torch

        atomic_write(path, lambda f: torch.save(obj, f))


def append_line(path: str | os.PathLike, line: str) -> None:
    """One line at the end of a log (a JSON-lines record, a Ray log line): appended, not rewritten."""
    with open(path, "a") as f:
        f.write(line + "\n")


def write_plain(path: str | os.PathLike, data: bytes) -> None:
    """Bytes written in place, not atomically: for a private folder that is moved into place whole."""
    with open(path, "wb") as f:
        f.write(data)


@contextmanager
def exclusive(path: str | os.PathLike):
    """An exclusive flock on `path` (created if need be, never truncated) while the block runs."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------- bounded reads

def present(path: Path) -> bool:
    """Whether a name exists in the folder (a dangling symlink too: it is a bad file, not no file)."""
    return os.path.lexists(path)


def read_bytes(path: Path, limit: int = MAX_SMALL, tail: bool = False) -> bytes:
    """A regular file's bytes (with tail=True only its last `limit`), never more than `limit`:
    a symlink, FIFO, device or folder raises Unreadable, and opening never blocks."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        why = "is a symbolic link" if e.errno == errno.ELOOP else f"cannot be opened ({e.strerror})"
        raise Unreadable(f"{path.name} {why}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            what = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise Unreadable(f"{path.name} is {what}")
        if st.st_size > limit and not tail:
            raise Unreadable(f"{path.name} is {st.st_size:,} bytes (at most {limit:,} expected)")
        if tail and st.st_size > limit:
            os.lseek(fd, st.st_size - limit, os.SEEK_SET)
        chunks, got = [], 0
        while got <= limit and (chunk := os.read(fd, limit + 1 - got)):
            chunks.append(chunk)
            got += len(chunk)
        data = b"".join(chunks)
    except OSError as e:
        raise Unreadable(f"{path.name} cannot be read ({e.strerror})") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise Unreadable(f"{path.name} grew past {limit:,} bytes while read")
    return data


def read_text(path: Path, limit: int = MAX_SMALL) -> str:
    try:
        return read_bytes(path, limit).decode("utf-8")
    except UnicodeDecodeError:
        raise Unreadable(f"{Path(path).name} is not UTF-8 text") from None


def read_json(path: Path, limit: int = MAX_SMALL):
    try:
        return json.loads(read_text(path, limit))
    except RecursionError:  # brackets nested deeper than Python's stack: no gridrun file is
        raise Unreadable(f"{Path(path).name} nests too deep to be a gridrun file") from None
    except ValueError as e:
        if isinstance(e, Unreadable):
            raise
        raise Unreadable(f"{Path(path).name} is not JSON ({str(e)[:80]})") from None


def read_npy(path: Path, limit: int = MAX_LARGE) -> np.ndarray:
    """A .npy array without pickles, its header checked against the file's bytes first (a header
    that claims a huge shape costs nothing)."""
    name, data = Path(path).name, read_bytes(path, limit)
    f = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(f)
        header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        shape, fortran, dtype = header[version](f)
    except Exception as e:  # numpy parses the header with ast.literal_eval: any of its errors (a
        # TokenError, a RecursionError from nested brackets, ...) means the header is not one
        raise Unreadable(f"{name} is not a .npy array ({type(e).__name__})") from None
    if dtype.hasobject or dtype.itemsize == 0:
        raise Unreadable(f"{name} holds {dtype} (numbers expected)")
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if len(data) - f.tell() != count * dtype.itemsize:
        raise Unreadable(f"{name} is truncated ({len(data) - f.tell():,} bytes of data for shape {shape})")
    arr = np.frombuffer(data, dtype, count, offset=f.tell())
    return arr.reshape(shape, order="F" if fortran else "C")


def npy_maps(path: Path) -> bool:
    """Whether a .npy file maps whole (a short file fails to map its declared shape); unbounded
    and lazy, for the full-disk sweep's check of files of any size."""
    try:
        np.load(path, allow_pickle=False, mmap_mode="r")
        return True
    except (OSError, ValueError, EOFError):
        return False


def is_zip(path: str | os.PathLike) -> bool:
    """Whether a file is a whole zip archive (what torch.save writes)."""
    import zipfile

    return zipfile.is_zipfile(path)


def load_torch(path: str | os.PathLike, device="cpu"):
    """A torch file of plain tensors and containers (weights_only: a foreign file runs no code)."""
    import torch

    return torch.load(path, map_location=device, weights_only=True)


def json_lines(text: str) -> tuple[list[dict], int]:
    """The JSON objects of a JSON-lines text, and how many non-blank lines were not one."""
    out, bad = [], 0
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError):
            rec = None
        if isinstance(rec, dict):
            out.append(rec)
        elif line.strip():
            bad += 1
    return out, bad
