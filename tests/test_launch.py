"""End to end through Ray Tune, on synthetic data (2 CPUs, one logical GPU, 0.5 per trial)."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from gridrun.launch import launch
from conftest import write_spec

ROOT = Path(__file__).resolve().parents[1]
TRIAL_FILES = ("config.json", "metrics.csv", "model.pt", "logits_val.npy", "logits_test.npy", "summary.json")


def trial_dirs(exp: Path) -> dict[str, Path]:
    from gridrun.storage.layout import ExperimentDir

    return {n: d for n, (d, _) in ExperimentDir(exp).trial_dirs().items()} if exp.exists() else {}


def wait_for(cond, timeout: float, what: str, poll: float = 0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "gridrun.cli", *args]


def test_four_trials_finish_with_all_files_and_hparams(ray_local, synth_dir, tmp_path):
    spec = write_spec(tmp_path / "four.yaml", synth_dir)
    lines = []
    assert launch(str(spec), storage=str(tmp_path / "runs"), out=lines.append) == 0
    exp = tmp_path / "runs" / "four"
    dirs = trial_dirs(exp)
    assert sorted(dirs) == ["chaos_net_s0", "chaos_net_s1", "tinynet_7k_s0", "tinynet_7k_s1"]
    for d in dirs.values():
        for f in TRIAL_FILES:
            assert (d / f).is_file(), f"{d.name}/{f}"
        assert json.loads((d / "summary.json").read_text())["status"] == "ok"
        assert np.load(d / "logits_test.npy").shape == (400, 10)
    assert "4 finished, 0 diverged, 0 failed" in lines[-1]
    assert not any("GPU" in l and "notice" in l for l in lines)  # the logical GPU was used
    assert not (exp / "gridrun.lock").exists()
    launches = [json.loads(l) for l in (exp / "gridrun_launches.jsonl").read_text().splitlines()]
    prov = launches[-1]["provenance"]
    assert prov["torch"] and prov["ray"] and prov["python"] and "commit" in prov.get("git", {"commit": ""})
    # TensorBoard HParams: the experiment's axes and validation metrics, one session per trial
    # whose group is shared by the seeds of a config.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    def hp(folder, tag):
        acc = EventAccumulator(str(folder))
        acc.Reload()
        data = acc.SummaryMetadata(tag).plugin_data.content
        return plugin_data_pb2.HParamsPluginData.FromString(data)

    assert not list(exp.glob("events.out.tfevents.*"))  # no experiment summary as a run "."
    groups = {n: hp(d, "_hparams_/session_start_info").session_start_info for n, d in dirs.items()}
    assert groups["tinynet_7k_s0"].group_name == groups["tinynet_7k_s1"].group_name == "tinynet_7k"
    assert groups["chaos_net_s1"].hparams["model"].string_value == "chaos_net"
    ends = {n: hp(d, "_hparams_/session_end_info").session_end_info.status for n, d in dirs.items()}
    assert set(ends.values()) == {1}  # STATUS_SUCCESS, written before the last report


def test_retry_once_then_finish_and_always_failing_is_reported(ray_local, synth_dir, tmp_path):
    marker = tmp_path / "crashed-once"
    spec = write_spec(tmp_path / "faults.yaml", synth_dir, seeds=1, retries=1, grid={"run": [
        {"model": "chaos_net", "model_args": {"fail": "once", "fail_after": 15, "marker": str(marker)}},
        {"model": "chaos_net", "model_args": {"fail": "always", "fail_after": 3}},
        {"model": "tinynet_7k"},
        {"model": "tinynet_7k", "optimizer": "sgd", "lr": 1.0e12, "scheduler": "none"},
    ]})
    lines = []
    assert launch(str(spec), storage=str(tmp_path / "runs"), out=lines.append) == 1
    assert marker.exists()  # the first trial did crash once (in epoch 2: 12 steps an epoch)
    text = "\n".join(lines)
    assert "[retry] chaos_net-once" in text and "injected failure" in text
    assert "2 finished, 1 diverged, 1 failed" in lines[-1]
    by_cfg = {}
    for n, d in trial_dirs(tmp_path / "runs" / "faults").items():
        c = json.loads((d / "config.json").read_text())
        by_cfg[(c["model_args"].get("fail"), c["lr"])] = d
    once, always = by_cfg[("once", 0.01)], by_cfg[("always", 0.01)]
    ok, diverged = by_cfg[(None, 0.01)], by_cfg[(None, 1e12)]
    assert json.loads((once / "summary.json").read_text())["status"] == "ok"
    rows = (once / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 3  # header + epochs 1, 2: resumed after epoch 1, not restarted
    assert not (always / "summary.json").exists() and (always / "error.txt").exists()
    assert (ok / "summary.json").exists()
    assert json.loads((diverged / "summary.json").read_text())["status"] == "diverged at epoch 1"


def test_killed_driver_resumes_only_unfinished_and_status_sees_it(ray_local, synth_dir, tmp_path):
    """Kill the driver mid-grid; `gridrun status` reads the folder meanwhile; launching again
    keeps every finished trial untouched."""
    spec = write_spec(tmp_path / "kill.yaml", synth_dir, seeds=3, grid={"model": ["tinynet_7k"]},
                      base={"epochs": 4, "batch_size": 20, "lr": 0.01}, data={"val_size": 100, "subset": 500,
                                                                               "data_dir": str(synth_dir)})
    from conftest import held, held_env

    storage, release = tmp_path / "runs", tmp_path / "go"
    # Every trial waits after its last epoch (its files written) until released: the trials the
    # 2 CPUs run keep their places, so the third cannot start, let alone finish, before the kill.
    proc = subprocess.Popen(cli("launch", str(spec), "--storage", str(storage), "--address",
                                ray_local.get_runtime_context().gcs_address), env=held_env(4, release),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    exp = storage / "kill"
    try:
        wait_for(lambda: held(release) or proc.poll() is not None, 240, "a trial held after its last epoch")
        assert proc.poll() is None, proc.communicate()[0]
        st = subprocess.run(cli("status", "kill", "--storage", str(storage), "--json"), capture_output=True, text=True)
        snap = json.loads(st.stdout)
        assert snap["launch"] and snap["counts"]["finished"] >= 1 and snap["trials"] == 3, st.stdout
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        release.touch()
    finished = {n: (d / "summary.json").read_text() for n, d in trial_dirs(exp).items()
                if (d / "summary.json").exists()}
    assert 1 <= len(finished) < 3, "the kill should land mid-grid"
    lines = []
    assert launch(str(spec), storage=str(storage), out=lines.append) == 0  # the dead launch's lock is stale
    assert any("already finished (kept untouched)" in l for l in lines)
    after = trial_dirs(exp)
    assert len(after) == 3 and all((d / "summary.json").exists() for d in after.values())
    for name, summary in finished.items():  # finished trials were not rerun (same finish time, pid)
        assert (after[name] / "summary.json").read_text() == summary
    for d in after.values():
        assert len((d / "metrics.csv").read_text().strip().splitlines()) == 5
    # the killed launch left no record of its own (the probe): the relaunch records it from its open one
    from gridrun.storage.layout import ExperimentDir

    killed, done = ExperimentDir(exp).read_launches()
    assert killed["outcome"].startswith("killed") and "wall_s" not in killed and "started_at" in killed
    assert killed["command"].startswith("gridrun launch") and killed["provenance"]
    assert done["exit"] == 0 and "outcome" not in done and not (exp / "gridrun_launch_open.json").exists()


def test_a_grid_grows_without_touching_finished_trials(ray_local, synth_dir, tmp_path):
    spec = write_spec(tmp_path / "grow.yaml", synth_dir, seeds=1, grid={"model": ["tinynet_7k"]},
                      base={"epochs": 1, "batch_size": 50, "lr": 0.01})
    storage = tmp_path / "runs"
    assert launch(str(spec), storage=str(storage), out=lambda _: None) == 0
    exp = storage / "grow"

    def sums():
        return {n: hashlib.sha256((d / "summary.json").read_bytes()).hexdigest() for n, d in trial_dirs(exp).items()}

    before = sums()
    lines = []  # --dry-run on the folder says what a launch would run, and runs nothing
    assert launch(str(spec), overrides=["seeds=3"], storage=str(storage), dry_run=True, out=lines.append) == 0
    assert "1 of 3 trials already finished; the launch would run the other 2" in "\n".join(lines)
    assert "plan: 2 trials" in lines[-1] and sorted(trial_dirs(exp)) == ["tinynet_7k_s0"]
    lines = []
    assert launch(str(spec), overrides=["seeds=3"], storage=str(storage), out=lines.append) == 0
    after = sums()
    assert sorted(after) == ["tinynet_7k_s0", "tinynet_7k_s1", "tinynet_7k_s2"]
    assert after["tinynet_7k_s0"] == before["tinynet_7k_s0"]
    assert "1 of 3 trials already finished" in "\n".join(lines)
    assert "seeds: 3" in (exp / "spec.yaml").read_text()  # the effective spec is what the report reads
    from gridrun.spec import SpecError

    with pytest.raises(SpecError, match=r"lr was 0.01, now 0.02.*--name NEW, or --fresh"):
        launch(str(spec), overrides=["base.lr=0.02"], storage=str(storage), out=lambda _: None)
    lines = []
    assert launch(str(spec), overrides=["seeds=3", "report.top_k=2"], storage=str(storage), out=lines.append) == 0
    assert "nothing to run" in lines[-1]
    # a finished trial whose logits were cut short is broken for every command, and the next launch
    # reruns it (from its last checkpoint: rescored, its files written anew), the others untouched
    # (issue 38 item 3; before, status and launch took it for finished and never reran it)
    from gridrun.results import load_experiment

    cut = exp / "tinynet_7k_s1" / "logits_test.npy"
    cut.write_bytes(cut.read_bytes()[:-100])
    lines = []
    assert launch(str(spec), overrides=["seeds=3", "report.top_k=2"], storage=str(storage), out=lines.append) == 0
    assert any("1 broken trial(s) of this grid are rerun: tinynet_7k_s1 (finished, but its logits" in l
               for l in lines), lines
    assert {t.name: t.status for t in load_experiment(exp).trials} == dict.fromkeys(after, "finished")
    assert sums()["tinynet_7k_s0"] == after["tinynet_7k_s0"] and sums()["tinynet_7k_s2"] == after["tinynet_7k_s2"]
    # the slim copy that travels to a GPU machine (tools/gpu/carry_grid.py) keeps what a
    # launch reads: resumed there, it runs nothing again
    tgz = tmp_path / "carry" / "grow_runs.tgz"
    assert subprocess.run([sys.executable, str(ROOT / "tools" / "gpu" / "carry_grid.py"), str(exp), str(tgz)],
                          capture_output=True, text=True, check=True).stdout.count("model.pt of 3 finished trials")
    there = tmp_path / "there"
    with tarfile.open(tgz) as tar:
        tar.extractall(there, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    assert not list((there / "grow").rglob("model.pt")) and list((there / "grow").rglob("logits_test.npy"))
    lines = []
    assert launch(str(spec), overrides=["seeds=3"], storage=str(there), dry_run=True, out=lines.append) == 0
    assert "nothing to run" in lines[-1]
    assert "top_k: 2" in (exp / "spec.yaml").read_text()  # an edited report: section reaches the report
    assert launch(str(spec), overrides=["base.lr=0.02"], storage=str(storage), fresh=True, out=lines.append) == 0
    assert (storage / "grow.prev-1" / "gridrun_trials.json").exists()  # kept, not deleted
    assert sorted(trial_dirs(exp)) == ["tinynet_7k_s0"]


def test_a_second_launch_of_a_running_experiment_is_refused(ray_local, synth_dir, tmp_path):
    spec = write_spec(tmp_path / "twice.yaml", synth_dir, seeds=1, grid={"model": ["tinynet_7k"]},
                      base={"epochs": 2, "batch_size": 50, "lr": 0.01})
    from conftest import held, held_env

    storage, release = tmp_path / "runs", tmp_path / "go"
    # The first launch's trial waits after epoch 1 until released: it is running while the second starts.
    proc = subprocess.Popen(cli("launch", str(spec), "--storage", str(storage), "--address",
                                ray_local.get_runtime_context().gcs_address), env=held_env(1, release),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    exp = storage / "twice"
    try:
        wait_for(lambda: held(release) or proc.poll() is not None, 240, "the first launch's trial held after epoch 1")
        assert proc.poll() is None and (exp / "gridrun.lock").exists(), proc.communicate()[0]
        second = subprocess.run(cli("launch", str(spec), "--storage", str(storage)), capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 2
        assert "already being launched" in second.stderr and second.stderr.strip().count("\n") == 0
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        release.touch()
    # The killed launch's lock is stale now: a relaunch takes it over (checked above for resume).
    from gridrun.storage.layout import ExperimentDir

    assert ExperimentDir(exp).lock_holder() is None


def test_changed_grid_under_same_name_is_refused(ray_local, synth_dir, tmp_path):
    from gridrun.spec import SpecError

    storage = tmp_path / "runs"
    (storage / "same").mkdir(parents=True)
    (storage / "same" / "gridrun_trials.json").write_text(json.dumps([{"name": "x_s0", "train": {"model": "vgg"}}]))
    spec = write_spec(tmp_path / "same.yaml", synth_dir)
    with pytest.raises(SpecError, match="holds trial x_s0 of a different grid"):
        launch(str(spec), storage=str(storage), out=lambda _: None)


def test_a_corrupt_checkpoint_restarts_the_trial_with_a_notice(ray_local, synth_dir, tmp_path):
    spec = write_spec(tmp_path / "corrupt.yaml", synth_dir, seeds=1, grid={"model": ["tinynet_7k"]},
                      base={"epochs": 2, "batch_size": 50, "lr": 0.01})
    ckpt = tmp_path / "runs" / "corrupt" / "tinynet_7k_s0" / "checkpoint_000007"
    ckpt.mkdir(parents=True)
    (ckpt / "state.pt").write_bytes(b"not a torch file at all")
    (ckpt / "state.json").write_text(json.dumps({"epoch": 1}))
    lines = []
    assert launch(str(spec), storage=str(tmp_path / "runs"), out=lines.append) == 0
    assert any(l.startswith("[notice] tinynet_7k_s0") and "unreadable" in l for l in lines), lines
    metrics = (tmp_path / "runs" / "corrupt" / "tinynet_7k_s0" / "metrics.csv").read_text().strip().splitlines()
    assert len(metrics) == 3


def test_a_trial_that_asks_for_cuda_but_gets_no_gpu_is_one_line_before_anything_runs(synth_dir, tmp_path, capsys,
                                                                                      monkeypatch):
    """base.device=cuda on a Ray without GPUs: the dry run printed its plan, and the launch ran
    every trial into 'config device=cuda: torch sees no GPU here', retried it, then failed it (the
    probe). Now the dry run and the launch both refuse in one line, nothing started."""
    import torch

    from gridrun.cli import main
    from gridrun.errors import GridrunError
    from gridrun.experiment import open_experiment
    from gridrun.launch import _context
    from gridrun.plan import load, plan_units

    class NoGPU:
        def cluster_resources(self):
            return {"CPU": 2.0}

        def nodes(self):
            return [{"Alive": True}]

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    spec_path = write_spec(tmp_path / "cuda.yaml", synth_dir, base={"device": "cuda"}, grid={"model": ["tinynet_7k"]})
    assert main(["launch", str(spec_path), "--storage", str(tmp_path / "runs"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gridrun: error: device=cuda, but the trials get no GPU") and len(err.splitlines()) == 1, err
    spec, trials = load(str(spec_path), [])
    with pytest.raises(GridrunError, match="device=cuda, but the trials get no GPU"):
        _context(NoGPU(), spec, plan_units(spec, trials), open_experiment("cuda", str(tmp_path / "runs")), [],
                 lambda _: None)
    spec, trials = load(str(spec_path), ["base.device=auto"])  # auto: the notice, and CPUs
    lines = []
    _context(NoGPU(), spec, plan_units(spec, trials), open_experiment("cuda", str(tmp_path / "runs")), [], lines.append)
    assert lines[0].startswith("notice: the spec asks 0.5 GPU per trial but this Ray has none")


def test_no_gpu_in_ray_runs_on_cpus_with_a_notice(synth_dir, tmp_path):
    from gridrun.experiment import open_experiment
    from gridrun.launch import _context
    from gridrun.plan import load, plan_units

    class NoGPU:
        def cluster_resources(self):
            return {"CPU": 2.0}

        def nodes(self):
            return [{"Alive": True}]

    spec, trials = load(str(write_spec(tmp_path / "nogpu.yaml", synth_dir)), [])
    units = plan_units(spec, trials)
    lines = []
    context, resources = _context(NoGPU(), spec, units, open_experiment("nogpu", str(tmp_path / "runs")), [], lines.append)
    assert lines[0].startswith("notice: the spec asks 0.5 GPU per trial but this Ray has none")
    assert resources == {"cpu": 1, "gpu": 0} and context.cpu_only
    assert all(m.train["gpu_memory_fraction"] == 0.5 for u in units for m in u.members)  # the plan is not changed
    assert all(context.train_config(m, "x")["gpu_memory_fraction"] is None for u in units for m in u.members)


def test_asha_stops_poor_trials_early(ray_local, synth_dir, tmp_path):
    # One trial at a time, good ones first: the hopeless ones (lr 1e-7) fall below ASHA's
    # first rung and are stopped after epoch 1; the report lists them as stopped.
    spec = write_spec(tmp_path / "asha.yaml", synth_dir, grid={"run": [{"lr": 0.01}, {"lr": 1.0e-7}, {"lr": 2.0e-7}]},
                      seeds=1,
                      base={"epochs": 4, "batch_size": 50, "model": "tinynet_7k"},
                      early_stop={"grace_period": 1, "reduction_factor": 2})
    lines = []
    assert launch(str(spec), storage=str(tmp_path / "runs"), max_concurrent=1, out=lines.append) == 0
    assert "0 failed" in lines[-1] and "stopped early" in lines[-1]
    from gridrun.results import load_experiment

    status = {t.name: t.status for t in load_experiment(tmp_path / "runs" / "asha").trials}
    assert "finished" in status.values()  # the first good trial always runs to the end
    assert [status[n] for n in sorted(status)] == ["finished", "stopped", "stopped"]  # hopeless ones stopped
    from gridrun.hparams import has_session_end

    assert all(has_session_end(d) for d in trial_dirs(tmp_path / "runs" / "asha").values())  # none UNKNOWN


def test_ctrl_c_leaves_a_resumable_experiment(ray_local, synth_dir, tmp_path):
    spec = write_spec(tmp_path / "intr.yaml", synth_dir, grid={"model": ["tinynet_7k"]}, seeds=2,
                      base={"epochs": 6, "batch_size": 10, "lr": 0.01},
                      data={"val_size": 100, "subset": 300, "data_dir": str(synth_dir)})
    from conftest import held_env, signal_when_held

    storage, release = tmp_path / "runs", tmp_path / "go"
    # Every trial waits after epoch 3 (its checkpoint saved) until released: Ctrl-C lands mid-grid
    # on a fast machine as on a slow one.
    proc = subprocess.Popen(cli("launch", str(spec), "--storage", str(storage), "--address",
                                ray_local.get_runtime_context().gcs_address), env=held_env(3, release),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    exp = storage / "intr"

    def epochs_logged(d):
        return len((d / "metrics.csv").read_text().splitlines()) - 1 if (d / "metrics.csv").exists() else 0

    out = signal_when_held(proc, release, signal.SIGINT, "a trial held after epoch 3")
    assert proc.returncode == 130, out
    assert "interrupted (run the same command again to resume them)" in out
    done_before = {n: epochs_logged(d) for n, d in trial_dirs(exp).items()}
    assert all(n <= 3 for n in done_before.values()) and 3 in done_before.values(), done_before
    lines = []
    assert launch(str(spec), storage=str(storage), out=lines.append) == 0
    resumed = 0
    for d in trial_dirs(exp).values():
        hist = json.loads((d / "summary.json").read_text())
        assert hist["status"] == "ok" and hist["epochs"] == 6
        rows = (d / "metrics.csv").read_text().strip().splitlines()[1:]
        assert [int(float(r.split(",")[0])) for r in rows] == list(range(1, 7))  # one row per epoch
        results = [json.loads(l) for l in (d / "result.json").read_text().splitlines()]
        second_launch = [r["epoch"] for r in results if r["pid"] == results[-1]["pid"]]
        resumed += second_launch[0] > 1  # the relaunch began after epoch 1: from a checkpoint, not from scratch
    assert resumed >= 1


def test_a_fused_launch_writes_ordinary_trial_folders_that_match_the_unfused_launch(ray_local, synth_dir, tmp_path):
    spec = write_spec(tmp_path / "fz.yaml", synth_dir, grid={"lr": [0.01, 0.02]}, seeds=2,
                      base={"epochs": 2, "batch_size": 50, "model": "tinynet_7k", "scheduler": "onecycle"})
    storage = tmp_path / "runs"
    lines = []
    assert launch(str(spec), storage=str(storage), name="fused", fuse=4, out=lines.append) == 0
    assert "4 finished, 0 diverged, 0 failed" in lines[-1]
    from gridrun.report import report
    from gridrun.results import load_experiment
    from gridrun.spec import load_trials as lt
    from gridrun.train import train

    fused = load_experiment(storage / "fused")
    for t in lt(spec)[1]:  # each config as an unfused launch's trial runs it (run_trial -> train)
        train(dict(t.train, out_dir=str(storage / "alone" / t.name)))
    alone = load_experiment(storage / "alone")
    # 2 CPUs and 4 trials: two groups of two, so neither CPU idles (issue 38 item 7)
    groups = {d.name for d in (storage / "fused").iterdir() if d.name.startswith("fused_")}
    assert {t.group for t in fused.trials} == groups and len(groups) == 2
    acc_f = {t.name: t.test_acc_recomputed for t in fused.trials}
    acc_a = {t.name: t.test_acc_recomputed for t in alone.trials}
    assert acc_f.keys() == acc_a.keys() and len(acc_f) == 4 and all(t.status == "finished" for t in fused.trials)
    for n in acc_f:
        assert abs(acc_f[n] - acc_a[n]) <= 0.02, (n, acc_f[n], acc_a[n])
    text = report([str(storage / "fused")], reports_dir=str(tmp_path / "rep"), echo=lambda _: None)[0].read_text()
    assert "4 trials; 4 finished" in text
    out = []
    from gridrun.plan import load, plan_table, plan_units

    s, trials = load(str(spec), ["fuse=4"])
    plan_table(s, trials, plan_units(s, trials), 2, 0, out.append)
    assert "fused group" in out[0] and "4 trials in 1 Tune trials (1 fused groups of up to 4)" in out[-1]


def test_scratch_folders_of_dead_trial_processes_are_swept(tmp_path, monkeypatch):
    import tempfile

    from gridrun.worker import sweep_stale_state

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"gridrun-state-{dead.pid}-abc"
    live = tmp_path / f"gridrun-state-{os.getpid()}-def"
    other = tmp_path / "gridrun-state-notapid-ghi"
    for d in (stale, live, other):
        (d / "state").mkdir(parents=True)
    sweep_stale_state()
    assert not stale.exists()  # its process is gone: the SIGKILLed trial's state no longer fills the disk
    assert live.exists() and other.exists()  # a running trial's state, and what is not ours, stay


# ---------------------------------------------------------------- plans that fit (issue 38 item 7)

def test_a_plan_no_node_can_run_is_refused_at_dry_run_and_launch(ray_local, synth_dir, tmp_path, capsys):
    """`resources: {cpu: 4}` on 2 CPUs: the dry run said "0 trial(s) at once" and exited 0, and the
    launch sat at "0 running" for ever."""
    from gridrun.cli import main
    from gridrun.spec import SpecError

    too_many = (os.cpu_count() or 1) + 1
    spec = write_spec(tmp_path / "big.yaml", synth_dir, resources={"cpu": too_many, "gpu": 0})
    assert main(["launch", str(spec), "--dry-run", "--storage", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert f"resources.cpu={too_many} per trial, but this machine has {os.cpu_count()} CPU(s)" in err
    assert len(err.strip().splitlines()) == 1
    spec = write_spec(tmp_path / "big2.yaml", synth_dir, resources={"cpu": 3, "gpu": 0})  # ray_local: 2 CPUs
    with pytest.raises(SpecError, match="resources.cpu=3 per trial, but this machine has 2 CPU"):
        launch(str(spec), storage=str(tmp_path / "runs"), out=lambda _: None)
    spec = write_spec(tmp_path / "gpus.yaml", synth_dir, resources={"cpu": 1, "gpu": 2})  # ray_local: 1 GPU
    with pytest.raises(SpecError, match="resources.gpu=2 per trial, but this machine has 1 GPU"):
        launch(str(spec), storage=str(tmp_path / "runs"), out=lambda _: None)
    assert not list((tmp_path / "runs").glob("*/*/metrics.csv"))  # nothing ran


def test_fused_groups_are_split_so_every_slot_has_work(synth_dir, tmp_path):
    """A fused group of 12 on 2 cores ran as one Tune trial and left a core idle."""
    from gridrun.plan import load, plan_units, slots

    spec_path = write_spec(tmp_path / "f12.yaml", synth_dir, grid={"lr": [0.01, 0.02, 0.03, 0.04, 0.05, 0.06]},
                           seeds=2, base={"model": "tinynet_7k"}, resources={"cpu": 1, "gpu": 0})
    spec, trials = load(str(spec_path), ["fuse=12"])
    (one,) = plan_units(spec, trials)  # one slot: the plan and its group name as they always were
    h = hashlib.sha256("".join(t.id for t in trials).encode()).hexdigest()[:8]
    assert one.name == f"fused_tinynet_7k_12x_{h}"
    assert slots(spec, [(2, 0)]) == 2
    halves = plan_units(spec, trials, slots=2)
    assert [len(u.members) for u in halves] == [6, 6] and [m for u in halves for m in u.members] == trials
    assert [len(u.members) for u in plan_units(spec, trials, slots=5)] == [3, 3, 2, 2, 2]
    assert all(not u.fused for u in plan_units(spec, trials, slots=64))  # more slots than trials: one each
    spec8, _ = load(str(spec_path), ["fuse=8"])  # 8 + 4 already fills 2 slots: unchanged
    assert [u.name for u in plan_units(spec8, trials, slots=2)] == [u.name for u in plan_units(spec8, trials)]
    gpu, _ = load(str(spec_path), ["resources={cpu: 1, gpu: 0.125}"])
    assert slots(gpu, [(16, 1)]) == 8 and slots(gpu, [(16, 0)]) == 16  # no GPU: the trials run on CPUs
    from gridrun.plan import remaining

    two = lambda: [(2, 0)]  # noqa: E731
    assert [len(u.members) for u in remaining(spec, trials, None, print, nodes=two).units] == [6, 6]
    # --max-concurrent 1 runs one at a time: split in two, the halves ran one after the other
    assert [len(u.members) for u in remaining(spec, trials, None, print, nodes=two, max_concurrent=1).units] == [12]


def test_a_dry_run_says_what_the_launch_would_of_a_held_experiment_and_of_max_concurrent(synth_dir, tmp_path, capsys):
    """The probe: `--fresh --dry-run` on a running experiment printed a plan and exit 0 (the launch
    refuses); `--dry-run --max-concurrent 1` said "2 trial(s) at once"."""
    from gridrun.cli import main
    from gridrun.storage.layout import ExperimentDir

    spec = write_spec(tmp_path / "held.yaml", synth_dir, grid={"model": ["tinynet_7k"]}, resources={"cpu": 1, "gpu": 0})
    runs = tmp_path / "runs"
    assert main(["launch", str(spec), "--storage", str(runs), "--dry-run", "--max-concurrent", "1"]) == 0
    assert capsys.readouterr().out.strip().endswith("-> 1 trial(s) at once")
    (runs / "held").mkdir(parents=True)
    with ExperimentDir(runs / "held").lock():  # another launch holds it
        assert main(["launch", str(spec), "--storage", str(runs), "--dry-run", "--fresh"]) == 2
        err = capsys.readouterr().err.strip()
        assert "--fresh cannot move it away while it runs" in err and len(err.splitlines()) == 1, err
        assert main(["launch", str(spec), "--storage", str(runs), "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert "notice: " in out and "is already being launched" in out and "trial(s) at once" in out, out


def test_the_recorded_spec_relaunches_with_its_reference_and_says_where_its_modules_import(synth_dir, tmp_path,
                                                                                          capsys, monkeypatch):
    """The refusal of a changed grid says to relaunch the experiment's recorded spec.yaml. The
    probe: with report.reference that spec still named ref.csv, which is not beside the copy (the
    copy is reference.csv): 'not a CSV file beside the spec'; with the spec's own modules it could
    not import them from the copy's folder. The recorded spec now names reference.csv, and the
    command the refusal gives puts the modules' folder on PYTHONPATH."""
    from gridrun.cli import main
    from gridrun.experiment import record_plan, reference_file
    from gridrun.plan import load, remaining

    src = tmp_path / "src"
    src.mkdir()
    (src / "relaunchnets.py").write_text(
        "from torch import nn\n\n\ndef flat(num_classes=10, image_size=(28, 28), in_channels=1):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size[0] * image_size[1], num_classes))\n")
    (src / "ref.csv").write_text("label,model,test_acc\nNet A,m,99.0\n")
    spec_path = write_spec(src / "rel.yaml", synth_dir, grid={"model": ["relaunchnets:flat"]}, seeds=1,
                           report={"reference": "ref.csv"}, resources={"cpu": 1, "gpu": 0})
    spec, trials = load(str(spec_path), [])
    view = tmp_path / "runs" / "rel"
    record_plan(view, spec, remaining(spec, trials, None, print, nodes=lambda: [(2, 0)]),
                reference_file(spec, str(spec_path)))
    monkeypatch.chdir(tmp_path)
    assert main(["launch", str(spec_path), "--storage", "runs", "base.lr=0.5", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"`PYTHONPATH={src} gridrun launch runs/rel/spec.yaml --name rel --storage runs`" in err, err
    assert main(["launch", "runs/rel/spec.yaml", "--name", "rel", "--storage", "runs", "seeds=2", "--dry-run"]) == 0, \
        capsys.readouterr().err
    import yaml

    assert yaml.safe_load((view / "spec.yaml").read_text())["report"]["reference"] == "reference.csv"


def test_a_launch_that_ends_without_its_record_is_recorded_by_the_next_one(tmp_path, monkeypatch):
    """A launch's record was written at its end only: a driver killed with kill -9 left none (its
    command, code and start lost; the report counted one launch fewer). Its open record, written
    before any trial runs, is closed by its own record or by any error or interrupt; only a kill
    leaves it, and the next launch records it as killed, its wall time unknown."""
    from gridrun.experiment import launch_opened, open_experiment, record_launch
    from gridrun.results import load_experiment
    from gridrun.storage.layout import ExperimentDir

    folder = open_experiment("opened", str(tmp_path / "runs"))
    view = tmp_path / "runs" / "opened"
    view.mkdir(parents=True)
    with launch_opened(view, "g.yaml", folder):  # a launch that records itself
        record_launch(str(view), "cluster: 1 node(s)", "g.yaml", 3.0, 0)
    with pytest.raises(KeyboardInterrupt):  # one stopped before its record: not a kill
        with launch_opened(view, "g.yaml", folder):
            raise KeyboardInterrupt
    assert len(ExperimentDir(view).read_launches()) == 1 and not (view / "gridrun_launch_open.json").exists()
    cm = launch_opened(view, "g.yaml", folder)
    cm.__enter__()  # and one killed: its `finally` never runs
    assert (view / "gridrun_launch_open.json").exists()
    with launch_opened(view, "g.yaml", folder):  # the next launch
        record_launch(str(view), "cluster: 1 node(s)", "g.yaml", 5.0, 0)
    records = ExperimentDir(view).read_launches()
    assert [r.get("outcome", "").split(":")[0] for r in records] == ["", "killed", ""]
    assert "wall_s" not in records[1] and records[1]["started_at"] <= records[2]["finished_at"]
    assert sum(r.get("wall_s", 0) for r in load_experiment(view).launches) == 8.0
