"""Method (c) of `python -m benchmarks search`: the search as a Ray Tune user writes it.

One Tune trial per config: `Tuner` + `OptunaSearch` (Optuna's TPE, seeded) + `ASHAScheduler`
over epochs, stopped by Tune's own `time_budget_s`. The train function calls gridrun's trainer
(the same data pipeline, model and per-epoch scoring as the gridrun methods, so the comparison
is the search, its scheduling and its per-trial cost, not the training loop) and reports each
epoch's validation accuracy with the wall-clock time. Run by benchmarks/search.py as

    python -m benchmarks._search_tune JOB.json
"""
from __future__ import annotations

import json
import sys
import time


def param_space(space: dict) -> dict:
    """gridrun's distribution notation as Tune's search space (gridrun's randint includes high)."""
    from ray import tune

    make = {"loguniform": lambda a: tune.loguniform(*a), "uniform": lambda a: tune.uniform(*a),
            "randint": lambda a: tune.randint(a[0], a[1] + 1), "choice": lambda a: tune.choice(list(a))}
    return {k: make[kind](args) for k, d in space.items() for kind, args in d.items()}


def train_fn(config: dict, base: dict, arrays: dict) -> None:
    """One Tune trial: train one config, reporting every epoch to Tune (ASHA may stop it there)."""
    from ray import tune

    from gridrun.train import Folders, train

    def on_epoch(m: dict, _state) -> None:
        tune.report({"val_acc": m["val_acc"], "epoch": m["epoch"], "wall": time.time()})

    train({**base, **config}, Folders(on_epoch=on_epoch), arrays=arrays)


def main(path: str) -> None:
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from gridrun.data import load_arrays

    job = json.loads(open(path).read())
    ray.init(include_dashboard=False)  # as gridrun's launch starts Ray: no dashboard on a 2-core machine
    tuner = tune.Tuner(
        tune.with_parameters(train_fn, base=job["base"], arrays=load_arrays(job["base"]["data_dir"])),
        param_space=param_space(job["space"]),
        tune_config=tune.TuneConfig(
            metric="val_acc", mode="max", num_samples=job["samples"],
            search_alg=OptunaSearch(seed=job["seed"]),
            scheduler=ASHAScheduler(time_attr="training_iteration", max_t=job["base"]["epochs"],
                                    grace_period=job["grace_period"], reduction_factor=job["reduction_factor"]),
            time_budget_s=max(1.0, job["deadline"] - time.time())),
        run_config=tune.RunConfig(name="tune", storage_path=job["storage"], verbose=1))
    tuner.fit()


if __name__ == "__main__":
    main(sys.argv[1])
