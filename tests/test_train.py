import csv
import json
import re

import numpy as np
import pytest
import torch

from gridrun.cli import main
from gridrun.config import ConfigError, TrainConfig
from gridrun.train import Folders, train
from conftest import Stop, stop_after

FAST = dict(model="tinynet_7k", epochs=2, batch_size=32, lr=0.01, scheduler="onecycle", val_size=200,
            optimizer="adam", weight_decay=0.0, augment="none")


def test_learns_and_writes_every_file(synth_dir, tmp_path):
    seen = []
    out = tmp_path / "trial"
    res = train({**FAST, "data_dir": str(synth_dir), "out_dir": str(out)},
                Folders(on_epoch=lambda m, s: seen.append((m, s))))
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
    assert cfg["_meta"]["amp"] is False and cfg["_meta"]["channels_last"] is False  # what ran (CPU: fp32)


@pytest.mark.parametrize("amp,cl,cuda,params,want", [
    (None, None, True, 7_594, (False, False)),      # a tiny net on CUDA: fp32, contiguous (measured faster)
    (None, None, True, 272_090, (True, True)),      # resnet20: bf16 + channels_last
    (True, None, True, 7_594, (True, True)),        # an explicit amp is obeyed; channels_last follows it
    (None, False, True, 272_090, (True, False)),    # an explicit channels_last is obeyed
    (False, True, True, 272_090, (False, True)),
    (True, True, False, 272_090, (False, False)),   # never off CUDA
])
def test_fast_formats_follow_the_net_size_unless_set(amp, cl, cuda, params, want):
    from gridrun.train import fast_formats

    assert fast_formats(TrainConfig(amp=amp, channels_last=cl), cuda, params) == want


def _weights_and_opt(out):
    state = torch.load(out / "state.pt", weights_only=True)  # the engine's group state (K = 1)
    return {**state["params"], **state["buffers"]}, state["opt"]


@pytest.mark.parametrize("sched", ["step", "onecycle"])
def test_resumed_run_equals_a_straight_one(synth_dir, tmp_path, sched):
    """Weights, optimizer state and history are restored, not only the history: two epochs
    straight and one epoch + resume + one epoch end bit-identical (CPU, same threads)."""
    cfg = {**FAST, "epochs": 2, "data_dir": str(synth_dir), "scheduler": sched, "augment": "rotate+jitter",
           "model": "dropout", "subset": 400, "threads": 1}
    straight = train({**cfg, "out_dir": str(tmp_path / "straight")})
    part = tmp_path / "part"
    # Run the first epoch of the same 2-epoch config, keep its state, then resume it.
    with pytest.raises(Stop):
        train({**cfg, "out_dir": str(part)}, Folders(on_epoch=stop_after(1)))
    resumed = train({**cfg, "out_dir": str(part)}, resume_from=str(part / "state.pt"))
    assert [m["epoch"] for m in resumed["history"]] == [1, 2]
    for k in ("train_loss", "train_acc", "val_loss", "val_acc", "test_acc", "lr"):
        assert [m[k] for m in resumed["history"]] == [m[k] for m in straight["history"]], k
    w_a, o_a = _weights_and_opt(tmp_path / "straight")
    w_b, o_b = _weights_and_opt(part)
    assert all(torch.equal(w_a[k], w_b[k]) for k in w_a)
    sa, sb = o_a["state"], o_b["state"]
    assert o_a["t"] == o_b["t"] and len(sa) == len(sb) and all(torch.equal(a[k], b[k]) for a, b in zip(sa, sb)
                                                               for k in a)
    assert len(list(csv.DictReader(open(part / "metrics.csv")))) == 2


def test_resume_from_a_state_saved_after_the_last_epoch(synth_dir, tmp_path):
    cfg = {**FAST, "epochs": 2, "data_dir": str(synth_dir), "out_dir": str(tmp_path / "r")}
    first = train(cfg)
    (tmp_path / "r" / "summary.json").unlink()
    again = train(cfg, resume_from=str(tmp_path / "r" / "state.pt"))
    assert again["status"] == "ok" and again["epochs"] == 2
    assert again["final"]["test_acc"] == first["final"]["test_acc"]  # scored from the restored weights
    assert (tmp_path / "r" / "summary.json").exists()


