"""The launch's voice: a line per finished or failed trial, a live progress line with an ETA
as measured, and the closing count; Ray Tune's own voice kept out of the terminal. `Progress`
and `RayLog` have the methods of Tune callbacks (launch.py makes them ones: this module does
not import ray)."""
from __future__ import annotations

import math
import os
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from . import results
from .errors import GridrunError
from .plan import Unit
from .storage.layout import RAY_LOG, TrialDir, error_line
from .storage.safeio import append_line


class Progress:
    """One line per finished or failed trial, and one live progress line (done/total, running,
    failed, elapsed, ETA). On a terminal (`live`, a stream) the line is redrawn in place; in a
    log it is printed when a count changes, or every `every_s`."""

    def __init__(self, units: list[Unit], out, exp_dir: str | None, live=None, every_s: float = 30.0,
                 early_stop: bool = False, clock=time.time):
        """exp_dir: the experiment's folder here, where trials are marked as they end (stopped
        early: stopped.json; failed: TensorBoard's session end), or None (an object store:
        `mark_mirror` marks its local mirror once the fit is over)."""
        self.units = {u.name: u for u in units}
        self.n = sum(len(u.members) for u in units)
        self.out, self.exp_dir, self.live, self.every, self.early_stop, self.clock = \
            out, exp_dir, live, every_s, early_stop, clock
        self.t0 = clock()
        self.last: dict = {}                      # trial id -> its last result
        self.started: dict = {}                   # trial id -> when Tune started it
        self.reported_at: dict = {}               # trial id -> when its last result came
        self.first_s: list[float] = []            # start to first report, per trial (start-up + one epoch)
        self.gaps_s: list[float] = []             # a slot freeing to the next trial's start
        self.freed: list[float] = []              # when trials ended, not yet followed by a start
        self.epoch_s: list[float] = []            # between two reports of one trial
        self.ended: set = set()                   # names of the units that completed or failed
        self.done = self.failed = self.slots = 0
        self.shown, self.shown_at, self.drawn = None, 0.0, False
        self.marks: list[tuple[Unit, str, int | None]] = []  # (unit, status, stopped after epoch) for mark_mirror

    def unit(self, trial) -> Unit | None:
        """The unit a Tune trial runs (from its config: the one conversion back from Tune)."""
        d = trial.config.get("unit")
        return (self.units.get(d.get("name")) or Unit.from_tune(d)) if d else None

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started[trial.trial_id] = self.clock()
        if self.freed:
            self.gaps_s.append(self.clock() - self.freed.pop(0))
        self.update(trials)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        now, tid = self.clock(), trial.trial_id
        if tid in self.reported_at:
            self.epoch_s.append(now - self.reported_at[tid])
        elif tid in self.started and result.get("status") == "running":
            self.first_s.append(now - self.started[tid])
        self.reported_at[tid], self.last[tid] = now, result
        if result.get("notice"):
            self.say(f"[notice] {_tname(trial)}: {result['notice']}")
        self.update(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        r, unit = self.last.get(trial.trial_id, {}), self.unit(trial)
        status = {"running": "finished", "ok": "finished"}.get(r.get("status", "ok"), r.get("status"))
        if (self.early_stop and unit and status == "finished" and isinstance(r.get("epoch"), int)
                and r["epoch"] < unit.epochs):
            status = "stopped early"  # ASHA ended it before its last epoch: mark its folders
            self._mark(unit, status, r["epoch"])
        self.ended.add(_tname(trial))
        self.freed.append(self.clock())
        self.done += len(unit.members) if unit else 1
        self.say(f"[done {self.done}/{self.n}] {_tname(trial)}: {status}, epoch {r.get('epoch', '?')}, "
                 f"val acc {_fmt(r.get('val_acc'))}")
        self.update(trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        unit = self.unit(trial)
        if unit:  # its TensorBoard session ends as failed
            self._mark(unit, "failed")
        self.ended.add(_tname(trial))
        self.freed.append(self.clock())
        self.failed += len(unit.members) if unit else 1
        self.say(f"[failed {self.failed}] {_tname(trial)}: {_error_line(trial)}")
        self.update(trials)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.started[trial.trial_id] = self.clock()  # it starts again: its start-up counts again
        self.reported_at.pop(trial.trial_id, None)
        self.ended.discard(_tname(trial))
        self.say(f"[retry] {_tname(trial)}: {_error_line(trial)}; resuming from its last checkpoint")

    def on_step_end(self, iteration, trials, **info):
        self.update(trials)

    def on_experiment_end(self, trials, **info):
        self.close()

    def _mark(self, unit: Unit, status: str, epoch: int | None = None) -> None:
        if self.exp_dir is None:
            self.marks.append((unit, status, epoch))
        else:
            _mark_folders(Path(self.exp_dir), unit, status, epoch)

    def mark_mirror(self, view: Path) -> list[str]:
        """An object store's marks, in its local mirror (pulled after the fit): the files written,
        relative to it, for the caller to push back to the store."""
        folders = {view / unit.name for unit, _, _ in self.marks}  # the marked units' folders, not the whole mirror

        def files() -> set:
            return {p for f in folders for p in f.rglob("*") if p.is_file()}
        before = files()
        for unit, status, epoch in self.marks:
            _mark_folders(view, unit, status, epoch)
        return sorted(p.relative_to(view).as_posix() for p in files() - before)

    def say(self, text: str) -> None:
        """An event line, printed above the live line (which is redrawn after it)."""
        self._clear()
        self.out(text)
        self.shown = None

    def update(self, trials) -> None:
        # Tune still lists a trial as RUNNING while its completion or failure is being handled
        running = [t for t in trials if t.status == "RUNNING" and _tname(t) not in self.ended]
        self.slots = max(self.slots, len(running))
        line = self.line(running, self.clock())
        key = line.split(", elapsed")[0]
        now = self.clock()
        if self.live is not None:
            if key != self.shown or now - self.shown_at >= 1.0:
                self.live.write("\r\x1b[K" + line)
                self.live.flush()
                self.shown, self.shown_at, self.drawn = key, now, True
        elif key != self.shown or now - self.shown_at >= self.every:
            self.out(line)
            self.shown, self.shown_at = key, now

    def line(self, running: list, now: float) -> str:
        n_running = sum(len(u.members) if (u := self.unit(t)) else 1 for t in running)
        text = f"progress: {self.done}/{self.n} done, {n_running} running, {self.failed} failed, elapsed {dur(now - self.t0)}"
        eta = self.eta(running, now)
        if eta is not None and eta[2]:
            text += f", ETA {dur(eta[0])} (start-up {eta[1]:.0f}s, {eta[2]:.1f}s per epoch, as measured)"
        elif eta is not None:  # one epoch a trial: no time between reports to tell the two apart
            text += f", ETA {dur(eta[0])} ({eta[1]:.0f}s per trial with its start-up, as measured)"
        return text

    def eta(self, running: list, now: float) -> tuple[float, float, float] | None:
        """Seconds left, from what this launch measured: the start-up of a trial (from a slot
        freeing, or its start, to its first report, less one epoch) and the time between two
        reports of a trial (an epoch with its evaluation and checkpoint); the work left is
        shared by the most trials seen running at once. None until these were measured."""
        most = max([u.epochs for u in self.units.values()] or [1])
        if not self.first_s or (most > 1 and not self.epoch_s):
            return None
        epoch = statistics.median(self.epoch_s) if self.epoch_s else 0.0
        startup = statistics.median(self.first_s) - epoch  # the first report: start-up and one epoch
        wait = statistics.median(self.gaps_s) if self.gaps_s else 0.0
        todo = []
        for t in running:
            epochs = u.epochs if (u := self.unit(t)) else 0
            if t.trial_id in self.reported_at:
                todo.append((max(0, epochs - (self.last.get(t.trial_id, {}).get("epoch") or 0)), 0.0))
            else:  # still starting, or in its first epoch
                todo.append((epochs, startup - (now - self.started.get(t.trial_id, now))))
        busy = self.ended | {_tname(t) for t in running}
        todo += [(u.epochs, wait + startup) for name, u in self.units.items() if name not in busy]
        return eta_s(todo, epoch, self.slots), wait + max(0.0, startup), epoch

    def _clear(self) -> None:
        if self.live is not None and self.drawn:
            self.live.write("\r\x1b[K")
            self.live.flush()
            self.drawn = False

    def close(self) -> None:
        """End the live line, leaving the last state of the launch as an ordinary line."""
        if self.live is not None and self.drawn:
            self._clear()
            self.out(self.line([], self.clock()).split(", ETA")[0])


def eta_s(todo: list[tuple[int, float]], epoch_s: float, slots: int) -> float:
    """Seconds left, the one ETA (the live line and `gridrun status`): each trial still to run
    costs its epochs left at `epoch_s` and the start-up it has still to pay (todo: pairs of
    those), `slots` trials at a time."""
    return sum(max(0.0, n * epoch_s + startup) for n, startup in todo) / max(1, slots)


def dur(s: float | None) -> str:
    """A duration in words: 42s, 3m05s, 2h07m; '?' when unknown."""
    if s is None or not math.isfinite(s):
        return "?"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def live_stream(out):
    """Where the live progress line is redrawn: the terminal, when launch prints to one."""
    return sys.stdout if out is print and sys.stdout.isatty() else None


# Ray Tune's documented switches, read when a Tuner is built and run: its TensorBoard logger
# would duplicate the trainer's events (launch passes the JSON and CSV loggers it keeps), its new
# output's tables and banners would bury ours, and its warning on slow experiment syncs fires on
# every small grid. A variable the user set is left as it is.
TUNE_ENV = {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", "RAY_AIR_NEW_OUTPUT": "0",
            "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "1e9",
            # a plan mixing fused groups and lone trials under pruning: ASHA watches trial_val_acc,
            # which only lone trials report (a group prunes itself); Tune's strict check would fail
            # every group's result for lacking it, though ASHA itself skips such results
            "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1"}


@contextmanager
def quiet_tune():
    """TUNE_ENV while the launch's Tuner is built and runs; the environment as it was after."""
    added = [k for k in TUNE_ENV if k not in os.environ]
    os.environ.update({k: TUNE_ENV[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


class RayLog:
    """A line per trial that completed or failed, in the experiment folder's gridrun_ray.log,
    not the terminal, where Progress speaks (launch.py makes it Tune's TrialProgressCallback:
    Ray adds its own, which prints, only when none is passed)."""

    def __init__(self, exp_dir: str | None):
        """exp_dir: the experiment's folder here; None (an object store): no log is kept."""
        self.path = Path(exp_dir) / RAY_LOG if exp_dir is not None else None

    def on_trial_result(self, iteration, trials, trial, result, **info):
        pass

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.write(f"Trial {trial} completed. Last result: {_result_str(trial.last_result)}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.write(f"Trial {trial} errored ({_error_line(trial)}). Last result: {_result_str(trial.last_result)}")

    def write(self, line: str) -> None:
        if self.path is not None:
            append_line(self.path, f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}")


def _mark_folders(root: Path, unit: Unit, status: str, epoch: int | None) -> None:
    """The unit's trial folders under root that hold no summary yet: stopped.json when ASHA
    stopped them after `epoch`, and their TensorBoard session's end as `status`."""
    from .worker import end_sessions

    dirs = [d for d in unit.member_dirs(root / unit.name) if d.is_dir() and not TrialDir(d).finished()]
    if epoch is not None:
        for d in dirs:
            TrialDir(d).write_stopped(epoch, "ASHA")
    end_sessions(dirs, set(), status)


def _result_str(result: dict) -> str:
    return ", ".join(f"{k}={result[k]}" for k in ("epoch", "status", "val_acc") if k in (result or {}))



def _tname(trial) -> str:
    return trial.config.get("unit", {}).get("name", str(trial))


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) else "-"


def _error_line(trial) -> str:
    path = getattr(trial, "error_file", None) or ""
    try:
        return error_line(Path(path))[:300] if path else "error"
    except OSError:
        return "error"


# ---------------------------------------------------------------- the closing count

_KEYS = {"finished": "finished", "diverged": "diverged", "pruned": "pruned", "failed": "failed", "stopped": "stopped",
         "broken": "failed"}


def summarize(grid, units: list[Unit], seconds: float, exp_dir: str, out, shown: str | None = None) -> int:
    """Count this launch's trials by what their folders say (an object store's as pulled into its
    mirror), and Ray's ResultGrid for errors; the launch's exit code before signals."""
    counts = {"finished": 0, "diverged": 0, "pruned": 0, "failed": 0, "stopped": 0, "interrupted": 0}
    by_name = {((r.config or {}).get("unit") or {}).get("name"): r for r in _readable_results(grid)}
    states = _states(exp_dir)
    for u in units:
        result = by_name.get(u.name)
        if result is not None and _result_error(result) is not None:
            counts["failed"] += len(u.members)
            continue
        for t in u.members:
            counts[_KEYS.get(states.get(t.name), "interrupted")] += 1
    words = f"{counts['finished']} finished, {counts['diverged']} diverged, {counts['failed']} failed"
    if counts["pruned"]:
        words += f", {counts['pruned']} pruned at a rung"
    if counts["stopped"]:
        words += f", {counts['stopped']} stopped early"
    if counts["interrupted"]:
        words += f", {counts['interrupted']} interrupted (run the same command again to resume them)"
    out(f"{shown or exp_dir}: {sum(len(u.members) for u in units)} trials in {seconds:.0f}s: {words}"
        + (" (see the [failed] lines above; rerun the same command to retry them)" if counts["failed"] else ""))
    return 1 if counts["failed"] else 130 if counts["interrupted"] else 0


def _states(exp_dir: str) -> dict[str, str]:
    """Each trial's status as the one reader (results.load_experiment) decides it for every command."""
    try:
        return {t.name: t.status for t in results.load_experiment(Path(exp_dir)).trials}
    except GridrunError:  # its trials' labels cannot be checked here: counted as not finished
        return {}


def _readable_results(grid) -> list:
    """Ray's results that can be read: one whose files a full disk cut short (an empty error.pkl
    raises UnpicklingError) is left out and counted from its folder instead."""
    out = []
    for i in range(len(grid) if hasattr(grid, "__len__") else 0):
        try:
            out.append(grid[i])
        except Exception:  # noqa: BLE001  (any unpickling or I/O error of Ray's reader)
            continue
    return out


def _result_error(result):
    try:
        return result.error
    except Exception as e:  # noqa: BLE001  (an unreadable error is still an error)
        return e


def exit_code(code: int, terminated: bool, twice: bool, full, exp_dir: str, out) -> int:
    """1 when a trial failed; else 130 after Ctrl-C, 143 after SIGTERM; 2 (the CLI's code for the
    one line it prints) when the disk filled up."""
    if full is not None:
        return 2
    if code == 1 or not (terminated or twice):
        return code
    if terminated:
        out(f"{exp_dir}: stopped by SIGTERM: run the same command again to resume it")
    return 143 if terminated else 130
