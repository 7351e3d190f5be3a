"""The shape issue 33 asks for, checked on every run: imports only run down the layering (errors
at the bottom, the CLI at the top; nothing imports the package __init__), no function in gridrun/
is over 50 lines, the trial/experiment file names are spelled in storage/layout.py alone, the
launch driver stays under 250 lines, only the modules whose docstring says "imports ray" import it,
and only storage/safeio.py opens files (issue 37). A new module must be given its place in LAYERS."""
import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "gridrun"

# Bottom to top: a module may import only modules earlier in this list.
LAYERS = [
    "errors", "storage", "storage.safeio", "diskio", "yamlsafe", "hooks",
    "models._layers", "models._registry", "models.tiny", "models.vgg", "models.resnet",
    "models.preact_resnet", "models.wide_resnet", "models.inception",
    "models", "models.golden",
    "augment", "data", "datasets", "config", "identity", "record",
    "storage.locks", "storage.layout", "storage.provenance", "storage.events", "storage.sweep", "storage.s3",
    "storage.backends",
    "engine.files", "engine.optim", "engine.schedule", "engine.loss", "engine.strategies", "engine.step",
    "engine.group", "engine.state", "engine.run", "engine", "train",
    "spec.schema", "spec.sampling", "spec.preflight", "spec.expansion", "spec", "results", "analysis", "hparams", "export",
    "plan", "study", "experiment", "worker", "progress",
    "status", "studyview", "reportplots", "report", "best", "launch", "api", "cli", "__main__", "",
]
RANK = {m: i for i, m in enumerate(LAYERS)}
FOLDER_FILES = re.compile(
    r"""["'](summary\.json|metrics\.csv|config\.json|stopped\.json|error\.txt|state\.pt|model\.pt|params\.json|"""
    r"""node\.json|state\.json|resume\.pt|result\.json|fused_group\.json|gridrun_trials\.json|gridrun\.lock|"""
    r"""spec\.yaml|reference\.csv|gridrun_launches\.jsonl|gridrun_export\.json|"""
    r"""(logits|preds|labels)_(val|test|\{split\})\.npy)["']""")
MODULES = sorted(PKG.rglob("*.py"))


def name(p: Path) -> str:
    parts = list(p.relative_to(PKG).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(p: Path) -> set[str]:
    """The gridrun modules p imports ("" for the package __init__)."""
    me = name(p)
    pkg = me.split(".") if p.name == "__init__.py" and me else me.split(".")[:-1]
    out = set()
    for n in ast.walk(ast.parse(p.read_text())):
        if isinstance(n, ast.ImportFrom) and n.level:
            base = pkg[:len(pkg) - n.level + 1]
            targets = [".".join(base + [n.module])] if n.module else [".".join(base + [a.name]) for a in n.names]
        elif isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] == "gridrun":
            targets = [n.module[len("gridrun."):] if "." in n.module else ""]
        elif isinstance(n, ast.Import):
            targets = [a.name[len("gridrun."):] if "." in a.name else "" for a in n.names if a.name.split(".")[0] == "gridrun"]
        else:
            continue
        if isinstance(n, ast.ImportFrom) and n.level and n.module:  # `from .storage import layout`: the modules
            targets += [f"{targets[0]}.{a.name}" for a in n.names if f"{targets[0]}.{a.name}" in RANK]
        for t in targets:  # `from .models import count_params` names a module's attribute: count its module
            out.add(t if t in RANK or "." not in t else t.rsplit(".", 1)[0])
    return out


@pytest.mark.parametrize("path", MODULES, ids=lambda p: name(p) or "__init__")
def test_imports_run_only_down_the_layering(path):
    me = name(path)
    assert me in RANK, f"{me}: give the new module its place in LAYERS"
    up = sorted(m for m in imported(path) if m != me and RANK.get(m, -1) >= RANK[me])
    assert not up, f"{me} imports {up}, which sit above or beside it"


