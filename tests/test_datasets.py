"""Issue 40: the user's own net (an import path, or a spec's module) and own data (an IDX folder of
any C x H x W, an .npz, the MNIST family via torchvision's cache), a dataset axis in one grid with
each trial scored against its own test set, and every bad input one line, exit 2, nothing written.
The data is made here: 3x32x32 colour images of 7 classes (a bright bar whose place and channel
say the class), as an IDX folder and as an .npz."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from gridrun.data import write_idx

ROOT = Path(__file__).resolve().parent.parent
NET = '''
import torch
from torch import nn
from gridrun.models import register_model


@register_model
def small_cnn(in_channels=1, num_classes=10, image_size=(28, 28), width=8):
    """A user's net: told the data's channels and classes; mixes no channels across members."""
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(width, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))


def flat(num_classes=10, image_size=(28, 28), in_channels=1):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size[0] * image_size[1], num_classes))


def broken(num_classes=10, in_channels=1):
    raise RuntimeError("this net does not build")
'''


def colour_set(n: int, seed: int, classes: int = 7, c: int = 3, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % classes).astype(np.uint8)
    x = rng.integers(0, 50, (n, c, size, size), dtype=np.uint8)
    for i, k in enumerate(y):
        x[i, k % c, 4 * k: 4 * k + 5, 3 + rng.integers(0, 3): 20] = 255
    return x, y


def write_sets(folder: Path, shift: int = 0) -> tuple[Path, Path]:
    """The same kind of data as an IDX folder (images (N, C, H, W)) and as an .npz (channels last)."""
    (xtr, ytr), (xte, yte) = colour_set(420, 0 + shift), colour_set(140, 1 + shift)
    idx = folder / "colour_idx"
    idx.mkdir(parents=True, exist_ok=True)
    write_idx(idx / "train-images-idx4-ubyte.gz", xtr)
    write_idx(idx / "train-labels-idx1-ubyte", ytr)
    write_idx(idx / "t10k-images-idx4-ubyte", xte)
    write_idx(idx / "t10k-labels-idx1-ubyte.gz", yte)
    npz = folder / "colour.npz"
    (xtr2, ytr2), (xte2, yte2) = colour_set(420, 5 + shift, classes=5), colour_set(140, 6 + shift, classes=5)
    np.savez(npz, x_train=xtr2.transpose(0, 2, 3, 1), y_train=ytr2, x_test=xte2.transpose(0, 2, 3, 1), y_test=yte2)
    return idx, npz


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    return write_sets(tmp_path_factory.mktemp("sets"))


# ---------------------------------------------------------------- reading

def test_idx_folder_and_npz_read_as_channels_first_images(sets):
    from gridrun.datasets import describe, load_dataset

    idx, npz = sets
    assert describe(str(idx)) == (3, 32, 32, 7)
    assert describe(str(npz)) == (3, 32, 32, 5)  # channels last in the file, channels first here
    a = load_dataset(str(npz))
    assert a["train_images"].shape == (420, 3, 32, 32) and a["test_labels"].dtype == np.int64
    assert describe("fashion_mnist") == describe("mnist") == (1, 28, 28, 10)


def test_the_mnist_family_comes_from_torchvision_s_cache(tmp_path, monkeypatch):
    """No network here: the files are put where torchvision's download leaves them, and found
    there; with the cache empty and downloading off, one line says what to do."""
    import gridrun.datasets as ds

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(ds.DataError, match="dataset kmnist is not in .* downloading is off"):
        ds.torchvision_files("kmnist")
    raw = tmp_path / "gridrun" / "fashion_mnist" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    (xtr, ytr), (xte, yte) = colour_set(50, 0, classes=10, c=1, size=28), colour_set(20, 1, classes=10, c=1, size=28)
    for name, arr in (("train-images-idx3-ubyte", xtr[:, 0]), ("train-labels-idx1-ubyte", ytr),
                      ("t10k-images-idx3-ubyte", xte[:, 0]), ("t10k-labels-idx1-ubyte", yte)):
        write_idx(raw / name, arr)
    a = ds.read_dataset("fashion_mnist")  # a torchvision name: no file of that name, so no stamp to cache by
    assert a["train_images"].shape == (50, 28, 28) and ds.shape_of(a) == (1, 28, 28, 10)


def test_training_on_colour_images_of_seven_classes(sets):
    """Nets get in_channels, num_classes and the image size; normalisation is per channel from the
    training split; augmentation (rotate+affine) works on every channel."""
    from gridrun.engine.group import prepare_splits
    from gridrun.config import TrainConfig
    from gridrun.train import train

    idx, _ = sets
    cfg = {"dataset": str(idx), "model": "tinynet", "model_args": {"arch": "C8:1 M C16:1 M O G"}, "epochs": 2,
           "val_size": 70, "batch_size": 32, "device": "cpu", "optimizer": "adam", "lr": 0.01, "threads": 1}
    splits = prepare_splits(TrainConfig(**cfg), __import__("torch").device("cpu"))
    assert splits.shape == (3, 32, 32, 7) and tuple(splits.mean.shape) == (3, 1, 1)
    res = train(cfg)
    assert res["status"] == "ok" and res["final"]["test_acc"] > 1 / 7 + 0.1  # learns beyond chance


def test_dataset_at_mnist_keeps_every_trial_id():
    """`dataset` is identity, but at its default (mnist) it is left out: older trials keep their ids."""
    from gridrun.config import TrainConfig
    from gridrun.identity import config_id, trial_id

    old = TrainConfig().to_dict()
    del old["dataset"]
    # the ids main gave the default config before the field existed (50222fe)
    assert trial_id(old) == trial_id(TrainConfig().to_dict()) == "f78833bcc398"
    assert config_id(TrainConfig().to_dict()) == "247d6ba6d542"
    assert trial_id({**old, "dataset": "fashion_mnist"}) != trial_id(old)
    assert config_id({**old, "dataset": "fashion_mnist"}) != config_id(old)


# ---------------------------------------------------------------- one line, exit 2, nothing written

def _spec(folder: Path, dataset, model="tinynet_7k", **over) -> Path:
    spec = {"name": "ds", "data": {"dataset": dataset, "val_size": 50, "subset": 100},
            "base": {"epochs": 1, "batch_size": 32, "model": model, "augment": "none"}, **over}
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _bad_npz(folder: Path, kind: str) -> Path:
    (xtr, ytr), (xte, yte) = colour_set(60, 0), colour_set(20, 1)
    arrays = {"x_train": xtr, "y_train": ytr.astype(np.int64), "x_test": xte, "y_test": yte.astype(np.int64)}
    if kind == "objects":
        arrays["y_train"] = np.array([{"label": 1}] * 60, dtype=object)
    elif kind == "shapes":
        arrays["y_train"] = arrays["y_train"][:50]
    elif kind == "test_shape":
        arrays["x_test"] = xte[:, :, :16]
    elif kind == "range":
        arrays["y_test"][3] = 9  # a class the training labels (0..6) lack
    elif kind == "negative":
        arrays["y_train"][0] = -1
    path = folder / f"{kind}.npz"
    np.savez(path, **arrays)
    return path


def _hostile_idx(folder: Path, kind: str) -> Path:
    """An IDX folder whose train images file lies: a header declaring 4 billion images, or more
    bytes after the data than its header declares."""
    idx, _ = write_sets(folder)
    path = idx / "train-images-idx4-ubyte.gz"
    import gzip

    raw = gzip.decompress(path.read_bytes())
    if kind == "huge":
        raw = raw[:4] + (2**32 - 1).to_bytes(4, "big") + raw[8:]
    else:
        raw = raw + bytes(1 << 16)
    path.write_bytes(gzip.compress(raw, compresslevel=1))
    return idx


def _hostile_npz(folder: Path) -> Path:
    """An .npz whose x_train header declares a shape of 10^12 images (the data is small)."""
    path = _bad_npz(folder, "fine")
    import zipfile

    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    head = members["x_train.npy"]
    members["x_train.npy"] = head.replace(b"(60, 3, 32, 32)", b"(1000000000000, 3, 32, 32)")
    with zipfile.ZipFile(path, "w") as z:
        for n, b in members.items():
            z.writestr(n, b)
    return path


BAD = {
    "idx_huge": (lambda f: (str(_hostile_idx(f, "huge")), "tinynet_7k"), "declares shape (4294967295, 3, 32, 32)"),
    "idx_padded": (lambda f: (str(_hostile_idx(f, "padded")), "tinynet_7k"), "is padded: more bytes follow"),
    "npz_huge": (lambda f: (str(_hostile_npz(f)), "tinynet_7k"), "holds x_train of shape (1000000000000, 3, 32, 32)"),
    "objects": (lambda f: (str(_bad_npz(f, "objects")), "tinynet_7k"), "holds Python objects in y_train"),
    "shapes": (lambda f: (str(_bad_npz(f, "shapes")), "tinynet_7k"), "60 train images but (50,) train labels"),
    "test_shape": (lambda f: (str(_bad_npz(f, "test_shape")), "tinynet_7k"), "both splits must have one image shape"),
    "range": (lambda f: (str(_bad_npz(f, "range")), "tinynet_7k"), "labels out of range"),
    "negative": (lambda f: (str(_bad_npz(f, "negative")), "tinynet_7k"), "labels out of range"),
    "no_module": (lambda f: ("mnist", "nosuchnets:net"), "module 'nosuchnets' cannot be imported"),
    "bad_module": (lambda f: ("mnist", "badnets:net"), "module 'badnets' cannot be imported (SyntaxError"),
    # it exited the launch with its code (3) and no word (the probe)
    "exiting_module": (lambda f: ("mnist", "exitnets:net"), "module 'exitnets' cannot be imported (SystemExit: 3)"),
    "no_build": (lambda f: ("mnist", "mynets:broken"), "(module 'mynets') does not build: RuntimeError: this net"),
    "zoo_no_channels": (lambda f: (str(f / "ok.npz"), "vanilla"), "model 'vanilla' takes no in_channels"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, case, capsys):
    from gridrun.cli import main

    (tmp_path / "mynets.py").write_text(NET)
    (tmp_path / "badnets.py").write_text("def net(:\n")
    (tmp_path / "exitnets.py").write_text("import sys\nsys.exit(3)\n")
    np.savez(tmp_path / "ok.npz", x_train=colour_set(60, 0)[0], y_train=colour_set(60, 0)[1],
             x_test=colour_set(20, 1)[0], y_test=colour_set(20, 1)[1])
    make, said = BAD[case]
    dataset, model = make(tmp_path)
    spec = _spec(tmp_path, dataset, model)
    storage = tmp_path / "runs"
    assert main(["launch", str(spec), "--storage", str(storage)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and said in err and err.count("fix or replace it") <= 1, err
    assert not storage.exists()


def test_train_on_images_a_net_cannot_take_is_one_line(tmp_path, capsys):
    """`gridrun train` has no spec preflight: 16x16 images through tinynet_7k ended in 'internal
    error: RuntimeError: Calculated padded input size ...' (the probe); now the engine checks the
    net against the data's images before it builds any member, as the preflight does."""
    from gridrun.cli import main

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "g16.npz", x_train=rng.integers(0, 255, (60, 16, 16), dtype=np.uint8),
             y_train=np.arange(60) % 10, x_test=rng.integers(0, 255, (20, 16, 16), dtype=np.uint8),
             y_test=np.arange(20) % 10)
    code = main(["train", "--dataset", str(tmp_path / "g16.npz"), "--model", "tinynet_7k", "--epochs", "1",
                 "--val-size", "10", "--augment", "none", "--batch-size", "16", "--scheduler", "none"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1, err
    assert "model 'tinynet_7k' cannot take a batch of 1x16x16 images" in err and "internal error" not in err, err


def test_two_datasets_in_one_grid_are_two_configs(sets, tmp_path):
    """No longer refused: the dataset is an axis and part of each config's identity."""
    from gridrun.spec import load_trials

    idx, npz = sets
    spec = _spec(tmp_path, "mnist", grid={"dataset": [str(idx), str(npz)]})
    _, trials = load_trials(spec)
    assert [t.train["dataset"] for t in trials] == [str(idx), str(npz)]
    assert len({t.id for t in trials}) == 2


@pytest.mark.parametrize("dataset, says", [("mnist", "set GRIDRUN_DATA to those"),
                                            ("fashion_mnist", "put fashion_mnist's files back in torchvision's cache"),
                                            ("/d/colour.npz", "put the data the experiment ran on back at /d/colour.npz")])
def test_data_found_here_but_not_the_one_run_on_says_how_to_put_it_back(dataset, says):
    """The saved labels match the checksum recorded at launch, the data found here differs: the hint
    fits the kind of dataset (it said "set GRIDRUN_DATA" for an .npz replaced at its path)."""
    from gridrun.data import label_digest
    from gridrun.results import TrialRecord, _labels_differ

    ran = {"val": np.array([1, 2, 3], np.uint8), "test": np.array([0, 1], np.uint8)}
    t = TrialRecord(name="t", dir=None, config={"dataset": dataset}, val_labels=ran["val"], test_labels=ran["test"])
    found = {"val": np.array([3, 2, 1], np.uint8), "test": ran["test"]}
    why, _moved = _labels_differ(t, found, {k: label_digest(v) for k, v in ran.items()})
    assert "not the ones the experiment ran on" in why and says in why
    assert ("GRIDRUN_DATA" in why) == (dataset == "mnist")


# ---------------------------------------------------------------- through Ray, end to end

def _launch(spec: Path, storage: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # the net's folder is on no path: Ray must ship it
    return subprocess.run([sys.executable, "-m", "gridrun.cli", "launch", str(spec), "--storage", str(storage)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=400)


@pytest.mark.ray
def test_user_net_and_two_datasets_through_ray_fused_reported_exported_restored(tmp_path, capsys):
    """One launch: the spec's module (mynets.py beside the spec, on no path of the workers: Ray's
    runtime environment ships it; with that line of launch.py removed the workers fail with
    ModuleNotFoundError), over an IDX folder and an .npz, two learning rates fused in pairs. Then
    the report has one section per dataset, each trial's test accuracy recomputed against its own
    set (checked here against the labels), one ensemble and one choice per set (report, best,
    status); an export restored elsewhere, its data gone, still checks against the checksums
    recorded at launch, and a trial whose saved labels were forged is broken."""
    from gridrun.export import export, restore
    from gridrun.best import best
    from gridrun.report import report
    from gridrun.results import load_experiment

    specdir, work = tmp_path / "project", tmp_path / "elsewhere"
    specdir.mkdir()
    work.mkdir()
    (specdir / "mynets.py").write_text(NET)
    idx, npz = write_sets(tmp_path / "data")
    spec = _spec(specdir, "mnist", model="small_cnn", modules=["mynets"], fuse=2,
                 grid={"dataset": [str(idx), str(npz)], "lr": [0.01, 0.003]})
    spec.write_text(spec.read_text().replace("subset: 100", "subset: 300"))
    storage = tmp_path / "runs"
    run = _launch(spec, storage, work)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    exp = load_experiment(storage / "ds")
    assert [t.status for t in exp.trials] == ["finished"] * 4
    assert {t.config["model"] for t in exp.trials} == {"mynets:small_cnn"}
    assert len({t.group for t in exp.trials if t.group}) == 2  # each dataset's pair trained fused
    for path, classes in ((idx, 7), (npz, 5)):
        from gridrun.datasets import load_dataset

        labels = load_dataset(str(path))["test_labels"]
        mine = [t for t in exp.trials if t.config["dataset"] == str(path)]
        assert len(mine) == 2 and all(t.test_logits.shape == (140, classes) for t in mine)
        for t in mine:  # each trial against its own set's labels, and the report's number is that
            assert t.test_acc_recomputed == pytest.approx(float((t.test_logits.argmax(1) == labels).mean()))
    md = report(["ds"], storage=str(storage), reports_dir=str(tmp_path / "reports"), echo=lambda _: None)[0]
    text = md.read_text()
    for path in (idx, npz):
        assert f"## Dataset {path}" in text
    assert text.count("### Ensemble: majority vote") == 2 and text.count("### Results by config") == 2
    assert "against its own dataset's test labels" in text
    assert text.count("test labels: the test labels of the dataset's own files, found here") == 2
    chosen = best("ds", storage=str(storage))
    assert chosen.count("# dataset ") == 2
    docs = list(yaml.safe_load_all(best("ds", storage=str(storage), how="yaml")))  # it printed two `name:` keys in one
    assert [d["name"] for d in docs] == ["ds-best-colour_idx", "ds-best-colour"]
    assert [d["data"]["dataset"] for d in docs] == [str(idx), str(npz)]
    from gridrun.status import render, snapshot

    snap = snapshot(storage / "ds")  # status: a best config per dataset, never one over both
    assert snap["best"] is None and set(snap["best_by_dataset"]) == {str(idx), str(npz)}
    assert render(snap).count("best config so far by validation on ") == 2
    out = export("ds", out=str(tmp_path / "ds_export.tar.gz"), storage=str(storage), echo=lambda _: None)
    back = restore(str(out), storage=str(tmp_path / "restored"), echo=lambda _: None)
    os.rename(npz, npz.with_suffix(".gone"))  # the report must now lean on the checksum recorded at launch
    from gridrun.datasets import read_dataset

    read_dataset.cache_clear()
    again = load_experiment(back)
    assert [t.status for t in again.trials] == ["finished"] * 4
    assert "checksum recorded at launch" in again.view(str(npz)).label_source
    assert {t.name: t.test_acc_recomputed for t in again.trials} == {t.name: t.test_acc_recomputed
                                                                    for t in exp.trials}
    # a trial whose saved test labels are not the set's (all agree here, so no majority could tell)
    from gridrun.storage.layout import TrialDir

    victim = next(t for t in again.trials if t.config["dataset"] == str(npz))
    forged = victim.test_labels.copy()
    forged[:5] = (forged[:5] + 1) % 5
    TrialDir(victim.dir).write_labels("test", forged)
    after = {t.name: t for t in load_experiment(back).trials}
    assert after[victim.name].status == "broken" and "recorded at launch" in after[victim.name].reason
    assert sum(t.status == "finished" for t in after.values()) == 3


# ---------------------------------------------------------------- fused, without Ray

MIXER = '''
from torch import nn


class Mix(nn.Module):
    def forward(self, x):  # subtracts the mean over all channels: mixes the members of a blockdiag group
        return x - x.mean(1, keepdim=True)


def mixer(in_channels=1, num_classes=10):
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3), Mix(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, num_classes))
'''


@pytest.mark.parametrize("strategy", ["vmap", "blockdiag"])
def test_user_net_fuses_like_a_zoo_net_on_colour_data(sets, tmp_path, monkeypatch, strategy):
    """A user's net by import path, fused two members: each trains as it would alone."""
    from gridrun.train import train

    (tmp_path / "mynets.py").write_text(NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    _, npz = sets
    base = {"dataset": str(npz), "model": "mynets:small_cnn", "epochs": 1, "val_size": 70, "batch_size": 35,
            "device": "cpu", "optimizer": "adam", "augment": "none", "scheduler": "none", "lr": 0.01}
    cfgs = [dict(base, seed=0), dict(base, seed=1, lr=0.003)]
    fused = train([dict(c, fuse_strategy=strategy) for c in cfgs])
    for f, c in zip(fused, cfgs):
        a = train(c)
        assert f["status"] == a["status"] == "ok"
        assert f["final"]["train_loss"] == pytest.approx(a["final"]["train_loss"], rel=1e-3)


def test_blockdiag_refuses_a_user_net_that_mixes_channels_across_members(sets, tmp_path, monkeypatch):
    from gridrun.config import ConfigError
    from gridrun.train import train

    (tmp_path / "mixnets.py").write_text(MIXER)
    monkeypatch.syspath_prepend(str(tmp_path))
    _, npz = sets
    base = {"dataset": str(npz), "model": "mixnets:mixer", "epochs": 1, "val_size": 70, "device": "cpu",
            "augment": "none", "fuse_strategy": "blockdiag"}
    with pytest.raises(ConfigError, match="fuse_strategy blockdiag does not compute this model's members apart"):
        train([dict(base, seed=0), dict(base, seed=1)])


def test_a_user_net_is_budgeted_at_spec_time_and_trains_from_the_command_line(sets, tmp_path, monkeypatch, capsys):
    """Checked like the zoo: its parameters for this dataset's images against max_params; and
    `gridrun train --model module:function --dataset PATH` trains it."""
    from gridrun.cli import main
    from gridrun.spec import SpecError, load_trials

    (tmp_path / "mynets.py").write_text(NET)
    _, npz = sets
    spec = _spec(tmp_path, str(npz), "mynets:small_cnn", constraints={"max_params": 500})
    with pytest.raises(SpecError, match=r"mynets:small_cnn has 1,525 parameters, over constraints.max_params=500"):
        load_trials(spec)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--model", "mynets:small_cnn", "--dataset", str(npz), "--epochs", "1", "--val-size", "50",
                 "--subset", "100", "--augment", "none", "--threads", "1", "--device", "cpu",
                 "--out", str(tmp_path / "one")]) == 0
    assert re.search(r"ok: 1,?525 params", capsys.readouterr().out)
