"""Studies (the spec's `search:`): Optuna's TPE asked a fused group at a time, re-told from the
experiment folder, its best configs confirmed with fresh seeds. Most tests drive study.py with
made-up results (a known function of the hyperparameters, no training); one launches a tiny
study on Ray from Python."""
import csv
import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest

from gridrun import spec as S
from gridrun import study
from gridrun.plan import remaining
from gridrun.record import read_manifest
from gridrun.results import TrialRecord
from gridrun.storage.layout import ExperimentDir

SPACE = {"lr": {"loguniform": [1e-4, 1]}, "weight_decay": {"loguniform": [1e-6, 1e-2]},
         "label_smoothing": {"uniform": [0, 0.3]}, "dropout": {"uniform": [0, 0.5]},
         "model": ["tinynet_7k", "one_maxpool"]}


def make_spec(**search) -> S.Spec:
    return S.parse({"name": "syn", "base": {"epochs": 4}, "fuse": 8, "grid": SPACE,
                    "search": {"trials": 48, **search}})


def objective(p: dict) -> float:
    """A known validation accuracy: best (0.99) at lr 0.05, wd 3e-4, smoothing 0.1, dropout 0.2, tinynet."""
    return 0.99 - 0.1 * ((math.log10(p["lr"]) + 1.3) ** 2 + ((math.log10(p["weight_decay"]) + 3.5) / 2) ** 2
                         + ((p["label_smoothing"] - 0.1) / 0.3) ** 2 + ((p["dropout"] - 0.2) / 0.5) ** 2) \
        - (0.01 if p["model"] == "one_maxpool" else 0)


def regret(sampler: str, seed: int) -> float:
    """The best of 48 trials asked 8 at a time (each batch told before the next), below the optimum."""
    spec = make_spec(sampler=sampler, seed=seed)
    dists, told = study.space(spec), []
    while len(told) < 48:
        points = study.ask(spec.search, dists, told, 8, 8, study.shared_axes(spec))
        told += [study.Told(p, "complete", objective(p)) for p in points]
    return 0.99 - max(t.value for t in told)


def test_tpe_beats_random_on_a_known_objective_at_a_fixed_seed_and_budget():
    tpe = [regret("tpe", s) for s in range(5)]
    rnd = [regret("random", s) for s in range(5)]
    # measured: TPE 0.0086, random 0.025 (mean regret over seeds 0-4)
    assert statistics.mean(tpe) < 0.6 * statistics.mean(rnd), (tpe, rnd)


def test_one_ask_fills_a_fused_group_of_one_architecture():
    spec = make_spec()
    points = study.ask(spec.search, study.space(spec), [], 24, 8, study.shared_axes(spec))
    assert study.shared_axes(spec) == ["model"]
    groups = [points[i:i + 8] for i in range(0, 24, 8)]
    assert all(len({p["model"] for p in g}) == 1 for g in groups)
    assert len({key for g in groups for key in (json.dumps(p, sort_keys=True) for p in g)}) == 24
    assert all(1e-4 <= p["lr"] <= 1 and p["lr"] == float(f"{p['lr']:.4g}") for p in points)  # rounded, in range


# ---------------------------------------------------------------- the folder is the record

LABELS = np.arange(30) % 10
N_VAL = 1000  # validation images of a made-up trial: its accuracy is a whole number of them (the reader recounts)


def q(v: float) -> float:
    """A validation accuracy as N_VAL images can score it (at least 5%: the objective goes negative far out)."""
    return round(min(1.0, max(0.05, v)) * N_VAL) / N_VAL


def write_trial(exp: Path, t, val_acc: float | None, status: str = "ok", test_wrong: int = 0, epochs: int = 4):
    """A trial folder as training leaves it (config, metrics, summary, scores); val_acc None: none yet."""
    d = exp / t.name
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({**t.train, "_meta": {"params": 1000}}))
    if val_acc is None:
        return
    val_acc, pred = q(val_acc), LABELS.copy()
    pred[:test_wrong] = (pred[:test_wrong] + 1) % 10
    test_acc = float((pred == LABELS).mean())
    with open(d / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_acc", "lr", "seconds",
                    "images_per_s"])
        for e in range(1, epochs + 1):
            w.writerow([e, 0.1, 0.9, 0.2, val_acc - 0.01 * (epochs - e) / epochs, test_acc, 0.01, 1.0, 100.0])
    (d / "summary.json").write_text(json.dumps({"status": status, "params": 1000, "finished_at": 1e9 + len(t.name)}))
    val_labels = np.arange(N_VAL) % 10
    val_pred = val_labels.copy()
    val_pred[round(val_acc * N_VAL):] = (val_pred[round(val_acc * N_VAL):] + 1) % 10
    for split, p, labels in (("test", pred, LABELS), ("val", val_pred, val_labels)):
        np.save(d / f"logits_{split}.npy", np.eye(10, dtype=np.float16)[p] * 4)
        np.save(d / f"labels_{split}.npy", labels.astype(np.uint8))


