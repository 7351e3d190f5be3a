"""The benchmark harness (`python -m benchmarks`): it lists every benchmark, refuses an unknown
name in one line, and a tiny benchmark writes rows of the one layout (no timing is checked)."""
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the harness runs from the repository root; so does this test

import benchmarks  # noqa: E402
from benchmarks.__main__ import main  # noqa: E402


def harness(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_lists_every_benchmark_with_its_interface():
    files = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_"))
    assert len(files) >= 10
    p = harness()
    assert p.returncode == 0, p.stderr
    listed = [line.split()[0] for line in p.stdout.splitlines()[1:]]
    assert listed == files
    for name in files:  # each one a module the harness can run, with a one-line description
        m = importlib.import_module(f"benchmarks.{name}")
        assert callable(m.add_args) and callable(m.run), name
        assert benchmarks.names()[name] != "(no description)", name


def test_unknown_name_is_one_line():
    p = harness("fusd", "--device", "cpu")
    assert p.returncode == 2
    assert p.stdout == "" and len(p.stderr.strip().splitlines()) == 1
    assert "no benchmark 'fusd'" in p.stderr and "did you mean 'fused'" in p.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_where_there_is_none_is_one_line(capsys):
    assert main(["grouped_conv", "--device", "cuda", "--ks", "1"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "use --device auto or cpu" in err


def test_tiny_benchmark_writes_rows_of_the_layout(tmp_path, capsys):
    out = tmp_path / "rows.jsonl"
    argv = ["grouped_conv", "--out", str(out), "--ks", "1,2", "--reps", "1", "--batch", "2", "--size", "6"]
    assert main(argv) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6  # K in (1, 2) x (separate, grouped, vmap)
    assert all(tuple(r) == benchmarks.ROW for r in rows)
    assert {r["bench"] for r in rows} == {"grouped_conv"} and {r["device"] for r in rows} == {"cpu"}
    for r in rows:
        if r["variant"] == "separate":  # the alternative everything is set against
            assert r["baseline"] is None and r["ratio"] is None
        else:  # ms: lower is better, so the ratio is baseline / value
            base = next(b for b in rows if b["variant"] == "separate" and b["config"] == r["config"])
            assert r["baseline"] == "separate" and r["baseline_value"] == base["value"]
            assert r["ratio"] == pytest.approx(base["value"] / r["value"])
    printed = capsys.readouterr().out.splitlines()  # a line of the run's facts, then one per row
    assert len(printed) == 7 and "device cpu" in printed[0] and "x separate" in printed[2]


# ---- benchmarks/search.py: search methods at equal wall time -----------------------------------------

from benchmarks import search  # noqa: E402


def _run(method, seed, obs):
    """A method's run as search.run_method returns it: (seconds from start, val_acc, trial, epoch)."""
    return {"method": method, "seed": seed, "t0": 0.0, "rc": 0, "load": [1.0, 1.0], "obs": sorted(obs)}


def test_search_figures_best_so_far_and_time_to_target():
    obs = [(30.0, 0.90, "a", 1), (50.0, 0.96, "a", 2), (55.0, 0.95, "b", 1), (90.0, 0.975, "b", 2),
           (130.0, 0.99, "c", 1)]
    assert search.best_at(obs, 10) is None and search.best_at(obs, 60) == 0.96 and search.best_at(obs, 120) == 0.975
    assert search.time_to(obs, 0.97, 120) == 90.0 and search.time_to(obs, 0.985, 120) is None  # 130 s: over budget
    assert search.curve(obs, 120) == [(30.0, 0.90), (50.0, 0.96), (90.0, 0.975)]
    assert search.median_time([40.0, None, 10.0]) == 40.0 and search.median_time([None, None, 10.0]) is None


def test_search_rows_set_each_method_against_ray_tune_and_tpe_against_random():
    runs = [_run("random", 0, [(20.0, 0.95, "r1", 1), (80.0, 0.97, "r1", 2)]),
            _run("tpe", 0, [(10.0, 0.96, "t1", 1), (40.0, 0.98, "t2", 2)]),
            _run("tune", 0, [(60.0, 0.94, "u1", 1), (100.0, 0.972, "u1", 2)]),
            _run("random", 1, [(50.0, 0.96, "r1", 1)]),
            _run("tpe", 1, [(30.0, 0.971, "t1", 1)]),
            _run("tune", 1, [(90.0, 0.975, "u1", 1)])]
    rows = search.rows(runs, budget=120, target=0.97)
    one = {(r["variant"], r["config"].get("seed"), r["metric"], r["baseline"]): r for r in rows}
    acc, secs = "best val_acc within 120 s", "seconds to val_acc 97%"
    tpe, rnd, tune = search.LABELS["tpe"], search.LABELS["random"], search.LABELS["tune"]
    r = one[(tpe, 0, secs, tune)]  # seconds: lower is better, so the ratio is tune's / tpe's
    assert (r["value"], r["baseline_value"]) == (40.0, 100.0) and r["unit"] == "s"
    r = one[(tpe, 0, acc, tune)]
    assert (r["value"], r["baseline_value"]) == (0.98, 0.972) and r["config"]["trials"] == 2
    r = one[(rnd, 1, secs, tune)]
    assert r["value"] is None and r["note"] == "not reached in 120 s"
    assert one[(tune, 0, acc, None)]["baseline"] is None  # the baseline is set against nothing
    # over the seeds: the median of (40, 30) and (100, 90); random reached it in one seed of two
    med = f"median {secs}"
    assert one[(tpe, None, med, tune)]["value"] == 35.0 and one[(tpe, None, med, tune)]["baseline_value"] == 95.0
    assert one[(tpe, None, med, rnd)]["baseline_value"] is None  # random's median seed never got there
    assert one[(rnd, None, med, tune)]["note"] == "1 of 2 seeds reached it"
    assert one[(tpe, None, f"mean {acc}", rnd)]["baseline_value"] == pytest.approx((0.97 + 0.96) / 2)
    assert not any((rnd, None, f"mean {acc}", rnd) == k[:4] for k in one)  # nothing against itself


def test_search_harness_computes_the_ratios(tmp_path, monkeypatch, capsys):
    """Through the harness: rows of the one layout, with ratios computed from the baselines."""
    fake = {("random", 0): [(30.0, 0.97, "r", 1)], ("tune", 0): [(60.0, 0.97, "u", 1), (70.0, 0.98, "u", 2)]}
    monkeypatch.setattr(search, "subset_data", lambda a, folder: folder)
    monkeypatch.setattr(search, "run_method", lambda m, s, a, work, data: _run(m, s, fake[(m, s)]))
    out = tmp_path / "rows.jsonl"
    assert main(["search", "--out", str(out), "--methods", "random,tune", "--seeds", "0", "--budget", "100",
                 "--trace", str(tmp_path / "trace.json")]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(tuple(r) == benchmarks.ROW for r in rows)
    by = {(r["variant"], r["metric"], r["config"].get("seed")): r for r in rows}
    r = by[(search.LABELS["random"], "seconds to val_acc 97%", 0)]
    assert r["ratio"] == pytest.approx(2.0)  # 60 s / 30 s
    r = by[(search.LABELS["random"], "best val_acc within 100 s", 0)]
    assert r["ratio"] == pytest.approx(0.97 / 0.98)
    trace = json.loads((tmp_path / "trace.json").read_text())
    assert [c for c in trace["runs"][1]["curve"]] == [[60.0, 0.97], [70.0, 0.98]]
    table = capsys.readouterr().out  # the markdown tables printed after the rows
    assert "| 0 | (a) gridrun random | 1.0 → 1.0 | 30 s | 1 | 1 | 97.00% (0.99×) | 30 s (2.00×) |" in table
    assert "| (a) gridrun random | 97.00% | 30 s | 1 of 1 | 2.00× | - |" in table
    # the same figures again from the trace alone, nothing run
    assert main(["search", "--from-trace", str(tmp_path / "trace.json"), "--budget", "100"]) == 0
    assert "| (a) gridrun random | 97.00% | 30 s | 1 of 1 | 2.00× | - |" in capsys.readouterr().out


def test_search_bad_method_is_one_line(capsys):
    assert main(["search", "--methods", "random,optuna"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "optuna is not one of random, tpe, tune" in err


def test_search_reads_each_scored_epoch_with_its_wall_time(tmp_path, synth_dir):
    """gridrun's side: every epoch a trial scored, with the time it was written (the trial
    folder's TensorBoard scalars); Tune's side: what the train function reported."""
    import time

    from gridrun.train import train

    t0 = time.time()
    res = train({"model": "tinynet_7k", "epochs": 2, "batch_size": 50, "subset": 200, "val_size": 100,
                 "data_dir": str(synth_dir), "augment": "none", "out_dir": str(tmp_path / "exp" / "t1")})
    got = sorted(search.gridrun_obs(tmp_path / "exp"))
    assert [(o[2], o[3]) for o in got] == [("t1", 1), ("t1", 2)]
    assert [o[1] for o in got] == pytest.approx([h["val_acc"] for h in res["history"]])
    assert t0 <= got[0][0] <= got[1][0] <= time.time()
    tdir = tmp_path / "tune" / "train_fn_0001"
    tdir.mkdir(parents=True)
    (tdir / "result.json").write_text('{"val_acc": 0.5, "epoch": 1, "wall": 12.5, "trial_id": "0001"}\n'
                                      '{"val_acc": 0.7, "ep')  # a line cut by a kill
    assert search.tune_obs(tmp_path / "tune") == [(12.5, 0.5, "0001", 1)]


@pytest.mark.slow  # two Ray starts in subprocesses, two 2-epoch configs each: ~1-2 min on the busy 2-core CPU
def test_search_runs_random_and_ray_tune_for_a_micro_budget(tmp_path, synth_dir, monkeypatch):
    """The real methods on tiny synthetic data, each for a budget of two configs (the wall-time
    budget is only a ceiling here): what their trials scored comes back as rows, set against Ray Tune's."""
    monkeypatch.setenv("GRIDRUN_DATA", str(synth_dir))
    out = tmp_path / "rows.jsonl"
    assert main(["search", "--out", str(out), "--methods", "random,tune", "--seeds", "0", "--budget", "240",
                 "--images", "1000", "--val-size", "200", "--test-images", "100", "--epochs", "2", "--rungs", "",
                 "--fuse", "2", "--samples", "2", "--target", "0.5", "--work", str(tmp_path / "work")]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    seeded = {r["variant"]: r for r in rows if r["config"].get("seed") == 0 and r["unit"] == "acc"}
    assert set(seeded) == {search.LABELS["random"], search.LABELS["tune"]}
    assert all(r["config"]["trials"] == 2 and r["value"] > 0.1 for r in seeded.values()), seeded  # both trained
    r = seeded[search.LABELS["random"]]
    assert r["baseline_value"] == seeded[search.LABELS["tune"]]["value"]
    assert r["ratio"] == pytest.approx(r["value"] / r["baseline_value"])
    assert (tmp_path / "work" / "tune_s0" / "tune").is_dir() and (tmp_path / "work" / "random_s0" / "runs").is_dir()


def test_search_specs_are_valid_gridrun_specs(tmp_path):
    """(a)'s and (b)'s specs as gridrun reads them: the same space, (b) a TPE study pruned at the rungs."""
    import argparse

    from gridrun.spec import parse

    a = argparse.Namespace(epochs=5, val_size=200, fuse=4, samples=40, rungs="2,4", keep=0.5)
    rnd, tpe = (parse(search.gridrun_spec(m, 3, a, tmp_path)) for m in ("random", "tpe"))
    assert rnd.samples == 40 and rnd.sample_seed == 3 and rnd.search is None and rnd.fuse == 4
    assert tpe.search.sampler == "tpe" and tpe.search.seed == 3 and tpe.search.trials == 40 and tpe.fuse == 4
    assert tpe.prune.rungs == [2, 4] and tpe.prune.keep == 0.5
    assert rnd.grid == tpe.grid == search.SPACE
