"""train(config, on_epoch=None) -> result: one trial, start to finish. Knows nothing of Ray.

Files written to config.out_dir (when set):
  config.json        the resolved config plus params, device, versions
  metrics.csv        one row per epoch (see EPOCH_FIELDS)
  events.out.tfevents.*  TensorBoard scalars
  state.pt           everything needed to resume after the last finished epoch
  model.pt           final weights (state_dict; the weight average when `ema` is on)
  logits_val.npy, logits_test.npy   float16 (N, 10) logits of the final model
  labels_val.npy, labels_test.npy   uint8 labels they were scored against
  summary.json       status ("ok" | "diverged at epoch k") and final metrics

The pieces (setup, _train_epoch, score, save_state/load_state, write_final) are shared with
fused.py, which trains several configs of one architecture as one batched model.
"""
from __future__ import annotations

import copy
import csv
import json
import math
import os
import platform
import random
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import GridrunError, __version__
from .augment import Augment, deskew
from .config import PLUMBING, ConfigError, TrainConfig, with_defaults
from .data import Splits, load_splits
from .graphs import StepGraphs, sgd_foreach_, wanted
from .models import create_model, resolve_model_args
from .models._layers import dropout_steps, load_dropout_steps, seed_dropout

EPOCH_FIELDS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_acc", "lr",
                "seconds", "images_per_s"]
STATE_VERSION = 2


class StateError(GridrunError):
    """A resume state that cannot be used (corrupt, foreign or from another config)."""


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when there is one; a device that is not there is one error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        n = torch.cuda.device_count()
        idx = int(name[5:]) if ":" in name else 0
        if idx >= n:
            raise ConfigError(f"config device={name!r}: torch sees {n} GPU(s) here: use device auto or cpu, "
                              f"or cuda:0..cuda:{n - 1}" if n else
                              f"config device={name!r}: torch sees no GPU here: use device auto or cpu")
    return torch.device(name)


def build_model(cfg: TrainConfig) -> torch.nn.Module:
    return create_model(cfg.model, **resolve_model_args(cfg.model, cfg.dropout, cfg.model_args))


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
    """(mean cross-entropy, accuracy) of logits against labels. The accuracy is that of the
    logits as saved (float16), so the report's recheck from the files is exact."""
    if len(y) == 0:
        return float("nan"), float("nan")
    return F.cross_entropy(logits, y).item(), (logits.half().argmax(1) == y).float().mean().item()


def make_optimizer(cfg: TrainConfig, params):
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    opt = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return opt(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(cfg: TrainConfig, opt, steps_per_epoch: int):
    """(scheduler or None, steps per batch?)."""
    s = cfg.scheduler
    if s == "step":
        return torch.optim.lr_scheduler.StepLR(opt, cfg.step_size, cfg.gamma), False
    if s == "plateau":
        mode = "max" if cfg.plateau_metric == "val_acc" else "min"
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=mode, factor=cfg.gamma, patience=cfg.patience), False
    if s == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, epochs=cfg.epochs,
                                                   steps_per_epoch=steps_per_epoch, pct_start=cfg.pct_start), True
    if s == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch), True
    return None, False


def step_epoch_scheduler(cfg: TrainConfig, sched, per_batch: bool, val_loss: float, val_acc: float) -> None:
    """The end-of-epoch step of a per-epoch scheduler (plateau watches validation)."""
    if sched is None or per_batch:
        return
    if cfg.scheduler == "plateau":
        sched.step(val_acc if cfg.plateau_metric == "val_acc" else val_loss)
    else:
        sched.step()