def record(exp: Path, spec, grid, score=objective, ran=None) -> None:
    """The manifest and spec a launch records, and folders of the trials in `ran` (all: None)."""
    ExperimentDir(exp).path.mkdir(parents=True, exist_ok=True)
    ExperimentDir(exp).write_manifest([{**t.to_dict(), "group": None} for t in grid])
    ExperimentDir(exp).write_spec(spec.raw)
    for t in grid:
        if (ran is None or t.name in ran) and not (exp / t.name).exists():
            write_trial(exp, t, score(t.axes))


NO_DATA = "/nonexistent/gridrun-study-test-data"
PRUNE = "prune" in S.Spec.model_fields  # the spec's prune: {rungs, keep} (branch prune, issue 39 item 2)


def small_spec(trials=16, prune=None, **search) -> S.Spec:
    return S.parse({"name": "syn", "base": {"epochs": 4}, "fuse": 4, "grid": SPACE,
                    "data": {"data_dir": NO_DATA},  # the made-up trials' labels are checked against their own
                    "search": {"trials": trials, **search}, **({"prune": prune} if prune else {})})


def test_a_relaunch_retells_the_folder_and_asks_the_same_next_configs(tmp_path):
    exp, spec = tmp_path / "syn", small_spec()
    grid, new = study.next_grid(spec, exp, 2, out=lambda _: None)  # 2 groups of 4
    assert new == 8 and [t.stage for t in grid] == ["search"] * 8
    record(exp, spec, grid, ran={t.name for t in grid[:6]})  # 6 finished, 2 asked and never started
    again = [study.next_grid(spec, exp, 2, out=lambda _: None)[0] for _ in range(2)]
    assert [t.to_dict() for t in again[0]] == [t.to_dict() for t in again[1]]  # same folder, same seed: same asks
    assert [t.name for t in again[0][:8]] == [t.name for t in grid]            # the asked ones kept, in order
    assert len(again[0]) == 16
    other_seed = study.next_grid(small_spec(seed=1), exp, 2, out=lambda _: None)[0]
    assert [t.name for t in other_seed[8:]] != [t.name for t in again[0][8:]]
    # what the folder says is what the sampler hears: other scores, other suggestions
    told = study.told(*study.read(exp))
    assert [t.state for t in told] == ["complete"] * 6 + ["running"] * 2
    assert told[0].value == pytest.approx(q(objective(grid[0].axes))) and told[0].steps[1] < told[0].steps[4]


def test_a_grown_budget_runs_only_the_new_trials(tmp_path):
    exp, spec = tmp_path / "syn", small_spec(trials=8)
    grid, _ = study.next_grid(spec, exp, 2, out=lambda _: None)
    record(exp, spec, grid)
    same, new = study.next_grid(spec, exp, 2, out=lambda _: None)
    assert new == 0 and [t.name for t in same] == [t.name for t in grid]
    grown = small_spec(trials=11)
    bigger, new = study.next_grid(grown, exp, 2, out=lambda _: None)
    assert new == 3 and [t.name for t in bigger[:8]] == [t.name for t in grid]
    plan = remaining(grown, bigger, exp, lambda _: None)
    assert [t.name for t in plan.todo] == [t.name for t in bigger[8:]]  # what the launch runs
    assert sorted(m.name for u in plan.units for m in u.members) == sorted(t.name for t in bigger[8:])


def test_the_search_ends_with_the_top_configs_rerun_with_fresh_seeds(tmp_path):
    exp, spec = tmp_path / "syn", small_spec(trials=8, prune={"rungs": [2]} if PRUNE else None,
                                              confirm={"top": 2, "seeds": 3})
    grid, _ = study.next_grid(spec, exp, 2, out=lambda _: None)
    record(exp, spec, grid)
    full, new = study.next_grid(spec, exp, 2, out=lambda _: None)
    confirm = full[8:]
    best2 = sorted(grid, key=lambda t: -q(objective(t.axes)))[:2]
    assert new == 6 and [t.stage for t in confirm] == ["confirm"] * 6
    assert [t.axes for t in confirm] == [best2[0].axes] * 3 + [best2[1].axes] * 3
    assert [t.train["seed"] for t in confirm] == [1, 2, 3, 1, 2, 3]  # the search trained seed 0
    if PRUNE:  # the search is pruned, its confirmation never
        assert all(list(t.train["rungs"]) == [2] and t.train["rung_keep"] == 0.5 for t in grid)
        assert all(not t.train.get("rungs") for t in confirm)
    record(exp, spec, full)
    assert study.next_grid(spec, exp, 2, out=lambda _: None)[1] == 0  # confirmed once


