"""layout.py, the folder format: every file read back as written (a pair per file), and a torn,
oversized or foreign file read as one line that names it."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from gridrun.storage import layout, provenance, safeio
from gridrun.storage.layout import ExperimentDir, StateError, TrialDir
from gridrun.storage.safeio import Unreadable


def finished_trial(d, n=20) -> TrialDir:
    t = TrialDir(d)
    t.path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split in layout.SPLITS:
        t.write_logits(split, rng.standard_normal((n, 10)).astype(np.float16))
        t.write_labels(split, rng.integers(0, 10, n).astype(np.uint8))
    return t


def test_every_trial_file_reads_back_as_written(tmp_path):
    import torch

    t = finished_trial(tmp_path / "t")
    t.write_config({"model": "tinynet_7k", "lr": 0.01}, {"params": 7000, "device": "cpu", "nested": {"x": 1}})
    assert t.read_config() == ({"model": "tinynet_7k", "lr": 0.01}, {"params": 7000, "device": "cpu"})
    rows = [[1, 0.5, 0.8, 0.4, 0.85, 0.84, 0.01, 1.5, 1000.0], [2, 0.3, None, 0.3, 0.9, 0.88, 0.005, 1.4, 1100.0]]
    t.write_metrics(rows)
    hist = t.read_history()
    assert [h["epoch"] for h in hist] == [1.0, 2.0] and hist[1]["train_acc"] is None and hist[0]["val_acc"] == 0.85
    t.write_summary({"status": "ok", "params": 7000})
    assert t.read_summary()["status"] == "ok" and t.summary_status() == "ok" and t.finished()
    logits, preds = t.read_scores("val")
    assert logits.shape == (20, 10) and (preds == logits.argmax(1)).all()
    assert t.read_labels("test").dtype == np.int64 and t.missing_scores() == []
    t.write_model({"w": torch.arange(3.0)})
    assert torch.equal(t.read_model()["w"], torch.arange(3.0))
    assert t.write_state({"version": 4, "epoch": 2}) == t.path / layout.STATE and t.read_state()["epoch"] == 2
    t.write_state_info(2, "launch-1")
    assert t.read_state_info() == {"epoch": 2, "launch": "launch-1"}
    assert not t.stopped()
    t.write_stopped(3)
    assert t.stopped() and json.loads((t.path / layout.STOPPED).read_text()) == {"after_epoch": 3, "by": "ASHA"}
    t.write_node("n1", "host-a")
    assert t.read_node() == {"node_id": "n1", "host": "host-a"}
    t.write_group(["a", "b"])
    assert t.is_group() and t.looks_like_trial()
    assert not list(t.path.glob("*.tmp"))  # every write renamed into place


def test_a_slim_exports_predicted_labels_stand_for_the_logits(tmp_path):
    t = finished_trial(tmp_path / "t")
    logits, _ = t.read_scores("test")
    t.write_preds("test", logits.argmax(1))
    (t.path / layout.logits_file("test")).unlink()
    assert t.missing_scores() == []
    none, preds = t.read_scores("test")
    assert none is None and (preds == logits.argmax(1)).all()
    (t.path / layout.preds_file("test")).unlink()
    assert t.missing_scores() == [layout.logits_file("test")]
    with pytest.raises(Unreadable, match="logits_test.npy is missing"):
        t.read_scores("test")


def test_every_experiment_file_reads_back_as_written(tmp_path):
    exp = ExperimentDir(tmp_path / "exp")
    exp.path.mkdir()
    assert not exp.is_experiment() and exp.read_manifest() == [] and exp.read_launches() == []
    entries = [{"name": "a", "train": {"lr": 0.1}, "group": None, "params": 10},
               {"name": "b", "train": {"lr": 0.2}, "group": "g", "params": -1}]
    exp.write_manifest(entries)
    assert exp.read_manifest() == [entries[0], {**entries[1], "params": None}] and exp.is_experiment()
    for code in (0, 1):
        exp.append_launch({"command": "gridrun launch x", "exit": code, "provenance": {"git": {"commit": "c"}}})
    assert [r["exit"] for r in exp.read_launches()] == [0, 1]
    assert exp.write_diff(2, "diff --git") == "gridrun_diff-2.patch" and [p.name for p in exp.diffs()] == [
        "gridrun_diff-2.patch"]
    exp.write_spec({"name": "exp", "description": "d", "constraints": {"max_params": 5, "max_epochs": "x"}})
    problems = []
    assert exp.read_spec(problems) == {"name": "exp", "description": "d", "constraints": {"max_params": 5}}
    assert problems == ["spec.yaml: constraints of the wrong type ignored"]
    assert exp.read_reference() is None
    (tmp_path / "ref.csv").write_text("label,test_acc\nx,99.1\n")
    exp.write_reference(tmp_path / "ref.csv")
    assert exp.read_reference() == "label,test_acc\nx,99.1\n"
    assert not exp.is_export()
    exp.write_export_mark({"experiment": "exp"})
    assert exp.is_export() and (exp.path / layout.EXPORT_MARK).read_text() == '{\n "experiment": "exp"\n}'


def test_trial_folders_are_found_top_level_and_inside_fused_groups(tmp_path):
    exp = ExperimentDir(tmp_path / "exp")
    for t in (exp.trial("solo"), exp.trial("m1", "g")):
        t.path.mkdir(parents=True)
        t.write_config({}, {})
    TrialDir(exp.path / "g").write_group(["m1"])
    (exp.path / "g" / "checkpoint_000001").mkdir()
    (exp.path / "notes").mkdir()  # no trial file: not a trial
    found = {n: (d.relative_to(exp.path).as_posix(), g) for n, (d, g) in exp.trial_dirs().items()}
    assert found == {"solo": ("solo", None), "m1": ("g/m1", "g")}


# ---------------------------------------------------------------- what cannot be read: one line naming it

def tear(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def oversize(path, limit):
    os.truncate(path, limit + 1)  # sparse: costs nothing to make


BAD = {
    "torn summary": (lambda t: tear(t.path / layout.SUMMARY), lambda t: t.read_summary(), "summary.json is not JSON"),
    "oversized config": (lambda t: oversize(t.path / layout.CONFIG, safeio.MAX_SMALL), lambda t: t.read_config(),
                         "config.json is 1,048,577 bytes"),
    "torn logits": (lambda t: tear(t.path / layout.logits_file("val")), lambda t: t.read_scores("val"),
                    "logits_val.npy is truncated"),
    "oversized metrics": (lambda t: oversize(t.path / layout.METRICS, safeio.MAX_LARGE), lambda t: t.read_history(),
                          "metrics.csv is 67,108,865 bytes"),
    "labels out of range": (lambda t: safeio.atomic_save(t.path / layout.labels_file("val"), np.full(3, 12, np.uint8)),
                            lambda t: t.read_labels("val"), "labels_val.npy is not a vector of classes"),
    "summary not an object": (lambda t: safeio.atomic_save(t.path / layout.SUMMARY, "[1]"), lambda t: t.read_summary(),
                              "summary.json is not a JSON object"),
    "linked node.json": (lambda t: (t.path / layout.NODE).symlink_to("/etc/passwd"), lambda t: t.read_node(),
                         "node.json is a symbolic link"),
    "torn state.json": (lambda t: safeio.atomic_save(t.path / layout.STATE_INFO, '{"epo'), lambda t: t.read_state_info(),
                        "state.json does not name an epoch"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_torn_oversized_or_foreign_file_reads_as_one_line_naming_it(tmp_path, case):
    spoil, read, says = BAD[case]
    t = finished_trial(tmp_path / "t")
    t.write_config({"lr": 0.1}, {})
    t.write_metrics([[1, 0.5, 0.8, 0.4, 0.85, 0.84, 0.01, 1.5, 1000.0]])
    t.write_summary({"status": "ok"})
    spoil(t)
    with pytest.raises(Unreadable) as e:
        read(t)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_a_torn_or_planted_state_is_a_state_error(tmp_path):
    t = TrialDir(tmp_path)
    t.write_state({"epoch": 1, "w": np.zeros(3)})
    tear(t.path / layout.STATE)
    with pytest.raises(StateError, match="is unreadable") as e:
        t.read_state()
    assert "\n" not in str(e.value)
    safeio.atomic_save(t.path / layout.STATE, {"epoch": 1})  # a torch file, not a gridrun state (engine/state.py
    with pytest.raises(StateError, match="not a gridrun state"):  # says which versions it reads)
        t.read_state()


# ---------------------------------------------------------------- the lock, provenance, start-up

def test_the_folder_lock_names_its_holder_and_a_dead_holder_holds_nothing(tmp_path):
    exp = ExperimentDir(tmp_path / "new")
    with exp.lock(heartbeat_s=3600):
        assert exp.lock_holder()["pid"] == os.getpid()
    assert exp.lock_holder() is None and not exp.path.exists()  # a folder it made for nothing is gone
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    exp.path.mkdir()
    (exp.path / layout.LOCK).write_text(json.dumps({"pid": int(dead.stdout), "host": os.uname().nodename}))
    assert exp.lock_holder() is None
    (exp.path / layout.LOCK).write_text("{torn")
    assert exp.lock_holder() is None


def test_the_folder_lock_beats_while_held_and_stops_when_released(tmp_path):
    """locks.held's one heartbeat thread touches the lock file (another host reads its age)."""
    import time

    exp = ExperimentDir(tmp_path / "exp")
    with exp.lock(heartbeat_s=0.05):
        os.utime(exp.path / layout.LOCK, (1, 1))  # as old as can be: only a heartbeat makes it fresh
        time.sleep(0.5)
        assert (exp.path / layout.LOCK).stat().st_mtime > 1e9
    assert not (exp.path / layout.LOCK).exists()


