"""Storage: the experiment lock (exactly one winner, on a folder and on S3), and object storage
as a first-class store, against a real S3-protocol server (moto) on loopback."""
import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gridrun.errors import GridrunError
from conftest import write_spec

N_RACERS = 8


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _race(take, start, done, wins) -> None:
    """One racer: wait for all, try to take the lock, hold it (or not) until all have tried."""
    start.wait()
    try:
        with take():
            wins.put("won")
            done.wait()
    except GridrunError:
        wins.put("lost")
        done.wait()


def race(take, n: int = N_RACERS) -> list[str]:
    """`n` processes released at once by a barrier, each trying `take()`; what each got."""
    ctx = mp.get_context("fork")
    start, done, wins = ctx.Barrier(n), ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(take, start, done, wins)) for _ in range(n)]
    for p in procs:
        p.start()
    got = [wins.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
    return got


def test_a_stale_folder_lock_is_taken_over_by_exactly_one_process(tmp_path):
    """Item 12: two processes both won a stale lock's takeover in 2 of 90 tries. Every round
    here has N racers released by one barrier, each holding what it won until all have tried."""
    from gridrun.storage.layout import ExperimentDir

    stale = {"pid": dead_pid(), "host": os.uname().nodename, "since": 0}
    for k in range(8):
        exp = tmp_path / f"exp{k}"
        exp.mkdir()
        if k % 3:
            (exp / "gridrun.lock").write_text(json.dumps(stale))  # a dead launch's lock (and, k % 3 == 0, none)
        got = race(lambda: ExperimentDir(exp).lock())
        assert got.count("won") == 1, (k, got)
        assert not (exp / "gridrun.lock").exists()  # the winner released it
    with ExperimentDir(tmp_path / "exp0").lock():  # a live holder refuses the next one
        with pytest.raises(GridrunError, match="already being launched"):
            with ExperimentDir(tmp_path / "exp0").lock():
                pass


# ---------------------------------------------------------------- a real S3-protocol server

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on loopback, a fresh bucket; the AWS variables point every process
    (this one, Ray's workers, the CLI) at it."""
    pytest.importorskip("moto", reason="moto[server] is in the test extra: pip install -e .[test]")
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_EC2_METADATA_DISABLED": "true"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import boto3

    client = boto3.client("s3")
    deadline = time.time() + 60
    while True:
        try:
            client.create_bucket(Bucket="gridrun-test")
            break
        except Exception:
            if time.time() > deadline or proc.poll() is not None:
                raise
            time.sleep(0.2)
    yield {"uri": f"s3://gridrun-test/runs?endpoint_override=127.0.0.1:{port}&scheme=http", "client": client,
           "port": port}
    proc.terminate()
    proc.wait(10)
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def keys(s3, prefix: str) -> dict[str, str]:
    """Object key -> ETag under a prefix of the test bucket."""
    out = {}
    for page in s3["client"].get_paginator("list_objects_v2").paginate(Bucket="gridrun-test", Prefix=prefix):
        out.update({o["Key"]: o["ETag"] for o in page.get("Contents", [])})
    return out


def test_a_stale_s3_lock_is_taken_over_by_exactly_one_process(s3):
    from gridrun.storage.s3 import Remote

    stale = json.dumps({"pid": dead_pid(), "host": os.uname().nodename}).encode()
    for k in range(4):
        remote = Remote(s3["uri"], f"lockrace{k}")
        if k % 2:  # a dead launch's lock (and, k even, none)
            s3["client"].put_object(Bucket="gridrun-test", Key=f"runs/lockrace{k}/gridrun.lock", Body=stale)
        got = race(lambda: remote.lock(heartbeat_s=3600))
        assert got.count("won") == 1, (k, got)
        assert f"runs/lockrace{k}/gridrun.lock" not in keys(s3, f"runs/lockrace{k}/")  # released
    remote = Remote(s3["uri"], "lockrace0")
    with remote.lock():
        with pytest.raises(GridrunError, match="already being launched"):
            with remote.lock():
                pass
        from gridrun.storage.backends import local_view
        from gridrun.storage.layout import ExperimentDir

        mirror = Path(local_view(s3["uri"], ["lockrace0"]))  # what `gridrun status` reads
        assert ExperimentDir(mirror / "lockrace0").lock_holder()["pid"] == os.getpid()


def test_the_s3_lock_beats_with_the_folder_locks_heartbeat(s3):
    """The object lock is held by the same heartbeat as the folder lock (locks.held): each beat
    rewrites the object (conditional on its ETag), counting up."""
    from gridrun.storage.s3 import Remote

    remote = Remote(s3["uri"], "beats")
    with remote.lock(heartbeat_s=0.2):
        time.sleep(1.5)
        body = s3["client"].get_object(Bucket="gridrun-test", Key="runs/beats/gridrun.lock")["Body"].read()
        assert json.loads(body)["beat"] >= 2 and json.loads(body)["pid"] == os.getpid()
    assert "runs/beats/gridrun.lock" not in keys(s3, "runs/beats/")


def test_trials_that_end_early_or_fail_are_marked_in_an_object_store_too(s3, tmp_path):
    """The driver marks a trial ASHA stopped (stopped.json, its TensorBoard session ended as
    stopped early) and a failed one (session ended as failed) as they end. On S3 it marked
    nothing (the folders are not here): an unfused study pruned by ASHA read its pruned trials as
    unfinished, told its sampler they were running, and never settled. Now the marks wait for
    the mirror the launch pulls after the fit, and go back to the store with it."""
    from types import SimpleNamespace

    from gridrun.experiment import open_experiment
    from gridrun.hparams import has_session_end
    from gridrun.plan import Trial, Unit
    from gridrun.progress import Progress
    from gridrun.results import load_experiment
    from gridrun.storage.backends import local_view

    folder = open_experiment("marks", s3["uri"])
    assert folder.here is None
    units = [Unit(n, False, (Trial(n, f"id{n}", {}, {"epochs": 4}),)) for n in ("cut", "crash", "done")]
    src = tmp_path / "src"
    for n in ("cut", "crash", "done"):  # what the trials wrote to the store while they ran
        (src / n).mkdir(parents=True)
        (src / n / "metrics.csv").write_text("epoch,val_acc\n1,0.5\n")
    folder.remote.upload(src)
    p = Progress(units, lambda _: None, folder.here, early_stop=True)
    tune_trial = {n: SimpleNamespace(trial_id=n, status="RUNNING", config={"unit": u.to_tune()}, error_file=None)
                  for n, u in zip(("cut", "crash", "done"), units)}
    p.on_trial_result(0, [], tune_trial["cut"], {"epoch": 1, "status": "running"})
    p.on_trial_complete(0, [], tune_trial["cut"])
    p.on_trial_error(0, [], tune_trial["crash"])
    assert not any(k.endswith("stopped.json") for k in keys(s3, "runs/marks/"))  # nothing here to mark yet
    with folder.mirror() as view:  # what launch._run does once the fit is over
        folder.pull(view)
        folder.push(view, p.mark_mirror(view))
    stored = keys(s3, "runs/marks/")
    assert "runs/marks/cut/stopped.json" in stored and not any("done/" in k and "tfevents" in k for k in stored)
    mirror = Path(local_view(s3["uri"], ["marks"])) / "marks"
    assert json.loads((mirror / "cut" / "stopped.json").read_text()) == {"after_epoch": 1, "by": "ASHA"}
    assert has_session_end(mirror / "cut") and has_session_end(mirror / "crash")
    assert {t.name: t.status for t in load_experiment(mirror).trials}["cut"] == "stopped"


def test_a_second_ctrl_c_while_the_heartbeat_stops_still_releases_the_lock(monkeypatch):
    """held() waits for a beat in flight before it releases (an S3 beat can take ~26 s against a
    stalled store): a KeyboardInterrupt in that wait skipped the release, and the lock stayed
    until it went stale, refusing relaunches with "already being launched"."""
    import threading

    from gridrun.storage import locks

    class Recorded:
        acquired = released = 0

        def acquire(self):
            self.acquired += 1

        def beat(self):
            pass

        def release(self):
            self.released += 1

    def interrupted_join(self, timeout=None):
        raise KeyboardInterrupt

    lock = Recorded()
    monkeypatch.setattr(threading.Thread, "join", interrupted_join)
    with pytest.raises(KeyboardInterrupt):
        with locks.held(lock, heartbeat_s=60):
            pass
    assert lock.acquired == lock.released == 1


@pytest.mark.slow
def test_s3_is_a_first_class_store(ray_local, synth_dir, tmp_path, s3, monkeypatch):
    """The probe's item 1 on a real S3 server: a relaunch of a finished experiment runs nothing,
    a changed value is refused, --fresh keeps the old results, status and report read it."""
    from gridrun.launch import launch
    from gridrun.spec import SpecError

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    spec = write_spec(tmp_path / "objs.yaml", synth_dir, seeds=1, grid={"model": ["tinynet_7k"], "lr": [0.01, 0.02]},
                      base={"epochs": 2})
    lines = []
    assert launch(str(spec), storage=s3["uri"], out=lines.append) == 0, lines
    assert "2 finished, 0 diverged, 0 failed" in lines[-1]
    files = keys(s3, "runs/objs/")
    assert "runs/objs/gridrun_launch_open.json" not in files  # closed in the store too (Storage.discard)
    for t in ("0.01_tinynet_7k_s0", "0.02_tinynet_7k_s0"):
        for f in ("summary.json", "metrics.csv", "logits_test.npy", "config.json"):
            assert f"runs/objs/{t}/{f}" in files
    assert "runs/objs/gridrun_trials.json" in files and "runs/objs/gridrun_launches.jsonl" in files
    assert "runs/objs/gridrun.lock" not in files  # released
    from gridrun.storage.s3 import Remote

    mirror = Remote(s3["uri"], "objs").pull(tmp_path / "mirror")  # what launch and status read
    (ckpt,) = (mirror / "0.01_tinynet_7k_s0").glob("checkpoint_*")  # a checkpoint shows as its empty folder
    assert not any(ckpt.iterdir()) and (mirror / "0.01_tinynet_7k_s0" / "summary.json").is_file()

    lines = []  # a relaunch runs nothing and rewrites no trial file
    assert launch(str(spec), storage=s3["uri"], out=lines.append) == 0
    assert "nothing to run" in lines[-1]
    after = keys(s3, "runs/objs/")
    assert {k: v for k, v in after.items() if "/tinynet" in k} == {k: v for k, v in files.items() if "/tinynet" in k}

    with pytest.raises(SpecError, match="epochs was 2, now 3"):  # a changed value is refused, as on disk
        launch(str(spec), overrides=["base.epochs=3"], storage=s3["uri"], out=lambda _: None)
    assert keys(s3, "runs/objs/") == after

    st = subprocess.run([sys.executable, "-m", "gridrun.cli", "status", "objs", "--storage", s3["uri"], "--json"],
                        capture_output=True, text=True, timeout=120)
    assert st.returncode == 0, st.stderr
    assert json.loads(st.stdout)["counts"]["finished"] == 2
    rep = subprocess.run([sys.executable, "-m", "gridrun.cli", "report", "objs", "--storage", s3["uri"],
                          "--out", str(tmp_path / "objs.md")], capture_output=True, text=True, timeout=300)
    assert rep.returncode == 0, rep.stderr
    assert "2 trials; 2 finished" in (tmp_path / "objs.md").read_text()

    lines = []  # --fresh starts over and keeps the old results beside it
    assert launch(str(spec), overrides=["base.epochs=1"], storage=s3["uri"], fresh=True, out=lines.append) == 0
    assert "kept as" in "\n".join(lines) and "2 finished" in lines[-1]
    prev = keys(s3, "runs/objs.prev-1/")
    assert {k.replace("objs.prev-1/", "objs/"): v for k, v in prev.items() if "/tinynet" in k} == \
        {k: v for k, v in files.items() if "/tinynet" in k}
    assert json.loads(s3["client"].get_object(Bucket="gridrun-test", Key="runs/objs/gridrun_trials.json")["Body"]
                      .read())[0]["train"]["epochs"] == 1


# ---------------------------------------------------------------- every --storage command on s3:// (issue 38 item 8)

SMOKE = Path(__file__).resolve().parents[1] / "reports" / "runs" / "smoke"


def cli(*args, cwd=None, env=None, timeout=120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), **(env or {})}
    env = {k: v for k, v in env.items() if v is not None}  # None: unset
    return subprocess.run([sys.executable, "-m", "gridrun.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout)


def test_restore_best_and_export_read_and_write_s3(s3, tmp_path):
    """`restore --storage s3://…` reported success and wrote a local folder named after the URI;
    `best` and `export` did not read s3://."""
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    r = cli("restore", str(SMOKE), "--storage", s3["uri"], "--name", "smoke_s3", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert "restored s3://gridrun-test/runs/smoke_s3: 4 trials" in r.stdout
    assert not any(p.name.startswith("s3") for p in tmp_path.iterdir())  # nothing local named after the URI
    stored = keys(s3, "runs/smoke_s3/")
    assert "runs/smoke_s3/gridrun_trials.json" in stored and "runs/smoke_s3/vanilla_s0/metrics.csv" in stored
    again = cli("restore", str(SMOKE), "--storage", s3["uri"], "--name", "smoke_s3", cwd=tmp_path, env=env)
    assert again.returncode == 2 and "smoke_s3 exists" in again.stderr
    best = cli("best", "smoke_s3", "--storage", s3["uri"], cwd=tmp_path, env=env)
    assert best.returncode == 0 and best.stdout.startswith("smoke_s3: "), best.stderr
    out = tmp_path / "slim.tar.gz"
    exp = cli("export", "smoke_s3", "--storage", s3["uri"], "--out", str(out), cwd=tmp_path, env=env)
    assert exp.returncode == 0 and "exported smoke_s3: 4 trials" in exp.stdout, exp.stderr
    assert out.is_file()


def refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def silent_endpoint():
    """A port that accepts connections and never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    held = []

    def accept():
        while True:
            try:
                held.append(srv.accept()[0])
            except OSError:
                return
    import threading

    threading.Thread(target=accept, daemon=True).start()
    yield srv.getsockname()[1]
    srv.close()
    for c in held:
        c.close()


@pytest.mark.slow  # 25 s: a silent endpoint is waited out on purpose
def test_an_unreachable_store_is_one_line_and_exit_2_within_30s(s3, silent_endpoint, tmp_path, synth_dir):
    """A refused connection or missing credentials were an internal error; an endpoint that accepts
    and never answers was refused only after 100-190 s."""
    spec = write_spec(tmp_path / "u.yaml", synth_dir)
    no_creds = {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None, "AWS_PROFILE": None,
                "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_CONFIG_FILE": str(tmp_path / "none"),
                "HOME": str(tmp_path)}
    cases = [(("status", "x"), f"s3://b/runs?endpoint_override=127.0.0.1:{refused_port()}&scheme=http", {},
              "(connection refused)"),
             (("best", "x"), f"s3://b/runs?endpoint_override=127.0.0.1:{silent_endpoint}&scheme=http", {},
              "(no answer within"),
             (("status", "x"), s3["uri"], no_creds, "no AWS credentials found"),
             (("restore", str(SMOKE)), f"s3://b/runs?endpoint_override=127.0.0.1:{refused_port()}&scheme=http", {},
              "(connection refused)"),
             # launch first imports torch and Ray and checks the spec (over 30 s at a load of ~18 here):
             # timed by the readers above, which fail at the same place (storage.s3.Remote)
             (("launch", str(spec)), s3["uri"], no_creds, "no AWS credentials found")]
    for args, uri, env, said in cases:
        t0 = time.time()
        r = cli(*args, "--storage", uri, cwd=tmp_path, env={"XDG_CACHE_HOME": str(tmp_path / "cache"), **env})
        took = time.time() - t0
        assert r.returncode == 2 and said in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
        assert took < 30 or args[0] == "launch", (args, took)
