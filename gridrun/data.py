"""Data sources: MNIST's IDX files (find, verify, download), the MNIST family through torchvision
(fashion_mnist, kmnist), any folder of four IDX files, an .npz of x_train/y_train/x_test/y_test;
each read bounded and checked, split (stratified) and put on a device as (N, C, H, W) images."""
from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .diskio import cache_dir
from .errors import GridrunError

if TYPE_CHECKING:  # torch is imported where tensors are made: reading and checking files needs only numpy
    import torch

# name -> (magic, shape of the canonical file, MD5 of the decompressed canonical file)
FILES = {
    "train_images": ("train-images-idx3-ubyte", 2051, (60000, 28, 28), "6bbc9ace898e44ae57da46a324031adb"),
    "train_labels": ("train-labels-idx1-ubyte", 2049, (60000,), "a25bea736e30d166cdddb491f175f624"),
    "test_images": ("t10k-images-idx3-ubyte", 2051, (10000, 28, 28), "2646ac647ad5339dbf082846283269ea"),
    "test_labels": ("t10k-labels-idx1-ubyte", 2049, (10000,), "27ae3e4e09519cfbb04c329615203637"),
}
ENV_VAR = "GRIDRUN_DATA"
CACHE_DIR = cache_dir("mnist")
FIX = (f"set {ENV_VAR} to a folder holding the four MNIST IDX files (.gz or raw), or name it "
       f"(`gridrun train --data-dir`, a spec's data.data_dir)")


class DataError(GridrunError):
    """A missing, corrupt or undownloadable data file."""


def search_dirs(data_dir: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """The places looked in, in order: --data-dir, $GRIDRUN_DATA, the cache."""
    dirs = []
    if data_dir:
        dirs.append(("--data-dir", Path(data_dir).expanduser()))
    if os.environ.get(ENV_VAR):
        dirs.append((f"${ENV_VAR}", Path(os.environ[ENV_VAR]).expanduser()))
    dirs.append(("cache", CACHE_DIR))
    return dirs


def _candidates(folder: Path, base: str) -> list[Path]:
    # torchvision's download layout (MNIST/raw/) is accepted too, so a cache it filled works.
    return [d / (base + ext) for d in (folder, folder / "MNIST" / "raw") for ext in ("", ".gz")]


def find_files(data_dir=None, download: bool | None = None) -> dict[str, Path]:
    """Path of each of the four files. A folder the user named (--data-dir, else $GRIDRUN_DATA)
    must hold all four: gridrun never falls back from a named folder to another one. With no
    folder named, the cache is used (and filled by a download unless GRIDRUN_NO_DOWNLOAD)."""
    places = search_dirs(data_dir)
    label, folder = places[0]
    found = {key: next((p for p in _candidates(folder, base) if p.is_file()), None)
             for key, (base, *_rest) in FILES.items()}
    if all(found.values()):
        return found
    if label != "cache":
        missing = next(FILES[k][0] for k, p in found.items() if p is None)
        what = "is not a folder" if not folder.is_dir() else f"lacks {missing}[.gz]"
        raise DataError(f"MNIST folder {label}={folder} {what}: {FIX}")
    if download is None:
        download = os.environ.get("GRIDRUN_NO_DOWNLOAD", "") in ("", "0")
    if download:
        return _download()
    raise DataError(f"MNIST files not found in {CACHE_DIR} and downloading is off (GRIDRUN_NO_DOWNLOAD): {FIX}")


def _download() -> dict[str, Path]:
    """Fetch MNIST into the cache with torchvision; one line on failure."""
    try:
        from torchvision.datasets import MNIST

        MNIST(str(CACHE_DIR), train=True, download=True)
        MNIST(str(CACHE_DIR), train=False, download=True)
    except Exception as e:  # no network, a proxy, a full disk: all end the same way
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"MNIST not found locally and the download to {CACHE_DIR} failed ({msg}): {FIX}") from None
    return find_files(download=False)


MAX_IMAGES = max(shape[0] for _b, _m, shape, _d in FILES.values())  # 60,000: no MNIST file holds more
_CHUNK = 1 << 20  # bytes read at a time (a gzip stream is never decompressed further ahead than this)


