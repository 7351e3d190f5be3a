"""The shape issue 33 asks for, checked on every run: imports only run down the layering (errors
at the bottom, the CLI at the top; nothing imports the package __init__), no function in gridrun/
is over 50 lines, the trial/experiment file names are spelled in store.py alone, the launch
driver stays under 250 lines, and only the modules whose docstring says "imports ray" import it
(issue 37). A new module must be given its place in LAYERS."""
import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "gridrun"

# Bottom to top: a module may import only modules earlier in this list.
LAYERS = [
    "errors", "diskio", "yamlsafe", "hooks",
    "models._layers", "models._registry", "models.tiny", "models.vgg", "models.resnet",
    "models.preact_resnet", "models.wide_resnet", "models.inception",
    "models", "models.golden",
    "augment", "data", "datasets", "config", "identity", "store", "remote",
    "engine.files", "engine.optim", "engine.strategies", "engine.step", "engine.group",
    "engine.run", "engine", "train", "fused",
    "spec", "results", "analysis", "hparams", "export",
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


def test_folder_file_names_are_spelled_in_store_alone():
    spelled = [f"{p.relative_to(PKG.parent)}:{i}: {line.strip()}" for p in MODULES if name(p) != "store"
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