def test_the_launch_loop_asks_runs_and_retells_until_the_budget_is_confirmed(tmp_path):
    exp, spec = tmp_path / "syn", small_spec(trials=10, confirm={"top": 1, "seeds": 2})
    batches = []

    def run(grid, stop_after=None):  # the launch's Tune path, as far as the folder can tell
        todo = [t for t in grid if not (exp / t.name).exists()]
        batches.append([t.stage for t in todo])
        record(exp, spec, grid, ran={t.name for t in todo[:stop_after]})
        return 130 if stop_after is not None else 0

    assert study.drive(spec, exp, 1, lambda _: None, lambda g: run(g, stop_after=2)) == 130  # Ctrl-C in batch 1
    assert batches == [["search"] * 4]
    assert study.drive(spec, exp, 1, lambda _: None, run) == 0  # the relaunch goes on to the end
    assert batches[1:] == [["search"] * 6, ["search"] * 2, ["confirm"] * 2]  # 2 left over + 4 new; the last 2; confirm
    assert study.drive(spec, exp, 1, lambda _: None, run) == 0 and batches[-1] == []  # done: nothing new


def test_a_relaunch_that_only_finishes_the_search_goes_on_to_the_confirmation(tmp_path):
    exp, spec = tmp_path / "syn", small_spec(trials=4, confirm={"top": 1, "seeds": 2})
    grid, _ = study.next_grid(spec, exp, 1, out=lambda _: None)
    record(exp, spec, grid, ran={t.name for t in grid[:2]})  # the whole budget asked, half of it run, then Ctrl-C
    ran = []

    def run(g):
        ran.append(sorted(t.name for t in g if not (exp / t.name).exists()))
        record(exp, spec, g)
        return 0

    assert study.drive(spec, exp, 1, lambda _: None, run) == 0
    assert ran[0] == sorted(t.name for t in grid[2:]) and len(ran[1]) == 2 and len(ran) == 2


def rec(name: str, status: str, val: float | None, epochs: int = 4) -> TrialRecord:
    hist = [{"epoch": e, "val_acc": val} for e in range(1, epochs + 1)] if val is not None else []
    return TrialRecord(name=name, dir=None, config={}, status=status, history=hist)


def test_pruned_trials_are_told_as_pruned_and_never_counted_as_runs():
    entries = read_manifest([{"name": n, "stage": "search", "axes": {"lr": lr}}
                             for n, lr in (("a", 0.1), ("b", 0.2), ("c", 0.3))])
    records = {"a": rec("a", "finished", 0.90), "b": rec("b", "pruned", 0.95, epochs=2), "c": rec("c", "finished", 0.80)}
    told = study.told(entries, records)
    assert [t.state for t in told] == ["complete", "pruned", "complete"]
    assert told[1].value is None and told[1].steps == {1: 0.95, 2: 0.95}
    assert study.search_settled(entries, records, 3)  # a pruned trial has ended: it counts in the budget
    assert [p["lr"] for p in study.to_confirm(entries, records, 2)] == [0.1, 0.3]  # never the pruned one
    by_n, _ = study.best_so_far([records[n] for n in "abc"])
    assert by_n == [(1, 0.90), (3, 0.90)]  # the pruned trial's 0.95 is no finished run's


