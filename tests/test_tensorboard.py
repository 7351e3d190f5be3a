"""TensorBoard's HParams dashboard: the summaries gridrun writes, and what a real TensorBoard
serves from them over HTTP (and shows in a real browser, where one is installed)."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from gridrun import hparams
from gridrun.cli import STOP_GRACE_S

STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]
SLOW_S = 60  # what a loaded machine (load ~9 on 2 cores) may add to a process's start or exit


def _as_from_a_terminal():
    """The child's SIGINT as a terminal's Ctrl-C finds it: a child inherits an ignored SIGINT, and a
    non-interactive shell starts a background job (pytest run with `&`, as CI rehearsals are) with
    SIGINT ignored: these tests then timed out, the child never seeing the SIGINT they send."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def scalars(folder: Path, tag: str, values: list[float]) -> None:
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    w = EventFileWriter(str(folder))
    for step, v in enumerate(values, 1):
        w.add_event(Event(wall_time=time.time(), step=step, summary=Summary(value=[Summary.Value(tag=tag, simple_value=v)])))
    w.close()


def experiment(root: Path, name: str, lrs: list[float], model="m", seeds=2, failed=(), acc=0.8, augs=()) -> Path:
    """An experiment folder as a launch leaves it: manifest, and per trial its config, a
    session start and end, and validation accuracy per epoch (`augs`: an augment axis too)."""
    exp = root / name
    manifest = []
    for lr in lrs:
        for aug in augs or [None]:
            for seed in range(seeds):
                trial = f"{model}_lr{lr}{f'_{aug}' if aug else ''}_s{seed}"
                train = {"model": model, "lr": lr, "seed": seed, "epochs": 2, "augment": aug or "rotate"}
                axes = {"lr": lr, **({"augment": aug} if aug else {})}
                manifest.append({"name": trial, "axes": axes, "train": train})
                d = exp / trial
                d.mkdir(parents=True)
                (d / "config.json").write_text(json.dumps(train))
                hparams.write_session_start(d, train, list(axes))
                scalars(d, "val/acc", [0.5, acc + lr / 10 + seed / 100])
                hparams.write_session_end(d, "failed" if trial in failed else "ok")
    (exp / "gridrun_trials.json").write_text(json.dumps(manifest))
    return exp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, route: str, body: dict):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/data/plugin/hparams/{route}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def get(port: int, route: str):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{route}", timeout=10) as r:
        return json.loads(r.read())


def until(what: str, fn, timeout: float = 90.0):
    """Poll `fn` until it returns something true (TensorBoard loads in the background)."""
    deadline, last = time.time() + timeout, None
    while time.time() < deadline:
        try:
            last = fn()
            if last:
                return last
        except OSError as e:  # not listening yet
            last = e
        time.sleep(0.5)
    raise AssertionError(f"TensorBoard: no {what} after {timeout:.0f}s (last: {last!r})")


class Board:
    """`gridrun tensorboard ARGS -- --host 127.0.0.1` on a free port, stopped with Ctrl-C."""

    def __init__(self, tmp: Path, *args: str):
        self.port = free_port()
        env = {**os.environ, "XDG_CACHE_HOME": str(tmp / "cache"), "PYTHONPATH": str(Path(__file__).parents[1])}
        self.proc = subprocess.Popen([sys.executable, "-m", "gridrun.cli", "tensorboard", *args, "--port",
                                      str(self.port), "--", "--host", "127.0.0.1"], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     preexec_fn=_as_from_a_terminal)

    def runs(self, n: int) -> list[str]:
        return until(f"{n} runs", lambda: (r := get(self.port, "/data/runs")) and len(r) >= n and r)

    def groups(self, n: int) -> list[dict]:
        body = {"experimentName": "", "allowedStatuses": STATUSES, "colParams": [], "startIndex": 0, "sliceSize": 100}
        return until(f"{n} session groups", lambda: (g := post(self.port, "session_groups", body)["sessionGroups"])
                     and len(g) >= n and sum(len(x["sessions"]) for x in g) >= 2 * n and g)

    def stop(self, sig=signal.SIGINT) -> str:
        """Stop gridrun tensorboard; it stops its TensorBoard within cli.STOP_GRACE_S (then kills
        it), so the margin here is only for a loaded machine starting Python's exit."""
        self.proc.send_signal(sig)
        try:
            out, _ = self.proc.communicate(timeout=STOP_GRACE_S + SLOW_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"gridrun tensorboard did not stop within {STOP_GRACE_S + SLOW_S:.0f}s of {sig!r}")
        return out

    def serving(self) -> bool:
        try:
            get(self.port, "/data/runs")
            return True
        except OSError:
            return False


