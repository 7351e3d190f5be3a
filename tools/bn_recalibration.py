"""Diagnostic: does an experiment's final models' validation accuracy change when BatchNorm's
running statistics are recomputed on the un-augmented training images? A gain says the
augmented training images' statistics are not the test images' (what `clean_epochs` addresses).

    python tools/bn_recalibration.py runs/tiny_best [--test] [--weights raw]

Prints, per finished trial, validation accuracy before -> after (and test with --test; the
issue-17 decision used validation only). No training, nothing written.

`--weights raw` scores the trained weights themselves instead of the saved model: for a trial
with `ema` on, model.pt holds the weight average and the newest checkpoint's engine state
(state.pt: the group's stacked `params` and `buffers`) the weights the optimiser left, so the two runs of this script compare the average against no average on
the very same training runs (the average never feeds back into training).
"""
from __future__ import annotations

import argparse
import re
import statistics
from pathlib import Path

import torch

from gridrun.config import TrainConfig, field_names
from gridrun.engine.group import prepare_splits
from gridrun.models import create_model, resolve_model_args
from gridrun.results import load_experiment
from gridrun.storage.layout import STATE, StateError, TrialDir


def accuracy(model, splits, x, y, batch=4096) -> float:
    with torch.no_grad():
        return sum(int((model(splits.normalize(x[i:i + batch])).argmax(1) == y[i:i + batch]).sum())
                   for i in range(0, len(y), batch)) / len(y)


def recalibrate(model, splits, batch=1024) -> None:
    """BatchNorm's running mean/var as the exact average over the clean training images."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for i in range(0, len(splits.train_y), batch):
            model(splits.normalize(splits.train_x[i:i + batch]))
    model.eval()


def raw_weights(trial_dir: Path, keys) -> dict | None:
    """The member's weights as the optimiser left them, from the newest checkpoint of its unit
    (a single trial's folder, or the fused group's folder above the member's), else None."""
    ckpts = sorted(c for d in (trial_dir, trial_dir.parent) for c in d.glob("checkpoint_*") if (c / STATE).is_file())
    if not ckpts:
        return None
    state = TrialDir(ckpts[-1]).read_state()
    names = [Path(m["config"].get("out_dir") or "").name for m in state["members"]]
    k = names.index(trial_dir.name) if trial_dir.name in names else 0 if len(names) == 1 else None
    if k is None:
        raise StateError(f"{ckpts[-1] / STATE} holds no member named {trial_dir.name}")
    src = {**state["params"], **state["buffers"]}
    return {n: src[n][k] for n in keys}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--test", action="store_true", help="also print test accuracy")
    ap.add_argument("--weights", choices=("saved", "raw"), default="saved",
                    help="saved: model.pt (the weight average with ema); raw: the last checkpoint's trained weights")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    before, after = {}, {}
    for t in load_experiment(Path(a.experiment)).trials:
        if t.status != "finished":
            continue
        cfg = {k: v for k, v in t.config.items() if k in field_names()}
        cfg = TrainConfig.from_dict({**cfg, "data_dir": a.data_dir or cfg.get("data_dir"), "out_dir": None})
        splits = prepare_splits(cfg, torch.device("cpu"))
        model = create_model(cfg.model, **resolve_model_args(cfg.model, cfg.dropout, cfg.model_args))
        if a.weights == "raw":
            raw = raw_weights(t.dir, model.state_dict().keys())
            if raw is None:
                print(f"{t.name}: no checkpoint, skipped", flush=True)
                continue
            model.load_state_dict(raw)
        else:
            model.load_state_dict(TrialDir(t.dir).read_model())
        model.eval()
        v0, t0 = accuracy(model, splits, splits.val_x, splits.val_y), accuracy(model, splits, splits.test_x, splits.test_y)
        recalibrate(model, splits)
        v1, t1 = accuracy(model, splits, splits.val_x, splits.val_y), accuracy(model, splits, splits.test_x, splits.test_y)
        key = re.sub(r"_s\d+$", "", t.name)  # the config: the trial's name without its seed
        before.setdefault(key, []).append(v0)
        after.setdefault(key, []).append(v1)
        line = f"{t.name}: val {100 * v0:.2f} -> {100 * v1:.2f}"
        print(line + (f"  test {100 * t0:.2f} -> {100 * t1:.2f}" if a.test else ""), flush=True)
    for key in before:
        print(f"config {key}: mean val {100 * statistics.mean(before[key]):.2f} -> "
              f"{100 * statistics.mean(after[key]):.2f} (n={len(before[key])})")


if __name__ == "__main__":
    main()