def test_the_report_chooses_among_confirmed_configs_and_reads_test_from_confirmation_alone(tmp_path):
    from gridrun.best import chosen_config
    from gridrun.report import report

    exp, spec = tmp_path / "syn", small_spec(trials=4, confirm={"top": 2, "seeds": 2})
    grid, _ = study.next_grid(spec, exp, 1, out=lambda _: None)
    ranked = sorted(grid, key=lambda t: -q(objective(t.axes)))
    record(exp, spec, grid, score=objective)
    full, _ = study.next_grid(spec, exp, 1, out=lambda _: None)
    ExperimentDir(exp).write_manifest([{**t.to_dict(), "group": None} for t in full])
    first, second = ranked[0], ranked[1]
    for t in full[4:]:  # the confirmation turns the search's order round; its test scores differ from the search's
        wins = t.axes == second.axes
        write_trial(exp, t, 0.97 if wins else 0.93, test_wrong=3 if wins else 0)
    best = chosen_config(str(exp))
    assert best["val_acc"][0] == pytest.approx(0.97) and best["val_acc"][2] == 2
    # the search's own runs of this config scored 100% on test: none of it is averaged in
    assert best["test_acc"][0] == pytest.approx(0.9) and best["test_acc"][2] == 2
    assert set(best["trials"]) == {t.name for t in full[4:] if t.axes == second.axes}
    text = report([str(exp)], reports_dir=str(tmp_path / "rep"), echo=lambda _: None)[0].read_text()
    assert "holds the confirmation runs alone" in text and "## Study" in text
    assert f"Chosen: **{', '.join(f'{k}={v}' for k, v in second.axes.items())}**" in text
    assert "### Confirmed configs" in text and (tmp_path / "rep" / "syn_study.png").is_file()
    # too few finished search trials for the importance evaluator: the section says so, not left out
    assert "### Hyperparameter importance\n\nNot computed: 4 finished search trial(s); the evaluator needs at least 5" in text
    assert first.name not in text.split("## Runs")[1]  # the search's runs are not the table's runs
    from gridrun.status import snapshot

    said = snapshot(exp)["best"]  # `gridrun status` says the same: the confirmation's, n=2 (not 3 with the search's)
    assert said["n"] == 2 and set(said["trials"]) == set(best["trials"])


def test_one_confirmed_config_is_named_by_its_searched_values(tmp_path):
    """confirm.top 1: best, the report and status name the chosen config by the values the search
    chose, not by its model alone (nothing varies among one config's seeds)."""
    from gridrun.best import best, chosen_config
    from gridrun.status import snapshot

    exp = tmp_path / "syn"
    spec = small_spec(trials=4, prune={"rungs": [2], "keep": 0.5}, confirm={"top": 1, "seeds": 2})
    grid, _ = study.next_grid(spec, exp, 1, out=lambda _: None)
    record(exp, spec, grid, score=objective)
    full, _ = study.next_grid(spec, exp, 1, out=lambda _: None)
    ExperimentDir(exp).write_manifest([{**t.to_dict(), "group": None} for t in full])
    for t in full[4:]:
        write_trial(exp, t, 0.97)
    lr = f"lr={full[4].axes['lr']}"
    assert lr in chosen_config(str(exp))["label"] and lr in best(str(exp))
    assert "rungs" not in chosen_config(str(exp))["label"]  # the search's rungs are not a searched value
    assert lr in snapshot(exp)["best"]["label"]


# ---------------------------------------------------------------- the spec

@pytest.mark.parametrize("change, says", [
    ({"samples": 5}, "drop samples"),
    ({"seeds": 3}, "search.confirm"),
    ({"grid": [SPACE]}, "one mapping of axes"),
    ({"early_stop": {"grace_period": 1}}, "prune: {rungs"),
    ({"data": {"val_size": 0}}, "val_size > 0"),
    ({"search": {"trials": 4, "sampler": "cmaes"}}, "search.sampler"),
])
def test_a_bad_study_spec_is_one_line(change, says):
    raw = {"name": "syn", "base": {"epochs": 4}, "grid": SPACE, "search": {"trials": 4}, **change}
    with pytest.raises(S.SpecError) as e:
        S.parse(raw, "s.yaml")
    assert says in str(e.value) and "\n" not in str(e.value)


def test_a_study_spec_counts_its_budget_and_confirmation():
    assert S.n_trials(make_spec(confirm={"top": 3, "seeds": 5})) == 48 + 15


# ---------------------------------------------------------------- from Python

def test_gridrun_load_honours_gridrun_storage(tmp_path, monkeypatch):
    import gridrun

    exp, spec = tmp_path / "store" / "syn", small_spec(trials=4)
    grid, _ = study.next_grid(spec, exp, 1, out=lambda _: None)
    record(exp, spec, grid)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GRIDRUN_STORAGE", str(tmp_path / "store"))
    assert list(gridrun.load("syn")["status"]) == ["finished"] * 4
    assert len(gridrun.history("syn")) == 16