def atomic_save(path: Path, obj) -> None:
    """Write .npy / .json / torch files via a temp file and rename: a killed trial never
    leaves half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".npy":
        with open(tmp, "wb") as f:
            np.save(f, obj)
    elif path.suffix == ".json":
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    else:
        torch.save(obj, tmp)
    os.replace(tmp, path)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Writer:
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
            atomic_save(self.dir / name, obj)

    def close(self):
        if self.tb:
            self.tb.close()


class WeightAverage:
    """Exponential moving average of a model's weights and buffers, updated after each step."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        pairs = list(zip(self.model.state_dict().values(), model.state_dict().values()))
        self.floats = [(e, p) for e, p in pairs if e.dtype.is_floating_point]
        self.others = [(e, p) for e, p in pairs if not e.dtype.is_floating_point]

    @torch.no_grad()
    def update(self) -> None:
        if self.floats:
            torch._foreach_lerp_([e for e, _ in self.floats], [p for _, p in self.floats], 1 - self.decay)
        for e, p in self.others:
            e.copy_(p)


def versions() -> dict:
    """Versions a result depends on (the report's conditions line)."""
    out = {"gridrun": __version__, "torch": torch.__version__, "python": platform.python_version()}
    if torch.cuda.is_available():
        out.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                   gpu=torch.cuda.get_device_name(0))
    return out


@dataclass
class Run:
    """Everything one trial trains with, built by `setup`."""

    cfg: TrainConfig
    device: torch.device
    splits: Splits
    aug: Augment
    model: torch.nn.Module
    step_model: torch.nn.Module        # the compiled model on CUDA with `compile`, else `model`
    opt: torch.optim.Optimizer
    sched: object
    per_batch: bool                    # the scheduler steps per batch (onecycle, cosine)
    dgen: torch.Generator              # batch order and augmentation
    fmt: torch.memory_format
    autocast: object
    ema: WeightAverage | None
    meta: dict
    history: list = field(default_factory=list)
    start_epoch: int = 1
    graphs: TrainerGraphs | None = None  # set when the steps are recorded as CUDA graphs

    @property
    def scored(self) -> torch.nn.Module:
        """The model that is evaluated and saved: the weight average when there is one."""
        return self.ema.model if self.ema is not None else self.model


def prepare_device(cfg: TrainConfig) -> torch.device:
    """The config's device, with its CPU thread count, GPU memory cap and a fresh peak-memory mark."""
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if device.type == "cuda":
        if device.index is None:  # "cuda" -> "cuda:N": set_per_process_memory_fraction wants an index
            device = torch.device("cuda", torch.cuda.current_device())
        if cfg.gpu_memory_fraction:
            torch.cuda.set_per_process_memory_fraction(cfg.gpu_memory_fraction, device)
        torch.cuda.reset_peak_memory_stats(device)
    return device


def prepare_splits(cfg: TrainConfig, device: torch.device, arrays: dict | None = None) -> Splits:
    """The config's train/validation/test split on the device, deskewed when its policy aligns."""
    splits = load_splits(cfg.data_dir, cfg.val_size, cfg.subset, cfg.split_seed, device, arrays, cfg.normalize)
    if Augment(cfg.augment, cfg.aug).align:  # deskewing is preprocessing: the same for all three splits
        splits.train_x, splits.val_x, splits.test_x = (deskew(splits.train_x), deskew(splits.val_x),
                                                        deskew(splits.test_x))
    return splits


# bf16 autocast and channels_last pay off only for nets wide enough for tensor cores. Measured on
# an H100 (reports/benchmarks.md, 2026-11-23, bare training step): both together ran 0.64x
# (batch 128) and 0.84x (batch 512) the fp32 speed of tinynet_7k (7,594 parameters, 10-16
# channels), and 1.07x / 1.29x that of resnet20 (272,090). The threshold lies between the two.
FAST_FORMATS_MIN_PARAMS = 100_000


def fast_formats(cfg: TrainConfig, cuda: bool, n_params: int) -> tuple[bool, bool]:
    """(bf16 autocast, channels_last) for a net of n_params: never off CUDA; a field left at None
    follows the net's size, an explicit true/false is obeyed."""
    if not cuda:
        return False, False
    big = n_params >= FAST_FORMATS_MIN_PARAMS
    amp = big if cfg.amp is None else cfg.amp
    return amp, amp if cfg.channels_last is None else cfg.channels_last


