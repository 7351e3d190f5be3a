import gzip

import numpy as np
import pytest

from gridrun.cli import main
from gridrun.data import DataError, find_files, load_splits, read_idx, stratified_split, write_idx
from conftest import make_data_dir, synthetic_digits


@pytest.mark.parametrize("ext", [".gz", ""])
def test_idx_roundtrip_gz_and_raw(tmp_path, ext):
    x, y = synthetic_digits(50, 3)
    write_idx(tmp_path / f"img{ext}", x)
    write_idx(tmp_path / f"lab{ext}", y)
    assert np.array_equal(read_idx(tmp_path / f"img{ext}"), x)
    assert np.array_equal(read_idx(tmp_path / f"lab{ext}"), y)


def test_find_prefers_data_dir_and_accepts_raw(tmp_path, monkeypatch):
    raw = make_data_dir(tmp_path / "raw", gz=False)
    monkeypatch.setenv("GRIDRUN_DATA", str(tmp_path / "elsewhere"))
    files = find_files(raw)
    assert all(p.parent == raw and p.suffix != ".gz" for p in files.values())


def test_missing_folder_names_file_and_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("GRIDRUN_DATA", str(tmp_path / "nope"))
    with pytest.raises(DataError) as e:
        find_files()
    msg = str(e.value)
    assert "GRIDRUN_DATA" in msg and f"{tmp_path / 'nope'} is not a folder" in msg and "\n" not in msg
    half = make_data_dir(tmp_path / "half")
    (half / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="lacks t10k-labels-idx1-ubyte"):
        find_files(half)


def test_a_named_folder_never_falls_back_to_another(tmp_path, monkeypatch):
    """--data-dir that lacks a file is an error even when $GRIDRUN_DATA holds all four."""
    good = make_data_dir(tmp_path / "good")
    monkeypatch.setenv("GRIDRUN_DATA", str(good))
    with pytest.raises(DataError, match="--data-dir="):
        find_files(tmp_path / "empty")


def test_truncated_and_bad_gzip_are_clear(tmp_path):
    d = make_data_dir(tmp_path / "d")
    f = d / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(f.read_bytes())
    f.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(DataError, match="truncated"):
        read_idx(f, "train_images")
    f.write_bytes(b"not a gzip file at all")
    with pytest.raises(DataError, match="corrupt"):
        read_idx(f, "train_images")


def test_md5_checked_for_canonical_shape(tmp_path):
    # A labels file with the canonical shape but wrong content fails its checksum.
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(10000, np.uint8))
    with pytest.raises(DataError, match="MD5"):
        read_idx(tmp_path / "t10k-labels-idx1-ubyte", "test_labels")


def test_stratified_split_keeps_class_proportions():
    labels = np.repeat(np.arange(10), [100 + 10 * k for k in range(10)])
    rest, taken = stratified_split(labels, 145, seed=0)
    assert len(taken) == 145 and len(set(rest) & set(taken)) == 0 and len(rest) + 145 == len(labels)
    counts = np.bincount(labels[taken], minlength=10)
    expected = 145 * np.bincount(labels) / len(labels)
    assert np.all(np.abs(counts - expected) <= 1)
    # Same seed, same split; the trial seed plays no part.
    assert np.array_equal(stratified_split(labels, 145, seed=0)[1], taken)


def test_load_splits_sizes_subset_and_val_zero(synth_dir):
    s = load_splits(synth_dir, val_size=200, subset=500)
    assert (len(s.train_y), len(s.val_y), len(s.test_y)) == (500, 200, 400)
    assert s.train_x.shape == (500, 1, 28, 28) and s.train_x.dtype.is_floating_point
    assert 0 <= float(s.train_x.min()) and float(s.train_x.max()) <= 1
    s0 = load_splits(synth_dir, val_size=0)
    assert len(s0.val_y) == 0 and len(s0.train_y) == 1200