def test_no_function_is_over_50_lines():
    long = [f"{p.relative_to(PKG.parent)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for p in MODULES for n in ast.walk(ast.parse(p.read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno >= 50]
    assert not long, long


def test_folder_file_names_are_spelled_in_the_layout_alone():
    spelled = [f"{p.relative_to(PKG.parent)}:{i}: {line.strip()}" for p in MODULES if name(p) != "storage.layout"
               for i, line in enumerate(p.read_text().splitlines(), 1) if FOLDER_FILES.search(line)]
    assert not spelled, spelled


def test_the_launch_driver_is_small():
    n = len((PKG / "launch.py").read_text().splitlines())
    assert n <= 250, f"gridrun/launch.py is {n} lines: move what is not the driver to plan/experiment/worker/progress"


def _imports_ray(p: Path) -> bool:
    for n in ast.walk(ast.parse(p.read_text())):
        names = [a.name for a in n.names] if isinstance(n, ast.Import) else \
            [n.module or ""] if isinstance(n, ast.ImportFrom) and not n.level else []
        if any(m.split(".")[0] == "ray" for m in names):
            return True
    return False


def test_only_the_modules_that_say_so_import_ray():
    """Ray stays at the edge: a module that imports it says so in its docstring ("imports ray"),
    and a module that says so does (no stale claim either way)."""
    said = {name(p) for p in MODULES if "imports ray" in (ast.get_docstring(ast.parse(p.read_text())) or "").lower()}
    does = {name(p) for p in MODULES if _imports_ray(p)}
    assert does <= said, f"{sorted(does - said)} import ray: say so in the module docstring (\"imports ray\")"
    assert said <= does, f"{sorted(said - does)} say they import ray but do not"


# Opening a file, as this test sees it: a call of the builtin open(); a call of a method or function
# named in OPENERS (os.open, gzip.open, tarfile.open, Path.open, fdopen; Path's read_/write_text and
# _bytes; pyarrow's stream openers; zipfile; matplotlib's savefig; TensorBoard's SummaryWriter);
# numpy's or torch's load/save.
# Moving, copying whole, listing, stat-ing or deleting files is not opening them; safeio.read_bytes(...) is
# the safe way.
OPENERS = {"open", "fdopen", "read_text", "write_text", "read_bytes", "write_bytes", "open_input_stream",
           "open_input_file", "open_output_stream", "open_append_stream", "ZipFile", "is_zipfile", "savefig",
           "SummaryWriter"}
ARRAY_IO = {"load", "save", "savez", "savez_compressed", "fromfile", "tofile", "loadtxt", "savetxt"}
# The modules besides storage.safeio that open files, each for a reason that is not an experiment's
# folder (or, for worker, not a local file):
OPEN_ELSEWHERE = {
    "data": "the dataset's IDX files (the MNIST cache, a user's data folder): streamed header first, gzip or not",
    "datasets": "a dataset's own files (.npz, torchvision's archives), checked as they are read",
    "spec.schema": "the user's spec YAML, its size checked first (yamlsafe.MAX_SPEC_BYTES)",
    "api": "the spec file a gridrun.launch() call writes from the dict it was given",
    "report": "the report's own markdown and CSV where --out points, and the head of a file it would replace",
    "reportplots": "the report's figures beside it",
    "studyview": "a study's plots beside its report",
    "models.golden": "the developer's golden file of parameter counts (make golden)",
    "export": "the export archive (tarfile): its members are read bounded on restore",
    "worker": "a checkpoint's state.json on whichever filesystem Ray wrote it (a pyarrow stream, local or s3)",
    "cli": "os.open(os.devnull): the null device a quiet child writes to, not a file of gridrun's",
    "engine.files": "a trial's TensorBoard scalars, appended each epoch by TensorBoard's SummaryWriter (its "
                    "own thread: a full disk prints there, and the epoch's metrics.csv, through safeio, raises)",
}


def _opens(p: Path) -> list[str]:
    """Where a module opens a file (line: call), as defined above."""
    out = []
    for n in ast.walk(ast.parse(p.read_text())):
        if not isinstance(n, ast.Call):
            continue
        f = n.func
        hit = (isinstance(f, ast.Name) and f.id in ("open", "ZipFile", "SummaryWriter")) or (isinstance(f, ast.Attribute) and (
            (f.attr in OPENERS and not (isinstance(f.value, ast.Name) and f.value.id == "safeio"))
            or (f.attr in ARRAY_IO and isinstance(f.value, ast.Name) and f.value.id in ("np", "numpy", "torch"))))
        if hit:
            out.append(f"{n.lineno}: {ast.unparse(f)}(...)")
    return out


def test_only_the_safe_io_module_opens_files():
    """Every read and write of a file goes through storage/safeio.py (bounded reads, atomic writes),
    but for the exceptions named with their reasons in OPEN_ELSEWHERE (and none listed that does not)."""
    opens = {name(p): _opens(p) for p in MODULES}
    stray = {m: o for m, o in opens.items() if o and m != "storage.safeio" and m not in OPEN_ELSEWHERE}
    assert not stray, f"open files through gridrun/storage/safeio.py (or say why not in OPEN_ELSEWHERE): {stray}"
    stale = sorted(m for m in OPEN_ELSEWHERE if not opens.get(m))
    assert not stale, f"{stale} open no file: take them out of OPEN_ELSEWHERE"
    assert opens["storage.safeio"], "storage.safeio opens no file: the rule above sees nothing"


def test_the_driver_never_asks_where_the_experiment_lives():
    """launch.py and experiment.py call the storage object (storage/backends.py: LocalStorage or
    S3Storage) and never branch on its kind: no `.local` or `.remote`, no local_path or Remote."""
    asks = [f"{mod}:{n.lineno}" for mod in ("launch.py", "experiment.py")
            for n in ast.walk(ast.parse((PKG / mod).read_text()))
            if (isinstance(n, ast.Attribute) and n.attr in ("local", "remote"))
            or (isinstance(n, (ast.Name, ast.alias)) and getattr(n, "id", getattr(n, "name", None))
                in ("local_path", "Remote", "LocalStorage", "S3Storage"))]
    assert not asks, f"branches on the kind of storage: {asks} (give backends' storage objects a method instead)"