def test_a_corrupt_or_foreign_state_is_refused_with_one_line(synth_dir, tmp_path):
    from gridrun.train import StateError

    cfg = {**FAST, "epochs": 1, "data_dir": str(synth_dir), "out_dir": str(tmp_path / "r")}
    train(cfg)
    state = tmp_path / "r" / "state.pt"
    with pytest.raises(StateError, match="another config .*lr"):
        train({**cfg, "lr": 0.5}, resume_from=str(state))
    raw = state.read_bytes()
    state.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(StateError, match="unreadable"):
        train(cfg, resume_from=str(state))


def test_a_planted_pickle_does_not_run(synth_dir, tmp_path):
    """Resuming loads with weights_only=True: a pickle that would run code is refused."""


    from gridrun.train import StateError

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    planted = tmp_path / "state.pt"
    torch.save({"version": 2, "model": Evil()}, planted)
    with pytest.raises(StateError):
        train({**FAST, "epochs": 1, "data_dir": str(synth_dir)}, resume_from=str(planted))
    assert not marker.exists()


def test_a_different_seed_gives_a_different_run(synth_dir):
    cfg = {**FAST, "epochs": 1, "augment": "rotate", "data_dir": str(synth_dir), "subset": 300}
    a, b = train({**cfg, "seed": 0}), train({**cfg, "seed": 1})
    assert a["final"]["train_loss"] != b["final"]["train_loss"]


def test_clean_epochs_train_the_last_epochs_on_unaugmented_images(synth_dir, tmp_path):
    """clean_epochs=N: the last N epochs see the images as they are. All epochs clean is exactly
    the same run as augment=none; one clean epoch of two leaves epoch 1 as augmented training had it."""
    cfg = {**FAST, "augment": "rotate+affine", "data_dir": str(synth_dir), "subset": 300, "threads": 1}
    out = {k: str(tmp_path / k) for k in ("aug", "one", "all", "none")}
    aug = train({**cfg, "out_dir": out["aug"]})
    one = train({**cfg, "clean_epochs": 1, "out_dir": out["one"]})
    every = train({**cfg, "clean_epochs": 2, "out_dir": out["all"]})
    none = train({**cfg, "augment": "none", "out_dir": out["none"]})
    weights = {k: torch.load(f"{v}/model.pt", weights_only=True) for k, v in out.items()}
    same = lambda a, b: all(torch.equal(weights[a][n], weights[b][n]) for n in weights[a])  # noqa: E731
    assert same("all", "none") and every["final"]["train_loss"] == none["final"]["train_loss"]
    assert one["history"][0]["train_loss"] == aug["history"][0]["train_loss"]
    assert not same("one", "aug") and not same("one", "none")
    assert one["history"][1]["train_loss"] != aug["history"][1]["train_loss"]


@pytest.mark.parametrize("bad", [-1, 3])
def test_clean_epochs_outside_zero_to_epochs_is_refused(bad):
    from gridrun.config import ConfigError, TrainConfig
    with pytest.raises(ConfigError, match="clean_epochs"):
        TrainConfig(epochs=2, clean_epochs=bad)


def test_weight_average_is_what_gets_scored_and_saved(synth_dir, tmp_path):
    res = train({**FAST, "epochs": 2, "ema": 0.9, "data_dir": str(synth_dir), "out_dir": str(tmp_path / "e")})
    assert res["status"] == "ok"
    saved = torch.load(tmp_path / "e" / "model.pt", weights_only=True)
    state = torch.load(tmp_path / "e" / "state.pt", weights_only=True)
    live = {**state["params"], **state["buffers"]}  # the engine's group state: (1, ...) tensors
    assert all(torch.equal(saved[k], state["ema"][k][0]) for k in saved)
    assert any(not torch.equal(saved[k], live[k][0]) for k in saved)


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