def setup(cfg: TrainConfig, arrays: dict | None = None) -> Run:
    """Device, seeds, data on the device, model, optimizer and scheduler for one config."""
    device = prepare_device(cfg)
    cuda = device.type == "cuda"
    seed_all(cfg.seed)
    dgen = torch.Generator(device=device).manual_seed(cfg.seed)  # batch order + augmentation
    splits = prepare_splits(cfg, device, arrays)
    aug = Augment(cfg.augment, cfg.aug)
    torch.manual_seed(cfg.seed)  # again: the initial weights must not depend on data-loading work
    model = build_model(cfg).to(device)
    seed_dropout(model, cfg.seed)  # dropout masks: a hash of (seed, step, element), not the global RNG
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    use_amp, use_cl = fast_formats(cfg, cuda, n_params)
    fmt = torch.channels_last if use_cl else torch.contiguous_format
    model = model.to(memory_format=fmt)
    step_model = torch.compile(model) if (cfg.compile and cuda) else model
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else nullcontext
    n_train = len(splits.train_y)
    steps_per_epoch = n_train // cfg.batch_size + (n_train % cfg.batch_size >= 2)  # a batch of one is dropped
    opt = make_optimizer(cfg, model.parameters())
    sched, per_batch = make_scheduler(cfg, opt, math.ceil(n_train / cfg.batch_size))
    ema = WeightAverage(model, cfg.ema) if cfg.ema else None
    use_graph = wanted(cfg.cuda_graph, device) and cfg.optimizer == "sgd"  # graphs.sgd_foreach_
    meta = {"params": n_params, "device": str(device), "threads": torch.get_num_threads(),
            "amp": use_amp, "channels_last": use_cl, "cuda_graph": use_graph,
            "n_train": n_train, "n_val": len(splits.val_y), "n_test": len(splits.test_y),
            "steps_per_epoch": steps_per_epoch, **versions()}
    if wanted(cfg.cuda_graph, device) and not use_graph:
        meta["cuda_graph_error"] = f"a single trial records SGD steps only, not {cfg.optimizer} (fused groups: Adam too)"
    run = Run(cfg, device, splits, aug, model, step_model, opt, sched, per_batch, dgen, fmt, autocast, ema, meta)
    if use_graph:
        run.graphs = TrainerGraphs(run)
    return run


def train_epoch(run: Run, clean: bool = False) -> tuple[float, float, float]:
    """One pass over the training split: (mean loss, accuracy on the training batches, seconds).
    `clean` skips augmentation (the config's last `clean_epochs` epochs)."""
    if run.graphs is not None:
        return run.graphs.epoch(clean)
    cfg, model = run.cfg, run.step_model
    run.model.train()
    t0 = time.perf_counter()
    loss_sum = torch.zeros((), device=run.device)
    correct = torch.zeros((), device=run.device, dtype=torch.long)
    for x, y in run.splits.batches(cfg.batch_size, run.dgen, None if clean else run.aug):
        x = x.contiguous(memory_format=run.fmt)
        with run.autocast():
            out = model(x)
            loss = F.cross_entropy(out.float(), y, label_smoothing=cfg.label_smoothing)
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        run.opt.step()
        if run.ema is not None:
            run.ema.update()
        if run.per_batch:
            run.sched.step()
        loss_sum += loss.detach() * len(y)
        correct += (out.argmax(1) == y).sum()
    n = len(run.splits.train_y)
    train_loss, train_acc = loss_sum.item() / n, correct.item() / n
    if run.device.type == "cuda":
        torch.cuda.synchronize()
    return train_loss, train_acc, time.perf_counter() - t0