def _fail(path: Path, what: str) -> DataError:
    return DataError(f"MNIST file {path} {what}: replace it; {FIX}")


def _open(path: Path):
    """The file's decompressed byte stream (gzip by name), read lazily."""
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx_header(f, path: Path, key: str | None = None) -> tuple[int, tuple[int, ...]]:
    """(magic, shape) from the first bytes of an open IDX stream, checked against what MNIST can
    hold (uint8, 1 or 3 dims, 28x28 images, at most 60,000 items) before any data is read: a
    header that declares more is refused, so a small file never costs more than MNIST's size."""
    head = f.read(4)
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] != 8 or head[3] not in (1, 3):
        raise _fail(path, "is not a uint8 IDX file (bad header)")
    dims = f.read(4 * head[3])
    if len(dims) < 4 * head[3]:
        raise _fail(path, "is truncated inside its header")
    shape = tuple(int.from_bytes(dims[4 * i: 4 * i + 4], "big") for i in range(head[3]))
    magic = int.from_bytes(head, "big")
    if len(shape) == 3 and shape[1:] != (28, 28) or shape[0] > MAX_IMAGES:
        raise _fail(path, f"declares shape {shape}, not MNIST's (at most {MAX_IMAGES:,} items of 28x28 or labels)")
    if key is not None and (magic != FILES[key][1] or shape[1:] != FILES[key][2][1:]):
        raise _fail(path, f"has the wrong kind of IDX data for {FILES[key][0]} (shape {shape})")
    return magic, shape


def _read_exactly(f, path: Path, shape: tuple[int, ...], md5) -> np.ndarray:
    """The `shape` data bytes that follow the header, and nothing after them: reads stop at the
    declared size, so padding (a gzip bomb of zeros) is refused after one more byte."""
    out = np.empty(shape, dtype=np.uint8)
    view, n, got = memoryview(out.reshape(-1)), out.size, 0
    while got < n:
        k = f.readinto(view[got: got + min(_CHUNK, n - got)])
        if not k:
            raise _fail(path, f"is truncated: its header says {shape}, only {got:,} of {n:,} data bytes follow")
        got += k
    md5.update(view)
    if f.read(1):
        raise _fail(path, f"is padded: more bytes follow the {n:,} its header declares ({shape})")
    return out


def read_idx(path: str | os.PathLike, key: str | None = None) -> np.ndarray:
    """Read one IDX file (.gz or raw) into a uint8 array, streamed: the header first (see
    read_idx_header), then exactly the bytes it declares. For the canonical files the MD5 of the
    decompressed bytes is checked against every canonical file, so that a train file under a
    test name (or the reverse) is caught."""
    path = Path(path)
    try:
        with _open(path) as f:
            magic, shape = read_idx_header(f, path, key)
            md5 = hashlib.md5(magic.to_bytes(4, "big"))
            md5.update(b"".join(d.to_bytes(4, "big") for d in shape))
            arr = _read_exactly(f, path, shape, md5)
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:
        what = "is truncated (" if isinstance(e, EOFError) else "is unreadable or corrupt ("
        raise _fail(path, f"{what}{str(e)[:80] or type(e).__name__})") from None
    if key is not None:
        _check_canonical(path, key, shape, md5.hexdigest())
    return arr


def _check_canonical(path: Path, key: str, shape: tuple[int, ...], digest: str) -> None:
    """Checksums are for the canonical files; smaller IDX files (subsets, test fixtures) get the
    structural checks only. A canonical file under another name is refused."""
    base = FILES[key][0]
    canonical = {k: v for k, v in FILES.items() if v[2] == shape}
    other = next((k for k, v in canonical.items() if v[3] == digest), None)
    if other is not None and other != key:
        raise DataError(f"MNIST file {path} holds MNIST's {FILES[other][0]} data, not {base}: the train and "
                        f"test files are swapped or misnamed; give each file its own name")
    if other is None and key in canonical:
        raise DataError(f"MNIST file {path} fails its MD5 check (corrupt download?): delete it "
                        f"and download again, or {FIX}")


