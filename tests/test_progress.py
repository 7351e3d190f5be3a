"""The launch's progress line, its ETA, and the record of a relaunch after the last epoch."""
import io
import json
import os
from types import SimpleNamespace

import pytest

from gridrun.plan import Trial, Unit
from gridrun.progress import Progress


def unit(name, epochs=4, members=1):
    return Unit(name, members > 1, tuple(Trial(f"{name}_{i}", f"id{i}", {}, {"epochs": epochs}) for i in range(members)))


def trial(u, status="RUNNING"):
    return SimpleNamespace(trial_id=u.name, status=status, config={"unit": u.to_tune()}, error_file=None)


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def started(names: str):
    """A Progress over one 4-epoch unit per letter, the first two started: (p, clock, lines, a, b)."""
    clock, lines = Clock(), []
    units = [unit(n) for n in names]
    p = Progress(units, lines.append, "/nowhere", clock=clock)
    a, b = trial(units[0]), trial(units[1])
    p.on_trial_start(0, [a, b], a)
    p.on_trial_start(0, [a, b], b)
    return p, clock, lines, a, b


def test_eta_counts_the_measured_start_up_of_trials_still_to_start():
    """Two slots, three 4-epoch trials: start-up 20 s, then 5 s an epoch. The first trial's
    first report comes 25 s after its start; the ETA counts the third trial's start-up too."""
    p, clock, lines, a, b = started("abc")
    clock.t += 25
    p.on_trial_result(0, [a, b], a, {"epoch": 1, "status": "running", "val_acc": 0.5, "seconds": 4.0})
    clock.t += 5
    p.on_trial_result(0, [a, b], a, {"epoch": 2, "status": "running", "val_acc": 0.6, "seconds": 4.0})
    left, startup, epoch = p.eta([a, b], clock.t)
    assert (startup, epoch) == (20.0, 5.0)
    # a: 2 epochs left (10 s); b: started 30 s ago, no report (20 + 4*5 - 30 = 10 s);
    # c: not started (20 + 4*5 = 40 s); shared by 2 slots
    assert left == pytest.approx((10 + 10 + 40) / 2)
    assert "ETA 30s (start-up 20s, 5.0s per epoch, as measured)" in lines[-1]
    assert lines[-1].startswith("progress: 0/3 done, 2 running, 0 failed, elapsed 30s")


def test_eta_counts_the_wait_between_a_trial_ending_and_the_next_starting():
    clock, lines = Clock(), []
    units = [unit("a", epochs=2), unit("b", epochs=2), unit("c", epochs=2)]
    p = Progress(units, lines.append, "/nowhere", clock=clock)
    a, b = trial(units[0]), trial(units[1])
    p.on_trial_start(0, [a], a)
    assert p.eta([a], clock.t) is None  # nothing measured yet: no ETA, not a guess
    clock.t += 10
    p.on_trial_result(0, [a], a, {"epoch": 1, "status": "running"})
    assert p.eta([a], clock.t) is None and "ETA" not in lines[-1]  # no epoch time yet
    clock.t += 4
    p.on_trial_result(0, [a], a, {"epoch": 2, "status": "running"})
    p.on_trial_complete(0, [], a)
    clock.t += 6  # Ray takes 6 s to start the next trial in the freed slot
    p.on_trial_start(0, [b], b)
    left, startup, epoch = p.eta([b], clock.t)
    # b: first report 10 s after its start, then 4 s; c: 6 s wait + 10 s + 4 s
    assert (left, startup, epoch) == (34.0, 12.0, 4.0)


def test_without_a_terminal_the_line_is_printed_on_change_or_every_n_seconds():
    clock, lines = Clock(), []
    u = unit("a")
    p = Progress([u], lines.append, "/nowhere", every_s=30, clock=clock)
    a = trial(u)
    p.on_trial_start(0, [a], a)
    for _ in range(10):  # nothing changes for 10 s: no new line
        clock.t += 1
        p.on_step_end(0, [a])
    assert len(lines) == 1 and lines[0].startswith("progress: 0/1 done, 1 running")
    clock.t += 25
    p.on_step_end(0, [a])
    assert len(lines) == 2 and "elapsed 35s" in lines[1]
    p.on_trial_complete(0, [trial(u, "TERMINATED")], trial(u, "TERMINATED"))
    assert any(l.startswith("[done 1/1] a: finished") for l in lines)
    assert lines[-1].startswith("progress: 1/1 done, 0 running")
    assert not any("terminated" in l.lower() for l in lines)