class TrainerGraphs:
    """train_epoch with its step as a static-buffer function (graphs.py): the batch's indices
    and this step's lr and momentum live in tensors that are refreshed before each step; the
    update is graphs.sgd_foreach_ on the optimizer's own momentum buffers (so its state_dict,
    and resuming, are unchanged). Full batches are replayed from a recording on CUDA; the
    epoch's last, shorter batch runs the same function eagerly. SGD only (setup checks)."""

    def __init__(self, run: Run):
        self.run = run
        group = run.opt.param_groups[0]
        self.params = list(group["params"])
        self.weight_decay, self.nesterov = float(group["weight_decay"]), bool(group["nesterov"])
        dev = run.device
        self.lr, self.momentum = torch.zeros((), device=dev), torch.zeros((), device=dev)
        self.idx = torch.zeros(run.cfg.batch_size, dtype=torch.long, device=dev)
        self.loss_sum = torch.zeros((), device=dev)
        self.correct = torch.zeros((), device=dev, dtype=torch.long)
        self.steps = StepGraphs(dev, [run.dgen])
        self.bufs: list[torch.Tensor] = []  # the momentum buffers, read at each epoch's start
        run.opt.step()  # no gradients: changes nothing, tells the scheduler that steps happen

    def _bufs(self) -> list[torch.Tensor]:
        state = self.run.opt.state
        for p in self.params:  # made before any recording; zeros give exactly SGD's first step
            if state[p].get("momentum_buffer") is None:
                state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return [state[p]["momentum_buffer"] for p in self.params]

    def _step(self, idx: torch.Tensor, clean: bool) -> None:
        run, cfg, s = self.run, self.run.cfg, self.run.splits
        x, y = s.train_x[idx], s.train_y[idx]
        if not clean:
            x = run.aug(x, run.dgen)
        x = s.normalize(x).contiguous(memory_format=run.fmt)
        with run.autocast():
            out = run.step_model(x)
            loss = F.cross_entropy(out.float(), y, label_smoothing=cfg.label_smoothing)
        grads = torch.autograd.grad(loss, self.params, materialize_grads=True)
        sgd_foreach_(self.params, grads, self.bufs, self.lr, self.momentum, self.weight_decay, self.nesterov)
        if run.ema is not None:
            run.ema.update()
        self.loss_sum += loss.detach() * len(y)
        self.correct += (out.argmax(1) == y).sum()

    def epoch(self, clean: bool) -> tuple[float, float, float]:
        run = self.run
        run.model.train()
        t0 = time.perf_counter()
        self.loss_sum.zero_()
        self.correct.zero_()
        self.bufs = self._bufs()  # read each epoch: a resume replaces the optimizer's state
        for idx in run.splits.index_batches(run.cfg.batch_size, run.dgen):
            group = run.opt.param_groups[0]
            self.lr.fill_(group["lr"])
            self.momentum.fill_(group["momentum"])
            if len(idx) == len(self.idx):
                self.idx.copy_(idx)
                self.steps(clean, lambda: self._step(self.idx, clean))
            else:
                self._step(idx, clean)
            if run.per_batch:
                run.sched.step()
        n = len(run.splits.train_y)
        train_loss, train_acc = self.loss_sum.item() / n, self.correct.item() / n
        if run.device.type == "cuda":
            torch.cuda.synchronize()
        if self.steps.error:  # summary.json says what ran
            run.meta.update(cuda_graph=False, cuda_graph_error=self.steps.error)
        return train_loss, train_acc, time.perf_counter() - t0


def is_clean_epoch(cfg: TrainConfig, epoch: int) -> bool:
    """Whether epoch `epoch` (1-based) is one of the last `clean_epochs`, trained without augmentation."""
    return epoch > cfg.epochs - cfg.clean_epochs


PRECISE_BN_BATCH = 1024  # images per forward pass of precise BN (a constant: results must not
                         # depend on plumbing such as eval_batch_size)


def bn_layers(model: torch.nn.Module) -> list:
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def precise_bn(model: torch.nn.Module, splits: Splits, forward=None, batch: int = PRECISE_BN_BATCH) -> None:
    """Precise BatchNorm (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021): every BN
    layer's running mean and variance become the average over the un-augmented training images
    of its per-batch statistics, in place of the running average over augmented batches of a
    moving model (or, with `ema`, an average of such averages). Only the BN layers run in
    training mode (dropout stays off); `forward(x)` runs the model (default: `model(x)`).
    Deterministic: the images go in their stored order, and the cumulative average is written as
    momentum 1/i for the i-th batch (what momentum=None does, without reading a buffer)."""
    bns = bn_layers(model)
    if not bns:
        return
    was_training, momenta = model.training, [m.momentum for m in bns]
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.train()
    chunks = [c for c in splits.train_x.split(batch) if len(c) >= 2]  # BN cannot take a batch of one
    for i, xb in enumerate(chunks, 1):
        for m in bns:
            m.momentum = 1.0 / i
        (forward or model)(splits.normalize(xb))
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    model.train(was_training)


