"""The committed golden experiment regenerates what was committed from it, byte for byte.

reports/runs/smoke is the slim export of grids/smoke.yaml run on real MNIST (4 trials, 1 epoch,
a 6,000-image subset); reports/smoke.md and .csv are its report, tests/golden/ its `gridrun
status` (text and --json). No data folder is needed: the export holds the test labels the
trials saved, and the report is made with none findable (no $GRIDRUN_DATA, an empty cache), as
it was committed. With the MNIST files found, only the Checks line's label source differs.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "reports" / "runs" / "smoke"
EXPECTED = ROOT / "tests" / "golden"
FOLDER = "reports/runs/smoke"  # the report names the folder as given: the copy sits at the same relative path


@pytest.fixture
def copy(tmp_path) -> Path:
    """A copy of the golden export at reports/runs/smoke under a fresh folder (the report's cwd)."""
    shutil.copytree(GOLDEN, tmp_path / FOLDER)
    return tmp_path


def _no_data_env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "GRIDRUN_DATA"}
    env.update(PYTHONPATH=str(ROOT), GRIDRUN_NO_DOWNLOAD="1", XDG_CACHE_HOME=str(tmp_path / "empty-cache"))
    return env


def _report(copy: Path, env: dict) -> None:
    run = subprocess.run([sys.executable, "-m", "gridrun.cli", "report", FOLDER, "--out", "reports/smoke.md"],
                         cwd=copy, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr


def test_the_committed_report_regenerates_byte_identical(copy):
    _report(copy, _no_data_env(copy))
    for name in ("smoke.md", "smoke.csv"):
        new, old = (copy / "reports" / name).read_bytes(), (ROOT / "reports" / name).read_bytes()
        assert new == old, f"reports/{name} no longer regenerates from {FOLDER}: " + _first_diff(new, old)


def test_with_the_mnist_files_the_saved_labels_are_checked_against_them(copy, mnist_dir):
    """The same report, but the test labels the trials saved are checked against the MNIST file:
    only the Checks line's label source changes."""
    _report(copy, {**_no_data_env(copy), "GRIDRUN_DATA": str(mnist_dir)})
    new = (copy / "reports" / "smoke.md").read_text().splitlines()
    old = (ROOT / "reports" / "smoke.md").read_text().splitlines()
    changed = [(a, b) for a, b in zip(new, old) if a != b]
    assert len(new) == len(old) and len(changed) == 1, changed
    assert "against the MNIST test-label file (checksum verified)" in changed[0][0]
    assert "against the labels the trials saved (the data files were not found here)" in changed[0][1]


def _first_diff(new: bytes, old: bytes) -> str:
    for i, (a, b) in enumerate(zip(new.decode().splitlines(), old.decode().splitlines())):
        if a != b:
            return f"line {i + 1}\n  now:       {a}\n  committed: {b}"
    return f"{len(new)} bytes now, {len(old)} committed"


def test_status_and_load_give_the_committed_statuses(copy, monkeypatch):
    import gridrun
    from gridrun.status import status

    monkeypatch.delenv("GRIDRUN_DATA", raising=False)
    monkeypatch.chdir(copy)
    for as_json, name in ((False, "smoke_status.txt"), (True, "smoke_status.json")):
        lines = []
        assert status(FOLDER, as_json=as_json, out=lines.append) == 0
        assert "\n".join(lines) + "\n" == (EXPECTED / name).read_text()
    committed = [line.split(",")[:2] for line in (ROOT / "reports" / "smoke.csv").read_text().splitlines()[1:]]
    df = gridrun.load(FOLDER)
    assert [[t, s] for t, s in zip(df["trial"], df["status"])] == committed
    assert json.loads((EXPECTED / "smoke_status.json").read_text())["counts"]["finished"] == len(committed) == 4
