"""gridrun export / restore: a slim copy that report, status, load and a relaunch read as the original."""
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

import gridrun
from gridrun.cli import main
from gridrun.export import export, restore
from gridrun.analysis import majority_vote_labels
from gridrun.report import report
from gridrun.results import load_experiment
from test_report import LABELS, fake_trial, wrong_on

HEAVY = ("model.pt", "logits_val.npy", "logits_test.npy", "params.pkl", "result.json", "progress.csv", "state.pt",
         "tuner.pkl", "node.json")


def full_experiment(exp: Path) -> Path:
    """Finished trials with weights, checkpoints and Ray's files beside them, a diverged, a failed
    and an unfinished trial, and a fused group with one member."""
    for i, wrong in enumerate([range(0, 5), range(5, 10), range(10, 15)]):
        d = fake_trial(exp, f"t{i}", wrong_on(wrong), val_acc=0.9 - 0.01 * i, model=f"m{i}")
        (d / "model.pt").write_bytes(b"w" * 5000)
        (d / "checkpoint_000000").mkdir()
        (d / "checkpoint_000000" / "state.pt").write_bytes(b"s" * 5000)
        for f in ("params.pkl", "result.json", "progress.csv", "node.json"):
            (d / f).write_text("{}")
        (d / "events.out.tfevents.1.host.1").write_bytes(b"tb")
    fake_trial(exp, "div", LABELS, val_acc=0.1, status="diverged at epoch 2", write_logits=False)
    failed = exp / "bad"
    failed.mkdir()
    (failed / "config.json").write_text(json.dumps({"model": "m0", "seed": 9}))
    (failed / "error.txt").write_text("Traceback\n  x\nRuntimeError: boom\n")
    running = exp / "half"
    running.mkdir()
    (running / "config.json").write_text(json.dumps({"model": "m0", "seed": 7, "epochs": 5}))
    (running / "metrics.csv").write_text("epoch,val_acc\n1,0.5\n")
    (exp / "fused_x").mkdir()
    (exp / "fused_x" / "fused_group.json").write_text('{"members": ["f_s0"]}')
    fake_trial(exp / "fused_x", "f_s0", wrong_on(range(3)), val_acc=0.85, model="f")
    (exp / "spec.yaml").write_text("name: full\nreport: {top_k: 3}\n")
    (exp / "linked").symlink_to(exp / "t0")  # a trial folder that is a link: broken, never followed
    (exp / "gridrun_launches.jsonl").write_text(json.dumps({"command": "gridrun launch x", "wall_s": 3}) + "\n")
    for f in ("tuner.pkl", "experiment_state-1.json", "gridrun.lock"):
        (exp / f).write_text("{}")
    return exp


def files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_export_keeps_the_slim_files_and_reads_as_the_original(tmp_path):
    exp = full_experiment(tmp_path / "runs" / "full")
    out = export(str(exp), out=str(tmp_path / "ex" / "full"), echo=lambda _: None)
    kept = files(out)
    assert not [f for f in kept if Path(f).name in HEAVY or "checkpoint" in f or "lock" in f], kept
    assert {"t0/preds_test.npy", "t0/preds_val.npy", "t0/labels_test.npy", "t0/events.out.tfevents.1.host.1",
            "fused_x/fused_group.json", "fused_x/f_s0/preds_test.npy", "bad/error.txt", "div/summary.json",
            "spec.yaml", "gridrun_launches.jsonl", "gridrun_export.json"} <= kept
    assert not any(f.startswith("half/") for f in kept)  # unsettled: a relaunch reruns it from scratch
    assert not any(f.startswith("linked/") for f in kept)
    preds = np.load(out / "t1" / "preds_test.npy")
    assert preds.dtype == np.uint8 and np.array_equal(preds, wrong_on(range(5, 10)))
    a, b = load_experiment(exp), load_experiment(out)
    same = {t.name: (t.status, t.test_acc_recomputed, t.group, t.final) for t in a.trials
            if t.name not in ("half", "linked")}
    assert {t.name: (t.status, t.test_acc_recomputed, t.group, t.final) for t in b.trials} == same
    assert b.labels_only and not a.labels_only