def check_files(data_dir=None, download: bool | None = None) -> dict[str, tuple[int, ...]]:
    """The four files found and their headers read (no data decompressed): what a launch checks
    before it writes anything or starts Ray. Returns each file's declared shape."""
    shapes = {}
    for key, path in find_files(data_dir, download).items():
        try:
            with _open(path) as f:
                shapes[key] = read_idx_header(f, path, key)[1]
        except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:
            raise _fail(path, f"is unreadable or corrupt ({str(e)[:80] or type(e).__name__})") from None
    _check_sizes({k: v[0] for k, v in shapes.items()})
    return shapes


def _check_sizes(n: dict[str, int]) -> None:
    """Images and labels agree in number, and the train files are not the test files."""
    for split in ("train", "test"):
        n_img, n_lab = n[f"{split}_images"], n[f"{split}_labels"]
        if n_img != n_lab:
            raise DataError(f"MNIST {split} files disagree: {n_img} images but {n_lab} labels: {FIX}")
    n_train, n_test = n["train_labels"], n["test_labels"]
    if (n_train, n_test) == (10000, 60000) or (n_train < n_test and n_test >= 10000):
        raise DataError(f"MNIST train files hold {n_train} images and test files {n_test}: the train and test "
                        f"files look swapped; give each file its own name")


def stamp(path) -> tuple:
    """A file as a cache sees it: a file replaced at the same path (a notebook's long process) is
    another key, so it is read again rather than served from memory."""
    try:
        st = os.stat(path)
    except OSError:
        return ()
    return st.st_mtime_ns, st.st_size, st.st_ino


@lru_cache(maxsize=4)
def _load_arrays(paths: tuple[tuple, ...]) -> dict[str, np.ndarray]:
    arrays = {key: read_idx(p, key) for key, p, _ in paths}
    _check_sizes({k: len(a) for k, a in arrays.items()})
    for split in ("train", "test"):
        if arrays[f"{split}_labels"].size and arrays[f"{split}_labels"].max() > 9:
            raise DataError(f"MNIST {split} labels hold values above 9: not MNIST labels; {FIX}")
    return arrays


def load_arrays(data_dir=None) -> dict[str, np.ndarray]:
    """The four arrays as uint8 numpy, read once per process per folder."""
    files = find_files(data_dir)
    return _load_arrays(tuple(sorted((k, str(p), stamp(p)) for k, p in files.items())))


