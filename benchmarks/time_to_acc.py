"""Time to 99.4% test accuracy for one tiny net from the start of `gridrun train`, per recipe and length.

For each candidate recipe and length, train (full 55,000 images, 5,000 held out) and report the training
seconds (sum of epoch times), the wall seconds from start (data on the device, evaluation
included) and the final test accuracy. Test accuracy is the benchmark's target here, not a
choice of model: the recipes are fixed before the runs.

    GRIDRUN_DATA=.device/mnist python -m benchmarks time_to_acc --device cuda
"""
from __future__ import annotations

import time
import warnings

from gridrun.errors import did_you_mean
from gridrun.train import train

from . import BenchError

warnings.filterwarnings("ignore")
TARGET = 0.994  # the test accuracy to reach (what this benchmark times; no alternative is timed)

RECIPES = {
    "tinynet_7k b512 sgd-nesterov one-cycle 0.4": dict(model="tinynet_7k", batch_size=512, lr=0.4),
    "tinynet_7k b256 sgd-nesterov one-cycle 0.3": dict(model="tinynet_7k", batch_size=256, lr=0.3),
    "resnet20 b512 sgd-nesterov one-cycle 0.4": dict(model="resnet20", batch_size=512, lr=0.4),
}


def add_args(ap) -> None:
    ap.add_argument("--epochs", default="3,5,8")
    ap.add_argument("--recipes", default=",".join(RECIPES), help="names from RECIPES, joined with ','")
    ap.add_argument("--subset", type=int, default=None, help="fewer training images (for a rehearsal)")
    ap.add_argument("--cuda-graph", action="store_true", help="replay each step as a CUDA graph (cuda_graph: true)")


def run(a, bench) -> None:
    for name in a.recipes.split(","):
        if name not in RECIPES:
            raise BenchError(f"--recipes: no recipe {name!r}{did_you_mean(name, RECIPES)}")
        for epochs in [int(e) for e in a.epochs.split(",")]:
            cfg = dict(RECIPES[name], epochs=epochs, optimizer="sgd", nesterov=True, weight_decay=5e-4,
                       scheduler="onecycle", augment="rotate+affine", device=a.device, subset=a.subset, seed=0,
                       cuda_graph=a.cuda_graph)
            t0 = time.perf_counter()
            res = train(cfg)
            wall = time.perf_counter() - t0
            row = {"epochs": epochs, "subset": a.subset, "cuda_graph": bool(res.get("cuda_graph"))}
            acc = res["final"]["test_acc"]
            bench.row("test_acc", acc, "acc", variant=name, config=row, baseline=f"target {100 * TARGET:.1f}%",
                      baseline_value=TARGET, wall_s=wall, note="reached" if acc >= TARGET else "not reached")
            bench.row("val_acc", res["final"]["val_acc"], "acc", variant=name, config=row, wall_s=wall)
            bench.row("training seconds (sum of epochs)", sum(h["seconds"] for h in res["history"]), "s",
                      variant=name, config=row, wall_s=wall)