def score(run: Run) -> dict:
    """Logits of the scored model on validation and test, and their loss and accuracy."""
    s, bs, ac = run.splits, run.cfg.eval_batch_size, run.autocast
    val_logits = infer(run.scored, s.val_x, s.normalize, bs, ac)
    test_logits = infer(run.scored, s.test_x, s.normalize, bs, ac)
    val_loss, val_acc = evaluate(val_logits, s.val_y)
    test_loss, test_acc = evaluate(test_logits, s.test_y)
    return {"val_logits": val_logits, "test_logits": test_logits, "val_loss": val_loss, "val_acc": val_acc,
            "test_loss": test_loss, "test_acc": test_acc}


def save_state(run: Run, state_dir: Path | None, epoch: int) -> str | None:
    """The resumable state after `epoch`, as plain tensors and containers (loadable with
    torch.load(weights_only=True): resuming a foreign folder runs no code from it)."""
    if state_dir is None:
        return None
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "state.pt"
    atomic_save(path, {
        "version": STATE_VERSION, "model": run.model.state_dict(), "optimizer": run.opt.state_dict(),
        "scheduler": run.sched.state_dict() if run.sched is not None else None,
        "ema": run.ema.model.state_dict() if run.ema is not None else None,
        "dgen": run.dgen.get_state(), "rng_cpu": torch.get_rng_state(), "dropout_steps": dropout_steps(run.model),
        "rng_cuda": torch.cuda.get_rng_state(run.device) if run.device.type == "cuda" else None,
        "history": run.history, "epoch": epoch, "config": run.cfg.to_dict()})
    return str(path)


def read_state(path: str | os.PathLike, device="cpu") -> dict:
    """A state file's contents, or StateError saying why it cannot be used."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # a truncated zip, a planted pickle, a stranger's file: all unusable
        raise StateError(f"resume state {path} is unreadable ({type(e).__name__}: {str(e).splitlines()[0][:120]})") \
            from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise StateError(f"resume state {path} is not a gridrun state of version {STATE_VERSION}")
    return state


def load_state(run: Run, path: str | os.PathLike) -> None:
    """Continue `run` from a saved state: weights, optimizer, scheduler, generators, history."""
    state = read_state(path, run.device)
    ours = {k: v for k, v in run.cfg.to_dict().items() if k not in PLUMBING}
    theirs = {k: v for k, v in with_defaults(state.get("config") or {}).items() if k in ours}
    if theirs != ours:
        changed = sorted(k for k in ours if theirs.get(k) != ours[k])
        raise StateError(f"resume state {path} belongs to another config (differs in {', '.join(changed)})")
    try:
        run.model.load_state_dict(state["model"])
        run.opt.load_state_dict(state["optimizer"])
        if run.sched is not None:
            run.sched.load_state_dict(state["scheduler"])
        if run.ema is not None:
            run.ema.model.load_state_dict(state["ema"])
        run.dgen.set_state(state["dgen"].cpu())
        load_dropout_steps(run.model, state["dropout_steps"])
        torch.set_rng_state(state["rng_cpu"].cpu())
        if run.device.type == "cuda" and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(state["rng_cuda"].cpu(), run.device)
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise StateError(f"resume state {path} does not fit this model ({str(e).splitlines()[0][:120]})") from None
    run.history, run.start_epoch = list(state["history"]), int(state["epoch"]) + 1


def write_final(run: Run, writer: Writer, status: str, scores: dict | None) -> dict:
    """The trial's final files; returns the result dict."""
    return write_trial_files(writer, run.device, run.meta, run.history, status, scores, run.splits,
                             run.scored.state_dict)


