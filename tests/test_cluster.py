"""A real two-node Ray cluster on this machine: trials spread over both nodes, results land
in the storage folder, a node lost mid-grid costs only a resume from the last checkpoint."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gridrun.report import load_experiment
from conftest import write_spec


def results(trial_dir: Path) -> list[dict]:
    """Per-epoch results Tune logged for a trial (with the node each ran on)."""
    path = trial_dir / "result.json"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass  # a line being written
    return [r for r in out if "epoch" in r]


@pytest.fixture
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 1, "num_gpus": 1})
    worker = c.add_node(num_cpus=1, num_gpus=1)
    c.wait_for_nodes()
    yield c, c.head_node.node_id, worker
    c.shutdown()


def test_grid_spreads_over_two_nodes_and_survives_losing_one(cluster, synth_dir, tmp_path):
    c, head_id, worker = cluster
    spec = write_spec(tmp_path / "multi.yaml", synth_dir, grid={"model": ["tinynet_7k"]}, seeds=4, retries=3,
                      resources={"cpu": 1, "gpu": 1},
                      base={"epochs": 5, "batch_size": 20, "lr": 0.01},
                      data={"val_size": 100, "subset": 600, "data_dir": str(synth_dir)})
    storage = tmp_path / "shared-storage"
    dry = subprocess.run([sys.executable, "-m", "gridrun.cli", "launch", str(spec), "--dry-run",
                          "--address", c.address], capture_output=True, text=True, timeout=120)
    assert "cluster: 2 node(s), 2 CPU(s), 2 GPU(s)" in dry.stdout and "2 trial(s) at once" in dry.stdout
    proc = subprocess.Popen([sys.executable, "-m", "gridrun.cli", "launch", str(spec), "--address", c.address,
                             "--storage", str(storage)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    exp = storage / "multi"
    # Wait until the second node has finished one trial and is running another, then kill it.
    lost_trial = None
    deadline = time.time() + 300
    while lost_trial is None and time.time() < deadline and proc.poll() is None:
        on_worker = [d for d in exp.glob("tinynet*") if results(d) and results(d)[-1].get("node_id") == worker.node_id]
        finished_there = [d for d in on_worker if (d / "summary.json").exists()]
        running_there = [d for d in on_worker if not (d / "summary.json").exists()]
        if finished_there and running_there:
            lost_trial = running_there[0]
        time.sleep(0.1)
    assert lost_trial is not None, "no trial was seen finishing and then running on the second node"
    c.remove_node(worker)  # the node dies under its trial
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out
    assert "4 finished, 0 diverged, 0 failed" in out

    trials = sorted(exp.glob("tinynet*"))
    assert len(trials) == 4
    nodes = {d.name: [r["node_id"] for r in results(d)] for d in trials}
    print("node of each epoch, per trial:", {k: [n[:8] for n in v] for k, v in nodes.items()})
    assert {head_id, worker.node_id} <= {n for v in nodes.values() for n in v}  # both nodes worked
    assert any(set(v) == {worker.node_id} for v in nodes.values())  # a trial ran wholly on the second node
    lost = results(lost_trial)
    on_head = [r["epoch"] for r in lost if r["node_id"] == head_id]
    assert on_head and min(on_head) > 1  # resumed on the head from a checkpoint, not restarted
    assert len((lost_trial / "metrics.csv").read_text().strip().splitlines()) == 6  # one row per epoch
    e = load_experiment(exp)  # gridrun report reads the shared storage folder
    assert [t.status for t in e.trials] == ["finished"] * 4
