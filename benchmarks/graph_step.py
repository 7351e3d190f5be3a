"""The trainer's step replayed as a CUDA graph (`cuda_graph: true`) against the same trainer
without it, in one run on one device: a single tinynet_7k trial, and a fused group of the
tiny-net study's net with its recipe (the shape of grids/tiny_nets.yaml's groups). Prints
images/s of each (epochs after the first: the first holds the warm-up steps and the recording),
their ratio, and the final validation accuracy of both, which must agree (same recipe, same
seeds; rounding differs, so not to the digit).

    GRIDRUN_DATA=.device/mnist python benchmarks/graph_step.py --device cuda

On a CPU nothing is recorded (`cuda_graph` is ignored there): the run only rehearses the script.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

warnings.filterwarnings("ignore")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from gridrun.fused import train_fused  # noqa: E402
from gridrun.train import train  # noqa: E402

SINGLE = dict(model="tinynet_7k", batch_size=128, lr=0.2, optimizer="sgd", nesterov=True, weight_decay=1e-4,
              scheduler="onecycle", augment="rotate+affine", ema=0.999, seed=0)
# tiny_nets.yaml's recipe on one of its nets: SGD 0.01, step schedule, the study's augmentation
STUDY = dict(model="gap_transition", batch_size=128, lr=0.01, optimizer="sgd", momentum=0.9, nesterov=False,
             weight_decay=0.0, scheduler="step", step_size=8, gamma=0.25, augment="eva", normalize="mnist")


def _speed(history: list[dict]) -> float:
    rows = history[1:] or history
    return sum(h["images_per_s"] for h in rows) / len(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--k", type=int, default=32, help="members of the fused group")
    ap.add_argument("--subset", type=int, default=None, help="fewer training images (for a rehearsal)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    common = dict(epochs=a.epochs, device=a.device, subset=a.subset)
    rows = []
    for label, run in [
        ("tinynet_7k, one trial, b128", lambda g: [train(dict(SINGLE, **common, cuda_graph=g))]),
        (f"gap_transition, fused group of {a.k}, b128",
         lambda g: train_fused([dict(STUDY, **common, seed=s, cuda_graph=g) for s in range(a.k)])),
    ]:
        out = {}
        for graph in (False, True):
            res = run(graph)
            out[graph] = {"images_per_s": sum(_speed(r["history"]) for r in res),
                          "val_acc": sum(r["final"]["val_acc"] for r in res) / len(res),
                          "recorded": bool(res[0].get("cuda_graph"))}
            print(f"{label:<40} cuda_graph={str(graph):<5} (recorded: {out[graph]['recorded']}): "
                  f"{out[graph]['images_per_s']:>10,.0f} img/s, mean val {100 * out[graph]['val_acc']:.2f}%",
                  flush=True)
        ratio = out[True]["images_per_s"] / out[False]["images_per_s"]
        print(f"{label:<40} graph / eager: {ratio:.2f}x, val {100 * out[True]['val_acc']:.2f}% vs "
              f"{100 * out[False]['val_acc']:.2f}%", flush=True)
        rows.append({"case": label, "eager": out[False], "graph": out[True], "ratio": round(ratio, 3)})
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
