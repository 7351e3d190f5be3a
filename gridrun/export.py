"""`gridrun export NAME [--out DIR | --out FILE.tar.gz]` and `gridrun restore`: a slim copy of an
experiment that outlives the machine it ran on.

What a slim export keeps (tens of KB a trial, so a 180-trial study is a few MB to commit):
  the experiment's manifest, effective spec, launch records and their diffs, reference.csv and
  HParams summary; each settled or failed trial's config.json, metrics.csv, summary.json,
  error.txt / stopped.json, TensorBoard events, its true labels and its PREDICTED labels for val
  and test (preds_*.npy, uint8: the argmax of its float16 logits, all a majority vote and the
  test-accuracy check need).
What it leaves out: model weights, checkpoints, Ray's state, the logits themselves, and the
trials that had not settled (without a checkpoint they start over anyway: a launch over the
export reruns them and keeps every finished trial).

`report`, `status`, `gridrun.load`/`history` and `launch --storage` read an exported folder as
they read the original. A folder is the default: diff-friendly, readable in place and committed
file by file; FILE.tar.gz is one file to carry, and `gridrun restore` puts either back under the
storage folder, as an experiment: without the export's mark, so no export ever replaces it. Only
the files named here travel, regular files only, in both directions.
"""
from __future__ import annotations

import fnmatch
import io
import os
import re
import shlex
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from . import results
from .errors import GridrunError, __version__
from .spec import NAME_RE
from .storage import layout, safeio
from .storage.layout import ExperimentDir, TrialDir

# The export mark (layout.EXPORT_MARK) says what the export holds; with nothing in the folder but the
# files named here, it marks the folder as an earlier export, safe to replace (pure_export).
EXPERIMENT_FILES = (layout.MANIFEST, layout.SPEC_COPY, layout.LAUNCHES, layout.REFERENCE, layout.EXPORT_MARK,
                    layout.DIFFS, layout.EVENTS)
TRIAL_FILES = (layout.CONFIG, layout.METRICS, layout.SUMMARY, layout.ERROR, layout.STOPPED,
               *map(layout.labels_file, layout.SPLITS), *map(layout.preds_file, layout.SPLITS), layout.EVENTS)
GROUP_FILES = (layout.GROUP_FILE,)
SETTLED = ("finished", "diverged", "pruned", "failed", "stopped", "broken")  # what an export keeps of a trial
MAX_ARCHIVE_BYTES = 1 << 30  # what a restore unpacks at most (a 5,000-trial export is ~200 MB)


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def kept(rel: PurePosixPath) -> bool:
    """Whether a path inside an experiment folder belongs in a slim export: experiment files at
    the top, trial files one level down (or two, inside a fused group's folder)."""
    parts = rel.parts
    if not parts or any(p.startswith(".") or p in ("", "..") or "\x00" in p or len(p) > 255 for p in parts):
        return False
    if len(parts) == 1:
        return _matches(parts[0], EXPERIMENT_FILES)
    if len(parts) == 2:
        return _matches(parts[1], TRIAL_FILES + GROUP_FILES)
    return len(parts) == 3 and _matches(parts[2], TRIAL_FILES)


def _walk(src: Path):
    """(relative path, absolute path) of every regular file under src that an export keeps;
    symlinks are neither followed nor kept."""
    stack = [(src, PurePosixPath())]
    while stack:
        folder, rel = stack.pop()
        if len(rel.parts) >= 3:
            continue
        with os.scandir(folder) as it:
            for e in sorted(it, key=lambda e: e.name):
                r = rel / e.name
                if e.is_dir(follow_symlinks=False) and not e.name.startswith("."):
                    stack.append((Path(e.path), r))
                elif e.is_file(follow_symlinks=False) and kept(r):
                    yield r, Path(e.path)


# ---------------------------------------------------------------- export