def test_cli_missing_and_corrupt_data_exit_with_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("GRIDRUN_DATA", raising=False)
    monkeypatch.setattr("gridrun.data.CACHE_DIR", tmp_path / "cache")
    assert main(["train", "--epochs", "1", "--data-dir", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a folder" in err and "--data-dir" in err
    d = make_data_dir(tmp_path / "bad")
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    assert main(["train", "--epochs", "1", "--data-dir", str(d)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "t10k-labels-idx1-ubyte.gz" in err


def _unique_images(n, seed):
    x, y = synthetic_digits(n, seed)
    x[:, 0, 0], x[:, 0, 1] = np.arange(n) % 256, np.arange(n) // 256  # every image distinct
    return x, y


def test_search_order_with_two_valid_folders(tmp_path, monkeypatch):
    a, b, c = (make_data_dir(tmp_path / n) for n in ("a", "b", "cache"))
    monkeypatch.setattr("gridrun.data.CACHE_DIR", c)
    monkeypatch.setenv("GRIDRUN_DATA", str(b))
    assert {p.parent for p in find_files(a).values()} == {a}      # --data-dir first
    assert {p.parent for p in find_files().values()} == {b}       # then $GRIDRUN_DATA
    monkeypatch.delenv("GRIDRUN_DATA")
    assert {p.parent for p in find_files().values()} == {c}       # then the cache


def test_train_and_validation_stay_disjoint_after_subset(tmp_path):
    d = tmp_path / "u"
    d.mkdir()
    x, y = _unique_images(1500, 0)
    write_idx(d / "train-images-idx3-ubyte", x)
    write_idx(d / "train-labels-idx1-ubyte", y)
    xt, yt = _unique_images(300, 1)
    write_idx(d / "t10k-images-idx3-ubyte", xt)
    write_idx(d / "t10k-labels-idx1-ubyte", yt)
    s = load_splits(d, val_size=300, subset=500, split_seed=4)
    key = lambda t: {tuple((img[0, 0, :2] * 255).round().int().tolist()) for img in t}
    train_keys, val_keys = key(s.train_x), key(s.val_x)
    assert len(train_keys) == 500 and len(val_keys) == 300 and not train_keys & val_keys
    s2 = load_splits(d, val_size=300, subset=800, split_seed=4)  # the validation split ignores `subset`
    assert key(s2.val_x) == val_keys


def test_swapped_train_and_test_files_are_refused(tmp_path, monkeypatch):
    from gridrun.data import load_arrays, _load_arrays

    _load_arrays.cache_clear()
    d = make_data_dir(tmp_path / "swapped", n_train=500, n_test=12000)
    with pytest.raises(DataError, match="look swapped"):
        load_arrays(d)


def test_canonical_files_under_each_others_names_are_refused(mnist_dir, tmp_path):
    """The real MNIST files, train and test swapped by name: MD5s tell which is which."""
    from gridrun.data import load_arrays, _load_arrays

    d = tmp_path / "swap"
    d.mkdir()
    for a, b in (("train", "t10k"), ("t10k", "train")):
        for kind in ("images-idx3", "labels-idx1"):
            src = next(mnist_dir.glob(f"{a}-{kind}-ubyte*"))
            (d / (f"{b}-{kind}-ubyte" + (".gz" if src.suffix == ".gz" else ""))).symlink_to(src)
    _load_arrays.cache_clear()
    with pytest.raises(DataError, match="swapped or misnamed"):
        load_arrays(d)


# ---------------------------------------------------------------- streamed reading: bombs and lies

_ZEROS_MIB = gzip.compress(b"\0" * (1 << 20), compresslevel=9)  # ~1 KB that inflates to 1 MiB


def _bomb(path, header: bytes, mib: int = 1024):
    """A gzip file of `header` then `mib` MiB of zeros, written member by member (gzip allows
    several members in one file): ~1 MB on disk, never built in memory."""
    with open(path, "wb") as f:
        f.write(gzip.compress(header))
        for _ in range(mib):
            f.write(_ZEROS_MIB)
    return path


def _header(*shape, kind=None) -> bytes:
    return bytes([0, 0, 8, kind or len(shape)]) + b"".join(int(d).to_bytes(4, "big") for d in shape)


@pytest.mark.parametrize("header, says", [
    (b"", "bad header"),                              # 1 GiB of zeros: the probe's bomb
    (_header(100, 28, 28), "padded"),                 # a true header, then a gigabyte more
    (_header(2**32 - 1, 28, 28), "declares shape"),   # a header that declares 3 TB
    (_header(60000, 2**16, 2**16), "declares shape"), # images that are not 28x28
    (_header(10**9), "declares shape"),               # a billion labels
])
def test_gzip_bomb_is_refused_without_inflating_it(tmp_path, header, says):
    """Memory stays near the few KB the header and one read chunk need, whatever the file
    inflates to (tracemalloc counts numpy's and zlib's Python-side buffers)."""
    import tracemalloc

    f = _bomb(tmp_path / "train-images-idx3-ubyte.gz", header)
    assert f.stat().st_size < 2_000_000
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as e:
            read_idx(f, "train_images" if len(header) != 12 else "train_labels")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    msg = str(e.value)
    assert says in msg and str(f) in msg and "\n" not in msg and "replace it" in msg
    assert peak < 8 * 2**20, f"reading the bomb held {peak / 2**20:.0f} MiB"


def test_raw_files_truncated_padded_or_cut_in_the_header_are_one_line(tmp_path):
    x, _ = synthetic_digits(20, 0)
    f = tmp_path / "train-images-idx3-ubyte"
    write_idx(f, x)
    whole = f.read_bytes()
    for data, says in ((whole[:-1], "truncated"), (whole + b"\0", "padded"), (whole[:10], "inside its header"),
                       (b"", "bad header")):
        f.write_bytes(data)
        with pytest.raises(DataError, match=says) as e:
            read_idx(f, "train_images")
        assert "\n" not in str(e.value) and str(f) in str(e.value)


def test_check_files_reads_headers_only_and_names_the_bad_file(tmp_path):
    from gridrun.data import check_files

    d = make_data_dir(tmp_path / "d", n_train=50, n_test=20)
    assert check_files(d) == {"train_images": (50, 28, 28), "train_labels": (50,), "test_images": (20, 28, 28),
                              "test_labels": (20,)}
    _bomb(d / "t10k-images-idx3-ubyte.gz", _header(20, 28, 28))  # padded: only a full read sees it
    assert check_files(d)["test_images"] == (20, 28, 28)
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_header(21)))
    with pytest.raises(DataError, match="20 images but 21 labels"):
        check_files(d)
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b\x08 not gzip")
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz is unreadable or corrupt"):
        check_files(d)