def test_report_status_and_load_from_an_export(tmp_path, capsys):
    exp = full_experiment(tmp_path / "runs" / "full")
    assert main(["export", "full", "--storage", str(tmp_path / "runs"), "--out", str(tmp_path / "ex" / "full")]) == 0
    assert "KB per trial" in capsys.readouterr().out
    text = report([str(tmp_path / "ex" / "full")], reports_dir=str(tmp_path / "r"), echo=lambda _: None)[0].read_text()
    assert "Top 3 by validation: **100.00%**" in text  # three members wrong on different images
    assert "voted by the member best on validation" in text and "summed softmax" not in text
    assert "recomputed from its saved predicted labels" in text
    assert "RuntimeError: boom" in text and "diverged at epoch 2" in text
    assert main(["status", str(tmp_path / "ex" / "full"), "--json"]) == 0
    snap = json.loads(capsys.readouterr().out)
    assert snap["counts"]["finished"] == 4 and snap["counts"]["failed"] == 1 and snap["best"]["config"]["model"] == "m0"
    df = gridrun.load(tmp_path / "ex" / "full")
    assert sorted(df["trial"]) == ["bad", "div", "f_s0", "t0", "t1", "t2"]  # "linked" was never exported
    assert df.set_index("trial").loc["t0", "final_val_acc"] == 0.9
    orig = report([str(exp)], reports_dir=str(tmp_path / "r0"), echo=lambda _: None)[0].read_text()
    assert "a tie goes to the class with the larger summed softmax" in orig  # logits: the rule is unchanged


def test_the_recheck_from_predicted_labels_is_as_strict_as_from_logits(tmp_path):
    exp = tmp_path / "runs" / "lie"
    fake_trial(exp, "honest", LABELS, val_acc=0.9)
    fake_trial(exp, "liar", wrong_on(range(10)), val_acc=0.8, seed=1)
    out = export(str(exp), out=str(tmp_path / "ex" / "lie"), echo=lambda _: None)
    rows = (out / "liar" / "metrics.csv").read_text().replace(",0.6666666666666666,", ",0.99,")
    (out / "liar" / "metrics.csv").write_text(rows)
    np.save(out / "honest" / "preds_val.npy", np.full(N_ := len(LABELS), 11, np.uint8))
    trials = {t.name: t for t in load_experiment(out).trials}
    assert trials["liar"].status == "broken" and "its predicted labels score 0.6667" in trials["liar"].reason
    assert trials["honest"].status == "broken" and "classes 0..9" in trials["honest"].reason, N_


def test_labels_only_ties_go_to_the_best_member_by_validation():
    best, second, third = np.array([3, 1, 5]), np.array([7, 1, 6]), np.array([7, 2, 4])
    assert list(majority_vote_labels([best, second])) == [3, 1, 5]   # 1-1 ties: the best member's class
    assert list(majority_vote_labels([second, best])) == [7, 1, 6]   # order is the validation ranking
    assert list(majority_vote_labels([best, second, third])) == [7, 1, 5]  # two votes beat the best member


def test_archive_restores_to_the_same_files_and_refuses_to_overwrite(tmp_path, capsys):
    exp = full_experiment(tmp_path / "runs" / "full")
    folder = export(str(exp), out=str(tmp_path / "ex" / "full"), echo=lambda _: None)
    archive = export(str(exp), out=str(tmp_path / "ex" / "full.tar.gz"), echo=lambda _: None)
    back = restore(str(archive), storage=str(tmp_path / "store"), echo=lambda _: None)
    # the same files but the export mark: a restored folder is an experiment again (issue 38 item 1)
    assert back == tmp_path / "store" / "full" and files(back) == files(folder) - {"gridrun_export.json"}
    assert all((back / f).read_bytes() == (folder / f).read_bytes() for f in files(back))
    assert main(["restore", str(archive), "--storage", str(tmp_path / "store")]) == 2
    assert "exists: restore with --name NEW" in capsys.readouterr().err
    assert main(["restore", str(folder), "--storage", str(tmp_path / "store"), "--name", "again"]) == 0
    assert files(tmp_path / "store" / "again") == files(back)
    # the hint's launch must find the folder: a name other than the spec's (full) is passed on
    assert f"`gridrun launch SPEC --storage {tmp_path / 'store'} --name again` runs the rest" in capsys.readouterr().out
    lines = []
    restore(str(folder), storage=str(tmp_path / "other"), echo=lines.append)
    assert lines[0].endswith(f"`gridrun launch SPEC --storage {tmp_path / 'other'}` runs the rest"), lines
    export(str(exp), out=str(folder), echo=lambda _: None)  # an earlier export is replaced
    assert files(folder) - {"gridrun_export.json"} == files(back)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "two_tops", "truncated", "not_gzip"])