def test_same_seed_makes_runs_repeatable(synth_dir):
    cfg = {**FAST, "epochs": 1, "augment": "rotate+jitter", "data_dir": str(synth_dir), "subset": 300}
    a, b = train(cfg), train(cfg)
    assert a["final"]["train_loss"] == b["final"]["train_loss"]


@pytest.mark.parametrize("bad,match", [({"lr": -1}, "lr"), ({"lr": 0}, "lr"), ({"batch_size": 0}, "batch_size"),
                                       ({"optimizer": "adagrad"}, "optimizer='adagrad'"),
                                       ({"scheduler": "warm"}, "scheduler='warm'"),
                                       ({"augment": "blur"}, "augmentation 'blur'"), ({"model": "nope"}, "model='nope'"),
                                       ({"learning_rate": 1}, "unknown config key 'learning_rate'"),
                                       ({"scheduler": "plateau", "val_size": 0}, "scheduler='plateau'"),
                                       ({"batch_size": 1}, "batch_size=1"), ({"subset": 1}, "subset=1"),
                                       ({"lr": float("nan")}, "lr=nan"), ({"epochs": 10**9}, "epochs="),
                                       ({"device": "gpu"}, "device='gpu'"), ({"threads": -1}, "threads=-1"),
                                       ({"dropout": 0.1, "model": "resnet20"}, "takes no dropout"),
                                       ({"model_args": {"width": 2}}, "takes no argument 'width'"),
                                       ({"aug": {"rotate_deg": -5}}, "rotate_deg=-5"),
                                       ({"batch_size": "64"}, "batch_size='64': must be a whole number"),
                                       # every bound and rule TrainConfig declares, each refused once
                                       ({"lr": True}, "lr=True: must be a number"),
                                       ({"epochs": 2.0}, "epochs=2.0: must be a whole number"),
                                       ({"dropout": "x"}, "dropout='x': must be a number or null"),
                                       ({"epochs": 0}, "epochs=0: must be in [1, 10000]"),
                                       ({"eval_batch_size": 0}, "eval_batch_size=0"),
                                       ({"step_size": 0}, "step_size=0"), ({"step_size": 10**5}, "step_size="),
                                       ({"patience": -1}, "patience=-1"), ({"patience": 10**5}, "patience="),
                                       ({"batch_size": 2_000_000}, "batch_size=2000000: must be in [2, 1000000]"),
                                       ({"batch_size": 1}, "BatchNorm cannot train on one image"),
                                       ({"ema": float("inf")}, "ema=inf: must be a finite number"),
                                       ({"ema": 1.0}, "ema=1.0: must be in [0, 1) (a decay per step"),
                                       ({"plateau_metric": "val_ac"}, "plateau_metric='val_ac': unknown plateau_metric"),
                                       ({"normalize": "zscore"}, "normalize='zscore': unknown normalize"),
                                       ({"val_size": 50001}, "val_size=50001: must be in [0, 50000] (at least 10,000"),
                                       ({"dropout": 1.0}, "dropout=1.0: must be in [0, 1)"),
                                       ({"label_smoothing": 1.0}, "label_smoothing=1.0: must be in [0, 1)"),
                                       ({"momentum": 1.0}, "momentum=1.0: must be in [0, 1)"),
                                       ({"weight_decay": -1e-4}, "weight_decay=-0.0001: must be >= 0"),
                                       ({"gamma": 0}, "gamma=0: must be in (0, 1]"), ({"gamma": 1.5}, "gamma=1.5"),
                                       ({"pct_start": 1}, "pct_start=1: must be in (0, 1)"),
                                       ({"gpu_memory_fraction": 0}, "gpu_memory_fraction=0: must be in (0, 1]"),
                                       ({"clean_epochs": 3, "epochs": 2},
                                        "clean_epochs=3: must be an integer in [0, epochs=2]"),
                                       ({"cuda_graph": True, "compile": True}, "cannot both be on"),
                                       ({"fuse_strategy": "grouped"}, "(valid: auto, vmap, loop, blockdiag)"),
                                       ({"device": "cuda:x"}, "use auto, cpu, cuda or cuda:N"),
                                       ({1: 2}, "unknown config key 1"), ([("lr", 1)], "a config is a mapping")])