def test_on_a_terminal_the_line_is_redrawn_in_place_and_events_print_above_it():
    clock, lines, tty = Clock(), [], io.StringIO()
    u = unit("a", members=3)  # a fused group counts as its three trials
    p = Progress([u], lines.append, "/nowhere", live=tty, clock=clock)
    a = trial(u)
    p.on_trial_start(0, [a], a)
    clock.t += 2
    p.on_step_end(0, [a])
    assert "\n" not in tty.getvalue() and tty.getvalue().count("\r\x1b[K") == 2
    assert tty.getvalue().endswith("progress: 0/3 done, 3 running, 0 failed, elapsed 2s")
    assert lines == []  # nothing printed as a line while it runs
    p.on_trial_complete(0, [], a)
    assert lines[0] == "[done 3/3] a: finished, epoch ?, val acc -" and tty.getvalue().endswith("elapsed 2s")
    p.close()
    assert tty.getvalue().endswith("\r\x1b[K") and lines[-1] == "progress: 3/3 done, 0 running, 0 failed, elapsed 2s"


def test_stopped_early_is_only_said_under_asha_and_only_from_a_known_epoch(tmp_path):
    u = unit("a", epochs=4)
    (tmp_path / "a").mkdir()
    for early_stop, result, said in ((False, {"epoch": 2, "status": "running"}, "finished, epoch 2"),
                                     (True, {}, "finished, epoch ?"),
                                     (True, {"epoch": 2, "status": "running"}, "stopped early, epoch 2")):
        lines = []
        p = Progress([u], lines.append, str(tmp_path), early_stop=early_stop)
        if result:
            p.on_trial_result(0, [], trial(u), result)
        p.on_trial_complete(0, [], trial(u, "TERMINATED"))
        assert said in lines[-2]
        stopped = tmp_path / "a" / "stopped.json"
        assert stopped.exists() == said.startswith("stopped")
        if stopped.exists():
            assert json.loads(stopped.read_text()) == {"after_epoch": 2, "by": "ASHA"}
            stopped.unlink()


def test_relaunch_after_the_last_epoch_records_finished_trials_not_stopped_ones(ray_local, synth_dir, tmp_path, capfd):
    """The folder a Ctrl-C leaves when it lands after a trial's last checkpoint but before its
    final files reached storage: the checkpoint says its last epoch, there is no summary.json.
    The relaunch resumes past the last epoch (trains nothing) and must record it as finished,
    not as stopped by an ASHA the grid does not have."""
    from conftest import write_spec
    from gridrun.launch import launch
    from gridrun.results import load_experiment
    from gridrun.storage.layout import ExperimentDir

    spec = write_spec(tmp_path / "last.yaml", synth_dir, grid={"model": ["tinynet_7k"]}, seeds=1,
                      base={"epochs": 1})
    storage = tmp_path / "runs"
    assert launch(str(spec), storage=str(storage), out=lambda _: None) == 0
    exp = storage / "last"
    for d, _ in ExperimentDir(exp).trial_dirs().values():
        assert json.loads(next(d.glob("checkpoint_*/state.json")).read_text())["epoch"] == 1
        for f in ("summary.json", "model.pt", "logits_val.npy", "logits_test.npy", "labels_val.npy",
                  "labels_test.npy"):
            (d / f).unlink()
    lines = []
    assert launch(str(spec), storage=str(storage), out=lines.append) == 0
    done = [l for l in lines if l.startswith("[done")]
    assert done == [done[0]] and done[0].startswith("[done 1/1] tinynet_7k") and \
        done[0].endswith(": finished, epoch 1, val acc " + done[0].split()[-1]) and done[0].split()[-1] != "-", lines
    assert not list(exp.rglob("stopped.json"))
    assert {t.status for t in load_experiment(exp).trials} == {"finished"}
    assert "1 finished, 0 diverged, 0 failed" in lines[-1]
    assert "Last result" not in capfd.readouterr().out  # Ray printed it for a trial with no result


def test_rays_own_trial_lines_go_to_the_experiment_log(tmp_path, capfd):
    from gridrun.launch import _RayLog
    from gridrun.storage.layout import RAY_LOG

    class Trial:  # what Ray's callback reads of a trial that reported nothing
        last_result: dict = {}

        def __str__(self):
            return "grid_s0"

    t = Trial()
    _RayLog(str(tmp_path)).on_trial_complete(0, [], t)
    assert "completed. Last result" not in capfd.readouterr().out
    assert "completed. Last result" in (tmp_path / RAY_LOG).read_text()


def test_importing_the_launch_sets_no_environment_and_quiet_tune_gives_it_back(monkeypatch):
    """Ray Tune's switches are set around the launch's Tuner only, not when gridrun.worker or
    gridrun.launch is imported (worker.py once set four at import: issue 37)."""
    import subprocess
    import sys

    from gridrun.progress import TUNE_ENV, quiet_tune

    code = ("import os, ray; before = dict(os.environ); import gridrun.launch; "
            "print(sorted(k for k in {**before, **os.environ} if before.get(k) != os.environ.get(k)))")
    env = {k: v for k, v in os.environ.items() if k not in TUNE_ENV}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
    for k in TUNE_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "1")  # the user's own choice is kept
    with quiet_tune():
        assert os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] == "1" and os.environ["RAY_AIR_NEW_OUTPUT"] == "1"
    assert "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS" not in os.environ and os.environ["RAY_AIR_NEW_OUTPUT"] == "1"