def test_gridrun_launch_runs_a_study_from_python(ray_local, synth_dir, tmp_path, monkeypatch):
    import gridrun

    monkeypatch.chdir(tmp_path)
    spec = {"name": "pystudy", "data": {"val_size": 200, "subset": 600, "data_dir": str(synth_dir)},
            "base": {"epochs": 2, "batch_size": 50, "optimizer": "adam", "augment": "none", "model": "tinynet_7k"},
            "grid": {"lr": {"loguniform": [0.001, 0.03]}}, "fuse": 3, "resources": {"cpu": 1},
            "search": {"trials": 3}}  # one fused group of 3, with prune's rungs: 1 kept after epoch 1
    if PRUNE:
        spec["prune"] = {"rungs": [1], "keep": 0.3}
    exp = gridrun.launch(spec, storage=str(tmp_path / "runs"), max_concurrent=1)
    assert exp.exit_code == 0 and exp.name == "pystudy"
    df = exp.load()
    assert df["group"].nunique() == 1 and df["lr"].nunique() == 3
    kept = df[df["status"] == "finished"]
    if PRUNE:
        assert len(kept) == 1 and sorted(df["status"]) == ["finished", "pruned", "pruned"]  # ceil(0.3 x 3) kept
        assert list(df[df["status"] == "pruned"]["epochs_done"]) == [1, 1]
    else:
        assert len(kept) == 3
    best = exp.best()  # pruned trials are no runs: the choice is among the finished ones
    top = kept.sort_values("final_val_acc", ascending=False, kind="stable").iloc[0]
    assert best["trials"] == [top["trial"]] and best["val_acc"] == (top["final_val_acc"], None, 1)
    assert len(exp.history()) == 2 * len(kept) + (len(df) - len(kept))
    again = gridrun.launch(spec, storage=str(tmp_path / "runs"), fuse=3)  # the budget is met: nothing new runs
    assert again.exit_code == 0 and list(again.load()["trial"]) == list(df["trial"])
    from gridrun.storage.layout import ExperimentDir

    said = [l["command"] for l in ExperimentDir(tmp_path / "runs" / "pystudy").read_launches()]
    assert said[0] == (f"gridrun.launch(<spec dict 'pystudy': as run in the experiment's spec.yaml>, "
                       f"storage={str(tmp_path / 'runs')!r}, max_concurrent=1)")  # was a deleted temp file's path


# ---------------------------------------------------------------- plots of sampled values

def test_sampled_values_are_plotted_where_they_are_on_decade_ticks(tmp_path, monkeypatch):
    """A random grid's lr (12 draws): no tick per value, no sideways offsets; the study's space plot:
    decade ticks on log axes, points at their values, coloured by another axis."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator

    from gridrun import report as rep
    from gridrun import reportplots, studyview

    saved = {}

    def keep(plt_, fig, path):
        fig.canvas.draw()
        saved[Path(path).name] = fig
        Path(path).write_bytes(b"png")
        return Path(path).name

    monkeypatch.setattr(reportplots, "_save", keep)
    monkeypatch.setattr(studyview, "_save", keep)
    exp, spec = tmp_path / "syn", small_spec(trials=12)
    grid, _ = study.next_grid(spec, exp, 3, out=lambda _: None)
    record(exp, spec, grid)
    rep.report([str(exp)], reports_dir=str(tmp_path / "r"), echo=lambda _: None)
    lr = next(a for a in saved["syn_hparams.png"].axes if a.get_xlabel() == "lr (log scale)")
    xs = sorted(float(line.get_xdata()[0]) for line in lr.lines if line.get_marker() == "o")
    assert xs == sorted(t.axes["lr"] for t in grid)  # exactly at the sampled values: no dodge
    assert len(lr.get_xticks()) < 12                  # not one tick per sampled value
    space = saved["syn_space.png"]
    lr = next(a for a in space.axes if a.get_xlabel() == "lr (log scale)")
    assert lr.get_xscale() == "log" and isinstance(lr.xaxis.get_major_locator(), LogLocator)
    assert sorted(lr.collections[0].get_offsets()[:, 0]) == pytest.approx(sorted(t.axes["lr"] for t in grid))
    assert any(a.get_ylabel() in SPACE for a in space.axes)  # a colour bar names the axis that colours
    plt.close("all")


def test_a_slim_export_asks_what_its_experiment_would(tmp_path):
    from gridrun.export import export

    exp, spec = tmp_path / "syn", small_spec(trials=12)
    grid, _ = study.next_grid(spec, exp, 1, out=lambda _: None)
    record(exp, spec, grid, ran={t.name for t in grid[:3]})  # 3 finished, 1 asked and not started
    slim = export(str(exp), out=str(tmp_path / "slim"), echo=lambda _: None)
    assert not list(Path(slim).rglob("logits_*.npy"))  # labels only: the sampler needs none of the logits
    mine, theirs = (study.next_grid(spec, p, 1, out=lambda _: None)[0] for p in (exp, Path(slim)))
    assert [t.to_dict() for t in theirs] == [t.to_dict() for t in mine] and len(mine) == 8
