"""The experiment folder a launch owns: its name, where it is (a folder, or an object store
with a local mirror), its lock, --fresh's set-aside, the records a launch writes (manifest,
effective spec, reference table, launch record with provenance), and the clean-up after a
full disk."""
from __future__ import annotations

import errno
import os
import re
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from . import diskio, store
from .errors import GridrunError
from .remote import Remote, local_path
from .store import ExperimentDir
from .spec import NAME_RE, SpecError


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


class Folder:
    """One experiment in storage: a local folder, or a prefix in an object store (`remote`).
    `shown` names it in messages and is where Ray writes (a path, or the store's URI)."""

    def __init__(self, name: str, storage: str | None):
        check_name(name)
        where = local_path(storage or "runs")
        self.remote = None if where is not None else Remote(storage, name)
        self.local = self.remote is None
        self.shown = os.path.join(where, name) if self.local else self.remote.uri

    @contextmanager
    def lock(self):
        """The experiment's lock: one launch at a time, a stale one taken over."""
        with ExperimentDir(self.shown).lock() if self.local else self.remote.lock():
            yield

    @contextmanager
    def reserved(self):
        """Room for the launch record should the disk fill up (diskio.reserve), held while the
        launch runs; no room to begin with is a full disk before anything else is written."""
        if self.local:
            diskio.reserve(self.shown)
        try:
            yield
        finally:
            if self.local:
                diskio.release(self.shown)

    @contextmanager
    def mirror(self):
        """The experiment as a folder here: itself, or a private mirror of the object store's copy."""
        if self.local:
            yield Path(self.shown)
            return
        tmp = tempfile.mkdtemp(prefix="gridrun-mirror-")
        try:
            yield self.remote.pull(Path(tmp, self.remote.name))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def set_aside(self, out) -> None:
        """--fresh: start over, but never delete results (the old experiment becomes NAME.prev-N).
        A local folder moves before its lock is taken; an object store's under its lock."""
        if not self.local:
            return self.remote.set_aside(out)
        if not os.path.exists(self.shown):
            return None
        holder = ExperimentDir(self.shown).lock_holder()
        if holder:
            raise GridrunError(f"{self.shown} is being launched by pid {holder.get('pid')} on {holder.get('host')}: "
                               f"--fresh cannot move it away while it runs")
        k = 1
        while os.path.exists(f"{self.shown}.prev-{k}"):
            k += 1
        os.rename(self.shown, f"{self.shown}.prev-{k}")
        out(f"--fresh: the previous experiment is kept as {self.shown}.prev-{k}")

    def push(self, view: Path, names: list[str] | None = None) -> None:
        """The mirror's top-level files (all but the lock, or `names`) back to the object store."""
        if not self.local:
            self.remote.push(view, names if names is not None else
                             [p.name for p in view.iterdir() if p.is_file() and p.name != store.LOCK])


def record_plan(view: Path, spec, plan, reference: Path | None) -> None:
    """Record what this launch runs (plan.Remaining): the manifest with the fused group each
    trial runs in, the effective spec, and the study's reference table."""
    view.mkdir(parents=True, exist_ok=True)
    exp = ExperimentDir(view)
    exp.write_manifest(plan.manifest())
    exp.write_spec(spec.raw)
    if reference is not None:
        exp.write_reference(reference)
    from . import hparams

    hparams.remove_experiment_summary(view)  # `gridrun tensorboard` writes it into its view


def record_launch(exp_dir: str, cluster: str, spec_path: str, wall_s: float, code: int) -> None:
    """Append how and where this launch ran, and the code that ran it (the report quotes it)."""
    prov, exp = store.provenance(), ExperimentDir(exp_dir)
    diff = prov.get("git", {}).pop("diff", None)
    if diff:
        try:
            prov["git"]["diff_file"] = exp.write_diff(len(exp.read_launches()) + 1, diff)
        except OSError as e:  # a full disk: the record itself matters more than the patch
            prov["git"]["diff_file"] = f"not saved ({e.strerror})"
    argv = sys.argv[1:] if sys.argv and os.path.basename(sys.argv[0]) in ("gridrun", "cli.py", "__main__.py") else None
    command = shlex.join(["gridrun", *argv]) if argv else f"launch({spec_path!r})"  # the report quotes it
    exp.append_launch({"command": command, "cluster": cluster, "wall_s": round(wall_s, 1), "exit": code,
                       "finished_at": time.time(), "provenance": prov})


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


# ---------------------------------------------------------------- a full disk

def storage_full(exp_dir: str) -> OSError | None:
    """ENOSPC when the experiment's disk has under 1 MiB left for anyone but root (its reserve still
    held): trials there fail to write or sync their files, whatever error Ray shows for them."""
    free = diskio.free_bytes(exp_dir)
    if free is not None and free < 2**20:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), exp_dir)
    return None

