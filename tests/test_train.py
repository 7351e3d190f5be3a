import csv
import json

import numpy as np
import pytest
import torch

from gridrun.cli import main
from gridrun.config import ConfigError, TrainConfig
from gridrun.train import train

FAST = dict(model="tinynet_7k", epochs=2, batch_size=32, lr=0.01, scheduler="onecycle", val_size=200)


def test_learns_and_writes_every_file(synth_dir, tmp_path):
    seen = []
    out = tmp_path / "trial"
    res = train({**FAST, "data_dir": str(synth_dir), "out_dir": str(out)},
                on_epoch=lambda m, s: seen.append((m, s)))
    assert res["status"] == "ok" and [m["epoch"] for m, _ in seen] == [1, 2]
    assert res["final"]["test_acc"] > 0.6 and res["final"]["val_acc"] > 0.6  # chance is 0.1
    for name in ("config.json", "metrics.csv", "state.pt", "model.pt", "logits_val.npy", "logits_test.npy",
                 "labels_val.npy", "labels_test.npy", "summary.json"):
        assert (out / name).is_file(), name
    assert list(out.glob("events.out.tfevents.*"))
    test_logits = np.load(out / "logits_test.npy")
    assert test_logits.dtype == np.float16 and test_logits.shape == (400, 10)
    recomputed = (test_logits.argmax(1) == np.load(out / "labels_test.npy")).mean()
    assert recomputed == pytest.approx(res["final"]["test_acc"], abs=2e-3)
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == 2 and set(rows[0]) >= {"train_loss", "val_acc", "test_acc", "lr", "seconds", "images_per_s"}
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"] == "tinynet_7k" and cfg["_meta"]["params"] == res["params"]


def test_resume_continues_from_state(synth_dir, tmp_path):
    out = tmp_path / "r"
    cfg = {**FAST, "epochs": 1, "data_dir": str(synth_dir), "out_dir": str(out), "scheduler": "step"}
    train(cfg)
    res = train({**cfg, "epochs": 2}, resume_from=str(out / "state.pt"))
    assert [m["epoch"] for m in res["history"]] == [1, 2]
    assert len(list(csv.DictReader(open(out / "metrics.csv")))) == 2


@pytest.mark.parametrize("opt,sched,aug", [("sgd", "step", "align"), ("adamw", "plateau", "elastic+jitter"),
                                           ("adam", "cosine", "rotate+affine"), ("sgd", "none", "none")])
def test_optimizers_schedulers_and_policies_run(synth_dir, opt, sched, aug):
    res = train({**FAST, "epochs": 1, "optimizer": opt, "scheduler": sched, "nesterov": opt == "sgd",
                 "weight_decay": 1e-4, "label_smoothing": 0.1, "data_dir": str(synth_dir), "subset": 300,
                 "augment": aug})
    assert res["status"] == "ok" and np.isfinite(res["final"]["train_loss"])


def test_divergence_stops_the_trial(synth_dir, tmp_path):
    res = train({**FAST, "epochs": 3, "optimizer": "sgd", "lr": 1e12, "scheduler": "none",
                 "data_dir": str(synth_dir), "out_dir": str(tmp_path / "d")})
    assert res["status"].startswith("diverged at epoch")
    assert json.loads((tmp_path / "d" / "summary.json").read_text())["status"] == res["status"]


def test_seed_makes_runs_repeatable(synth_dir):
    cfg = {**FAST, "epochs": 1, "augment": "rotate+jitter", "data_dir": str(synth_dir), "subset": 300}
    a, b = train(cfg), train(cfg)
    assert a["final"]["train_loss"] == b["final"]["train_loss"]


@pytest.mark.parametrize("bad,match", [({"lr": -1}, "lr"), ({"lr": 0}, "lr"), ({"batch_size": 0}, "batch_size"),
                                       ({"optimizer": "adagrad"}, "optimizer"), ({"scheduler": "warm"}, "scheduler"),
                                       ({"augment": "blur"}, "augmentation"), ({"model": "nope"}, "unknown model"),
                                       ({"learning_rate": 1}, "unknown config key 'learning_rate'"),
                                       ({"scheduler": "plateau", "val_size": 0}, "plateau")])
def test_bad_config_rejected_before_work(bad, match):
    with pytest.raises(ConfigError if "augment" not in bad else Exception, match=match):
        TrainConfig.from_dict(bad)


@pytest.mark.parametrize("argv,needle", [(["--model", "resnet999"], "unknown model 'resnet999'"),
                                         (["--lr", "-0.1"], "lr=-0.1")])
def test_cli_bad_input_one_line(argv, needle, capsys):
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and err.count("\n") == 0


def test_cli_train_writes_files(synth_dir, tmp_path, capsys):
    assert main(["train", "--epochs", "1", "--batch-size", "32", "--data-dir", str(synth_dir), "--val-size", "100",
                 "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "epoch   1/1" in out and "ok:" in out and (tmp_path / "o" / "logits_test.npy").is_file()


def test_real_mnist_one_epoch_reaches_97(mnist_dir):
    torch.set_num_threads(2)
    res = train({"model": "tinynet_7k", "epochs": 1, "subset": 10000, "batch_size": 32, "lr": 0.01,
                 "scheduler": "onecycle", "data_dir": str(mnist_dir)})
    assert res["n_test"] == 10000 and res["final"]["test_acc"] >= 0.97
