"""The experiment a launch owns: its name and its storage (storage.backends: a folder, or an
object store with a local mirror), the records a launch writes (manifest, effective spec,
reference table, launch record with provenance), and SIGTERM handled as Ctrl-C."""
from __future__ import annotations

import os
import re
import shlex
import signal
import sys
import threading
import time
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from .errors import GridrunError
from .spec import NAME_RE, SpecError
from .storage.backends import Storage, open_storage
from .storage import locks
from .storage.layout import LAUNCHES, OPEN_LAUNCH, REFERENCE, ExperimentDir
from .storage.provenance import provenance


def check_name(name: str) -> None:
    if not re.match(NAME_RE, name):
        raise SpecError(f"experiment name {name!r} is not a safe folder name: use letters, digits, '.', '_' and '-', "
                        f"starting with a letter or digit")


def reference_file(spec, spec_path: str) -> Path | None:
    """The study's table the report sets beside its numbers: a CSV beside the spec, or None."""
    if not spec.report.reference:
        return None
    ref = Path(spec_path).resolve().parent / spec.report.reference
    if not ref.is_file() or ref.suffix != ".csv":
        raise SpecError(f"{spec_path}: report.reference {spec.report.reference!r} is not a CSV file beside the spec "
                        f"({ref}): give the file name of the study's table")
    return ref


def open_experiment(name: str, storage: str | None) -> Storage:
    """The experiment `name` in `storage` (a folder, file:///folder or s3://bucket/prefix)."""
    check_name(name)
    return open_storage(name, storage)


def record_plan(view: Path, spec, plan, reference: Path | None) -> None:
    """Record what this launch runs (plan.Remaining): the manifest with the fused group each
    trial runs in, the effective spec, and the study's reference table."""
    view.mkdir(parents=True, exist_ok=True)
    exp = ExperimentDir(view)
    exp.write_manifest(plan.manifest())
    raw = spec.raw
    if reference is not None:  # the recorded spec names the copy beside it: relaunched as it is, it finds it
        exp.write_reference(reference)
        raw = {**raw, "report": {**raw["report"], "reference": REFERENCE}}
    exp.write_spec(raw)
    from . import hparams

    hparams.remove_experiment_summary(view)  # `gridrun tensorboard` writes it into its view


def _cli_command() -> str | None:
    """The gridrun command line this process runs, if it is gridrun's CLI (not `python -m pytest`)."""
    first = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if first is None or not (first.name in ("gridrun", "cli.py") or first.parts[-2:] == ("gridrun", "__main__.py")):
        return None
    return shlex.join(["gridrun", *sys.argv[1:]])


# How gridrun.launch() was called (set by api.launch): a launch from Python is recorded as that call,
# not as the spec's temporary file (a spec dict is written to one that is gone after the launch).
PY_CALL: ContextVar[str | None] = ContextVar("gridrun_py_call", default=None)


def open_launch(exp_dir: str, spec_path: str) -> None:
    """Under the lock, before any trial runs: a launch killed before it recorded itself (kill -9,
    a lost node) left its open record; it is recorded now, its wall time unknown. Then this
    launch's own open record (its command, start and code)."""
    exp = ExperimentDir(exp_dir)
    killed = exp.close_launch()
    if killed is not None:
        exp.append_launch({**killed, "outcome": "killed: it ended without recording itself (kill -9, a lost "
                                                "node); its wall time is unknown"})
    exp.open_launch({"command": _command(spec_path), "started_at": time.time(),
                     "provenance": provenance(diff=False)})  # the diff is saved with the record that closes it


@contextmanager
def launch_opened(view: Path, spec_path: str, folder: Storage):
    """The launch's open record (open_launch) while the block runs, closed however it ends but a
    kill: recorded (record_launch closes it), or stopped by an error or an interrupt."""
    open_launch(str(view), spec_path)
    folder.push(view, [LAUNCHES, OPEN_LAUNCH])
    try:
        yield
    finally:
        ExperimentDir(view).close_launch()
        folder.discard([OPEN_LAUNCH])


def _command(spec_path: str) -> str:
    return PY_CALL.get() or _cli_command() or f"launch({spec_path!r})"  # the report quotes it


def record_launch(exp_dir: str, cluster: str, spec_path: str, wall_s: float, code: int) -> None:
    """Append how and where this launch ran, and the code that ran it (the report quotes it), in
    place of its open record."""
    prov, exp = provenance(), ExperimentDir(exp_dir)
    diff = prov.get("git", {}).pop("diff", None)
    if diff:
        try:
            prov["git"]["diff_file"] = exp.write_diff(len(exp.read_launches()) + 1, diff)
        except OSError as e:  # a full disk: the record itself matters more than the patch
            prov["git"]["diff_file"] = f"not saved ({e.strerror})"
    exp.append_launch({"command": _command(spec_path), "cluster": cluster, "wall_s": round(wall_s, 1), "exit": code,
                       "finished_at": time.time(), "provenance": prov})
    exp.close_launch()


class Terminated:
    """SIGTERM handled as Ctrl-C while a launch runs (a context manager): the handler calls whatever
    handles SIGINT at that moment (Tune's during fit: stop the trials, save its state; else
    Python's: KeyboardInterrupt) and remembers it, so the launch ends as an interrupted one does
    (summary, launch record), with exit code 143 (128 + SIGTERM) instead of 130."""

    def __init__(self):
        self.received, self.before, self.sigint = False, None, None

    def handle(self, signum, frame):
        self.received = True
        handler = signal.getsignal(signal.SIGINT)
        if not callable(handler):  # SIGINT ignored or default: stop as Python's Ctrl-C does
            raise KeyboardInterrupt
        handler(signal.SIGINT, frame)

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():  # signals go to the main thread only
            previous = signal.signal(signal.SIGTERM, self.handle)
            if self.before is None:
                self.before, self.sigint = previous, signal.getsignal(signal.SIGINT)

    def __enter__(self):
        self.install()
        return self

    def __exit__(self, *exc):
        if self.before is not None:
            signal.signal(signal.SIGTERM, self.before)
        if self.sigint is not None:  # Tune's fit leaves its SIGINT handler behind: Ctrl-C would do nothing
            signal.signal(signal.SIGINT, self.sigint)
        return False


def said_holder(view: Path, fresh: bool, shown: str, out) -> None:
    """A dry run over an experiment another launch holds says so as the launch would: --fresh
    refuses (the dry run printed a plan, rc 0), a plain launch would wait its turn (a notice)."""
    holder = ExperimentDir(view).lock_holder()
    if holder and fresh:
        raise GridrunError(locks.fresh_refused(shown, holder))
    if holder:
        out(f"notice: {locks.holder_line(shown, holder)}")
