"""gridrun's benchmarks behind one harness:

    python -m benchmarks                         one line per benchmark
    python -m benchmarks NAME -h                 its options
    python -m benchmarks NAME [--device auto|cpu|cuda] [--out FILE.jsonl] [ARGS]

Run from the repository root (benchmarks/ is not installed with gridrun). A benchmark is a module with a
one-line docstring head, `add_args(ap)` and `run(a, bench)`. It times what it measures against
the obvious alternative in the same run (or, where there is none, against a stated target) and
reports every figure through `bench.row(...)`: one line printed, one JSON row of the layout ROW
appended to --out. A benchmark, not a test: it asserts nothing about speed.
"""
from __future__ import annotations

import ast
import json
import os
import platform
import socket
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# One row layout for every benchmark. `config`: what was measured (model, K, batch, ...);
# `variant`: the way it was computed; `baseline`/`baseline_value`: the alternative it is set
# against (timed in the same run, or a stated target); `ratio`: how many times better than the
# baseline (value / baseline for rates and accuracies, baseline / value for LOWER_IS_BETTER
# units); `wall_s`: seconds the row's measurement took; `note`: an error or a skip, else None.
ROW = ("bench", "device", "device_name", "torch", "host", "threads", "config", "variant", "metric", "value",
       "unit", "baseline", "baseline_value", "ratio", "wall_s", "note", "time")
LOWER_IS_BETTER = {"ms", "s", "MiB", "ops"}


class BenchError(Exception):
    """A benchmark that cannot run as asked (one line: what and the fix)."""


def names() -> dict[str, str]:
    """Every benchmark's name and its docstring's first line, read without importing it."""
    out = {}
    for p in sorted(HERE.glob("*.py")):
        if not p.name.startswith("_"):
            doc = ast.get_docstring(ast.parse(p.read_text())) or ""
            out[p.stem] = doc.strip().splitlines()[0] if doc.strip() else "(no description)"
    return out


def resolve_device(name: str) -> str:
    """auto: cuda when torch sees a GPU, else cpu; a GPU asked for where there is none is an error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(f"--device {name}: torch sees no GPU here; use --device auto or cpu")
    return name


def ratio(value, baseline_value, unit: str):
    """How many times better than the baseline (None where either is missing or zero)."""
    if not value or not baseline_value:
        return None
    return baseline_value / value if unit in LOWER_IS_BETTER else value / baseline_value


def child_env() -> dict:
    """The environment for a child Python that must import this very gridrun (load_5000, fused)."""
    import gridrun

    root = str(Path(gridrun.__file__).resolve().parent.parent)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}


def synchronizer(device: str):
    """A call that waits for the device's queued work (nothing to wait for on a CPU)."""
    import torch

    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def flops_per_image(model: str) -> int:
    """FLOPs of one 28x28 image's forward + backward pass through `model` (torch's flop counter)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from gridrun.models import create_model

    with FlopCounterMode(display=False) as fc:
        create_model(model)(torch.zeros(1, 1, 28, 28)).sum().backward()
    return fc.get_total_flops()


class Bench:
    """What a benchmark reports through: the run's facts and `row()`."""

    def __init__(self, name: str, device: str, out: str | None):
        import torch

        self.name, self.device, self.out = name, device, out
        self.facts = {"bench": name, "device": device, "device_name": _device_name(device),
                      "torch": torch.__version__, "host": socket.gethostname()}
        print(f"{name}: device {device} ({self.facts['device_name']}), torch {torch.__version__}, host "
              f"{self.facts['host']}" + (f"; rows to {out}" if out else ""), flush=True)

    def row(self, metric: str, value, unit: str, *, variant: str, config: dict | None = None,
            baseline: str | None = None, baseline_value=None, wall_s: float | None = None,
            note: str | None = None) -> dict:
        """Print one figure and append it as a JSON row of the layout ROW to --out."""
        import torch

        r = {**self.facts, "threads": torch.get_num_threads(), "config": dict(config or {}), "variant": variant,
             "metric": metric, "value": value, "unit": unit, "baseline": baseline,
             "baseline_value": baseline_value, "ratio": ratio(value, baseline_value, unit),
             "wall_s": None if wall_s is None else round(wall_s, 3), "note": note,
             "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        print(_line(r), flush=True)
        if self.out:
            Path(self.out).parent.mkdir(parents=True, exist_ok=True)
            with open(self.out, "a") as f:
                f.write(json.dumps(r) + "\n")
        return r


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


def _num(v, unit: str) -> str:
    if v is None:
        return "-"
    if unit in ("acc", "fraction"):
        return f"{100 * v:.2f}%"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def _line(r: dict) -> str:
    cfg = " ".join(f"{k}={v}" for k, v in r["config"].items())
    unit = "" if r["unit"] in ("acc", "fraction") else f" {r['unit']}"  # printed as a percentage
    s = f"{r['bench']} [{cfg}] {r['variant']}: {r['metric']} {_num(r['value'], r['unit'])}{unit}"
    if r["ratio"] is not None:
        s += f"  ({r['ratio']:.2f}x {r['baseline']}: {_num(r['baseline_value'], r['unit'])})"
    return s + (f"  ({r['note']})" if r["note"] else "")