@pytest.fixture
def two_experiments(tmp_path):
    runs = tmp_path / "runs"
    experiment(runs, "a", [0.1, 0.01], failed=("m_lr0.1_s1",))
    experiment(runs, "b", [0.3], model="n")
    return runs


def test_session_start_names_its_group_by_the_readable_config_label(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    hparams.write_session_start(tmp_path, {"model": "m", "lr": 0.1, "seed": 3, "augment": "none"}, ["lr", "augment"])
    hparams.write_session_end(tmp_path, "stopped early")
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    start = metadata.parse_session_start_info_plugin_data(
        acc.SummaryMetadata(metadata.SESSION_START_INFO_TAG).plugin_data.content)
    end = metadata.parse_session_end_info_plugin_data(acc.SummaryMetadata(metadata.SESSION_END_INFO_TAG).plugin_data.content)
    assert start.group_name == "m lr=0.1 augment=none" and start.hparams["lr"].number_value == 0.1
    assert end.status == 2 and hparams.has_session_end(tmp_path)  # STATUS_FAILURE: it did not finish


def test_the_views_session_start_is_dated_when_the_trial_started(tmp_path):
    """The view's own session start (written when `gridrun tensorboard` builds the view) said the
    trial started then: after it had ended."""
    import os

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    exp = experiment(tmp_path / "runs", "a", [0.1], seeds=1)
    trial = exp / "m_lr0.1_s0"
    start = next(f for f in trial.iterdir() if f.name.endswith(hparams.SUFFIX) and hparams._is_start(f))
    os.utime(start, (time.time() - 3600, time.time() - 3600))  # it started an hour ago
    hparams.build_view(tmp_path / "runs", [exp], tmp_path / "view")
    acc = EventAccumulator(str(tmp_path / "view" / "a" / "m_lr0.1_s0"))
    acc.Reload()
    begun = metadata.parse_session_start_info_plugin_data(
        acc.SummaryMetadata(metadata.SESSION_START_INFO_TAG).plugin_data.content)
    ended = metadata.parse_session_end_info_plugin_data(acc.SummaryMetadata(metadata.SESSION_END_INFO_TAG).plugin_data.content)
    assert begun.group_name == "a: m lr=0.1"  # the view's start, not the trial's own
    assert begun.start_time_secs == pytest.approx(start.stat().st_mtime) and begun.start_time_secs < ended.end_time_secs


def test_the_experiment_summary_has_every_experiments_values_sorted():
    from tensorboard.plugins.hparams import metadata

    a = [{"axes": {"lr": lr}, "train": {"lr": lr, "augment": aug}} for lr, aug in ((0.3, "rotate"), (0.01, "none"))]
    b = [{"axes": {"lr": 0.1, "augment": "affine"}, "train": {"lr": 0.1, "augment": "affine"}}]
    pb = hparams.experiment_summary([a, b])
    exp = metadata.parse_experiment_plugin_data(pb.value[0].metadata.plugin_data.content)
    domains = {h.name: [v.number_value or v.string_value for v in h.domain_discrete.values] for h in exp.hparam_infos}
    assert domains == {"lr": [0.01, 0.1, 0.3], "augment": ["affine", "none", "rotate"]}
    assert all(h.differs for h in exp.hparam_infos)
    assert [m.name.tag for m in exp.metric_infos] == ["val/acc", "val/loss"]  # never test accuracy


def test_a_view_over_all_of_runs_never_merges_two_experiments(two_experiments, tmp_path):
    """Over all of runs/ one row held runs of three experiments that share a config label (0.9586
    shown where the runs' figure was 0.9710), and nothing said which experiment a session was from;
    a field one experiment did not vary was a blank."""
    experiment(two_experiments, "c", [0.1], acc=0.6, augs=["none", "affine"])  # m lr=0.1 again, other figures
    tb = Board(tmp_path, "--storage", str(two_experiments))
    try:
        groups = tb.groups(5)
        exp = post(tb.port, "experiment", {"experimentName": ""})
    finally:
        tb.stop()
    by_name = {g["name"]: g for g in groups}
    assert sorted(by_name) == ["a: m lr=0.01", "a: m lr=0.1", "b: n lr=0.3", "c: m lr=0.1 augment=affine",
                               "c: m lr=0.1 augment=none"]
    for name, g in by_name.items():  # each row holds its own experiment's runs, named after it
        assert {s["name"].split("/")[0] for s in g["sessions"]} == {name.split(":")[0]} and len(g["sessions"]) == 2
    a = by_name["a: m lr=0.1"]
    assert a["hparams"] == {"experiment": "a", "lr": 0.1, "augment": "rotate"}  # not varied by a: its value
    accs = [m["value"] for s in a["sessions"] for m in s["metricValues"] if m["name"]["tag"] == "val/acc"]
    assert sorted(round(v, 4) for v in accs) == [0.81, 0.82]  # a's runs only, not c's 0.61/0.62
    cols = {h["name"]: h for h in exp["hparamInfos"]}
    assert cols["experiment"]["domainDiscrete"] == ["a", "b", "c"]
    assert cols["augment"]["domainDiscrete"] == ["affine", "none", "rotate"]


def test_a_real_tensorboard_over_all_of_runs_serves_one_group_per_config(two_experiments, tmp_path):
    tb = Board(tmp_path, "--storage", str(two_experiments))
    try:
        runs = tb.runs(6)
        assert sorted(runs) == ["a/m_lr0.01_s0", "a/m_lr0.01_s1", "a/m_lr0.1_s0", "a/m_lr0.1_s1", "b/n_lr0.3_s0",
                                "b/n_lr0.3_s1"]  # no run "." for the experiment summary
        groups = tb.groups(3)
        exp = post(tb.port, "experiment", {"experimentName": ""})
    finally:
        out = tb.stop()
    assert [h["domainDiscrete"] for h in exp["hparamInfos"] if h["name"] == "lr"] == [[0.01, 0.1, 0.3]]
    assert [m["name"]["tag"] for m in exp["metricInfos"]] == ["val/acc", "val/loss"]
    by_name = {g["name"]: g for g in groups}
    assert sorted(by_name) == ["a: m lr=0.01", "a: m lr=0.1", "b: n lr=0.3"]
    assert sorted(s["name"] for s in by_name["a: m lr=0.1"]["sessions"]) == ["a/m_lr0.1_s0", "a/m_lr0.1_s1"]
    assert by_name["a: m lr=0.1"]["hparams"] == {"experiment": "a", "lr": 0.1}
    status = {s["name"]: s["status"] for g in groups for s in g["sessions"]}
    assert status.pop("a/m_lr0.1_s1") == "STATUS_FAILURE" and set(status.values()) == {"STATUS_SUCCESS"}, status
    assert tb.proc.returncode == 0 and "6 trials of 2 experiment(s)" in out


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace(tmp_path, monkeypatch):
    """cli._stop_child on a real child that ignores SIGTERM, the grace cut to 0.5 s (the whole
    command, with its real 10 s grace, is the slow test below)."""
    from gridrun import cli

    monkeypatch.setattr(cli, "STOP_GRACE_S", 0.5)
    ready = tmp_path / "ready"
    child = subprocess.Popen([sys.executable, "-c", "import signal, time, pathlib\n"
                              "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                              f"pathlib.Path({str(ready)!r}).touch()\ntime.sleep(600)\n"])
    try:
        until("child started", ready.is_file, timeout=SLOW_S)
        t0 = time.time()
        cli._stop_child(child)
        assert child.returncode == -signal.SIGKILL and 0.45 <= time.time() - t0 < SLOW_S  # waited, then killed
        cli._stop_child(child)  # a child already gone: nothing to do
    finally:
        child.kill()
        child.wait()


@pytest.mark.slow  # waits out the real 10 s grace by design
def test_a_tensorboard_that_ignores_sigterm_is_killed_after_the_grace(two_experiments, tmp_path):
    """The stop used to wait for TensorBoard without a bound: a child that does not stop hung
    `gridrun tensorboard` (and the test) for ever."""
    fake = tmp_path / "bin" / "tensorboard"
    fake.parent.mkdir()
    pid = tmp_path / "tb.pid"
    fake.write_text(f"#!{sys.executable}\nimport os, signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                    f"open({str(pid)!r}, 'w').write(str(os.getpid()))\ntime.sleep(600)\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}", "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "gridrun.cli", "tensorboard", "--storage", str(two_experiments)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=_as_from_a_terminal)
    try:
        until("fake TensorBoard started", lambda: pid.is_file() and pid.read_text(), timeout=SLOW_S)
        proc.send_signal(signal.SIGINT)
        t0 = time.time()
        out, _ = proc.communicate(timeout=STOP_GRACE_S + SLOW_S)
        assert proc.returncode == 0 and time.time() - t0 >= STOP_GRACE_S * 0.9, out  # it waited, then killed
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid.read_text()), 0)  # and the child is gone
    finally:
        proc.kill()
        if pid.is_file() and pid.read_text():
            try:
                os.kill(int(pid.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_real_tensorboard_over_one_experiment_shows_its_own_values(two_experiments, tmp_path):
    tb = Board(tmp_path, "a", "--storage", str(two_experiments))
    try:
        assert sorted(tb.runs(4)) == ["a/m_lr0.01_s0", "a/m_lr0.01_s1", "a/m_lr0.1_s0", "a/m_lr0.1_s1"]
        groups = tb.groups(2)
        exp = post(tb.port, "experiment", {"experimentName": ""})
    finally:
        tb.stop(signal.SIGTERM)
    until("stop after `kill` of gridrun tensorboard", lambda: not tb.serving(),  # no orphan server
          timeout=STOP_GRACE_S + SLOW_S)
    assert {h["name"]: h["domainDiscrete"] for h in exp["hparamInfos"]} == {"experiment": ["a"], "lr": [0.01, 0.1]}
    assert sorted(g["name"] for g in groups) == ["a: m lr=0.01", "a: m lr=0.1"]


def _browser() -> str:
    """The installed Chromium for the page check, or a skip that says what is missing."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not exe:
        pytest.skip("no Chromium here (Debian: apt-get install chromium)")
    return exe


@pytest.mark.slow  # a browser and a TensorBoard: about 20 s on the 2-core CPU
def test_the_hparams_tab_in_a_real_browser_lists_the_grids_configs(two_experiments, tmp_path):
    from playwright.sync_api import sync_playwright

    exe = _browser()
    tb = Board(tmp_path, "a", "--storage", str(two_experiments))
    try:
        tb.groups(2)  # TensorBoard has loaded the sessions
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=exe, args=["--no-sandbox"])
            try:
                page = browser.new_page()
                page.goto(f"http://127.0.0.1:{tb.port}/#hparams", timeout=60_000)
                for label in ("a: m lr=0.01", "a: m lr=0.1"):  # the Trial ID column: readable labels, not hashes
                    page.get_by_text(label, exact=True).first.wait_for(timeout=60_000)
                text = page.locator("body").inner_text()
            finally:
                browser.close()
    finally:
        tb.stop()
    assert "STATUS_UNKNOWN" not in text


def test_ci_installs_chromium_quietly_when_apt_can_and_never_fails(tmp_path):
    """`.ci/run` runs `.ci/browser`, which installs Debian's chromium when it is missing so the
    browser test runs in CI instead of skipping; it exits 0 whatever apt-get does."""
    script = Path(__file__).parents[1] / ".ci" / "browser"
    assert "bash .ci/browser" in (script.parent / "run").read_text()
    calls = tmp_path / "apt.log"
    for apt_code, has_chromium in ((0, False), (100, False), (None, False), (0, True)):
        bin_ = tmp_path / f"bin{apt_code}{has_chromium}"
        bin_.mkdir()
        if apt_code is not None:
            (bin_ / "apt-get").write_text(f"#!/bin/bash\necho \"$*\" >> {calls}\nexit {apt_code}\n")
            (bin_ / "apt-get").chmod(0o755)
        if has_chromium:
            (bin_ / "chromium").write_text("#!/bin/bash\n")
            (bin_ / "chromium").chmod(0o755)
        calls.write_text("")
        r = subprocess.run(["/bin/bash", str(script)], env={"PATH": str(bin_)}, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0 and r.stdout == "", (apt_code, has_chromium, r)
        logged = calls.read_text()
        if apt_code is None or has_chromium:
            assert logged == ""
        else:
            assert logged.startswith("update -qq")
            assert ("install -y -qq --no-install-recommends chromium" in logged) == (apt_code == 0)
            assert ("could not install" in r.stderr) == (apt_code != 0)
