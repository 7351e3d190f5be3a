"""gridrun report on fabricated experiment folders with known answers."""
import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridrun.cli import main
from gridrun.analysis import majority_vote, rank_by_validation
from gridrun.report import report
from gridrun.results import load_experiment
from gridrun.storage.safeio import MAX_LARGE

N = 30
LABELS = np.arange(N) % 10
N_VAL = 2000  # enough validation images that any val_acc a test gives is scored to within 2.5e-4
VAL_LABELS = np.arange(N_VAL) % 10


def logits_for(pred: np.ndarray, conf: float = 4.0) -> np.ndarray:
    out = np.zeros((len(pred), 10), np.float16)
    out[np.arange(len(pred)), pred] = conf
    return out


def fake_trial(exp: Path, name: str, test_pred, val_acc: float, model="m", seed=0, params=1000,
               status="ok", epochs=2, write_logits=True, test_conf=4.0):
    d = exp / name
    d.mkdir(parents=True)
    cfg = {"model": model, "seed": seed, "epochs": epochs, "batch_size": 64, "scheduler": "none",
           "augment": "none", "data_dir": str(exp / "no-data-here"), "_meta": {"params": params}}
    (d / "config.json").write_text(json.dumps(cfg))
    test_acc = float((np.asarray(test_pred) == LABELS).mean())
    with open(d / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_acc", "lr", "seconds",
                    "images_per_s"])
        for e in range(1, epochs + 1):
            w.writerow([e, 0.1, 0.9, 0.2, val_acc, test_acc, 0.01, 1.0, 100.0])
    (d / "summary.json").write_text(json.dumps({"status": status, "params": params}))
    if write_logits:
        np.save(d / "logits_test.npy", logits_for(np.asarray(test_pred), test_conf))
        val_labels, val_pred = val_scores(val_acc)
        np.save(d / "logits_val.npy", logits_for(val_pred))
        np.save(d / "labels_test.npy", LABELS.astype(np.uint8))
        np.save(d / "labels_val.npy", val_labels.astype(np.uint8))
    return d


def val_scores(val_acc: float) -> tuple[np.ndarray, np.ndarray]:
    """(validation labels, predictions scoring val_acc on them): none for a NaN val_acc (val_size: 0)."""
    if val_acc != val_acc:
        return VAL_LABELS[:0], VAL_LABELS[:0]
    pred = VAL_LABELS.copy()
    wrong = N_VAL - round(val_acc * N_VAL)
    pred[:wrong] = (pred[:wrong] + 1) % 10
    return VAL_LABELS, pred


def wrong_on(idx) -> np.ndarray:
    pred = LABELS.copy()
    pred[list(idx)] = (pred[list(idx)] + 1) % 10
    return pred


def test_three_models_wrong_on_different_images_vote_to_100(tmp_path):
    exp = tmp_path / "vote"
    for i, wrong in enumerate([range(0, 5), range(5, 10), range(10, 15)]):
        fake_trial(exp, f"t{i}", wrong_on(wrong), val_acc=0.9 - 0.01 * i, model=f"m{i}")
    text = (report([str(exp)], reports_dir=str(tmp_path / "rep"), echo=lambda _: None)[0]).read_text()
    assert "Top 3 by validation: **100.00%**" in text
    assert "mean single run: 83.33" in text


def test_ties_go_to_larger_summed_softmax():
    a = np.zeros((1, 10), np.float32); a[0, 3] = 5.0  # confident 3
    b = np.zeros((1, 10), np.float32); b[0, 7] = 1.0  # hesitant 7
    assert majority_vote([a, b])[0] == 3
    assert majority_vote([b, a])[0] == 3  # order does not matter
    c = np.zeros((1, 10), np.float32); c[0, 7] = 0.5
    assert majority_vote([a, b, c])[0] == 7  # two votes beat one confident vote


def test_selection_ignores_test_accuracy(tmp_path):
    exp = tmp_path / "sel"
    fake_trial(exp, "best_on_test", LABELS, val_acc=0.80)            # 100% test, worst val
    fake_trial(exp, "best_on_val", wrong_on(range(6)), val_acc=0.95)  # 80% test, best val
    fake_trial(exp, "middle", wrong_on(range(3)), val_acc=0.90)
    e = load_experiment(exp)
    assert [t.name for t in rank_by_validation(e.trials)] == ["best_on_val", "middle", "best_on_test"]
    text = report([str(exp)], top_k=1, reports_dir=str(tmp_path / "r"), echo=lambda _: None)[0].read_text()
    assert "Top 1 by validation: **80.00%**" in text and "members: best_on_val)" in text
    assert "best single run by validation: best_on_val" in text