def test_a_hostile_archive_is_one_line_and_restores_nothing(tmp_path, capsys, kind):
    exp = full_experiment(tmp_path / "runs" / "full")
    good = export(str(exp), out=str(tmp_path / "good.tar.gz"), echo=lambda _: None)
    bad = tmp_path / "bad.tar.gz"
    if kind == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "not_gzip":
        bad.write_text("hello")
    else:
        with tarfile.open(good) as src, tarfile.open(bad, "w:gz") as tar:
            for m in src:
                tar.addfile(m, src.extractfile(m) if m.isfile() else None)
            info = tarfile.TarInfo({"dotdot": "full/../../escaped", "absolute": "/tmp/escaped-gridrun",
                                    "symlink": "full/t0/link", "two_tops": "other/x"}[kind])
            if kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(info)
            else:
                info.size = 3
                tar.addfile(info, io.BytesIO(b"bad"))
    assert main(["restore", str(bad), "--storage", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err.strip()
    assert str(bad) in err and "\n" not in err
    assert not (tmp_path / "store" / "full").exists() and not (tmp_path / "escaped").exists()


def test_export_never_writes_into_the_experiment_or_over_other_files(tmp_path, capsys):
    exp = full_experiment(tmp_path / "runs" / "full")
    for out in (str(exp), str(exp / "inside"), str(tmp_path / "runs")):
        assert main(["export", str(exp), "--out", out]) == 2
        assert "experiment folder" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main(["export", str(exp), "--out", str(tmp_path / "mine")]) == 2
    assert "not an earlier export" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.mark.slow  # two Ray launches: ~30 s on a 2-core CPU
def test_a_launch_over_an_export_keeps_its_finished_trials_and_runs_the_rest(ray_local, synth_dir, tmp_path):
    from conftest import write_spec
    from gridrun.launch import launch

    spec = write_spec(tmp_path / "resume.yaml", synth_dir, seeds=2, grid={"model": ["tinynet_7k"]},
                      base={"epochs": 1})
    assert launch(str(spec), storage=str(tmp_path / "runs"), out=lambda _: None) == 0
    exp = tmp_path / "runs" / "resume"
    (exp / "tinynet_7k_s1" / "summary.json").unlink()  # as if the window closed before it finished
    out = export(str(exp), out=str(tmp_path / "ex" / "resume"), echo=lambda _: None)
    kept = (out / "tinynet_7k_s0" / "summary.json").read_text()
    assert not (out / "tinynet_7k_s1").exists()
    lines = []
    assert launch(str(spec), storage=str(tmp_path / "ex"), out=lines.append) == 0
    assert any("1 of 2 trials already finished (kept untouched); 1 to run" in l for l in lines), lines
    assert (out / "tinynet_7k_s0" / "summary.json").read_text() == kept
    trials = {t.name: t for t in load_experiment(out).trials}
    assert trials["tinynet_7k_s0"].test_logits is None and trials["tinynet_7k_s1"].test_logits is not None
    assert {t.status for t in trials.values()} == {"finished"}
    text = report([str(out)], reports_dir=str(tmp_path / "r"), echo=lambda _: None)[0].read_text()
    assert "voted by the member best on validation" in text  # one rule for all: a member has labels only
    h = gridrun.history(out)  # a real run's scheduled lr (onecycle) is epoch_lr; lr stays the grid's
    assert sorted(h.groupby("lr").groups) == [0.01] and (h["epoch_lr"] != 0.01).all()
    assert set(h["config"]) == {"tinynet_7k"} and h["config_id"].nunique() == 1


def test_an_unchanged_reexport_is_the_same_bytes(tmp_path):
    """What a window commits does not churn: exporting again over an earlier export of the same
    folder changes no file."""
    exp = full_experiment(tmp_path / "runs" / "full")
    out = export(str(exp), out=str(tmp_path / "ex" / "full"), echo=lambda _: None)
    first = {f: (out / f).read_bytes() for f in files(out)}
    export(str(exp), out=str(out), echo=lambda _: None)
    assert {f: (out / f).read_bytes() for f in files(out)} == first


def test_an_export_with_no_settled_trial_says_no_size_per_trial(tmp_path, capsys):
    """The probe: an export of a launch whose trials had not finished said "0 trials ... (1 KB,
    1.1 KB per trial)"."""
    exp = tmp_path / "runs" / "early"
    (exp / "t0").mkdir(parents=True)
    (exp / "t0" / "config.json").write_text(json.dumps({"model": "m0", "seed": 0, "epochs": 5}))
    (exp / "t0" / "metrics.csv").write_text("epoch,val_acc\n1,0.5\n")
    assert main(["export", "early", "--storage", str(tmp_path / "runs"), "--out", str(tmp_path / "ex")]) == 0
    out = capsys.readouterr().out
    assert "exported early: 0 trials to" in out and "per trial" not in out, out
