"""train(config, on_epoch=None) -> result: one trial, start to finish. Knows nothing of Ray.

Files written to config.out_dir (when set):
  config.json        the resolved config plus params, device, versions
  metrics.csv        one row per epoch (see EPOCH_FIELDS)
  events.out.tfevents.*  TensorBoard scalars
  state.pt           everything needed to resume after the last finished epoch
  model.pt           final weights (state_dict)
  logits_val.npy, logits_test.npy   float16 (N, 10) logits of the final model
  labels_val.npy, labels_test.npy   uint8 labels they were scored against
  summary.json       status ("ok" | "diverged at epoch k") and final metrics
"""
from __future__ import annotations

import csv
import json
import math
import os
import platform
import random
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .augment import Augment, deskew
from .config import TrainConfig
from .data import load_splits
from .models import create_model, model_kwargs

EPOCH_FIELDS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_acc", "lr",
                "seconds", "images_per_s"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def model_build_kwargs(model: str, dropout: float | None, model_args: dict) -> dict:
    """The factory's keyword arguments: model_args plus dropout where the model takes one."""
    kw = dict(model_args)
    if dropout is not None and "dropout" in model_kwargs(model):
        kw["dropout"] = dropout
    return kw


def build_model(cfg: TrainConfig) -> torch.nn.Module:
    return create_model(cfg.model, **model_build_kwargs(cfg.model, cfg.dropout, cfg.model_args))


@torch.no_grad()
def infer(model, x: torch.Tensor, normalize, batch_size: int = 4096, autocast=nullcontext) -> torch.Tensor:
    """Float32 logits of a whole split, in large batches."""
    model.eval()
    out = []
    for xb in x.split(batch_size):
        with autocast():
            out.append(model(normalize(xb)).float())
    return torch.cat(out) if out else torch.empty(0, 10, device=x.device)


