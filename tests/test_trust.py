"""Issue 38 items 1-4 and 10: an export never replaces a live experiment; the test and validation
labels, the validation accuracy, a trial's config and its metric values are checked, so that no
saved file steers a number; one reader of a trial's state for every command, and a broken
finished trial is rerun; every command printed for a shell is quoted; a fused member's seconds
are its share of the group's."""
import csv
import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import gridrun
from conftest import make_data_dir, write_spec
from gridrun.cli import main
from gridrun.data import load_arrays, stratified_split, write_idx
from gridrun.export import export, restore
from gridrun.results import load_experiment
from gridrun.storage.layout import EPOCH_FIELDS
from test_export import files, full_experiment
from test_report import LABELS, fake_trial, logits_for


# ---------------------------------------------------------------- helpers

def true_labels(train: dict, arrays: dict) -> dict:
    """The validation and test labels a trial of `train` is scored against, from the data."""
    _, val_idx = stratified_split(arrays["train_labels"], train["val_size"], train["split_seed"])
    return {"val": arrays["train_labels"][val_idx], "test": arrays["test_labels"]}


def write_trial(d: Path, train: dict, labels: dict, wrong: int = 0, test_acc=None) -> Path:
    """A finished trial folder of `train` whose predictions are right but on `wrong` test images."""
    d.mkdir(parents=True)
    preds = {s: np.array(l, np.int64) for s, l in labels.items()}
    preds["test"][:wrong] = (preds["test"][:wrong] + 1) % 10
    acc = {s: float((preds[s] == labels[s]).mean()) for s in labels}
    (d / "config.json").write_text(json.dumps({**train, "_meta": {"params": 7000}}))
    with open(d / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(EPOCH_FIELDS)
        for e in range(1, train["epochs"] + 1):
            w.writerow([e, 0.3, 0.9, 0.2, acc["val"], acc["test"] if test_acc is None else test_acc, 0.01, 2.0, 300.0])
    (d / "summary.json").write_text(json.dumps({"status": "ok", "params": 7000}))
    for s in ("val", "test"):
        np.save(d / f"logits_{s}.npy", logits_for(preds[s]))
        np.save(d / f"labels_{s}.npy", np.asarray(labels[s], np.uint8))
    return d


def planned_experiment(tmp_path: Path, data_dir: Path, seeds: int = 2):
    """A spec on `data_dir` (tinynet_7k x seeds, 1 epoch), its experiment recorded as a launch
    records it, and an honest finished folder for each trial: (spec path, experiment, trials)."""
    from gridrun.experiment import record_plan
    from gridrun.plan import load, remaining

    path = write_spec(tmp_path / "g.yaml", data_dir, seeds=seeds, grid={"model": ["tinynet_7k"]},
                      base={"epochs": 1})
    spec, grid = load(str(path), [])
    exp = tmp_path / "runs" / "g"
    record_plan(exp, spec, remaining(spec, grid, None, lambda _: None), None)
    arrays = load_arrays(str(data_dir))
    for t in grid:
        write_trial(exp / t.name, t.train, true_labels(t.train, arrays), wrong=t.train["seed"] + 1)
    return path, exp, grid


# ---------------------------------------------------------------- item 1: exports never replace a live folder

def test_an_export_never_replaces_a_restored_then_grown_experiment(tmp_path, capsys):
    """Before: the restored folder kept the export mark, so exporting over it replaced it and
    deleted the trial trained since (exit 0). After: restoring clears the mark, and the content
    decides: any file an export does not write (weights, logits, a lock) means it is no export."""
    exp = full_experiment(tmp_path / "runs" / "full")
    folder = export(str(exp), out=str(tmp_path / "ex" / "full"), echo=lambda _: None)
    back = restore(str(folder), storage=str(tmp_path / "store"), echo=lambda _: None)
    grown = fake_trial(back, "t9", LABELS, val_acc=0.8, seed=9)  # trained after the restore
    (grown / "model.pt").write_bytes(b"w")
    assert main(["export", str(exp), "--out", str(back)]) == 2
    assert "not an earlier export" in capsys.readouterr().err
    assert (grown / "model.pt").exists() and (grown / "summary.json").exists()
    assert not (back / "gridrun_export.json").exists()  # a restored folder is an experiment, not an export
    # the mark alone never counts: an export a launch then grew in place holds files no export writes
    (folder / "t9").mkdir()
    (folder / "t9" / "logits_test.npy").write_bytes(b"x")
    assert main(["export", str(exp), "--out", str(folder)]) == 2
    assert (folder / "t9" / "logits_test.npy").exists()
    shutil.rmtree(folder / "t9")
    kept = files(folder)
    assert main(["export", str(exp), "--out", str(folder)]) == 0  # a pure earlier export is replaced
    assert files(folder) == kept


# ---------------------------------------------------------------- item 2: checks no saved file steers

def test_the_data_decides_the_test_labels_whatever_the_first_trial_saved(tmp_path):
    """Before: the first finished trial's labels_test.npy had another length than the data's, so
    the predictions were checked against the labels the trials saved: two forged trials read
    100.00 and the honest one was broken. After: the data's labels count; the forged are broken."""
    data = make_data_dir(tmp_path / "data")
    arrays = load_arrays(str(data))
    exp = tmp_path / "forged"
    train = {"model": "tinynet_7k", "epochs": 1, "seed": 0, "val_size": 200, "split_seed": 0, "data_dir": str(data)}
    labels = true_labels(train, arrays)
    for i in (0, 1):  # 30 labels of their own, all predicted right
        write_trial(exp / f"a_forged{i}", {**train, "seed": i}, {"val": labels["val"], "test": LABELS})
    write_trial(exp / "b_honest", {**train, "seed": 2}, labels, wrong=40)
    trials = {t.name: t for t in load_experiment(exp).trials}
    assert trials["b_honest"].status == "finished" and trials["b_honest"].test_acc_recomputed == 0.9
    for i in (0, 1):
        t = trials[f"a_forged{i}"]
        assert t.status == "broken" and "labels_test.npy" in t.reason, t.reason


def test_without_the_data_the_labels_checksum_recorded_at_launch_decides(tmp_path):
    """Before: with the data gone, the labels most trials saved counted: two trials that saved the
    same forged labels made the honest one broken. After: the launch records a checksum of each
    trial's validation and test labels in the manifest; saved labels that differ are broken."""
    data = make_data_dir(tmp_path / "data")
    _, exp, grid = planned_experiment(tmp_path, data, seeds=3)
    entries = json.loads((exp / "gridrun_trials.json").read_text())
    assert all(set(e["labels"]) == {"val", "test"} for e in entries)
    for t in grid[1:]:  # two of three forged alike: the test labels shifted, predictions that match them
        d = exp / t.name
        forged = (np.load(d / "labels_test.npy").astype(np.int64) + 1) % 10
        np.save(d / "labels_test.npy", forged.astype(np.uint8))
        np.save(d / "logits_test.npy", logits_for(forged))
        _set_final(d, "test_acc", "1.0")
    shutil.rmtree(data)
    trials = {t.name: t for t in load_experiment(exp).trials}
    assert trials[grid[0].name].status == "finished", trials[grid[0].name].reason
    for t in grid[1:]:
        assert trials[t.name].status == "broken" and "checksum recorded at launch" in trials[t.name].reason


def _two_configs(exp: Path) -> None:
    """Config a (val 0.9) and config b (val 0.8, lr 0.1), their manifest as a launch writes it."""
    fake_trial(exp, "a_s0", LABELS, val_acc=0.9, model="a")
    d = fake_trial(exp, "b_s0", LABELS, val_acc=0.8, model="b")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "lr": 0.1}))
    entries = []
    for n in ("a_s0", "b_s0"):
        cfg = json.loads((exp / n / "config.json").read_text())
        cfg.pop("_meta")
        entries.append({"name": n, "train": cfg, "group": None})
    (exp / "gridrun_trials.json").write_text(json.dumps(entries))


