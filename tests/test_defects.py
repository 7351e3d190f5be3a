"""The hostile probe's defects of issue 31 (items 5, 6, 9, 10, 11): a full disk, `train --out`
over results, model arguments checked at spec time, data checked before anything is written,
SIGTERM to the driver. Each answer is one line naming the thing and the fix, nothing lost."""
import gzip
import json
import os

import pytest

from gridrun.cli import main
from conftest import make_data_dir


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_data_dir(tmp_path_factory.mktemp("d"), n_train=120, n_test=40)


def _train(out, data, capsys, *extra):
    rc = main(["train", "--epochs", "1", "--data-dir", str(data), "--val-size", "20", "--subset", "40",
               "--batch-size", "20", "--model", "vanilla", "--out", str(out), *extra])
    return rc, capsys.readouterr().err.strip()


# ---------------------------------------------------------------- item 6: train --out over results

def test_train_out_refuses_a_folder_that_holds_a_trial(tmp_path, tiny_data, capsys):
    out = tmp_path / "t"
    assert _train(out, tiny_data, capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert "summary.json" in before
    rc, err = _train(out, tiny_data, capsys, "--lr", "0.5")
    assert rc == 2 and err.count("\n") == 0 and str(out) in err and "already holds results" in err
    assert "new folder" in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # nothing touched


@pytest.mark.parametrize("plant", ["summary.json", "config.json", "metrics.csv", "error.txt", "model.pt",
                                   "gridrun_trials.json", "fused_group.json"])
def test_train_out_refuses_any_result_file_alone(tmp_path, tiny_data, capsys, plant, monkeypatch):
    monkeypatch.setattr("gridrun.train.train", lambda *a, **k: pytest.fail("trained into a result folder"))
    out = tmp_path / "r"
    out.mkdir()
    (out / plant).write_text("{}")
    rc, err = _train(out, tiny_data, capsys)
    assert rc == 2 and plant in err and err.count("\n") == 0


def test_train_out_refuses_a_new_folder_inside_an_experiment(tmp_path, tiny_data, capsys, monkeypatch):
    """A new trial folder inside runs/EXP would be read by its report as one of its trials."""
    monkeypatch.setattr("gridrun.train.train", lambda *a, **k: pytest.fail("trained into an experiment"))
    exp = tmp_path / "runs" / "exp"
    exp.mkdir(parents=True)
    (exp / "gridrun_trials.json").write_text(json.dumps([{"name": "a"}]))
    rc, err = _train(exp / "mine" / "deeper", tiny_data, capsys)
    assert rc == 2 and "inside the experiment folder" in err and str(exp) in err
    assert not (exp / "mine").exists()


def test_train_out_into_an_empty_or_unrelated_folder_works(tmp_path, tiny_data, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert _train(out, tiny_data, capsys)[0] == 0 and (out / "summary.json").exists()


# ---------------------------------------------------------------- item 10: data checked before anything

def _no_ray(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("Ray was started before the data was checked")
    monkeypatch.setattr("gridrun.launch._connect", refuse)


@pytest.mark.parametrize("dry", [False, True])
@pytest.mark.parametrize("spoil", ["absent", "missing_file", "bad_header", "disagree"])
def test_bad_data_stops_launch_before_any_folder_or_ray(tmp_path, capsys, monkeypatch, spoil, dry):
    from conftest import write_spec
    from gridrun.data import _load_arrays

    _no_ray(monkeypatch)
    _load_arrays.cache_clear()
    d = make_data_dir(tmp_path / "data", n_train=120, n_test=40)
    bad = {"absent": lambda: tmp_path / "nonexistent",
           "missing_file": lambda: (d / "train-labels-idx1-ubyte.gz").unlink() or d,
           "bad_header": lambda: (d / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\0" * 4096)) or d,
           "disagree": lambda: (d / "t10k-labels-idx1-ubyte.gz").write_bytes(
               gzip.compress(bytes([0, 0, 8, 1]) + (41).to_bytes(4, "big") + bytes(41))) or d}[spoil]()
    spec = write_spec(tmp_path / "g.yaml", bad)
    runs = tmp_path / "runs"
    rc = main(["launch", str(spec), "--storage", str(runs), *(["--dry-run"] if dry else [])])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "MNIST" in err and str(bad) in err, err
    assert not runs.exists()  # no manifest, no spec copy, no phantom "pending" experiment


def test_data_dir_override_to_nowhere_is_refused_in_one_line(tmp_path, capsys, monkeypatch, tiny_data):
    """The probe's case: `data.data_dir=/nonexistent` on the command line."""
    from conftest import write_spec

    _no_ray(monkeypatch)
    spec = write_spec(tmp_path / "g.yaml", tiny_data)
    rc = main(["launch", str(spec), f"data.data_dir={tmp_path}/nonexistent", "--storage", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and f"{tmp_path}/nonexistent is not a folder" in err and not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- item 9: model arguments at spec time

def _expand(model, model_args=None, **base):
    from gridrun.spec import expand, parse

    spec = parse({"name": "m", "base": {"epochs": 1, "model": model, "model_args": model_args or {}, **base}})
    return expand(spec)


@pytest.mark.parametrize("arch, says", [
    ("C10:100 O G", "padding is 0 (valid) or 1"),          # the probe's: a 226x226 map, 24 GB at eval
    ("C10 M M M M M O G", "shrinks the 28x28 image to nothing"),
    ("C10:0 " * 14 + "O G", "shrinks the 28x28 image to nothing"),
    ("C10 O C4 G", "follows O"),
    ("C10 G O", "follows G"),
    ("C10 O", "must end with O G"),
    ("C0 O G", "channels must be in 1..512"),
    ("C100000 O G", "channels must be in 1..512"),
    ("C10 X O G", "is not a layer"),
    ("C１0 O G", "is not a layer"),                         # a full-width digit
    ("", "has 0 layers"),
    ("C8:1 " * 65 + "O G", "has 67 layers"),
])
def test_malformed_arch_is_refused_at_spec_time_naming_the_trial(arch, says):
    from gridrun.spec import SpecError

    with pytest.raises(SpecError) as e:
        _expand("tinynet", {"arch": arch})
    msg = str(e.value)
    assert says in msg and msg.startswith("trial tinynet_s0: model 'tinynet'") and "\n" not in msg


def test_activations_over_the_memory_cap_are_refused_and_a_smaller_batch_passes():
    from gridrun.spec import SpecError

    wide = {"arch": "C512:1 C512:1 C512:1 O G"}
    with pytest.raises(SpecError, match=r"would need about \d+ GiB \(eval_batch_size=4096 .* lower eval_batch_size"):
        _expand("tinynet", wide)
    with pytest.raises(SpecError, match=r"batch_size=4096 x .* lower batch_size"):
        _expand("tinynet", wide, batch_size=4096, eval_batch_size=64)
    assert _expand("tinynet", wide, batch_size=16, eval_batch_size=64)[0].train["model"] == "tinynet"


@pytest.mark.parametrize("model, args, says", [
    ("wide_resnet", {"widen": 100}, "widen must be 1..16"),
    ("wide_resnet", {"depth": 6 * 10000 + 4}, "n in 1..16"),
    ("wide_resnet", {"widen": "4"}, "model 'wide_resnet'"),
    ("inception_v4", {"width": 50}, "width must be in (0, 2]"),
    ("inception_v4", {"width": 0}, "width must be in (0, 2]"),
    ("resnet", {"depth": 21}, "not 6n+2"),
    ("vgg", {"cfg": "huge"}, "cfg must be one of"),
    ("tinynet", {"arch": 7}, "arch must be a string"),
])
def test_other_model_arguments_are_checked_at_spec_time(model, args, says):
    from gridrun.spec import SpecError

    with pytest.raises(SpecError) as e:
        _expand(model, args)
    assert says in str(e.value) and str(e.value).startswith(f"trial {model}_s0: ") and "\n" not in str(e.value)


def test_a_model_that_does_not_give_ten_logits_is_refused(monkeypatch):
    from torch import nn

    from gridrun.models import _registry
    from gridrun.spec import SpecError

    def seven():
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 7))

    def square_only():
        return nn.Sequential(nn.Flatten(), nn.Linear(100, 10))

    monkeypatch.setitem(_registry._MODELS, "seven", seven)
    monkeypatch.setitem(_registry._MODELS, "square_only", square_only)
    with pytest.raises(SpecError, match=r"shape \(2, 7\) for a batch of 2, not \(2, 10\)"):
        _expand("seven")
    with pytest.raises(SpecError, match="cannot take a 28x28 MNIST batch"):
        _expand("square_only")


def test_every_registered_model_passes_the_spec_time_check():
    from gridrun.models import list_models, profile

    for name in list_models():
        assert profile(name)["act_per_sample"] > 0


_LAYER = r"[CSTMOGX]?[0-9]{0,4}(:[0-9]{0,3})?"


def test_arch_parser_never_crashes_and_never_allocates():
    """Random token strings (near-valid layers and arbitrary text) are a valid model or one
    GridrunError; built on `meta`, they never take real memory (peak RSS does not grow)."""
    import resource

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from gridrun.errors import GridrunError
    from gridrun.models import profile

    tokens = st.lists(st.one_of(st.from_regex(_LAYER, fullmatch=True), st.text(max_size=6)), max_size=12)

    grown = []  # peak-RSS growth across each spec-time check (hypothesis's own caches excluded)

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(tokens)
    def check(parts):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            p = profile("tinynet", arch=" ".join(parts))
        except GridrunError as e:
            assert "\n" not in str(e)
            return
        finally:
            grown.append((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
        assert p["params"] > 0

    profile("tinynet", arch="C512:1 C512:1 O G")  # warm up torch's meta kernels before measuring
    check()
    assert len(grown) >= 100 and max(grown) < 50, f"peak RSS grew by {max(grown):.0f} MiB at spec time"


# ---------------------------------------------------------------- item 11: SIGTERM to the driver

def test_sigterm_is_handled_as_ctrl_c_and_restored_after():
    """Both handlers are the caller's again afterwards: Tune's fit installs its own SIGINT handler
    and leaves it (after an in-process launch, Ctrl-C and a SIGTERM would only set Tune's flag)."""
    import signal

    from gridrun.experiment import Terminated as _Terminated

    before, before_int = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    term = _Terminated()
    with pytest.raises(KeyboardInterrupt):
        with term:
            signal.raise_signal(signal.SIGTERM)  # its handler has run when this returns (no timing)
    assert term.received and signal.getsignal(signal.SIGTERM) is before
    with term:
        signal.signal(signal.SIGINT, lambda *a: None)  # what Tune's fit leaves behind
    assert signal.getsignal(signal.SIGINT) is before_int


@pytest.mark.slow  # a driver subprocess joins the session's Ray and trains
def test_sigterm_to_the_driver_stops_cleanly_with_summary_and_record(ray_local, tmp_path, tiny_data):
    """The probe's case: SIGTERM while the trial is running (held after its first epoch by the
    engine's test hook until the test releases it, so a fast machine cannot finish it first).
    Before: Ray's native dump, exit 134, no summary."""
    import signal
    import subprocess
    import sys

    from conftest import held_env, signal_when_held, write_spec

    spec = write_spec(tmp_path / "term.yaml", tiny_data, grid={"model": ["tinynet_7k"]}, seeds=1,
                      base={"epochs": 3, "batch_size": 10},
                      data={"val_size": 20, "subset": 60, "data_dir": str(tiny_data)})
    exp, release = tmp_path / "runs" / "term", tmp_path / "go"
    proc = subprocess.Popen([sys.executable, "-m", "gridrun.cli", "launch", str(spec), "--storage",
                             str(tmp_path / "runs"), "--address", ray_local.get_runtime_context().gcs_address],
                            env=held_env(1, release), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = signal_when_held(proc, release, signal.SIGTERM, "the trial held after epoch 1")
    assert proc.returncode == 143, out
    assert "1 trials in" in out and "1 interrupted" in out and "stopped by SIGTERM" in out, out
    assert "Traceback" not in out and "SIGTERM received" not in out and "core dumped" not in out, out
    record = [json.loads(line) for line in (exp / "gridrun_launches.jsonl").read_text().splitlines()]
    assert len(record) == 1 and record[0]["exit"] == 143 and record[0]["wall_s"] > 0
    assert not (exp / "gridrun.lock").exists()
    assert len((exp / "tinynet_7k_s0" / "metrics.csv").read_text().splitlines()) == 2  # header + epoch 1: stopped there


# ---------------------------------------------------------------- item 5: a full disk

@pytest.fixture
def small_disk(tmpfs):
    """A 600 KiB tmpfs (conftest.tmpfs)."""
    return tmpfs("600k")


@pytest.mark.parametrize("code", ["ENOSPC", "EDQUOT", "EROFS"])
def test_atomic_write_leaves_the_old_file_or_nothing_never_half(tmp_path, monkeypatch, code):
    """The write fails at fsync (where a delayed-allocation disk reports ENOSPC): the target keeps
    its old bytes, a new target is never created, the temp file is gone."""
    import errno

    from gridrun import diskio
    from gridrun.storage.safeio import atomic_save

    old = tmp_path / "summary.json"
    old.write_text('{"status": "ok"}')

    def full(fd):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    monkeypatch.setattr(os, "fsync", full)
    for target, obj in ((old, {"status": "new"}), (tmp_path / "logits_val.npy", __import__("numpy").zeros((5, 10))),
                        (tmp_path / "model.pt", {"w": __import__("torch").zeros(3)})):
        with pytest.raises(OSError) as e:
            atomic_save(target, obj)
        assert diskio.disk_error(e.value) is e.value
    assert old.read_text() == '{"status": "ok"}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]  # no temp files, no half files


def test_atomic_write_on_a_really_full_disk(small_disk):
    import numpy as np

    from gridrun.storage.safeio import atomic_save

    (small_disk / "filler").write_bytes(b"\1" * (600 * 1024 - 8192))
    with pytest.raises(OSError) as e:
        atomic_save(small_disk / "logits_test.npy", np.ones((10000, 10), np.float16))  # 200 KB: does not fit
    assert e.value.errno == __import__("errno").ENOSPC
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


def test_disk_line_names_the_folder_and_the_fix(tmp_path):
    import errno

    from gridrun.diskio import disk_line

    for code, says in ((errno.ENOSPC, "the disk is full"), (errno.EDQUOT, "quota"), (errno.EROFS, "read-only")):
        line = disk_line(tmp_path, OSError(code, os.strerror(code)))
        assert says in line and str(tmp_path) in line and "--storage" in line and "\n" not in line


def test_train_out_on_a_full_disk_is_one_line(small_disk, tiny_data, capsys):
    (small_disk / "filler").write_bytes(b"\1" * (600 * 1024 - 4096))
    rc, err = _train(small_disk / "t", tiny_data, capsys)
    assert rc == 2 and err.count("\n") == 0 and "the disk is full" in err and str(small_disk) in err, err
    assert not [p for p in (small_disk / "t").rglob("*") if p.is_file() and p.stat().st_size == 0]
    assert not list(small_disk.rglob("*.tmp"))


@pytest.mark.slow  # ~60 s on a 2-core CPU: two trials fill a 600 KiB disk through the session's Ray
@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")  # no thread's traceback either
def test_launch_on_a_disk_that_fills_up_is_one_line_and_a_recorded_launch(ray_local, small_disk, tmp_path,
                                                                          tiny_data):
    """The probe's case: before, an internal UnpicklingError from Ray, no summary, no launch record
    and 0-byte summary/config/logits files."""
    from conftest import write_spec
    from gridrun.errors import GridrunError
    from gridrun.launch import launch
    from gridrun.results import load_experiment
    from gridrun.storage.layout import ExperimentDir

    spec = write_spec(tmp_path / "full.yaml", tiny_data, grid={"model": ["tinynet_7k"]}, seeds=2, retries=0,
                      base={"epochs": 3, "batch_size": 20}, resources={"cpu": 1, "gpu": 0},
                      data={"val_size": 20, "subset": 60, "data_dir": str(tiny_data)})
    lines = []
    with pytest.raises(GridrunError) as e:
        launch(str(spec), storage=str(small_disk), out=lines.append)
    exp = small_disk / "full"
    assert f"{exp}: the disk is full" in str(e.value) and "\n" not in str(e.value)
    assert any(l.startswith(f"{exp}: 2 trials in") for l in lines), lines  # the summary
    assert len(ExperimentDir(exp).read_launches()) == 1 and ExperimentDir(exp).read_launches()[0]["exit"] == 2  # recorded as the CLI exits
    ours = [p for p in exp.rglob("*") if p.is_file() and (p.suffix in (".npy", ".pt", ".tmp") or p.name in
                                                           ("summary.json", "config.json", "state.json"))]
    for p in ours:
        assert p.suffix != ".tmp" and p.stat().st_size > 0, p
    assert {t.status for t in load_experiment(exp).trials} <= {"unfinished", "failed", "finished"}


def test_launch_on_a_full_or_read_only_disk_stops_before_ray_and_writes_nothing(small_disk, tmp_path, tiny_data,
                                                                                monkeypatch, capsys):
    import subprocess

    from conftest import write_spec

    _no_ray(monkeypatch)
    spec = write_spec(tmp_path / "g.yaml", tiny_data)
    (small_disk / "filler").write_bytes(b"\1" * (600 * 1024 - 64 * 1024))  # 64 KiB left: no room for the reserve
    rc = main(["launch", str(spec), "--storage", str(small_disk / "runs")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and f"{small_disk / 'runs' / 'g'}: the disk is full" in err, err
    assert not (small_disk / "runs" / "g").exists()
    (small_disk / "filler").unlink()
    (small_disk / "runs").mkdir(exist_ok=True)
    if subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], capture_output=True).returncode != 0:
        pytest.skip("cannot remount read-only here")
    rc = main(["launch", str(spec), "--storage", str(small_disk / "runs")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "read-only file system" in err and "--storage" in err, err


# ---------------------------------------------------------------- a run that diverges at a known step

@pytest.mark.parametrize("fail_after,status", [(3, "diverged at epoch 1"), (4, "diverged at epoch 2"),
                                               (8, "diverged at epoch 3"), (12, "ok")])
def test_a_run_whose_loss_goes_nan_at_a_known_step_is_retired_in_that_epoch(tmp_path, tiny_data, fail_after, status):
    """chaos_net fail='nan' (the chaos-net option): NaN outputs from step fail_after + 1 on, 4 steps
    an epoch here. The run is retired in the epoch of that step, the epochs before it kept; no
    learning rate or luck decides when it diverges."""
    from gridrun.train import train

    out = tmp_path / "t"
    r = train(dict(model="chaos_net", model_args={"fail": "nan", "fail_after": fail_after}, epochs=3, batch_size=10,
                   subset=40, val_size=20, data_dir=str(tiny_data), out_dir=str(out), threads=1))
    kept = 3 if status == "ok" else int(status.rsplit(" ", 1)[1]) - 1
    assert r["status"] == status and r["epochs"] == kept
    assert json.loads((out / "summary.json").read_text())["status"] == status
    assert len((out / "metrics.csv").read_text().strip().splitlines()) == 1 + kept