def stratified_split(labels: np.ndarray, n_take: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (rest, taken) where `taken` has n_take items in class proportions."""
    n = len(labels)
    if not 0 <= n_take <= n:
        raise DataError(f"cannot take {n_take} of {n} images: choose a size between 0 and {n}")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * n_take / n
    take = np.floor(quota).astype(int)
    # Largest-remainder rounding so the total is exactly n_take.
    for i in np.argsort(-(quota - take))[: n_take - take.sum()]:
        take[i] += 1
    taken, rest = [], []
    for c, k in zip(classes, take):
        idx = rng.permutation(np.flatnonzero(labels == c))
        taken.append(idx[:k])
        rest.append(idx[k:])
    return np.sort(np.concatenate(rest)), np.sort(np.concatenate(taken))


def label_digest(labels) -> str:
    """A checksum of a vector of class labels (as uint8 bytes): what a launch records of each
    trial's validation and test labels, so that a folder without the data is still checked."""
    return hashlib.sha256(np.ascontiguousarray(labels, dtype=np.uint8).tobytes()).hexdigest()[:32]


@lru_cache(maxsize=16)
def _split_labels(train_path: str, test_path: str, val_size: int, split_seed: int, *stamps) -> dict[str, np.ndarray]:
    train, test = read_idx(train_path, "train_labels"), read_idx(test_path, "test_labels")
    if max(train.max(initial=0), test.max(initial=0)) > 9:
        raise DataError(f"MNIST labels in {Path(train_path).parent} hold values above 9: not MNIST labels; {FIX}")
    _, val_idx = stratified_split(train, val_size, split_seed)
    out = {"val": train[val_idx], "test": test}
    for a in out.values():
        a.flags.writeable = False  # shared by every caller of the cache
    return out


def split_labels(data_dir=None, val_size: int = 5000, split_seed: int = 0) -> dict[str, np.ndarray]:
    """The validation and test labels a trial on `data_dir` is scored against, from the two label
    files alone (checked as load_arrays checks them; never downloading): what the saved labels
    of a trial are checked against, and what a launch records the checksums of."""
    files = find_files(data_dir, download=False)
    train, test = str(files["train_labels"]), str(files["test_labels"])
    return _split_labels(train, test, val_size, split_seed, stamp(train), stamp(test))


MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # torchvision's Normalize((0.1307,), (0.3081,))


@dataclass
class Splits:
    """Images as float [0, 1] of shape (N, C, H, W) and int64 labels, all on one device."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: float | torch.Tensor  # of the training split, for normalisation (per channel: a (C, 1, 1) tensor)
    std: float | torch.Tensor
    mode: str = "dataset"  # dataset | mnist | per_image (see TrainConfig.normalize)
    classes: int = 10  # what the nets predict: MNIST's 10, another set's largest training label + 1

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(channels, height, width, classes): what the nets are built for."""
        return (*self.train_x.shape[1:], self.classes)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "per_image":
            return x - x.mean((1, 2, 3), keepdim=True)
        if self.mode == "mnist":
            return (x - MNIST_MEAN) / MNIST_STD
        return (x - self.mean) / self.std

    def index_batches(self, batch_size: int, generator: torch.Generator):
        """One epoch's index batches: a permutation drawn from `generator`, sliced; a last
        batch of one image is dropped (BatchNorm cannot train on it)."""
        import torch

        perm = torch.randperm(len(self.train_y), device=self.train_x.device, generator=generator)
        return [idx for idx in perm.split(batch_size) if len(idx) >= 2]


def check_split_sizes(n_train: int, val_size: int, subset: int | None) -> None:
    """val_size and subset against the training files' size: a subset larger than what is left
    after validation would silently train on fewer images than the config says."""
    if val_size >= n_train - 1:
        raise DataError(f"val_size={val_size} leaves no training images: the training files hold "
                        f"{n_train}; choose a smaller val_size")
    if subset is not None and subset > n_train - val_size:
        raise DataError(f"subset={subset} is more than the {n_train - val_size:,} training images left after "
                        f"val_size={val_size}: choose at most {n_train - val_size:,}, or leave subset out")


def load_splits(data_dir=None, val_size: int = 5000, subset: int | None = None, split_seed: int = 0,
                device: str | torch.device = "cpu", arrays: dict | None = None, normalize: str = "dataset",
                classes: int = 10) -> Splits:
    """Train/validation/test on `device`. The validation split depends only on split_seed, never
    on the trial seed; `subset` then draws that many training images (also stratified).
    `arrays` (datasets.load_dataset's, e.g. shipped by Ray) replaces reading MNIST's files."""
    import torch

    a = arrays if arrays is not None else load_arrays(data_dir)
    check_split_sizes(len(a["train_labels"]), val_size, subset)
    train_idx, val_idx = stratified_split(a["train_labels"], val_size, split_seed)
    if subset is not None and subset < len(train_idx):
        _, pick = stratified_split(a["train_labels"][train_idx], subset, split_seed + 1)
        train_idx = train_idx[pick]

    def put(images, labels, idx=None):
        # Fancy indexing already copies; the cached arrays are read-only, so copy them once.
        images, labels = (images[idx], labels[idx]) if idx is not None else (images.copy(), labels)
        x = torch.from_numpy(images).to(device)
        x = (x.unsqueeze(1) if x.dim() == 3 else x).float().div_(255)  # MNIST's (N, H, W): one channel
        return x, torch.from_numpy(labels.astype(np.int64)).to(device)

    train_x, train_y = put(a["train_images"], a["train_labels"], train_idx)
    val_x, val_y = put(a["train_images"], a["train_labels"], val_idx)
    test_x, test_y = put(a["test_images"], a["test_labels"])
    if train_x.shape[1] == 1:  # one channel: one number, as MNIST always had
        mean, std = float(train_x.mean()), float(train_x.std())
    else:  # per channel, from the training split only
        mean, std = train_x.mean((0, 2, 3), keepdim=True)[0], train_x.std((0, 2, 3), keepdim=True)[0]
    return Splits(train_x, train_y, val_x, val_y, test_x, test_y, mean=mean, std=std, mode=normalize, classes=classes)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzip when the name ends in .gz); for tests and subsets."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(data, compresslevel=1) if path.suffix == ".gz" else data)