def evaluate(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of logits against labels."""
    if len(y) == 0:
        return float("nan"), float("nan")
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


def _optimizer(cfg: TrainConfig, params):
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    opt = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return opt(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _scheduler(cfg: TrainConfig, opt, steps_per_epoch: int):
    """(scheduler or None, steps per batch?)."""
    s = cfg.scheduler
    if s == "step":
        return torch.optim.lr_scheduler.StepLR(opt, cfg.step_size, cfg.gamma), False
    if s == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=cfg.gamma, patience=cfg.patience), False
    if s == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, epochs=cfg.epochs,
                                                   steps_per_epoch=steps_per_epoch, pct_start=cfg.pct_start), True
    if s == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch), True
    return None, False


def _atomic_save(path: Path, obj) -> None:
    """Write .npy / .json / torch files via a temp file and rename: a killed trial never
    leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".npy":
        with open(tmp, "wb") as f:
            np.save(f, obj)
    elif path.suffix == ".json":
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    else:
        torch.save(obj, tmp)
    os.replace(tmp, path)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _Writer:
    """Files of one trial; every method is a no-op when there is no out_dir."""

    def __init__(self, out_dir: str | None, history: list[dict]):
        self.dir = Path(out_dir) if out_dir else None
        self.tb = None
        if self.dir:
            self.dir.mkdir(parents=True, exist_ok=True)
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.dir))
            # Rewritten from the resumed history, so a trial resumed on another node (empty
            # folder) or after a crash mid-epoch still has exactly one row per epoch.
            with open(self.dir / "metrics.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(EPOCH_FIELDS)
                w.writerows([m.get(k) for k in EPOCH_FIELDS] for m in history)

    def epoch(self, m: dict) -> None:
        if not self.dir:
            return
        with open(self.dir / "metrics.csv", "a", newline="") as f:
            csv.writer(f).writerow([m.get(k) for k in EPOCH_FIELDS])
        for k in EPOCH_FIELDS[1:]:
            if m.get(k) is not None and not (isinstance(m[k], float) and math.isnan(m[k])):
                self.tb.add_scalar(k.replace("_", "/", 1) if "_" in k else k, m[k], m["epoch"])
        self.tb.flush()

    def save(self, name: str, obj) -> None:
        if self.dir:
            _atomic_save(self.dir / name, obj)

    def close(self):
        if self.tb:
            self.tb.close()


def train(config: TrainConfig | dict, on_epoch=None, resume_from: str | None = None,
          state_dir: str | None = None, arrays: dict | None = None) -> dict:
    """Train one config. `on_epoch(metrics, state_path)` is called after every epoch; state_path
    is the resumable state file in `state_dir` (default out_dir; None when neither is set).
    `resume_from` names a state.pt to continue from; `arrays` are MNIST arrays already in memory
    (load_arrays), used instead of reading files. Returns {"status", "epochs", "final", ...}."""
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cuda = device.type == "cuda"
    if cuda and cfg.gpu_memory_fraction:
        torch.cuda.set_per_process_memory_fraction(cfg.gpu_memory_fraction, device)
    _seed_all(cfg.seed)
    dgen = torch.Generator(device=device).manual_seed(cfg.seed)  # batch order + augmentation

    splits = load_splits(cfg.data_dir, cfg.val_size, cfg.subset, cfg.split_seed, device, arrays)
    aug = Augment(cfg.augment, cfg.aug)
    if aug.align:  # deskewing is preprocessing: the same for train, validation and test
        splits.train_x, splits.val_x, splits.test_x = (deskew(splits.train_x), deskew(splits.val_x),
                                                        deskew(splits.test_x))
    torch.manual_seed(cfg.seed)  # again: the initial weights must not depend on data-loading work
    model = build_model(cfg).to(device)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    fmt = torch.channels_last if (cuda and cfg.channels_last) else torch.contiguous_format
    model = model.to(memory_format=fmt)
    step_model = torch.compile(model) if (cfg.compile and cuda) else model
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if (cuda and cfg.amp) else nullcontext

    n_train = len(splits.train_y)
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    opt = _optimizer(cfg, model.parameters())
    sched, per_batch = _scheduler(cfg, opt, steps_per_epoch)
    history, start_epoch = [], 1
    if resume_from:
        state = torch.load(resume_from, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if sched is not None:
            sched.load_state_dict(state["scheduler"])
        dgen.set_state(state["dgen"].cpu())
        history, start_epoch = state["history"], state["epoch"] + 1

    writer = _Writer(cfg.out_dir, history)
    state_dir = Path(state_dir or cfg.out_dir) if (state_dir or cfg.out_dir) else None
    meta = {"params": n_params, "device": str(device), "torch": torch.__version__,
            "python": platform.python_version(), "threads": torch.get_num_threads(), "n_train": n_train,
            "n_val": len(splits.val_y), "n_test": len(splits.test_y)}
    writer.save("config.json", {**cfg.to_dict(), "_meta": meta})
    norm = splits.normalize
    status, state_path, finished, result = "ok", None, False, None
    val_logits = test_logits = None

    def finish(status: str, val_logits, test_logits) -> dict:
        """Write the trial's final files; returns the result dict."""
        result = {"status": status, "epochs": len(history), "params": n_params,
                  "final": history[-1] if history else None, "history": history, **meta}
        if status == "ok":
            writer.save("logits_val.npy", val_logits.half().cpu().numpy())
            writer.save("logits_test.npy", test_logits.half().cpu().numpy())
            writer.save("labels_val.npy", splits.val_y.to(torch.uint8).cpu().numpy())
            writer.save("labels_test.npy", splits.test_y.to(torch.uint8).cpu().numpy())
            writer.save("model.pt", model.state_dict())
        writer.save("summary.json", {**{k: v for k, v in result.items() if k != "history"},
                                     "finished_at": time.time(), "pid": os.getpid()})
        return result

    for epoch in range(start_epoch, cfg.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        perm = torch.randperm(n_train, device=device, generator=dgen)
        for idx in perm.split(cfg.batch_size):
            if len(idx) < 2:  # BatchNorm cannot train on a batch of one
                continue
            x, y = splits.train_x[idx], splits.train_y[idx]
            x = norm(aug(x, dgen)).contiguous(memory_format=fmt)
            with autocast():
                out = step_model(x)
                loss = F.cross_entropy(out.float(), y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if per_batch:
                sched.step()
            loss_sum += loss.detach() * len(y)
            correct += (out.argmax(1) == y).sum()
        train_loss = loss_sum.item() / n_train
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        if not math.isfinite(train_loss):
            status = f"diverged at epoch {epoch}"
            break
        # Kept: the last epoch's logits are the ones saved, so they are scored exactly once.
        val_logits = infer(model, splits.val_x, norm, cfg.eval_batch_size, autocast)
        test_logits = infer(model, splits.test_x, norm, cfg.eval_batch_size, autocast)
        val_loss, val_acc = evaluate(val_logits, splits.val_y)
        _, test_acc = evaluate(test_logits, splits.test_y)
        lr = opt.param_groups[0]["lr"]
        if sched is not None and not per_batch:
            sched.step(val_loss) if cfg.scheduler == "plateau" else sched.step()
        m = {"epoch": epoch, "train_loss": train_loss, "train_acc": correct.item() / n_train,
             "val_loss": val_loss, "val_acc": val_acc, "test_acc": test_acc, "lr": lr,
             "seconds": round(seconds, 3), "images_per_s": round(n_train / seconds, 1)}
        history.append(m)
        writer.epoch(m)
        if epoch == cfg.epochs:
            # Final files before the last report: a scheduler (ASHA at max_t) may stop the
            # trial at that report, and nothing after it would run.
            result, finished = finish(status, val_logits, test_logits), True
        if state_dir:
            state_dir.mkdir(parents=True, exist_ok=True)
            state_path = str(state_dir / "state.pt")
            _atomic_save(Path(state_path), {
                "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict() if sched is not None else None,
                "dgen": dgen.get_state(), "history": history, "epoch": epoch})
        if on_epoch is not None:
            on_epoch(m, state_path)

    if not finished:  # diverged, or resumed after the last epoch
        if status == "ok":  # nothing above scored the resumed model
            val_logits = infer(model, splits.val_x, norm, cfg.eval_batch_size, autocast)
            test_logits = infer(model, splits.test_x, norm, cfg.eval_batch_size, autocast)
        result = finish(status, val_logits, test_logits)
    writer.close()
    return result
