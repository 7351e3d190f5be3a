"""Two hosts with their own addresses: two network namespaces joined by a veth pair
(10.231.0.1 and 10.231.0.2, addresses that exist only inside them), a Ray head and the S3
server (moto) in one, a Ray worker node in the other. A small grid stores on S3; the worker
host is cut off (link down, its processes killed) while a trial is known to be mid-grid on it;
the grid finishes on the head with every trial's files complete and nothing counted twice.

The hosts share this machine's disk (only the network is split), so every result reaches the
head through S3 over the veth link, as on a cluster without a shared file system.
"""
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_spec

ROOT = Path(__file__).resolve().parents[1]
HEAD_IP, WORKER_IP, PORT, S3_PORT = "10.231.0.1", "10.231.0.2", 6379, 5123
EPOCHS, STEPS_PER_EPOCH = 3, 12  # write_spec: subset 600 training images, batch 50


def sh(*cmd, ns: str | None = None, env=None, check=True, timeout=120):
    """Run a command (inside namespace `ns`); a failure shows its output."""
    full = (["ip", "netns", "exec", ns] if ns else []) + [str(c) for c in cmd]
    r = subprocess.run(full, env=env, timeout=timeout, capture_output=True, text=True)
    if check and r.returncode:
        raise subprocess.CalledProcessError(r.returncode, full, r.stdout, r.stderr[-3000:] + r.stdout[-3000:])
    return r


def netns_available() -> str | None:
    """None when network namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "needs root (ip netns)"
    if not shutil.which("ip"):
        return "needs iproute2's ip"
    probe = f"grprobe{os.getpid()}"
    try:
        sh("ip", "netns", "add", probe)
    except (subprocess.CalledProcessError, OSError) as e:
        return f"ip netns add failed: {getattr(e, 'stderr', '') or e}"
    sh("ip", "netns", "del", probe, check=False)
    return None


def kill_namespace(ns: str) -> None:
    """SIGKILL every process inside a namespace (and only those)."""
    r = sh("ip", "netns", "pids", ns, check=False)
    for pid in r.stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


@pytest.fixture
def two_hosts(tmp_path):
    why = netns_available()
    if why:
        pytest.skip(f"two-host test: {why}")
    tag = os.getpid() % 100000
    a, b = f"grA{tag}", f"grB{tag}"
    va, vb = f"grva{tag}", f"grvb{tag}"
    try:
        for ns in (a, b):
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "set", "lo", "up", ns=ns)
        sh("ip", "link", "add", va, "type", "veth", "peer", "name", vb)
        sh("ip", "link", "set", va, "netns", a)
        sh("ip", "link", "set", vb, "netns", b)
        sh("ip", "addr", "add", f"{HEAD_IP}/24", "dev", va, ns=a)
        sh("ip", "addr", "add", f"{WORKER_IP}/24", "dev", vb, ns=b)
        sh("ip", "link", "set", va, "up", ns=a)
        sh("ip", "link", "set", vb, "up", ns=b)
        # the link carries packets: a refused connection is an answer from the other host
        sh(sys.executable, "-c", f"import socket\ntry: socket.create_connection(('{WORKER_IP}', 9), 10)\n"
                                 f"except ConnectionRefusedError: pass", ns=a)
        yield {"head": a, "worker": b, "worker_link": vb}
    finally:
        for ns in (b, a):
            kill_namespace(ns)
        for ns in (a, b):
            sh("ip", "netns", "del", ns, check=False)
        for d in (f"/tmp/gr2h-{tag}-a", f"/tmp/gr2h-{tag}-b"):
            shutil.rmtree(d, ignore_errors=True)


def env_for_cluster(tmp_path: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}", GRIDRUN_NO_DOWNLOAD="1",
               AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
               AWS_ENDPOINT_URL=f"http://{HEAD_IP}:{S3_PORT}", AWS_EC2_METADATA_DISABLED="true",
               RAY_USAGE_STATS_ENABLED="0", XDG_CACHE_HOME=str(tmp_path / "cache"),
               # a node whose link is down is declared dead after ~5 s, not Ray's default ~30 s
               RAY_health_check_period_ms="1000", RAY_health_check_failure_threshold="5",
               RAY_health_check_timeout_ms="1000",
               # the hosts prove they belong to the cluster with a token of this test's own
               RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    env.pop("RAY_ADDRESS", None)
    return env


def in_head(ns: str, env: dict, code: str) -> str:
    """Run Python inside the head's namespace (where the S3 server is reachable); its stdout."""
    return sh(sys.executable, "-c", code, ns=ns, env=env, timeout=120).stdout


