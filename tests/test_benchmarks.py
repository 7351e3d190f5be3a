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