def test_bad_config_rejected_before_work(bad, match):
    with pytest.raises(ConfigError, match=re.escape(match)) as e:
        TrainConfig.from_dict(bad)
    msg = str(e.value)  # one line in words: no pydantic wording or type names
    assert "\n" not in msg and not any(w in msg for w in ("Input should", "pydantic", "_type", "Value error"))


def test_config_types_are_strict_but_an_int_is_a_float():
    cfg = TrainConfig(lr=1, weight_decay=0)
    assert cfg.lr == 1.0 and cfg.to_dict()["weight_decay"] == 0.0
    with pytest.raises(Exception):  # one TrainConfig is one trial's config, never changed in place
        cfg.lr = 0.1


def test_a_device_that_is_not_there_is_one_line(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["train", "--device", "cuda", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "device='cuda'" in err and "no GPU" in err and "\n" not in err


@pytest.mark.parametrize("argv,needle", [(["--model", "resnet999"], "model='resnet999': unknown model"),
                                         (["--lr", "-0.1"], "lr=-0.1")])
def test_cli_bad_input_one_line(argv, needle, capsys):
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and err.count("\n") == 0


@pytest.mark.parametrize("argv,field,value", [
    (["--nesterov"], "nesterov", True), (["--no-amp"], "amp", False),                    # bool
    (["--aug", '{"rotate_deg": 3}'], "aug", {"rotate_deg": 3}),                           # dict
    (["--subset", "none"], "subset", None), (["--subset", "300"], "subset", 300),        # optional int
    (["--dropout", "0.05", "--model", "two_maxpool"], "dropout", 0.05),                  # optional float
])
def test_cli_flag_kinds_reach_the_config(argv, field, value, monkeypatch):
    seen = {}
    monkeypatch.setattr("gridrun.train.train", lambda cfg, on_epoch=None: seen.setdefault("cfg", cfg) and
                        {"status": "ok", "params": 1, "epochs": 0, "device": "cpu", "final": {}})
    assert main(["train", *argv]) == 0
    assert getattr(seen["cfg"], field) == value


@pytest.mark.parametrize("argv,needle", [(["--aug", "{bad"], "--aug: not JSON"), (["--aug", "[1]"], "JSON object"),
                                         (["--subset", "x"], "--subset"), (["--epochs", "1.5"], "--epochs"),
                                         (["--nesterov=3"], "--nesterov")])
def test_cli_bad_flag_values_are_one_line(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", *argv])
    assert e.value.code == 2
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
                 "scheduler": "onecycle", "optimizer": "adam", "weight_decay": 0.0, "augment": "none",
                 "data_dir": str(mnist_dir)})
    assert res["n_test"] == 10000 and res["final"]["test_acc"] >= 0.97


def test_a_state_from_before_a_field_existed_resumes(synth_dir, tmp_path):
    """A state whose config lacks a field added since (here clean_epochs, precise_bn) resumes
    when this config has that field at its default, and is refused when it does not."""
    from gridrun.train import StateError

    cfg = {**FAST, "epochs": 2, "data_dir": str(synth_dir), "out_dir": str(tmp_path / "r")}
    first = train(cfg)
    path = tmp_path / "r" / "state.pt"
    state = torch.load(path, weights_only=True)
    for k in ("clean_epochs", "precise_bn"):
        del state["members"][0]["config"][k]  # the engine's group state: one config per member
    torch.save(state, path)
    again = train(cfg, resume_from=str(path))
    assert again["status"] == "ok" and again["final"]["test_acc"] == first["final"]["test_acc"]
    with pytest.raises(StateError, match="differs in precise_bn"):
        train({**cfg, "precise_bn": True}, resume_from=str(path))


@pytest.mark.parametrize("fraction", [None, 0.25])
def test_cuda_device_gets_an_index_before_the_memory_cap(monkeypatch, fraction):
    """A trial on "cuda" (Ray's fractional GPU sets CUDA_VISIBLE_DEVICES, so the config says no
    index) must reach set_per_process_memory_fraction as "cuda:N": on an H100 (torch 2.11) the
    unindexed device failed every trial of tiny_nets with "Expected a torch.device with a
    specified index". Exercised here without a GPU by standing in for the CUDA calls."""
    import gridrun.engine.group as gt

    seen = {}
    monkeypatch.setattr(gt, "resolve_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)

    def fake_fraction(frac, device):
        assert isinstance(device, (int, torch.device)) and getattr(device, "index", device) is not None
        seen["fraction"] = (frac, device)

    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", fake_fraction)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device: seen.setdefault("peak", device))
    device = gt.prepare_device(TrainConfig(device="cuda", gpu_memory_fraction=fraction))
    assert device == torch.device("cuda", 3)
    assert seen["peak"] == torch.device("cuda", 3)
    assert seen.get("fraction") == ((fraction, torch.device("cuda", 3)) if fraction else None)


def test_onecycle_with_one_warm_up_step_is_one_line(synth_dir, tmp_path, capsys):
    """torch's OneCycleLR divides by its warm-up steps - 1: a run of 4 steps at pct_start 0.25
    raised a bare ZeroDivisionError from inside torch (exit 1, an internal error)."""
    argv = ["train", "--data-dir", str(synth_dir), "--model", "tinynet_7k", "--epochs", "1", "--subset", "400",
            "--val-size", "0", "--batch-size", "100", "--scheduler", "onecycle", "--out", str(tmp_path / "t")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "scheduler onecycle" in err and "one warm-up step" in err and "\n" not in err, err


def _as_version_3(state: dict) -> dict:
    """A version-4 state of one trial as the engine wrote it before every member dimension was
    stacked: the optimizer state in the model's own shapes, a torch optimizer's and scheduler's
    state dicts per member (what engine/state.py converts)."""
    for saved in state["opt"]["state"]:
        saved.update({n: t.squeeze(0) for n, t in saved.items()})
    for m in state["members"]:
        m.pop("plateau")
        m["shadow"], m["scheduler"] = {"state": {}, "param_groups": [{"lr": 0.123}]}, {"last_epoch": 9}
    return {**state, "version": 3}


def test_a_version_3_state_of_a_single_trial_is_converted_and_resumes_bit_for_bit(synth_dir, tmp_path):
    cfg = {**FAST, "epochs": 2, "data_dir": str(synth_dir), "subset": 400, "threads": 1}
    straight = train({**cfg, "out_dir": str(tmp_path / "straight")})
    part = tmp_path / "part"
    with pytest.raises(Stop):
        train({**cfg, "out_dir": str(part)}, Folders(on_epoch=stop_after(1)))
    torch.save(_as_version_3(torch.load(part / "state.pt", weights_only=True)), part / "state.pt")
    resumed = train({**cfg, "out_dir": str(part)}, resume_from=str(part / "state.pt"))
    assert [m["epoch"] for m in resumed["history"]] == [1, 2]
    for k in ("train_loss", "train_acc", "val_loss", "val_acc", "test_acc", "lr"):
        assert [m[k] for m in resumed["history"]] == [m[k] for m in straight["history"]], k
    assert all(torch.equal(a, b) for a, b in zip(*(_weights_and_opt(d)[0].values() for d in (tmp_path / "straight",
                                                                                              part))))


def test_a_version_3_plateau_keeps_its_lr_best_and_bad_epochs_and_another_version_is_one_line():
    from gridrun.engine.state import upgrade
    from gridrun.train import StateError

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=1)
    for loss in (1.0, 1.2, 1.3, 1.4):  # two decays' worth of bad epochs: lr 0.1, then one bad epoch
        sched.step(loss)
    member = {"shadow": opt.state_dict(), "scheduler": sched.state_dict()}
    state = upgrade({"version": 3, "params": {}, "opt": {"state": []}, "members": [member]}, "s.pt")
    assert state["version"] == 4 and state["members"][0]["plateau"] == {"lr": 0.1, "best": 1.0, "bad": 1}
    with pytest.raises(StateError, match=r"^resume state s.pt is of version 2; this gridrun reads versions 3, 4$"):
        upgrade({"version": 2}, "s.pt")
