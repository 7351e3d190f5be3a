"""After a launch: the atomic writer's stray temp files; after a full disk: the files a failed
write or sync left empty or cut short."""
from __future__ import annotations

import shutil
from pathlib import Path

from .layout import ERROR, MODEL, RESULT, STATE, STATE_INFO, WHOLE_JSON
from .safeio import TEMP_SUFFIX, is_zip, npy_maps, read_json


def sweep_temp_files(exp: Path) -> int:
    """Remove the atomic writer's temp files left in an experiment once its launch has ended (Ray's
    artifact sync can copy one mid-write, and nothing renames that copy); how many went."""
    stray = [f for f in exp.rglob("*" + TEMP_SUFFIX) if f.is_file() and not f.is_symlink()]
    for f in stray:
        f.unlink(missing_ok=True)
    return len(stray)


def sweep_half_files(exp: Path) -> None:
    """After a full disk: remove the files a failed write or sync left empty or cut short (ours, and
    Ray's pickles, which its result reader would choke on), and checkpoints that cannot be
    resumed, so every trial reads as unfinished (resumable) or as what it really was."""
    for d in [p for p in exp.rglob("*") if p.is_dir() and not p.is_symlink()]:
        if d.name.startswith("checkpoint_"):
            st, js = d / STATE, d / STATE_INFO
            if not (st.is_file() and is_zip(st) and _json_ok(js)):
                shutil.rmtree(d, ignore_errors=True)
            continue
        for f in d.iterdir():
            if f.is_file() and not f.is_symlink() and _half_written(f):
                f.unlink(missing_ok=True)


def _half_written(f: Path) -> bool:
    return (f.name.endswith(TEMP_SUFFIX) or (f.name in WHOLE_JSON and not _json_ok(f))
            or (f.suffix == ".npy" and not npy_maps(f)) or (f.name == MODEL and not is_zip(f))
            or (f.suffix == ".pkl" and f.stat().st_size == 0)
            or (f.name in (ERROR, RESULT) and f.stat().st_size == 0))


def _json_ok(f: Path) -> bool:
    """Whole JSON, however large (a size limit here would delete a big file that is fine)."""
    try:
        read_json(f, f.stat().st_size)
        return True
    except (OSError, ValueError):
        return False