def wait_for(cond, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(600)  # two Ray nodes start on a loaded 2-core CPU: ~3 min here
def test_a_grid_on_two_hosts_survives_losing_the_worker_host(two_hosts, synth_dir, tmp_path):
    head, worker = two_hosts["head"], two_hosts["worker"]
    env = env_for_cluster(tmp_path)
    tag = head[3:]
    moto = subprocess.Popen(["ip", "netns", "exec", head, sys.executable, "-m", "moto.server", "-H", HEAD_IP,
                             "-p", str(S3_PORT)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    in_head(head, env, "import boto3, time\n"
                       "for _ in range(200):\n"
                       "    try:\n"
                       "        boto3.client('s3').create_bucket(Bucket='grid'); break\n"
                       "    except Exception: time.sleep(0.1)\n")
    ray = str(Path(sys.executable).parent / "ray")
    sh(ray, "start", "--head", "--node-ip-address", HEAD_IP, "--port", PORT, "--num-cpus", 1, "--num-gpus", 0,
       "--include-dashboard=false", "--disable-usage-stats", "--temp-dir", f"/tmp/gr2h-{tag}-a", ns=head, env=env)
    sh(ray, "start", "--address", f"{HEAD_IP}:{PORT}", "--node-ip-address", WORKER_IP, "--num-cpus", 1,
       "--num-gpus", 0, "--disable-usage-stats", "--temp-dir", f"/tmp/gr2h-{tag}-b", ns=worker, env=env)
    hold = tmp_path / "hold"
    hold.mkdir()
    spec = write_spec(tmp_path / "twohosts.yaml", synth_dir, seeds=3, grid={"model": ["chaos_net"]}, retries=2,
                      resources={"cpu": 1, "gpu": 0},
                      base={"epochs": EPOCHS, "model_args": {"hold": str(hold), "fail_after": STEPS_PER_EPOCH}})
    storage = f"s3://grid/runs?endpoint_override={HEAD_IP}:{S3_PORT}&scheme=http"
    driver = subprocess.Popen(["ip", "netns", "exec", head, sys.executable, "-m", "gridrun.cli", "launch", str(spec),
                               "--address", f"{HEAD_IP}:{PORT}", "--storage", storage],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # Both hosts each hold a trial in its second epoch (its first epoch's checkpoint is in S3).
        wait_for(lambda: {p.name.split("-")[1] for p in hold.glob("held-*")} >= {HEAD_IP, WORKER_IP}
                 or driver.poll() is not None, 240, "a trial held mid-grid on each host")
        assert driver.poll() is None, driver.communicate()[0]
        lost_pid = next(p.name.split("-")[2] for p in hold.glob(f"held-{WORKER_IP}-*"))
        sh("ip", "link", "set", two_hosts["worker_link"], "down", ns=worker)  # the worker host is cut off
        kill_namespace(worker)
        (hold / "go").touch()
        out, _ = driver.communicate(timeout=400)
    finally:
        if driver.poll() is None:
            driver.kill()
        moto_alive = moto.poll() is None
    assert driver.returncode == 0, out
    assert "3 finished, 0 diverged, 0 failed" in out, out
    assert moto_alive
    print(f"trial process {lost_pid} on {WORKER_IP} was killed with its host\n{out}")

    found = json.loads(in_head(head, env, f"""
import json, boto3, io, csv
s3 = boto3.client('s3')
keys = [o['Key'] for p in s3.get_paginator('list_objects_v2').paginate(Bucket='grid', Prefix='runs/twohosts/')
        for o in p.get('Contents', [])]
trials = sorted({{k.split('/')[2] for k in keys if k.endswith('/summary.json')}})
rows = {{t: len(s3.get_object(Bucket='grid', Key=f'runs/twohosts/{{t}}/metrics.csv')['Body'].read().decode()
         .strip().splitlines()) - 1 for t in trials}}
files = {{t: sorted(k.split('/')[-1] for k in keys if k.startswith(f'runs/twohosts/{{t}}/') and k.count('/') == 3)
          for t in trials}}
nodes = {{}}
for t in trials:
    body = s3.get_object(Bucket='grid', Key=f'runs/twohosts/{{t}}/result.json')['Body'].read().decode()
    nodes[t] = [(r.get('epoch'), r.get('node_ip'), r.get('pid')) for r in map(json.loads, body.splitlines()) if 'epoch' in r]
print(json.dumps({{"trials": trials, "rows": rows, "files": files, "nodes": nodes,
                  "manifest": len(json.loads(s3.get_object(Bucket='grid', Key='runs/twohosts/gridrun_trials.json')['Body'].read()))}}))
"""))
    print("epoch, node and process of each result, per trial:", found["nodes"])
    lost = [t for t, rs in found["nodes"].items() if any(ip == WORKER_IP for _, ip, _ in rs)]
    assert len(lost) == 1, found["nodes"]  # one trial ran on the worker host, and was lost with it
    assert {ip for _, ip, _ in found["nodes"][lost[0]]} == {WORKER_IP, HEAD_IP}
    assert min(e for e, ip, _ in found["nodes"][lost[0]] if ip == HEAD_IP) == 2  # resumed from its checkpoint
    assert len(found["trials"]) == 3 and found["manifest"] == 3
    assert all(n == EPOCHS for n in found["rows"].values()), found["rows"]  # one row per epoch, none twice
    for t, fs in found["files"].items():
        assert {"config.json", "summary.json", "metrics.csv", "logits_val.npy", "logits_test.npy", "labels_val.npy",
                "labels_test.npy", "model.pt"} <= set(fs), (t, fs)
    st = sh(sys.executable, "-m", "gridrun.cli", "status", "twohosts", "--storage", storage, "--json", ns=head, env=env)
    assert json.loads(st.stdout)["counts"] == {**json.loads(st.stdout)["counts"], "finished": 3}