def test_half_finished_experiment_reports_what_finished(tmp_path):
    exp = tmp_path / "half"
    fake_trial(exp, "0000_done", LABELS, val_acc=0.9)
    running = exp / "0001_running"
    running.mkdir()
    (running / "config.json").write_text(json.dumps({"model": "m", "seed": 1, "epochs": 5}))
    (running / "metrics.csv").write_text("epoch,val_acc\n1,0.5\n")
    failed = exp / "0002_failed"
    failed.mkdir()
    (failed / "config.json").write_text(json.dumps({"model": "m", "seed": 2}))
    (failed / "error.txt").write_text("Traceback (most recent call last):\n  File x\nRuntimeError: boom\n")
    fake_trial(exp, "0003_diverged", LABELS, val_acc=0.1, status="diverged at epoch 2", write_logits=False)
    (exp / "gridrun_trials.json").write_text(json.dumps(
        [{"name": n, "train": {"model": "m"}} for n in ("0000_done", "0001_running", "0002_failed",
                                                        "0003_diverged", "0004_pending")]))
    text = report([str(exp)], reports_dir=str(tmp_path / "r"), echo=lambda _: None)[0].read_text()
    assert "5 trials; 1 diverged, 1 failed, 1 finished, 1 pending, 1 unfinished" in text
    assert "| 0001_running  | unfinished | epoch 1 of 5" in text
    assert "RuntimeError: boom" in text and "diverged at epoch 2" in text and "0004_pending" in text
    assert "100.00 (n=1)" in text  # the finished trial is in the table


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_bad_logits_reported_and_rest_still_comes(tmp_path, damage):
    exp = tmp_path / "bad"
    fake_trial(exp, "good", LABELS, val_acc=0.9)
    d = fake_trial(exp, "hurt", LABELS, val_acc=0.95)
    if damage == "missing":
        (d / "logits_test.npy").unlink()
    else:
        raw = (d / "logits_test.npy").read_bytes()
        (d / "logits_test.npy").write_bytes(raw[: len(raw) // 2])
    text = report([str(exp)], reports_dir=str(tmp_path / "r"), echo=lambda _: None)[0].read_text()
    assert "| hurt    | broken   | finished, but its logits/labels are missing or truncated" in text
    assert "members: good)" in text  # the ensemble and tables come from the rest


def test_reported_accuracy_must_match_the_logits(tmp_path):
    exp = tmp_path / "lie"
    d = fake_trial(exp, "liar", wrong_on(range(10)), val_acc=0.9)
    rows = (d / "metrics.csv").read_text().replace(",0.6666666666666666,", ",0.99,")
    (d / "metrics.csv").write_text(rows)
    e = load_experiment(exp)
    assert e.trials[0].status == "broken" and "reported test acc 0.99" in e.trials[0].reason


def test_rerun_gives_the_same_report(tmp_path):
    exp = tmp_path / "same"
    for i in range(3):
        fake_trial(exp, f"t{i}", wrong_on(range(i)), val_acc=0.9 + 0.01 * i, seed=i)
    out = tmp_path / "r"
    first = report([str(exp)], reports_dir=str(out), echo=lambda _: None)[0]
    md, csv_text, png = first.read_text(), first.with_suffix(".csv").read_text(), (out / "same_curves.png").read_bytes()
    report([str(exp)], reports_dir=str(out), echo=lambda _: None)
    assert first.read_text() == md and first.with_suffix(".csv").read_text() == csv_text
    assert (out / "same_curves.png").read_bytes() == png
    assert "99.00 ± 1.00 (n=3)" not in md and "96.67 ± 3.33 (n=3)" in md  # mean ± sample std over seeds


def test_cli_report_errors_are_one_line(tmp_path, capsys):
    assert main(["report", "nope", "--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no experiment 'nope'" in err and "\n" not in err


def test_reports_are_named_by_their_folder_never_by_the_spec_inside(tmp_path):
    """An old copy (NAME.prev-1) and a foreign folder whose spec claims another name (or a path)
    each get their own report, inside reports/."""
    runs, rep = tmp_path / "runs", tmp_path / "reports"
    for folder in ("exp", "exp.prev-1", "evil"):
        fake_trial(runs / folder, "t0", LABELS, val_acc=0.9)
    (runs / "exp.prev-1" / "spec.yaml").write_text("name: exp\n")
    (runs / "evil" / "spec.yaml").write_text("name: ../../../tmp/pwned\ndescription: hi\n")
    written = report([], storage=str(runs), reports_dir=str(rep), echo=lambda _: None)
    assert sorted(p.name for p in written) == ["evil.md", "exp.md", "exp.prev-1.md"]
    assert all(p.parent == rep for p in written)
    assert not (tmp_path / "tmp").exists()


@pytest.mark.parametrize("argv,needle", [(["--top-k", "0"], "--top-k"), (["--top-k", "-3"], "--top-k"),
                                         (["--top-k", "x"], "--top-k")])
def test_bad_report_options_are_one_line(tmp_path, capsys, argv, needle):
    fake_trial(tmp_path / "runs" / "e", "t0", LABELS, val_acc=0.9)
    with pytest.raises(SystemExit) as e:
        main(["report", "e", "--storage", str(tmp_path / "runs"), *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err


def test_out_naming_a_folder_or_a_path_under_a_file_is_one_line(tmp_path, capsys):
    fake_trial(tmp_path / "runs" / "e", "t0", LABELS, val_acc=0.9)
    (tmp_path / "afile").write_text("x")
    for out in (str(tmp_path), str(tmp_path / "afile" / "r.md")):
        assert main(["report", "e", "--storage", str(tmp_path / "runs"), "--out", out]) == 2
        err = capsys.readouterr().err.strip()
        assert "--out" in err or "cannot write" in err, err
        assert "\n" not in err


def test_top_k_larger_than_the_runs_uses_them_all(tmp_path):
    exp = tmp_path / "k"
    for i in range(3):
        fake_trial(exp, f"t{i}", wrong_on(range(i)), val_acc=0.9 - 0.01 * i, seed=i)
    text = report([str(exp)], top_k=50, reports_dir=str(tmp_path / "r"), echo=lambda _: None)[0].read_text()
    assert "Top 3 by validation" in text


def test_the_study_table_is_set_beside_gridruns_rows(tmp_path):
    exp = tmp_path / "ref"
    for seed in (0, 1):
        fake_trial(exp, f"a_s{seed}", wrong_on(range(seed)), val_acc=0.9, model="m1", seed=seed)
    fake_trial(exp, "b_s0", LABELS, val_acc=0.8, model="m2")
    (exp / "reference.csv").write_text("label,model,batch_size,test_acc\nNet A,m1,64,99.10\nNet C,m3,64,98.00\n")
    text = report([str(exp)], reports_dir=str(tmp_path / "r"), echo=lambda _: None)[0].read_text()
    assert "## Beside the study" in text
    row_a = next(l for l in text.splitlines() if l.startswith("| Net A"))
    assert "99.10" in row_a and "98.33 ± 2.36 (n=2)" in row_a
    assert "no run" in next(l for l in text.splitlines() if l.startswith("| Net C"))


def test_load_and_history_as_pandas(tmp_path):
    import gridrun

    exp = tmp_path / "pd"
    for seed in (0, 1):
        fake_trial(exp, f"t_s{seed}", LABELS, val_acc=0.9 + seed / 100, seed=seed)
    df = gridrun.load(exp)
    assert list(df["trial"]) == ["t_s0", "t_s1"] and set(df["status"]) == {"finished"}
    assert df["final_val_acc"].tolist() == [0.9, 0.91] and df["params"].tolist() == [1000, 1000]
    h = gridrun.history(exp)
    assert len(h) == 4 and h.groupby("trial")["epoch"].max().tolist() == [2, 2]


def test_status_from_files_counts_and_best_config(tmp_path, capsys):
    exp = tmp_path / "runs" / "st"
    fake_trial(exp, "a_s0", LABELS, val_acc=0.90, model="a", seed=0)
    fake_trial(exp, "a_s1", LABELS, val_acc=0.92, model="a", seed=1)
    fake_trial(exp, "b_s0", LABELS, val_acc=0.95, model="b", seed=0)
    failed = exp / "c_s0"
    failed.mkdir()
    (failed / "error.txt").write_text("Traceback\n  x\nValueError: nope\n")
    running = exp / "d_s0"
    running.mkdir()
    (running / "config.json").write_text(json.dumps({"model": "d", "epochs": 5, "seed": 0}))
    (running / "metrics.csv").write_text("epoch,val_acc,seconds,images_per_s\n1,0.5,2.0,900\n")
    assert main(["status", "st", "--storage", str(tmp_path / "runs"), "--json"]) == 0
    snap = json.loads(capsys.readouterr().out)
    assert snap["counts"]["finished"] == 3 and snap["counts"]["failed"] == 1 and snap["counts"]["unfinished"] == 1
    assert snap["launch"] is None and snap["best"]["config"]["model"] == "b" and snap["best"]["n"] == 1
    assert main(["status", "st", "--storage", str(tmp_path / "runs")]) == 0
    text = capsys.readouterr().out
    assert "no launch running" in text and "failed   c_s0" in text and "best config so far by validation: model=b" in text


def test_fused_members_are_read_from_their_group_folders(tmp_path):
    """Members live in their group's folder; a member regrouped by a later launch is read from
    the folder where it finished."""
    exp = tmp_path / "fz"
    for g in ("fused_a", "fused_b"):
        (exp / g).mkdir(parents=True)
        (exp / g / "fused_group.json").write_text("{}")
    fake_trial(exp / "fused_b", "m_s0", LABELS, val_acc=0.9)
    stale = exp / "fused_a" / "m_s0"
    stale.mkdir()
    (stale / "config.json").write_text(json.dumps({"model": "m", "epochs": 2}))
    fake_trial(exp / "fused_a", "m_s1", LABELS, val_acc=0.8, seed=1)
    e = load_experiment(exp)
    assert {(t.name, t.status, t.group) for t in e.trials} == {("m_s0", "finished", "fused_b"),
                                                              ("m_s1", "finished", "fused_a")}


def test_a_mean_that_rounds_up_to_the_target_is_a_miss_with_its_digits(tmp_path):
    """Two runs at 99.49% and 99.50% average 99.495%: the table prints 99.50 (two decimals),
    so the failed target check says why (the mean to three decimals); a hit stays a bare tick.
    Their metrics.csv has no seconds column (a hand-made folder): the report still comes."""
    exp = tmp_path / "near"
    n = 20_000
    labels = np.arange(n) % 10
    for i, wrong in enumerate([102, 100]):  # 99.49% and 99.50% of 20,000
        d = fake_trial(exp, f"t{i}", LABELS, val_acc=0.9, seed=i, epochs=1)
        pred = labels.copy()
        pred[:wrong] = (pred[:wrong] + 1) % 10
        np.save(d / "logits_test.npy", logits_for(pred))
        np.save(d / "labels_test.npy", labels.astype(np.uint8))
        (d / "metrics.csv").write_text("epoch,train_loss,train_acc,val_loss,val_acc,test_acc\n"
                                       f"1,0.1,0.9,0.2,0.9,{1 - wrong / n}\n")
    (exp / "spec.yaml").write_text("name: near\nconstraints: {target_test_acc: 0.995}\n")
    text = report([str(exp)], reports_dir=str(tmp_path / "r"), echo=lambda _: None)[0].read_text()
    assert "99.50 ± 0.01 (n=2)" in text and "✗ (99.495)" in text
    (exp / "spec.yaml").write_text("name: near\nconstraints: {target_test_acc: 0.9949}\n")
    text = report([str(exp)], reports_dir=str(tmp_path / "r2"), echo=lambda _: None)[0].read_text()
    assert "✓" in text and "✗" not in text


def test_the_summary_names_the_validation_choice_not_the_configs_that_pass_on_test(tmp_path):
    """Config a has the better validation accuracy and misses the test target; config b passes
    on test with a worse validation accuracy. The answer is a (a miss), and b's pass is
    reported as chosen by nothing; a config over the parameter budget is never the answer."""
    exp = tmp_path / "answer"
    for s in (0, 1):
        fake_trial(exp, f"a_s{s}", wrong_on(range(10)), val_acc=0.99, model="a", seed=s)
        fake_trial(exp, f"b_s{s}", LABELS, val_acc=0.98, model="b", seed=s)
        fake_trial(exp, f"c_s{s}", LABELS, val_acc=0.999, model="c", seed=s, params=50_000)
    (exp / "spec.yaml").write_text("name: answer\nconstraints: {max_params: 20000, target_test_acc: 0.995}\n")
    text = report([str(exp)], reports_dir=str(tmp_path / "r"), echo=lambda _: None)[0].read_text()
    line = next(l for l in text.splitlines() if l.startswith("Chosen on validation"))
    assert "within params ≤ 20,000: a," in line and "it misses the target of 99.50%" in line, line
    assert "1 of 3 configs meet every constraint" in line and "the test set chose none of them" in line


def test_a_tie_on_validation_is_said_and_not_broken_by_test(tmp_path):
    exp = tmp_path / "tie"
    for s in (0, 1):
        fake_trial(exp, f"a_s{s}", wrong_on(range(10)), val_acc=0.99, model="a", seed=s)
        fake_trial(exp, f"b_s{s}", LABELS, val_acc=0.99, model="b", seed=s)
    (exp / "spec.yaml").write_text("name: tie\nconstraints: {target_test_acc: 0.995}\n")
    text = report([str(exp)], reports_dir=str(tmp_path / "r"), echo=lambda _: None)[0].read_text()
    line = next(l for l in text.splitlines() if l.startswith("Chosen on validation"))
    assert "It ties on validation with b" in line and "test breaks no tie" in line, line
    assert ": a," in line  # the first listed, not b, whose test accuracy is the better one


# ---------------------------------------------------------------- reading never crashes (issue 31 item 4)

def _npy_claiming_a_huge_shape() -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f2", "fortran_order": False, "shape": (10 ** 12, 10)})
    return buf.getvalue() + b"\x00" * 64


CORRUPTIONS = {
    "not_json": lambda p: p.write_bytes(b"{not json \xff\x00"),
    "wrong_types": lambda p: p.write_text(json.dumps({"model": 5, "epochs": "x", "lr": "fast", "status": "ok",
                                                      "params": "many", "_meta": {"params": "x", "device": [1]},
                                                      "members": 3})),
    "json_list": lambda p: p.write_text("[1, \"x\", null]"),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: max(1, len(p.read_bytes()) // 2)]),
    "empty": lambda p: p.write_bytes(b""),
    "huge": lambda p: os.truncate(p, MAX_LARGE + 1),  # sparse: costs nothing to make, 64 MB to read
    "fifo": lambda p: (p.unlink(), os.mkfifo(p)),
    "symlink": lambda p: (p.unlink(), p.symlink_to("/dev/zero")),
    "dangling": lambda p: (p.unlink(), p.symlink_to(p.parent / "nowhere")),
    "directory": lambda p: (p.unlink(), p.mkdir()),
    "npy_huge_shape": lambda p: p.write_bytes(_npy_claiming_a_huge_shape()),
    "npy_of_text": lambda p: np.save(p.open("wb"), np.array(["a", "b"])),
    "csv_rows": lambda p: p.write_text("epoch,val_acc,test_acc\n1,0.5\n2,0.5,0.9,7\nx,y,z\n"),
    "deep_nesting": lambda p: p.write_text("[" * 200_000 + "]" * 200_000),
}
# Where each kind of file lives in the fixture below, and whose it is (None: the experiment's).
FILES = {"config.json": "t0", "metrics.csv": "t0", "summary.json": "t0", "logits_test.npy": "t0",
         "logits_val.npy": "t0", "labels_test.npy": "t0", "labels_val.npy": "t0", "preds_test.npy": "p0",
         "preds_val.npy": "p0", "result.json": "t1", "error.txt": "bad", "fused_group.json": "fused_g", "gridrun_trials.json": None,
         "spec.yaml": None, "gridrun_launches.jsonl": None, "reference.csv": None, "gridrun.lock": None}
NOT_REGULAR = ("huge", "fifo", "symlink", "directory")


def _all_kinds_experiment(exp: Path) -> Path:
    """Finished trials with logits and with predicted labels only, a failed one, a fused group's
    member, a pending one in the manifest, and every experiment file."""
    fake_trial(exp, "t0", wrong_on(range(2)), val_acc=0.9, model="m", seed=0)
    t1 = fake_trial(exp, "t1", wrong_on(range(3)), val_acc=0.92, model="m", seed=1)
    (t1 / "result.json").write_text("".join(json.dumps({"time_this_iter_s": 2.0 + i, "iterations_since_restore": i})
                                            + "\n" for i in (1, 2)))  # Ray's, read by status for its ETA
    p0 = fake_trial(exp, "p0", wrong_on(range(4)), val_acc=0.8, model="n")
    for split in ("val", "test"):
        np.save(p0 / f"preds_{split}.npy", np.load(p0 / f"logits_{split}.npy").argmax(1).astype(np.uint8))
        (p0 / f"logits_{split}.npy").unlink()
    (exp / "bad").mkdir()
    (exp / "bad" / "error.txt").write_text("Traceback\n  x\nRuntimeError: boom\n")
    (exp / "fused_g").mkdir()
    (exp / "fused_g" / "fused_group.json").write_text('{"members": ["f0"]}')
    fake_trial(exp / "fused_g", "f0", LABELS, val_acc=0.85, model="f")
    names = ["t0", "t1", "p0", "bad", "f0", "pending0"]
    configs = {c.parent.name: {k: v for k, v in json.loads(c.read_text()).items() if k != "_meta"}
               for c in exp.rglob("config.json")}  # the manifest plans what each trial's config.json says
    (exp / "gridrun_trials.json").write_text(json.dumps([{"name": n, "train": configs.get(n, {"model": "m"}),
                                                          "group": None} for n in names]))
    (exp / "spec.yaml").write_text("name: kinds\nconstraints: {max_params: 5000, target_test_acc: 0.9}\n")
    (exp / "gridrun_launches.jsonl").write_text(json.dumps({"command": "gridrun launch k", "wall_s": 3.0,
                                                            "provenance": {"git": {"commit": "abc"}}}) + "\n")
    (exp / "reference.csv").write_text("label,model,test_acc\nA,m,99.0\n")
    (exp / "gridrun.lock").write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename}))
    return exp


@pytest.fixture(scope="module")
def kinds_base(tmp_path_factory):
    exp = _all_kinds_experiment(tmp_path_factory.mktemp("kinds") / "kinds")
    return exp, {t.name: t.status for t in load_experiment(exp).trials}


def _read_every_way(exp: Path, out: Path):
    """Everything that reads a folder: the report, status (text and JSON), load and history."""
    import gridrun
    from gridrun.status import render as render_status, snapshot, strict_json

    e = load_experiment(exp)
    md = report([str(exp)], reports_dir=str(out), echo=lambda _: None)[0]
    snap = snapshot(exp)
    render_status(snap)
    json.loads(strict_json(snap), parse_constant=lambda c: pytest.fail(f"{c} in status --json"))
    gridrun.load(exp), gridrun.history(exp)
    return e, md.read_text()


@pytest.mark.parametrize("name", list(FILES))
def test_every_kind_of_malformed_file_is_read_without_a_crash(name, kinds_base, tmp_path, monkeypatch):
    """Each kind of file in turn, each corruption: no exception from report, status, load or
    history; the file's trial is broken (or, for a file it does not need, as before) with a reason
    naming the file; every other trial reads as before; a FIFO never blocks (a hang is caught by
    pytest-timeout)."""
    import shutil

    import gridrun.reportplots as plots

    monkeypatch.setattr(plots, "plots", lambda exp, out: [])  # plots read the same records; seconds saved
    base, before = kinds_base
    owner = FILES[name]
    for kind, corrupt in CORRUPTIONS.items():
        exp = tmp_path / kind / "kinds"
        shutil.copytree(base, exp, symlinks=True)
        path = next(p for p in exp.rglob(name) if owner is None or p.parent.name == owner)
        corrupt(path)
        e, text = _read_every_way(exp, tmp_path / kind / "r")
        after = {t.name: t for t in e.trials}
        for n, status in before.items():
            if n == owner or (owner is None and n == "pending0"):
                continue  # a damaged manifest forgets the trial only it names
            assert after[n].status == status, (name, kind, n, after[n].reason)
        if name == "result.json":  # Ray's timing file: status's ETA loses it, no trial changes
            assert after[owner].status == before[owner], (kind, after[owner].reason)
        if owner in ("t0", "p0"):
            t = after[owner]
            assert t.status in ("broken", before[owner]), (name, kind)
            if kind != "truncated":  # a metrics.csv cut at a row's end is a shorter history, not a bad file
                assert t.status == "broken" and t.reason in text, (name, kind, t.status)  # the report says why
            if kind in NOT_REGULAR or kind == "dangling":
                assert name in t.reason and ("at most" in t.reason or kind != "huge"), (name, kind, t.reason)
        if owner is None and name != "gridrun.lock" and kind in NOT_REGULAR + ("not_json",):
            assert e.problems or "could not be read" in text, (name, kind)


def test_report_of_every_experiment_goes_on_past_a_broken_one(tmp_path, capsys, monkeypatch):
    """One experiment whose trials saved different test labels (and no data files to decide):
    the others are reported, and the broken one is named with why."""
    monkeypatch.chdir(tmp_path)  # reports/ is written here
    runs = tmp_path / "runs"
    fake_trial(runs / "a_good", "t0", LABELS, val_acc=0.9)
    fake_trial(runs / "b_bad", "t0", LABELS, val_acc=0.9)
    d = fake_trial(runs / "b_bad", "t1", LABELS, val_acc=0.9, seed=1)
    np.save(d / "labels_test.npy", ((LABELS + 1) % 10).astype(np.uint8))  # one against one: no majority
    fake_trial(runs / "c_good", "t2", LABELS, val_acc=0.9, seed=2)
    d = fake_trial(runs / "c_good", "t3", LABELS, val_acc=0.9, seed=3)
    np.save(d / "labels_test.npy", ((LABELS + 1) % 10).astype(np.uint8))  # two against one: t3 is broken
    fake_trial(runs / "c_good", "t0", LABELS, val_acc=0.9)
    assert main(["report", "--storage", str(runs)]) == 1  # something failed; the rest was reported
    out, err = capsys.readouterr()
    assert "wrote reports/a_good.md" in out and "wrote reports/c_good.md" in out and "b_bad.md" not in out
    assert sorted(p.name for p in (tmp_path / "reports").glob("*.md")) == ["a_good.md", "c_good.md"]
    assert "1 of 3 experiments could not be read" in err and "b_bad" in err and "different test labels" in err
    t3 = next(t for t in load_experiment(runs / "c_good").trials if t.name == "t3")
    assert t3.status == "broken" and "differs from the one 2 of 3 finished trials saved" in t3.reason
    assert err.count("\n") == 1


def test_no_choice_without_validation(tmp_path, capsys):
    """val_size: 0: every validation value is missing (NaN or empty), so no config is bold or
    chosen, status names no best config, and --json stays strict JSON."""
    runs = tmp_path / "runs"
    exp = runs / "noval"
    for s in (0, 1):
        fake_trial(exp, f"a_s{s}", wrong_on(range(3)), val_acc=float("nan"), model="a", seed=s)
        fake_trial(exp, f"b_s{s}", LABELS, val_acc=float("nan"), model="b", seed=s)
    (exp / "spec.yaml").write_text("name: noval\ndata: {val_size: 0}\nconstraints: {target_test_acc: 0.95}\n")
    text = report([str(exp)], reports_dir=str(tmp_path / "r"), echo=lambda _: None)[0].read_text()
    table = text.split("## Results by config")[1].split("##")[0]
    assert "**" not in table and "Chosen on validation" not in text and "No config is chosen" in text
    assert "no ensemble is reported" in text and "_curves.png" not in text  # no empty figure of validation curves
    assert main(["status", "noval", "--storage", str(runs)]) == 0
    assert "best config" not in capsys.readouterr().out
    assert main(["status", "noval", "--storage", str(runs), "--json"]) == 0
    raw = capsys.readouterr().out
    snap = json.loads(raw, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert snap["best"] is None and "NaN" not in raw
    import gridrun.analysis as analysis
    from gridrun.results import load_experiment as load
    assert analysis.chosen(analysis.config_summaries(load(exp).trials)) == (None, [])


def test_a_report_summarizes_the_configs_once_and_renders_that(tmp_path, monkeypatch):
    """analysis.py computes the numbers once per report (config summaries, checks, choices);
    the tables, summary line, plots and ensemble only render them."""
    import gridrun.analysis as analysis

    exp = tmp_path / "once"
    for s in (0, 1):
        fake_trial(exp, f"a_s{s}", wrong_on(range(s)), val_acc=0.9, model="a", seed=s)
        fake_trial(exp, f"b_s{s}", LABELS, val_acc=0.8, model="b", seed=s, params=3000)
    (exp / "spec.yaml").write_text("name: once\nconstraints: {max_params: 2000, target_test_acc: 0.9}\n")
    (exp / "reference.csv").write_text("label,model,test_acc\nNet A,a,99.0\n")
    calls = []
    real = analysis.config_summaries
    monkeypatch.setattr(analysis, "config_summaries", lambda *a, **k: calls.append(1) or real(*a, **k))
    text = report([str(exp)], reports_dir=str(tmp_path / "r"), echo=lambda _: None)[0].read_text()
    assert len(calls) == 1
    assert "Chosen on validation among the configs within params ≤ 2,000: a," in text
    assert "98.33 ± 2.36 (n=2)" in next(line for line in text.splitlines() if line.startswith("| Net A"))


def test_metrics_never_overwrite_config_columns(tmp_path):
    """The grid's lr and epochs stay the config's in load and history (the epoch's scheduled lr is
    epoch_lr, the epochs run epochs_done), beside a readable config label and a stable config id."""
    import gridrun
    from gridrun.identity import config_id

    exp = tmp_path / "cols"
    for lr in (0.05, 0.2):
        for s in (0, 1):
            d = fake_trial(exp, f"lr{lr}_s{s}", LABELS, val_acc=0.9, seed=s, epochs=2)
            cfg = json.loads((d / "config.json").read_text())
            (d / "config.json").write_text(json.dumps({**cfg, "lr": lr, "epochs": 5}))  # stopped after 2 of 5
    h = gridrun.history(exp)
    assert sorted(h.groupby("lr").groups) == [0.05, 0.2] and set(h["epoch_lr"]) == {0.01}
    assert sorted(h.groupby("config")["trial"].nunique().items()) == [("m lr=0.05", 2), ("m lr=0.2", 2)]
    df = gridrun.load(exp)
    assert set(df["epochs"]) == {5} and set(df["epochs_done"]) == {2} and set(df["lr"]) == {0.05, 0.2}
    assert df.groupby("config_id")["trial"].count().tolist() == [2, 2]
    cfg = json.loads((exp / "lr0.05_s1" / "config.json").read_text())
    cfg.pop("_meta")
    from gridrun.config import with_defaults
    assert df.set_index("trial").loc["lr0.05_s1", "config_id"] == config_id(with_defaults(cfg))


def test_best_is_the_reports_validation_choice_as_text_yaml_and_command(tmp_path, capsys, monkeypatch):
    """Config vanilla has the better validation mean within the budget; tinynet the better test
    accuracy; a config over the parameter budget has the best validation of all: `best` names
    vanilla, as the report's summary line does, with mean ± std and n; its YAML block is a spec
    whose trials are that config; its command trains the first seed's trial from its file."""
    from gridrun.identity import config_id
    from gridrun.spec import load_trials

    runs = tmp_path / "runs"
    exp = runs / "pick"
    for s in (0, 1):
        fake_trial(exp, f"v_s{s}", wrong_on(range(10)), val_acc=0.95 + s / 100, model="vanilla", seed=s)
        fake_trial(exp, f"t_s{s}", LABELS, val_acc=0.90, model="tinynet_7k", seed=s)
        fake_trial(exp, f"big_s{s}", LABELS, val_acc=0.99, model="tinynet_7k", seed=s, params=90_000, epochs=3)
    (exp / "spec.yaml").write_text("name: pick\nconstraints: {max_params: 20000, target_test_acc: 0.9}\n")
    monkeypatch.chdir(tmp_path)
    assert main(["best", "pick"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("pick: vanilla epochs=2 (config ") and "within params ≤ 20,000" in text, text
    assert "val 95.50 ± 0.71 (n=2), test 66.67 ± 0.00 (n=2)" in text
    assert "trials: v_s0, v_s1" in text
    rep = report(["pick"], storage=str(runs), reports_dir=str(tmp_path / "r"), echo=lambda _: None)[0].read_text()
    assert "Chosen on validation among the configs within params ≤ 20,000: vanilla," in rep
    assert main(["best", "pick", "--command"]) == 0
    assert capsys.readouterr().out.strip() == "gridrun train --config runs/pick/v_s0/config.json"
    assert main(["best", "pick", "--yaml"]) == 0
    block = capsys.readouterr().out
    (tmp_path / "best.yaml").write_text(block)
    _, trials = load_trials(tmp_path / "best.yaml")
    chosen = json.loads((exp / "v_s0" / "config.json").read_text())
    chosen.pop("_meta")
    from gridrun.config import with_defaults
    assert {config_id(t.train) for t in trials} == {config_id(with_defaults(chosen))}
    assert sorted(t.train["seed"] for t in trials) == [0, 1]


def test_best_refuses_when_nothing_can_be_chosen(tmp_path, capsys):
    runs = tmp_path / "runs"
    fake_trial(runs / "nv", "a_s0", LABELS, val_acc=float("nan"))
    assert main(["best", "nv", "--storage", str(runs)]) == 2
    err = capsys.readouterr().err
    assert "no config of nv can be chosen" in err and "val_size: 0" in err and err.count("\n") == 1


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(FILES)), keep=st.integers(0, 400),
       data=st.binary(max_size=300) | st.text("0123456789,.-e\n{}[]\":nulaN ", max_size=120).map(str.encode))
def test_random_bytes_in_any_file_never_crash_a_reader(kinds_base, tmp_path_factory, name, data, keep):
    """Property: any bytes (random, or a prefix of the real file followed by random ones) in any
    kind of file leave every other trial as it was and raise nothing in load, status or pandas."""
    import shutil

    import gridrun
    from gridrun.status import snapshot, strict_json

    base, before = kinds_base
    exp = tmp_path_factory.mktemp("prop") / "kinds"
    shutil.copytree(base, exp, symlinks=True)
    owner = FILES[name]
    path = next(p for p in exp.rglob(name) if owner is None or p.parent.name == owner)
    path.write_bytes(path.read_bytes()[:keep] + data)
    after = {t.name: t.status for t in load_experiment(exp).trials}
    json.loads(strict_json(snapshot(exp)))
    gridrun.load(exp), gridrun.history(exp)
    assert {n: s for n, s in after.items() if n not in (owner, "pending0")} == \
           {n: s for n, s in before.items() if n not in (owner, "pending0")}


def test_a_pending_trial_has_the_config_id_of_its_finished_seeds(tmp_path):
    """The manifest's config of a trial not yet started is filled with defaults like a trial's
    own config.json, so its config and config_id match its config's other seeds."""
    import gridrun

    exp = tmp_path / "pend"
    fake_trial(exp, "m_s0", LABELS, val_acc=0.9)
    cfg = json.loads((exp / "m_s0" / "config.json").read_text())
    cfg.pop("_meta")
    (exp / "gridrun_trials.json").write_text(json.dumps([{"name": "m_s0", "train": cfg},
                                                         {"name": "m_s1", "train": {**cfg, "seed": 1}}]))
    df = gridrun.load(exp).set_index("trial")
    assert df.loc["m_s1", "status"] == "pending" and df.loc["m_s1", "config_id"] == df.loc["m_s0", "config_id"]


def test_a_bare_name_is_looked_up_under_storage_before_the_working_folder(tmp_path, monkeypatch):
    """`gridrun report ex2 --storage r3` read a folder ./ex2 in the working directory instead of
    r3/ex2 (found by the probe); a path (./ex2, a/b) is still a path first."""
    from gridrun.results import find_experiments, resolve_experiment
    from gridrun.storage.layout import ExperimentDir

    monkeypatch.chdir(tmp_path)
    for d in (tmp_path / "ex2", tmp_path / "r3" / "ex2"):
        d.mkdir(parents=True)
        ExperimentDir(d).write_manifest([])
    assert find_experiments(["ex2"], "r3") == [Path("r3") / "ex2"]
    assert resolve_experiment("ex2", "r3") == Path("r3") / "ex2"
    assert find_experiments(["./ex2"], "r3") == [Path("./ex2")]
    assert find_experiments(["ex2"], "nowhere") == [Path("ex2")]  # no such name there: the folder here


def test_a_killed_launch_is_counted_and_its_unknown_time_said(tmp_path):
    """A launch recorded by the next one as killed (no wall time): the report counts it and says
    its time is missing from the total, instead of a total that silently leaves it out."""
    exp = tmp_path / "runs" / "k"
    fake_trial(exp, "t0", LABELS, val_acc=0.9)
    (exp / "gridrun_launches.jsonl").write_text(
        json.dumps({"command": "gridrun launch k.yaml", "started_at": 1.0, "outcome": "killed: it ended without "
                    "recording itself"}) + "\n"
        + json.dumps({"command": "gridrun launch k.yaml", "cluster": "c", "wall_s": 12.0, "exit": 0,
                      "finished_at": 99.0}) + "\n")
    text = report([str(exp)], reports_dir=str(tmp_path / "r"), echo=lambda _: None)[0].read_text()
    assert "wall time 12 s over 2 launch(es) (1 killed without a record of its end: its time is not counted)." in text
