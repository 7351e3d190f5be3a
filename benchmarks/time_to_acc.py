"""Time to 99.4% test accuracy for one tiny net from the start of `gridrun train`: for each
candidate recipe and length, train (full 55,000 images, 5,000 held out) and report the training
seconds (sum of epoch times), the wall seconds from start (data on the device, evaluation
included) and the final test accuracy. Test accuracy is the benchmark's target here, not a
choice of model: the recipes are fixed before the runs.

    GRIDRUN_DATA=.device/mnist python benchmarks/time_to_acc.py --device cuda
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

warnings.filterwarnings("ignore")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from gridrun.train import train  # noqa: E402

RECIPES = {
    "tinynet_7k b512 sgd-nesterov one-cycle 0.4": dict(model="tinynet_7k", batch_size=512, lr=0.4),
    "tinynet_7k b256 sgd-nesterov one-cycle 0.3": dict(model="tinynet_7k", batch_size=256, lr=0.3),
    "resnet20 b512 sgd-nesterov one-cycle 0.4": dict(model="resnet20", batch_size=512, lr=0.4),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--epochs", default="3,5,8")
    ap.add_argument("--recipes", default=",".join(RECIPES), help="names from RECIPES, joined with ','")
    ap.add_argument("--subset", type=int, default=None, help="fewer training images (for a rehearsal)")
    ap.add_argument("--cuda-graph", action="store_true", help="replay each step as a CUDA graph (cuda_graph: true)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    rows = []
    for name in a.recipes.split(","):
        for epochs in [int(e) for e in a.epochs.split(",")]:
            cfg = dict(RECIPES[name], epochs=epochs, optimizer="sgd", nesterov=True, weight_decay=5e-4,
                       scheduler="onecycle", augment="rotate+affine", device=a.device, subset=a.subset, seed=0,
                       cuda_graph=a.cuda_graph)
            t0 = time.perf_counter()
            res = train(cfg)
            wall = time.perf_counter() - t0
            train_s = sum(h["seconds"] for h in res["history"])
            acc = res["final"]["test_acc"]
            rows.append({"recipe": name, "epochs": epochs, "cuda_graph": bool(res.get("cuda_graph")),
                         "train_s": round(train_s, 2), "wall_s": round(wall, 2),
                         "test_acc": acc, "val_acc": res["final"]["val_acc"], "reached_99.4": acc >= 0.994})
            print(f"{name:<45} {epochs:>2} epochs: train {train_s:7.2f} s, wall {wall:7.2f} s, "
                  f"val {100 * res['final']['val_acc']:.2f}%, test {100 * acc:.2f}%"
                  + ("  <- reached 99.4%" if acc >= 0.994 else ""), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