def _set_final(d: Path, key: str, value: str) -> None:
    rows = list(csv.DictReader(open(d / "metrics.csv", newline="")))
    rows[-1][key] = value
    with open(d / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


@pytest.mark.parametrize("edit", ["val_1e308", "val_0.95", "config_lr", "train_acc_1.5"])
def test_an_edited_file_never_steers_the_choice(tmp_path, capsys, edit):
    """Before: b's metrics.csv edited to val_acc 1e308 (or 0.95, which its predictions do not
    score) made b the choice ("inf ± inf"); its config.json saying lr 0.3 while the manifest
    planned 0.1 was chosen as "lr=0.3"; a train accuracy of 1.5 was reported. After: each makes
    b broken, named with why, and a is chosen."""
    runs = tmp_path / "runs"
    _two_configs(runs / "e")
    d = runs / "e" / "b_s0"
    if edit == "config_lr":
        cfg = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps({**cfg, "lr": 0.3}))
        _set_final(d, "val_acc", "0.95")  # and the predictions to match: only the config is off
        val_labels = np.load(d / "labels_val.npy")
        np.save(d / "logits_val.npy", logits_for(np.where(np.arange(len(val_labels)) < 100, (val_labels + 1) % 10,
                                                          val_labels)))
    elif edit == "train_acc_1.5":
        _set_final(d, "train_acc", "1.5")
    else:
        _set_final(d, "val_acc", edit.split("_")[1])
    trials = {t.name: t for t in load_experiment(runs / "e").trials}
    assert trials["a_s0"].status == "finished"
    assert trials["b_s0"].status == "broken", (edit, trials["b_s0"].reason)
    why = {"val_1e308": "val_acc", "val_0.95": "validation", "config_lr": "manifest", "train_acc_1.5": "train_acc"}
    assert why[edit] in trials["b_s0"].reason, trials["b_s0"].reason
    assert main(["best", "e", "--storage", str(runs)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("e: a ") and "inf" not in out and "lr=0.3" not in out, out


# ---------------------------------------------------------------- item 3: one reader, broken trials rerun

def test_a_broken_finished_trial_is_broken_everywhere_and_rerun(tmp_path):
    """Before: a truncated logits file made a trial broken for report and best but finished for
    status, load and launch, which never reran it. After: one reader: status, load, the report
    and the launch's plan all say broken, and the next launch (and its dry run) reruns it."""
    from gridrun.launch import launch
    from gridrun.plan import load, remaining
    from gridrun.status import snapshot

    data = make_data_dir(tmp_path / "data")
    path, exp, grid = planned_experiment(tmp_path, data)
    raw = (exp / grid[1].name / "logits_test.npy").read_bytes()
    (exp / grid[1].name / "logits_test.npy").write_bytes(raw[: len(raw) // 2])
    assert snapshot(exp)["counts"]["broken"] == 1
    assert dict(zip(gridrun.load(exp)["trial"], gridrun.load(exp)["status"])) == {grid[0].name: "finished",
                                                                                   grid[1].name: "broken"}
    lines = []
    spec, planned = load(str(path), [])
    plan = remaining(spec, planned, exp, lines.append)
    assert [t.name for t in plan.todo] == [grid[1].name] and plan.done == {grid[0].name}
    assert any("broken" in l and grid[1].name in l and "rerun" in l for l in lines), lines
    lines = []
    assert launch(str(path), dry_run=True, storage=str(tmp_path / "runs"), out=lines.append) == 0
    text = "\n".join(lines)
    assert "1 of 2 trials already finished" in text and f"{grid[1].name}" in text and "rerun" in text, text


def test_data_replaced_under_a_finished_experiment_is_refused_not_rerun(tmp_path):
    """Before: the data files replaced at the same path (the same count of labels, other labels) made
    every finished trial broken, and the launch planned to rerun them all on the new data. After: the
    saved labels still match the checksums recorded at launch, so the data moved, not the trials:
    the plan is refused in one line naming how to put the data back."""
    from gridrun.errors import GridrunError
    from gridrun.plan import load, remaining

    data = make_data_dir(tmp_path / "data")
    path, exp, grid = planned_experiment(tmp_path, data)
    labels = np.load(exp / grid[0].name / "labels_test.npy")
    f = data / "t10k-labels-idx1-ubyte.gz"
    write_idx(f, np.roll(labels, 1).astype(np.uint8))  # other data, same count, written later:
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))  # this process reads it again
    spec, planned = load(str(path), [])
    with pytest.raises(GridrunError) as e:
        remaining(spec, planned, exp, lambda _: None)
    said = str(e.value)
    assert "2 finished trial(s)" in said and "not the ones the experiment ran on" in said and "\n" not in said
    assert f"put the MNIST files it ran on back in {data}" in said and "--name NEW" in said


def test_a_plan_says_how_its_settled_trials_ended():
    """A study's relaunch said "8 of 24 trials already finished" of 2 finished and 6 pruned."""
    from types import SimpleNamespace

    from gridrun.plan import Remaining

    trials = tuple(SimpleNamespace(name=n) for n in "abcd")
    plan = Remaining(trials, (), frozenset("abc"), (), (("finished", 1), ("pruned", 2)))
    assert plan.settled() == "3 of 4 trials already ended (1 finished, 2 pruned)"
    assert Remaining(trials, (), frozenset("a"), (), (("finished", 1),)).settled() == "1 of 4 trials already finished"
    assert "all 4 trials have ended" in Remaining(trials, (), frozenset("abcd"), (), (("pruned", 4),)).nothing_left("e")


# ---------------------------------------------------------------- item 4: commands quoted for a shell

def test_every_printed_command_is_quoted_for_a_shell(tmp_path, capsys, monkeypatch):
    """Before: `best --command` printed the path of a trial folder named `$(touch MARK)` bare, and
    `eval` of it ran the command; restore's and a relaunch's hints were as bare. After: each is
    shlex-quoted: the shell reads back exactly the words gridrun meant."""
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    fake_trial(runs / "e", "$(touch MARK) s0", LABELS, val_acc=0.9)
    assert main(["best", "e", "--storage", str(runs), "--command"]) == 0
    line = capsys.readouterr().out.strip()
    assert shlex.split(line) == ["gridrun", "train", "--config", "runs/e/$(touch MARK) s0/config.json"], line
    subprocess.run(["bash", "-c", 'gridrun() { :; }; eval "$LINE"'], env={**os.environ, "LINE": line}, check=True)
    assert not (tmp_path / "MARK").exists()
    # restore's hint, with a storage folder that a shell would split and expand
    folder = export(str(runs / "e"), out=str(tmp_path / "ex" / "e"), echo=lambda _: None)
    odd = str(tmp_path / "a b$(touch MARK2)")
    hint = []
    restore(str(folder), storage=odd, name="e2", echo=hint.append)
    command = hint[0].split("`")[1]
    assert shlex.split(command) == ["gridrun", "launch", "SPEC", "--storage", odd, "--name", "e2"], command
    # a relaunch's hint, for an experiment in that folder
    from gridrun.plan import _relaunch

    words = shlex.split(_relaunch(os.path.join(odd, "e2")).strip("`"))
    assert words[-4:] == ["--name", "e2", "--storage", os.path.relpath(odd)] and "$(touch" in words[2], words


# ---------------------------------------------------------------- item 10: a fused member's seconds

def test_fused_members_seconds_are_their_share_of_the_groups(synth_dir, tmp_path):
    """Before: each of K members recorded the group's whole epoch time, so a sum over members (the
    train_seconds of load) counted it K times. After: each records its share, summing to the group's."""
    from gridrun.train import Folders, train

    base = dict(model="tinynet_7k", epochs=1, batch_size=20, val_size=100, subset=200, data_dir=str(synth_dir),
                threads=1, fuse_strategy="loop")
    group = []
    res = train([dict(base, seed=s, out_dir=str(tmp_path / "g" / f"m{s}")) for s in (0, 1)],
                Folders(on_epoch=lambda m, _: group.append(m["seconds"])))
    member = [r["history"][0]["seconds"] for r in res]
    assert member[0] == member[1] and sum(member) == pytest.approx(group[0], abs=2e-3), (member, group)
    df = gridrun.load(tmp_path / "g")
    assert df["train_seconds"].sum() == pytest.approx(round(group[0], 1), abs=0.11)