def test_one_provenance_for_trials_and_launches():
    v = provenance.versions()
    assert list(v)[:3] == ["gridrun", "torch", "python"] and "ray" not in v
    p = provenance.provenance()
    assert list(p)[:4] == ["gridrun", "ray", "torch", "python"]
    assert {k: p[k] for k in v} == v  # a launch's record says what a trial's config says, and more


def test_store_starts_without_torch_or_pandas():
    code = ("import sys, gridrun.storage.layout, gridrun.storage.backends, gridrun.status; "
            "print(sorted({'torch', 'pandas', 'ray'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_stray_temp_files_are_swept_once_a_launch_ends(tmp_path):
    """Ray's artifact sync copied labels_test.npy.tmp mid-write into a finished trial's folder
    (found by the probe); the launch's end removes such strays and nothing else."""
    from gridrun.storage.safeio import atomic_write_text
    from gridrun.storage.sweep import sweep_temp_files

    trial = tmp_path / "exp" / "group" / "t0"
    trial.mkdir(parents=True)
    (trial / "labels_test.npy.tmp").write_bytes(b"\x93NUMPY half")
    atomic_write_text(trial / "summary.json", "{}")
    assert sweep_temp_files(tmp_path / "exp") == 1
    assert sorted(p.name for p in trial.iterdir()) == ["summary.json"]
