"""Which images a trial trains on: a config's `dataset` named or found, read bounded and checked,
as four uint8 arrays (images (N, C, H, W) or MNIST's (N, H, W), integer labels) and their shape.

    mnist                   MNIST's IDX files (data.py: published checksums, data_dir, the cache)
    fashion_mnist, kmnist   the MNIST family through torchvision, downloaded once into the cache
    PATH/                   a folder of four IDX files: train-images*, train-labels*, t10k- (or
                            test-) images* and labels*, raw or .gz; images (N, H, W) or (N, C, H, W)
    PATH.npz                x_train, y_train, x_test, y_test; loaded without pickle

Images are uint8, at most MAX_PIXELS values each (C x H x W, channels first, or channels last
when the last axis is the short one) and at most MAX_ITEMS per split; labels are whole numbers in
[0, classes), classes = the largest training label + 1. A launch records the checksums of every
trial's validation and test labels (`split_labels`, in the manifest): a report checks each trial's
saved labels against its own dataset's files, or without them against those checksums.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import zipfile
import zlib
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .data import DataError, _open, _read_exactly, load_arrays, stratified_split
from .diskio import cache_dir

MNIST = "mnist"
TORCHVISION = {"fashion_mnist": "FashionMNIST", "kmnist": "KMNIST"}  # name -> torchvision's class
NAMES = (MNIST, *TORCHVISION)
MAX_ITEMS = 100_000     # images per split
MAX_PIXELS = 4 * 32 * 32  # values per image: a 4-channel 32x32 image, or a 1-channel 64x64 one
MAX_CHANNELS, MAX_CLASSES = 4, 256  # classes fit the uint8 label files every trial writes
KEYS = ("train_images", "train_labels", "test_images", "test_labels")
NPZ_KEYS = dict(zip(KEYS, ("x_train", "y_train", "x_test", "y_test")))


class DataShape(NamedTuple):
    """What a net is built for: (channels, height, width) images and `classes` classes."""
    channels: int
    height: int
    width: int
    classes: int

    @property
    def words(self) -> str:
        return f"{self.channels}x{self.height}x{self.width} images of {self.classes} classes"


MNIST_SHAPE = DataShape(1, 28, 28, 10)


def kind(dataset: str) -> str:
    """mnist | torchvision | npz | idx (a folder)."""
    if dataset == MNIST:
        return "mnist"
    if dataset in TORCHVISION:
        return "torchvision"
    return "npz" if dataset.endswith(".npz") else "idx"


def _fail(where, what: str) -> DataError:
    return DataError(f"dataset {where} {what}: fix or replace it (datasets.py says what a set may hold)")


# ---------------------------------------------------------------- one IDX file, any shape

def _idx_header(f, path: Path) -> tuple[int, tuple[int, ...]]:
    """(magic, shape) of an IDX stream: uint8, 1 dim (labels) or 3-4 (images), within the bounds."""
    head = f.read(4)
    if len(head) < 4 or head[:3] != b"\x00\x00\x08" or head[3] not in (1, 3, 4):
        raise _fail(path, "is not a uint8 IDX file of labels or images (bad header)")
    dims = f.read(4 * head[3])
    if len(dims) < 4 * head[3]:
        raise _fail(path, "is truncated inside its header")
    shape = tuple(int.from_bytes(dims[4 * i: 4 * i + 4], "big") for i in range(head[3]))
    if shape[0] > MAX_ITEMS or int(np.prod(shape[1:], dtype=np.int64)) > MAX_PIXELS:
        raise _fail(path, f"declares shape {shape}: at most {MAX_ITEMS:,} items of at most {MAX_PIXELS:,} values")
    return int.from_bytes(head, "big"), shape


def read_any_idx(path: Path) -> np.ndarray:
    """One IDX file of any allowed shape, streamed: header, then exactly the bytes it declares."""
    try:
        with _open(path) as f:
            _magic, shape = _idx_header(f, path)
            try:
                return _read_exactly(f, path, shape, hashlib.md5())
            except DataError as e:  # data.py's words name MNIST: say it of this set
                raise _fail(path, str(e).split(": replace it")[0].split(f"{path} ", 1)[-1]) from None
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise _fail(path, f"is unreadable or corrupt ({str(e)[:80] or type(e).__name__})") from None


def idx_files(folder: Path) -> dict[str, Path]:
    """The four files of an IDX folder (train-*, and t10k-* or test-*), each exactly once."""
    if not folder.is_dir():
        raise DataError(f"dataset {folder} is not a folder, an .npz file or a known name ({', '.join(NAMES)}): "
                        f"name a folder of four IDX files, an .npz, or one of the known sets")
    out = {}
    for key in KEYS:
        split, what = key.split("_")
        found = sorted(p for pre in ((split,) if split == "train" else ("t10k", "test"))
                       for p in folder.glob(f"{pre}-{what}*") if p.is_file())
        if len(found) != 1:
            said = "lacks" if not found else f"holds {len(found)} of"
            raise DataError(f"dataset {folder} {said} the {split} {what} file ({'t10k' if split == 'test' else split}-"
                            f"{what}-idx?-ubyte[.gz]): give each of the four IDX files once")
        out[key] = found[0]
    return out


# ---------------------------------------------------------------- an .npz, without pickle

def _npz_array(z, path: Path, key: str) -> np.ndarray:
    """One array of an .npz: its header checked (no objects, the bounds) before a byte is read."""
    name = NPZ_KEYS[key]
    if name not in z.files:
        raise _fail(path, f"lacks {name} (it holds {', '.join(z.files[:6]) or 'nothing'}): save x_train, y_train, "
                          f"x_test and y_test")
    with z.zip.open(name + ".npy") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _fortran, dtype = read(f)
    if dtype.hasobject:
        raise _fail(path, f"holds Python objects in {name} (they would need pickle, which gridrun never loads): "
                          f"save plain numeric arrays")
    images = key.endswith("images")
    if len(shape) not in ((3, 4) if images else (1,)) or (shape and shape[0] > MAX_ITEMS) or \
            int(np.prod(shape[1:], dtype=np.int64)) > MAX_PIXELS:
        form = "images are (N, H, W) or (N, C, H, W)" if images else "labels are (N,)"
        raise _fail(path, f"holds {name} of shape {shape}: {form}, at most {MAX_ITEMS:,} items of at most "
                          f"{MAX_PIXELS:,} values")
    if images and dtype != np.uint8 or not images and dtype.kind not in "iu":
        raise _fail(path, f"holds {name} as {dtype}: images are uint8 (0-255), labels whole numbers")
    return z[name]


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """The four arrays of an .npz (np.load without pickle, each header checked first)."""
    if not path.is_file():
        raise DataError(f"dataset {path} is not a file: name an .npz holding x_train, y_train, x_test and y_test")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {key: _npz_array(z, path, key) for key in KEYS}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as e:
        raise _fail(path, f"is not a readable .npz ({str(e)[:80] or type(e).__name__})") from None


# ---------------------------------------------------------------- the MNIST family via torchvision

def torchvision_files(name: str, download: bool | None = None) -> dict[str, Path]:
    """The four IDX files of fashion_mnist or kmnist in the cache, downloaded there when missing."""
    root = cache_dir(name)  # read when called: $XDG_CACHE_HOME as it is now
    raw = root / TORCHVISION[name] / "raw"
    found = {k: next((p for p in (raw / f"{b}-idx{1 if k.endswith('labels') else 3}-ubyte",) if p.is_file()), None)
             for k, b in zip(KEYS, ("train-images", "train-labels", "t10k-images", "t10k-labels"))}
    if all(found.values()):
        return found
    if download is None:
        download = os.environ.get("GRIDRUN_NO_DOWNLOAD", "") in ("", "0")
    if not download:
        raise DataError(f"dataset {name} is not in {raw} and downloading is off (GRIDRUN_NO_DOWNLOAD): run once "
                        f"where it can download, or give its four IDX files as a folder (dataset: PATH)")
    try:
        import torchvision.datasets as tv

        for train in (True, False):
            getattr(tv, TORCHVISION[name])(str(root), train=train, download=True)
    except Exception as e:  # no network, a proxy, a full disk: all end the same way
        msg = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise DataError(f"dataset {name} is not in {raw} and its download failed ({msg}): run once where it can "
                        f"download, or give its four IDX files as a folder (dataset: PATH)") from None
    return torchvision_files(name, download=False)


# ---------------------------------------------------------------- one entry point

def _checked(arrays: dict[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    """Images channels first, labels as int64 in [0, classes), images and labels agreeing in number."""
    out = {}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if x.ndim not in (3, 4):
            raise _fail(where, f"holds {split} images of shape {x.shape}: images are (N, H, W) or (N, C, H, W)")
        if x.ndim == 4 and x.shape[1] > MAX_CHANNELS >= x.shape[3]:  # channels last: (N, H, W, C)
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        if x.ndim == 4 and x.shape[1] > MAX_CHANNELS:
            raise _fail(where, f"holds {split} images of shape {x.shape}: at most {MAX_CHANNELS} channels")
        if y.ndim != 1 or len(x) != len(y):
            raise _fail(where, f"holds {len(x)} {split} images but {y.shape} {split} labels: give one label per image")
        if split == "test" and x.shape[1:] != out["train_images"].shape[1:]:
            raise _fail(where, f"holds train images of shape {out['train_images'].shape[1:]} and test images of "
                               f"{x.shape[1:]}: both splits must have one image shape")
        out[f"{split}_images"], out[f"{split}_labels"] = x, y.astype(np.int64)
    _check_labels(out, where)
    return out


def _check_labels(a: dict[str, np.ndarray], where: str) -> None:
    ytr, yte = a["train_labels"], a["test_labels"]
    if len(ytr) < 2 or len(yte) < 1:
        raise _fail(where, f"holds {len(ytr)} training and {len(yte)} test images: too few to train and score")
    classes = int(ytr.max()) + 1
    low = min(int(ytr.min()), int(yte.min()))
    if low < 0 or classes > MAX_CLASSES or int(yte.max()) >= classes or classes < 2:
        raise _fail(where, f"has labels out of range (train {int(ytr.min())}..{int(ytr.max())}, test "
                           f"{int(yte.min())}..{int(yte.max())}): labels are classes 0..N-1 (2 <= N <= {MAX_CLASSES}) "
                           f"and the test set holds no class the training set lacks")


def load_dataset(dataset: str = MNIST, data_dir: str | None = None) -> dict[str, np.ndarray]:
    """The four arrays of a config's dataset (data_dir: MNIST's folder), read once per process
    (MNIST's through data.load_arrays and its cache)."""
    return load_arrays(data_dir) if kind(dataset) == "mnist" else read_dataset(dataset)


def read_dataset(dataset: str) -> dict[str, np.ndarray]:
    """A dataset other than MNIST, read and checked (cached per file version: a file replaced at its
    path is read again; `read_dataset.cache_clear()` rereads all)."""
    from .data import stamp

    path = Path(dataset).expanduser()
    files = sorted(path.iterdir()) if kind(dataset) == "idx" and path.is_dir() else [path]
    return _read_dataset(dataset, tuple(stamp(f) for f in files))


@lru_cache(maxsize=8)
def _read_dataset(dataset: str, _stamps: tuple) -> dict[str, np.ndarray]:
    k = kind(dataset)
    if k == "npz":
        return _checked(read_npz(Path(dataset).expanduser()), dataset)
    files = torchvision_files(dataset) if k == "torchvision" else idx_files(Path(dataset).expanduser())
    return _checked({key: read_any_idx(p) for key, p in files.items()}, dataset)


read_dataset.cache_clear = _read_dataset.cache_clear


def shape_of(arrays: dict[str, np.ndarray]) -> DataShape:
    x = arrays["train_images"]
    c, h, w = (1, *x.shape[1:]) if x.ndim == 3 else x.shape[1:]
    return DataShape(int(c), int(h), int(w), int(arrays["train_labels"].max()) + 1)


def describe(dataset: str = MNIST, data_dir: str | None = None) -> DataShape:
    """The images and classes a dataset holds; the MNIST family's without reading a file."""
    if kind(dataset) in ("mnist", "torchvision"):
        return MNIST_SHAPE
    return shape_of(load_dataset(dataset, data_dir))


def split_labels(dataset: str = MNIST, data_dir=None, val_size: int = 5000, split_seed: int = 0) -> dict:
    """The validation and test labels a trial on `dataset` is scored against (never downloading):
    what its saved labels are checked against, and what a launch records the checksums of."""
    from . import data

    if kind(dataset) == "mnist":
        return data.split_labels(data_dir, val_size, split_seed)
    if kind(dataset) == "torchvision":
        torchvision_files(dataset, download=False)  # absent: a DataError, as MNIST's own
    a = load_dataset(dataset, data_dir)
    _, val_idx = stratified_split(a["train_labels"], val_size, split_seed)
    return {"val": a["train_labels"][val_idx], "test": a["test_labels"]}
