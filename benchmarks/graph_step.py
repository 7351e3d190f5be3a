"""The trainer's step replayed as a CUDA graph (`cuda_graph: true`) against the same trainer without it.

In one run on one device: a single tinynet_7k trial, and a fused group of the
tiny-net study's net with its recipe (the shape of grids/tiny_nets.yaml's groups). Prints
images/s of each (epochs after the first: the first holds the warm-up steps and the recording),
their ratio, and the final validation accuracy of both, which must agree (same recipe, same
seeds; rounding differs, so not to the digit).

    GRIDRUN_DATA=.device/mnist python -m benchmarks graph_step --device cuda

On a CPU nothing is recorded (`cuda_graph` is ignored there): the run only rehearses the script.
"""
from __future__ import annotations

import time
import warnings

from gridrun.train import train

warnings.filterwarnings("ignore")

SINGLE = dict(model="tinynet_7k", batch_size=128, lr=0.2, optimizer="sgd", nesterov=True, weight_decay=1e-4,
              scheduler="onecycle", augment="rotate+affine", ema=0.999, seed=0)
# tiny_nets.yaml's recipe on one of its nets: SGD 0.01, step schedule, the study's augmentation
STUDY = dict(model="gap_transition", batch_size=128, lr=0.01, optimizer="sgd", momentum=0.9, nesterov=False,
             weight_decay=0.0, scheduler="step", step_size=8, gamma=0.25, augment="eva", normalize="mnist")


def _speed(history: list[dict]) -> float:
    rows = history[1:] or history
    return sum(h["images_per_s"] for h in rows) / len(rows)


def add_args(ap) -> None:
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--k", type=int, default=32, help="members of the fused group")
    ap.add_argument("--subset", type=int, default=None, help="fewer training images (for a rehearsal)")


def case(label: str, train_all, bench) -> None:
    """One case eager (the baseline) then graphed: speed and mean validation accuracy."""
    out = {}
    for graph in (False, True):
        t = time.perf_counter()
        res = train_all(graph)
        wall = time.perf_counter() - t
        recorded = bool(res[0].get("cuda_graph"))
        variant = f"cuda_graph={graph}" + ("" if recorded or not graph else " (not recorded: no CUDA)")
        out[graph] = (sum(_speed(r["history"]) for r in res), sum(r["final"]["val_acc"] for r in res) / len(res))
        base = {} if not graph else {"baseline": "cuda_graph=False"}
        bench.row("images/s (epochs after the first)", out[graph][0], "images/s", variant=variant,
                  config={"case": label}, wall_s=wall, **base, baseline_value=out[False][0] if graph else None)
        bench.row("mean val_acc", out[graph][1], "acc", variant=variant, config={"case": label}, **base,
                  baseline_value=out[False][1] if graph else None, note="must agree (not to the digit)")


def run(a, bench) -> None:
    common = dict(epochs=a.epochs, device=a.device, subset=a.subset)
    case("tinynet_7k, one trial, b128", lambda g: [train(dict(SINGLE, **common, cuda_graph=g))], bench)
    case(f"gap_transition, fused group of {a.k}, b128",
         lambda g: train([dict(STUDY, **common, seed=s, cuda_graph=g) for s in range(a.k)]), bench)