def write_trial_files(writer: Writer, device: torch.device, meta: dict, history: list, status: str,
                      scores: dict | None, splits: Splits, weights) -> dict:
    """What every finished trial folder holds (logits, labels, model.pt when it ended ok; always
    summary.json), for train and for each member of a fused group; `weights()` gives the state
    dict to save. Returns the result dict."""
    meta = dict(meta)
    if device.type == "cuda":
        meta["peak_gpu_mem_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    result = {"status": status, "epochs": len(history), "final": history[-1] if history else None,
              "history": history, **meta}
    if status == "ok":
        writer.save("logits_val.npy", scores["val_logits"].half().cpu().numpy())
        writer.save("logits_test.npy", scores["test_logits"].half().cpu().numpy())
        writer.save("labels_val.npy", splits.val_y.to(torch.uint8).cpu().numpy())
        writer.save("labels_test.npy", splits.test_y.to(torch.uint8).cpu().numpy())
        writer.save("model.pt", weights())
    writer.save("summary.json", {**{k: v for k, v in result.items() if k != "history"},
                                 "finished_at": time.time(), "pid": os.getpid()})
    return result


def epoch_metrics(epoch: int, train_loss: float, train_acc: float, seconds: float, scores: dict, lr: float,
                  n_train: int) -> dict:
    return {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "val_loss": scores["val_loss"],
            "val_acc": scores["val_acc"], "test_acc": scores["test_acc"], "lr": lr,
            "seconds": round(seconds, 3), "images_per_s": round(n_train / seconds, 1)}


def train(config: TrainConfig | dict, on_epoch=None, resume_from: str | None = None,
          state_dir: str | None = None, arrays: dict | None = None) -> dict:
    """Train one config. `on_epoch(metrics, state_path)` is called after every epoch; state_path
    is the resumable state file in `state_dir` (default out_dir; None when neither is set).
    `resume_from` names a state.pt to continue from; `arrays` are MNIST arrays already in memory
    (load_arrays), used instead of reading files. Returns {"status", "epochs", "final", ...}."""
    cfg = TrainConfig.from_dict(config)
    with _threads_restored():
        return _train(cfg, on_epoch, resume_from, state_dir, arrays)


@contextmanager
def _threads_restored():
    """`threads` sets torch's thread count for the trial; give the caller its own back."""
    before = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train(cfg: TrainConfig, on_epoch, resume_from, state_dir, arrays) -> dict:
    run = setup(cfg, arrays)
    if resume_from:
        load_state(run, resume_from)
    writer = Writer(cfg.out_dir, run.history)
    writer.save("config.json", {**cfg.to_dict(), "_meta": run.meta})
    state_dir = Path(state_dir or cfg.out_dir) if (state_dir or cfg.out_dir) else None
    status, result, scores = "ok", None, None
    for epoch in range(run.start_epoch, cfg.epochs + 1):
        train_loss, train_acc, seconds = train_epoch(run, clean=is_clean_epoch(cfg, epoch))
        if not math.isfinite(train_loss):
            status = f"diverged at epoch {epoch}"
            break
        if epoch == cfg.epochs and cfg.precise_bn:
            with run.autocast():
                precise_bn(run.scored, run.splits, lambda x: run.scored(x.contiguous(memory_format=run.fmt)))
        scores = score(run)  # the last epoch's logits are the ones saved: scored exactly once
        lr = run.opt.param_groups[0]["lr"]
        step_epoch_scheduler(cfg, run.sched, run.per_batch, scores["val_loss"], scores["val_acc"])
        m = epoch_metrics(epoch, train_loss, train_acc, seconds, scores, lr, len(run.splits.train_y))
        run.history.append(m)
        writer.epoch(m)
        if epoch == cfg.epochs:
            # Final files before the last report: a scheduler (ASHA at max_t) may stop the
            # trial at that report, and nothing after it would run.
            result = write_final(run, writer, status, scores)
        state_path = save_state(run, state_dir, epoch)
        if on_epoch is not None:
            on_epoch(m, state_path)
    if result is None:  # diverged, or resumed from a state saved after the last epoch
        if status == "ok":
            scores = score(run)
        result = write_final(run, writer, status, scores)
    writer.close()
    return result