def export(name_or_path: str, out: str | None = None, storage: str = "runs", echo=print) -> Path:
    """Write the slim export of an experiment to a folder or a .tar.gz; returns where."""
    src = results.resolve_experiment(name_or_path, storage)
    exp = results.load_experiment(src)
    out_path = Path(out) if out else Path("exports") / exp.name
    archive = out_path.name.endswith((".tar.gz", ".tgz"))
    _check_out(src, out_path, archive)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{exp.name}.export-", dir=out_path.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; an export is meant to be shared
    try:
        kept_trials, left_out = _write_slim(src, exp, tmp)
        _verify(exp, tmp)
        if archive:
            _pack(tmp, out_path, exp.name)
        else:
            _replace(tmp, out_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = out_path.stat().st_size if archive else sum(p.stat().st_size for p in out_path.rglob("*") if p.is_file())
    if holder := ExperimentDir(src).lock_holder():
        echo(f"notice: a launch of {exp.name} is running (pid {holder.get('pid')} on {holder.get('host')}): "
             f"its unfinished trials are left out; export again when it ends")
    trials = f"{kept_trials} trial{'s' if kept_trials != 1 else ''}"
    per = f", {size / 1024 / kept_trials:,.1f} KB per trial" if kept_trials else ""  # 0 trials had 1.1 KB each
    echo(f"exported {exp.name}: {trials} to {out_path} ({size / 1024:,.0f} KB{per}); no weights, checkpoints, "
         f"logits or Ray state"
         + (f"; {len(left_out)} unsettled trials left out (a launch over the export reruns them)" if left_out else ""))
    return out_path


def _check_out(src: Path, out: Path, archive: bool) -> None:
    """Never write into the experiment itself, never replace what is not an earlier export."""
    _check_place(out, archive)
    o, s = out.resolve(), src.resolve()
    if o == s or s in o.parents or o in s.parents:
        raise GridrunError(f"--out {out} is the experiment folder or inside it (or holds it): give another path")
    if archive:
        if out.is_dir():
            raise GridrunError(f"--out {out} is a folder: give a file name ending in .tar.gz")
    elif out.exists() and (not out.is_dir() or (any(out.iterdir()) and not pure_export(out))):
        raise GridrunError(f"--out {out} exists and is not an earlier export: give a new folder, or FILE.tar.gz")


def pure_export(folder: Path) -> bool:
    """Whether a folder is an earlier export, safe to replace: its mark, and nothing in it but
    the files an export writes. The content is what counts: a restored folder has no mark, but a
    launch into an export folder grows it with weights, logits, checkpoints, Ray's files, a lock."""
    if not ExperimentDir(folder).is_export():
        return False
    for root, dirs, names in os.walk(folder):  # links are listed, never followed
        rel = PurePosixPath(Path(root).relative_to(folder).as_posix())
        if any(os.path.islink(os.path.join(root, n)) for n in dirs + names) or (dirs and len(rel.parts) >= 2):
            return False
        if not all(kept(rel / n) for n in names):
            return False
    return True


def _check_place(out: Path, archive: bool) -> None:
    """Not inside any experiment folder (its report would read the export as trials), not onto a
    device, FIFO or link to one, and over a file only when it is an earlier export archive."""
    inside = layout.experiment_above(out)
    if inside is not None:
        raise GridrunError(f"--out {out} is inside the experiment folder {inside}: give a path outside it")
    if archive and os.path.lexists(out) and not (out.is_file() and _is_export_archive(out)):
        raise GridrunError(f"--out {out} exists and is not an archive `gridrun export` wrote: give a new file name")


def _is_export_archive(path: Path) -> bool:
    """Whether a .tar.gz holds an export mark (NAME/gridrun_export.json), its headers read bounded."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            for i, m in enumerate(tar):
                if i >= MAX_ARCHIVE_MEMBERS:
                    return False
                if PurePosixPath(m.name).name == layout.EXPORT_MARK and len(PurePosixPath(m.name).parts) <= 2:
                    return True
    except (tarfile.TarError, OSError, EOFError):
        return False
    return False


def _write_slim(src: Path, exp: results.Experiment, dest: Path) -> tuple[int, list[str]]:
    """Copy the kept files of the settled trials and the experiment; write each finished trial's
    predicted labels. Returns (trials kept, names left out)."""
    # Trial folders as the reader found them (src joined with their names; a linked one is never followed)
    keep = {t.dir: t for t in exp.trials if t.dir is not None and t.status in SETTLED and not t.dir.is_symlink()}
    left_out = [t.name for t in exp.trials if t.dir is not None and t.status not in SETTLED]
    for rel, path in _walk(src):
        if len(rel.parts) > 1 and not (rel.name in GROUP_FILES or path.parent in keep):
            continue
        _copy(path, dest / rel)
    for d, t in keep.items():
        target = TrialDir(dest / d.relative_to(src))
        for split, preds in (("val", t.val_preds), ("test", t.test_preds)):
            if preds is not None:
                target.write_preds(split, preds)
    ExperimentDir(dest).write_export_mark({
        "experiment": exp.name, "from": str(src.resolve()),  # no timestamp: an unchanged re-export is the same bytes
        "gridrun": __version__, "trials": exp.counts(), "left_out": left_out,
        "scores": "predicted labels (uint8 argmax of the float16 logits), no logits"})
    return len(keep), left_out


def _copy(path: Path, target: Path) -> None:
    """One regular file, read bounded (a link or FIFO planted in a folder is not followed); written
    plainly: it lands in a private folder that is moved into place whole."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        data = safeio.read_bytes(path, safeio.MAX_LARGE)
    except safeio.Unreadable:
        return  # its trial already reads as broken; the export keeps what can be kept
    safeio.write_plain(target, data)


def _verify(exp: results.Experiment, dest: Path) -> None:
    """The export must read as the experiment did: every kept trial's status and rechecked test
    accuracy the same."""
    slim = {t.name: t for t in results.load_experiment(dest).trials}
    for t in exp.trials:
        s = slim.get(t.name)
        if t.dir is None or t.status not in SETTLED or s is None:
            continue
        if (s.status, s.test_acc_recomputed) != (t.status, t.test_acc_recomputed):
            raise GridrunError(f"the export of {exp.name} reads {t.name} as {s.status} "
                               f"({s.test_acc_recomputed}), the experiment as {t.status} ({t.test_acc_recomputed}): "
                               f"nothing written; please report it")


def _pack(folder: Path, out: Path, name: str) -> None:
    """folder -> out (.tar.gz) with one top folder NAME/, files in sorted order, owners dropped."""
    tmp = out.with_name(f".{out.name}.tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for p in sorted(folder.rglob("*")):
            info = tar.gettarinfo(str(p), arcname=str(PurePosixPath(name, *p.relative_to(folder).parts)))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if p.is_file():
                tar.addfile(info, io.BytesIO(safeio.read_bytes(p, safeio.MAX_LARGE)))  # what _copy wrote
            else:
                tar.addfile(info)
    os.replace(tmp, out)


def _replace(folder: Path, out: Path) -> None:
    """Move the finished export into place; an earlier export there goes only once the new one is whole."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(folder, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- restore

def restore(source: str, storage: str = "runs", name: str | None = None, echo=print) -> Path | str:
    """An exported folder or .tar.gz -> storage/NAME (which must not exist; a folder or an object
    store), ready for report, status or a launch that resumes it. Returns where it went."""
    from .storage.backends import local_path
    from .storage.s3 import Remote

    src = Path(source)
    if not src.exists():
        raise GridrunError(f"no export {source}: give an exported folder or FILE.tar.gz")
    where = local_path(storage)  # None: an object store, unpacked here first and then uploaded
    tmp = Path(tempfile.mkdtemp(prefix=".restore-", dir=_mkdir(Path(where)) if where is not None else None))
    try:
        top, default = _unpack(src, tmp) if src.is_file() else (_copy_folder(src, tmp),) * 2
        target_name = name or default
        if not re.fullmatch(NAME_RE, target_name):  # the name itself: `--name ../x` never leaves the storage
            raise GridrunError(f"{target_name!r} is not a safe experiment name: restore with --name NEW "
                               f"(letters, digits, '.', '_' and '-')")
        exp = results.load_experiment(tmp / top)
        if not exp.trials:
            raise GridrunError(f"{source} holds no trials of a gridrun experiment: give a folder or archive "
                               f"written by `gridrun export`")
        ExperimentDir(tmp / top).clear_export_mark()  # an experiment again: an export must never replace it
        if where is None:
            target = _upload(Remote(storage, target_name), tmp / top)
        else:
            target = Path(where) / target_name
            if target.exists():
                raise GridrunError(f"{target} exists: restore with --name NEW, or move it away first")
            os.replace(tmp / top, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    counts = ", ".join(f"{v} {k}" for k, v in sorted(exp.counts().items()))
    # a launch finds the folder by the spec's name: another name must be given to it
    as_name = ["--name", target_name] if (exp.spec or {}).get("name") != target_name else []
    command = shlex.join(["gridrun", "launch", "SPEC", "--storage", str(storage), *as_name])
    echo(f"restored {target}: {len(exp.trials)} trials ({counts}); `{command}` runs the rest")
    return target


def _upload(remote, folder: Path) -> str:
    """A restored experiment into an object store, under a name it does not hold yet."""
    if remote.exists():
        raise GridrunError(f"{remote.uri} exists: restore with --name NEW, or remove it from the store first")
    try:
        remote.upload(folder)
    except OSError as e:
        from .storage.s3 import unreachable

        raise unreachable(remote.storage, e) from None
    return remote.uri


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def _copy_folder(src: Path, tmp: Path) -> str:
    if not ExperimentDir(src).is_experiment():
        raise GridrunError(f"{src} is not an experiment folder: give one written by `gridrun export`")
    top = src.resolve().name
    for rel, path in _walk(src):
        _copy(path, tmp / top / rel)
    return top


MAX_ARCHIVE_MEMBERS = 200_000  # what a restore reads at most (an export has ~10 files a trial)


def _unpack(archive: Path, tmp: Path) -> tuple[str, str]:
    """Unpack only regular files and folders, each a kept name, sizes bounded as declared and as
    read (a member never writes outside tmp). An export has one top folder NAME/; an archive made
    with `tar -C DIR .` holds the experiment's files at its top and is named after the file.
    Returns (the folder under tmp, the experiment's default name)."""
    try:
        tar = tarfile.open(archive, "r:gz")
    except (tarfile.TarError, OSError) as e:
        raise GridrunError(f"{archive} is not a .tar.gz ({str(e)[:80]}): give one written by `gridrun export`") from None
    with tar:
        try:
            members = _members(tar, archive)
            flat = any(len(rel.parts) == 1 and m.isfile() for m, rel in members)
            tops = {rel.parts[0] for _, rel in members}
            if not flat and len(tops) > 1:
                raise GridrunError(f"{archive} holds more than one top folder: not an export")
            if not members:
                raise GridrunError(f"{archive} is empty: give one written by `gridrun export`")
            top = "flat" if flat else tops.pop()
            for m, rel in members:
                inside = rel.parts if flat else rel.parts[1:]
                if m.isfile() and kept(PurePosixPath(*inside)):
                    _extract(tar, m, archive, tmp / top / PurePosixPath(*inside))
        except (tarfile.TarError, EOFError, OSError, ValueError) as e:
            raise GridrunError(f"{archive} is truncated or corrupt ({str(e)[:80]}): not restored") from None
    return top, (re.sub(r"\.(tar\.gz|tgz)$", "", archive.name) if flat else top)


def _members(tar, archive: Path) -> list:
    """(member, its path) of every member but the archive's root `.`, checked: plain files and
    folders inside the archive, at most MAX_ARCHIVE_MEMBERS, sizes within an export's."""
    out, total = [], 0
    for m in tar:
        rel = PurePosixPath(m.name)  # `./x` reads as `x`
        if rel.is_absolute() or ".." in rel.parts or not (m.isfile() or m.isdir()):
            raise GridrunError(f"{archive}: member {m.name[:80]!r} is not a plain file or folder inside "
                               f"the archive: not restored")
        if len(out) >= MAX_ARCHIVE_MEMBERS:
            raise GridrunError(f"{archive} holds more than {MAX_ARCHIVE_MEMBERS:,} members: more than an export "
                               f"can hold: not restored")
        total += m.size
        if m.size > safeio.MAX_LARGE or total > MAX_ARCHIVE_BYTES:
            raise GridrunError(f"{archive}: {m.name[:80]} makes it larger than an export can be: not restored")
        if rel.parts:
            out.append((m, rel))
    return out


def _extract(tar, m, archive: Path, target: Path) -> None:
    data = tar.extractfile(m).read(m.size + 1)
    if len(data) != m.size:
        raise GridrunError(f"{archive}: {m.name[:80]} is not the size its header says")
    target.parent.mkdir(parents=True, exist_ok=True)
    safeio.write_plain(target, data)