# ---------------------------------------------------------------- status: ETA, --watch, a closed pipe

def running_experiment(root):
    """A launch holding the lock (this process), trial a running (2 of 4 epochs; Ray timed its
    first report at 12 s and the next 8 s later) and trial b not started."""
    import os

    exp = root / "runs" / "live"
    d = exp / "a"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"model": "m", "epochs": 4, "seed": 0}))
    (d / "metrics.csv").write_text("epoch,val_acc,seconds\n1,0.5,0.4\n2,0.6,0.4\n")
    (d / "result.json").write_text("".join(json.dumps({"epoch": e, "time_this_iter_s": s, "iterations_since_restore": e})
                                           + "\n" for e, s in ((1, 12.0), (2, 8.0))))
    (exp / "gridrun_trials.json").write_text(json.dumps([{"name": "b", "train": {"model": "m", "epochs": 4, "seed": 1}}]))
    (exp / "gridrun.lock").write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename,
                                                  "since": 1.0}))
    return exp


def test_status_eta_counts_the_measured_start_up_and_report_interval(tmp_path):
    from gridrun.status import render, snapshot

    snap = snapshot(running_experiment(tmp_path))
    assert snap["counts"]["running"] == 1 and snap["counts"]["pending"] == 1
    # 6 epochs left at 8 s (not the 0.4 s of training alone), and b's start-up (12 - 8 s)
    assert (snap["seconds_per_epoch"], snap["startup_s"], snap["eta_s"]) == (8.0, 4.0, 52.0)
    assert "ETA 52s (from start-up 4 s + 8.0 s per epoch as measured, 1 at a time)" in render(snap)


def test_status_watch_redraws_its_block_in_place_on_a_terminal(tmp_path, monkeypatch):
    from gridrun import status as st

    exp = running_experiment(tmp_path)
    snaps = iter([st.snapshot(exp), st.snapshot(exp), {**st.snapshot(exp), "launch": None,
                                                       "counts": {k: 0 for k in st.ORDER}}])
    monkeypatch.setattr(st, "snapshot", lambda path: next(snaps))
    monkeypatch.setattr(st.time, "sleep", lambda s: None)
    monkeypatch.setenv("COLUMNS", "1000")
    out = []
    assert st.status(str(exp), watch=True, out=out.append, tty=True) == 0
    rows = len(out[0].split("\n"))
    assert len(out) == 3 and not out[0].startswith("\x1b")
    assert all(o.startswith(f"\x1b[{rows}F\x1b[J") for o in out[1:])  # up to the block's first row, clear below
    monkeypatch.setenv("COLUMNS", "40")
    assert st._rows("x" * 100 + "\n" + "y") == 4  # a long line wraps onto three rows


def test_a_closed_pipe_is_a_quiet_exit(tmp_path):
    """`gridrun status --json | head -1`: the reader goes away; no 'Broken pipe' error, code 0."""
    import os
    import subprocess
    import sys

    exp = running_experiment(tmp_path)
    for i in range(40):  # enough text to fill a pipe's buffer
        d = exp / f"t{i}"
        d.mkdir()
        (d / "error.txt").write_text("Traceback\nValueError: " + "x" * 2000 + "\n")
    r, w = os.pipe()
    os.close(r)  # the reader is gone before the first byte
    proc = subprocess.run([sys.executable, "-m", "gridrun.cli", "status", str(exp), "--json"], stdout=w,
                          stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(w)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_one_epoch_trials_get_an_eta_per_trial():
    clock, lines = Clock(), []
    units = [unit("a", epochs=1), unit("b", epochs=1)]
    p = Progress(units, lines.append, "/nowhere", clock=clock)
    a = trial(units[0])
    p.on_trial_start(0, [a], a)
    clock.t += 12
    p.on_trial_result(0, [a], a, {"epoch": 1, "status": "running"})
    assert p.eta([a], clock.t) == (12.0, 12.0, 0.0)  # b still to run: 12 s, start-up included
    assert p.line([a], clock.t).endswith("ETA 12s (12s per trial with its start-up, as measured)")


def test_a_completed_trial_tune_still_lists_as_running_is_not_counted_running():
    """Tune calls on_trial_complete while the trial's status still reads RUNNING: the line said
    "2/2 done, 1 running" (found by the probe)."""
    p, clock, lines, a, b = started("ab")
    clock.t += 5
    p.on_trial_result(0, [a, b], a, {"epoch": 4, "status": "ok", "val_acc": 0.9, "seconds": 1.0})
    p.on_trial_complete(0, [a, b], a)
    clock.t += 60  # past the print interval: update() prints the line
    p.update([a, b])
    assert lines[-1].startswith("progress: 1/2 done, 1 running"), lines[-1]
    p.on_trial_complete(0, [a, b], b)
    clock.t += 60
    p.update([a, b])
    assert lines[-1].startswith("progress: 2/2 done, 0 running"), lines[-1]
