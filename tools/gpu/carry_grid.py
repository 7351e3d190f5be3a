"""Pack an experiment folder to carry to the GPU machine, slim: what `gridrun launch` needs to
resume it, without the files of finished trials that it never reads.

    python tools/gpu/carry_grid.py runs/tiny_nets .device-grid/tiny_nets_runs.tgz

A device call carries at most 64 MiB, and a grid folder grows past that (tiny_nets at 108 of
180 trials: 72 MB, 55 MB compressed). A launch checks a finished trial's summary.json,
metrics.csv and logits/labels (a trial without them is broken and runs again), so those stay;
left out are finished trials' model.pt, the checkpoints of units whose every member finished,
and Ray's experiment_state/basic-variant-state files, which gridrun never reads (each launch
runs a new Tuner over the unfinished units). The full folder stays here: `run.sh grid:NAME`
brings back only the files its launch wrote, to extract over this folder; `gridrun report`
then runs here.
"""
from __future__ import annotations

import argparse
import os
import sys
import tarfile
from pathlib import Path


def slim_members(exp: Path) -> tuple[set[Path], int]:
    """Files to leave out, and how many trials are finished."""
    from gridrun import results
    from gridrun.storage.layout import MODEL

    done_dirs = set(results.settled(exp).values())
    drop = {d / MODEL for d in done_dirs if (d / MODEL).is_file()}  # logits stay: a launch checks them
    for unit in (c for c in exp.iterdir() if c.is_dir()):
        members = [m for m in unit.iterdir() if m.is_dir() and not m.name.startswith("checkpoint_")]
        finished = unit in done_dirs or (members and all(m in done_dirs for m in members))
        if finished:
            drop.update(f for c in unit.glob("checkpoint_*") for f in c.rglob("*") if f.is_file())
    drop.update(f for f in exp.iterdir() if f.name.startswith(("experiment_state-", "basic-variant-state-")))
    return drop, len(done_dirs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", help="experiment folder, e.g. runs/tiny_nets")
    ap.add_argument("out", help="the .tgz to write, e.g. .device-grid/tiny_nets_runs.tgz")
    a = ap.parse_args()
    exp = Path(a.folder)
    if not exp.is_dir():
        print(f"carry_grid: no experiment folder {exp}", file=sys.stderr)
        return 2
    drop, n_done = slim_members(exp)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    kept = dropped = 0
    with tarfile.open(a.out, "w:gz") as tar:
        for f in sorted(exp.rglob("*")):
            if f.is_file():
                if f in drop:
                    dropped += f.stat().st_size
                else:
                    kept += f.stat().st_size
                    tar.add(f, arcname=str(Path(exp.name) / f.relative_to(exp)))
    print(f"{a.out}: {os.path.getsize(a.out) / 1e6:.1f} MB ({kept / 1e6:.1f} MB of files kept, "
          f"{dropped / 1e6:.1f} MB left out: model.pt of {n_done} finished trials, "
          f"finished units' checkpoints, Ray's state files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
