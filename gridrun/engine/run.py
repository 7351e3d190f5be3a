"""train(configs, sink) -> results: a group of K >= 1 trials from start to finish. Knows nothing of Ray.

One epoch loop for every trial: train an epoch (step.Trainer), retire a member whose loss went
non-finite (the others go on as a smaller group), after a rung epoch (`rungs`) retire the members
below successive halving's cut as pruned, after the last epoch recompute the scored model's BatchNorm
statistics (precise BN), score every member, step plateau's schedule, give the sink each member's
row, its final files after the last epoch (files.py) and the group's resumable state (state.py).
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager

import torch

from ..config import TrainConfig
from ..hooks import Hooks, from_env
from .files import Folders, Writer, save_state, write_final
from .group import Group, check_group, member_state_dict, retire, setup
from .loss import cross_entropy
from .state import load_state, state_dict

PRECISE_BN_BATCH = 1024  # images per forward pass of precise BN (a constant: results must not
                         # depend on plumbing such as eval_batch_size)


def evaluate(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[mean cross-entropy, accuracy] of logits against labels, left on their device (score reads
    every member's at once). The accuracy is that of the logits as saved (float16), so the
    report's recheck from the files is exact."""
    if len(y) == 0:
        return torch.full((2,), float("nan"), device=logits.device)
    return torch.stack([cross_entropy(logits[None], y[None])[0], (logits.half().argmax(1) == y).float().mean()])


@torch.no_grad()
def infer(g: Group, x: torch.Tensor) -> torch.Tensor:
    """(K, N, classes) float32 logits of every member's scored model on the images x (shared)."""
    g.strategy.module.eval()
    chunk = max(256, g.cfgs[0].eval_batch_size // g.k)
    with g.autocast():
        out = [g.strategy.forward(g.splits.normalize(xb), g.scored(), shared=True) for xb in x.split(chunk)]
    return torch.cat(out, 1) if out else torch.empty(g.k, 0, g.splits.classes, device=x.device)


def score(g: Group) -> list[dict]:
    """Every member's validation and test logits, loss and accuracy: the numbers of all K members
    come to the host in one copy (one sync an epoch, not four per member)."""
    s = g.splits
    val, test = infer(g, s.val_x), infer(g, s.test_x)
    numbers = torch.stack([torch.cat([evaluate(val[k], s.val_y), evaluate(test[k], s.test_y)])
                           for k in range(g.k)]).tolist()
    return [{"val_logits": val[k], "test_logits": test[k],
             **dict(zip(("val_loss", "val_acc", "test_loss", "test_acc"), numbers[k]))} for k in range(g.k)]


def bn_layers(module: torch.nn.Module) -> list:
    return [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def precise_bn(g: Group, batch: int = PRECISE_BN_BATCH) -> None:
    """Precise BatchNorm (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021): every BN
    layer's running mean and variance of the scored weights become the average over the
    un-augmented training images of its per-batch statistics, in place of the running average
    over augmented batches of a moving model. Only the BN layers run in training mode (dropout
    stays off). Deterministic: the images go in their stored order, and the cumulative average is
    written as momentum 1/i for the i-th batch (what momentum=None does, without reading a buffer)."""
    bns = bn_layers(g.strategy.module)
    if not bns:
        return
    weights = g.scored()
    for n, t in weights[1].items():
        if n.endswith("running_var"):
            t.fill_(1)
        elif n.endswith(("running_mean", "num_batches_tracked")):
            t.zero_()
    momenta = [m.momentum for m in bns]
    g.strategy.module.eval()
    for m in bns:
        m.train()
    chunks = [c for c in g.splits.train_x.split(batch) if len(c) >= 2]  # BN cannot take a batch of one
    for i, xb in enumerate(chunks, 1):
        for m in bns:
            m.momentum = 1.0 / i
        with g.autocast():
            g.strategy.forward(g.splits.normalize(xb), weights, shared=True)
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    g.strategy.module.train()


def is_clean_epoch(cfg: TrainConfig, epoch: int) -> bool:
    """Whether epoch `epoch` (1-based) is one of the last `clean_epochs`, trained without augmentation."""
    return epoch > cfg.epochs - cfg.clean_epochs


def epoch_metrics(epoch: int, train_loss: float, train_acc: float, seconds: float, scores: dict, lr: float,
                  n_train: int, sharing: int = 1) -> dict:
    """A member's row. Its `seconds` are its share of the epoch's time (the group's divided by the
    `sharing` members alive), so a sum over a group's members is the group's time, not K times
    it; its images/s is the rate its own images went through."""
    return {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "val_loss": scores["val_loss"],
            "val_acc": scores["val_acc"], "test_acc": scores["test_acc"], "lr": lr,
            "seconds": round(seconds / sharing, 3), "images_per_s": round(n_train / seconds, 1)}


@contextmanager
def threads_restored():
    """`threads` sets torch's thread count for the trial; give the caller its own back."""
    before = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train(configs: list, sink: Folders | None = None, resume_from: str | None = None, arrays: dict | None = None,
          hooks: Hooks | None = None) -> list[dict]:
    """Train K >= 1 configs of one architecture as one group; returns their results in order.
    `sink` says where records and arrays go (files.Folders; default: each member's out_dir, no
    state unless a lone trial's); `resume_from` names a state.pt to continue from; `arrays` are
    the dataset's arrays already in memory; `hooks` (tests): see gridrun/hooks.py (default:
    $GRIDRUN_HOOKS's when set, else none)."""
    cfgs = [TrainConfig.from_dict(c) for c in configs]
    check_group(cfgs)
    sink, hooks = sink or Folders(), hooks or from_env()
    with threads_restored():
        g = setup(cfgs, arrays, hooks)
        if resume_from:
            load_state(g, resume_from)
        for m in g.roster:
            m.writer = Writer(m.cfg.out_dir if m.alive or m.final is not None else None, m.history)
            m.writer.config(m.cfg.to_dict(), {**g.meta, **sink.group_meta(len(g.roster))})
            if not m.alive:  # retired before the state it resumed from: its files again, from the state
                m.result = _written_again(g, m)
        _epochs(g, sink, hooks.after_epoch)
        return [m.result for m in g.roster]


def _epochs(g: Group, sink: Folders, after_epoch) -> None:
    epochs, lone = g.cfgs[0].epochs, sink.lone(len(g.roster))
    state_dir = sink.state_folder(len(g.roster), g.roster[0].cfg.out_dir)
    for epoch in range(g.start_epoch, epochs + 1):
        losses, accs, seconds = g.trainer.epoch(epoch, tuple(is_clean_epoch(m.cfg, epoch) for m in g.members))
        diverged = [k for k, m in enumerate(g.members) if not math.isfinite(float(losses[k]))]
        for k in diverged:
            g.members[k].status = f"diverged at epoch {epoch}"
            _final(g, k, None)
        live = [k for k in range(g.k) if k not in diverged]
        if not live:
            break
        retire(g, diverged)
        losses, accs = losses[live], accs[live]
        if epoch == epochs and g.cfgs[0].precise_bn:  # a shared key (identity.FUSE_SHARED)
            precise_bn(g)
        scores = score(g)  # the last epoch's logits are the ones saved: scored exactly once
        alive, lrs = sum(m.alive for m in g.members), [h["lr"] for h in g.hyperparameters(epoch - 1)]
        for k, (m, lr) in enumerate(zip(g.members, lrs)):
            if m.plateau is not None:
                m.plateau.step(m.cfg, scores[k]["val_loss"], scores[k]["val_acc"])
            row = epoch_metrics(epoch, float(losses[k]), float(accs[k]), seconds, scores[k], lr, g.meta["n_train"],
                                alive)
            m.history.append(row)
            m.writer.epoch(row)
            if epoch == epochs:
                # Final files before the last report: a scheduler (ASHA at max_t) may stop the
                # trial at that report, and nothing after it would run.
                _final(g, k, scores[k])
        row = _group_row(g, epoch, seconds)
        if epoch in g.cfgs[0].rungs:  # a shared key: every member has the same rungs
            _rung(g, epoch, scores)
        state_path = save_state(state_dir, state_dict(g, epoch))
        if sink.on_epoch is not None:
            sink.on_epoch(g.members[0].history[-1] if lone else row, state_path)
        if after_epoch is not None:
            after_epoch(epoch, g.cfgs[0].out_dir)
    if any(m.result is None for m in g.members):  # resumed from a state saved after the last epoch
        scores = score(g)
        for k, m in enumerate(g.members):
            if m.result is None:
                _final(g, k, scores[k] if m.status == "ok" else None)
    for m in g.roster:
        m.writer.close()


def rung_survivors(val_accs: list[float], keep: float) -> list[int]:
    """Successive halving's cut: the positions of the best ceil(keep * n) of n members by
    validation accuracy (at least one; a tie goes to the earlier member), in member order."""
    n = max(1, math.ceil(keep * len(val_accs) - 1e-9))  # 0.5 * 4 is 2, not 3 by a rounding
    best = sorted(range(len(val_accs)), key=lambda k: (-_number(val_accs[k]), k))[:n]
    return sorted(best)


def _number(v: float) -> float:
    """A validation accuracy to rank by: NaN (no validation split) ranks last."""
    return v if math.isfinite(v) else -math.inf


def _rung(g: Group, epoch: int, scores: list[dict]) -> None:
    """Successive halving after a rung epoch: the members below the cut are retired as pruned
    with their final files from this epoch's scores; the rest go on as a smaller group."""
    keep = rung_survivors([s["val_acc"] for s in scores], g.cfgs[0].rung_keep)
    gone = [k for k in range(g.k) if k not in keep]
    for k in gone:
        g.members[k].status = f"pruned at epoch {epoch}"
        _final(g, k, scores[k])
    retire(g, gone)


def _group_row(g: Group, epoch: int, seconds: float) -> dict:
    val = [m.history[-1]["val_acc"] for m in g.members]
    return {"epoch": epoch, "val_acc": max(val), "mean_val_acc": sum(val) / len(val), "members_alive": len(val),
            "seconds": round(seconds, 3), "images_per_s": round(g.meta["n_train"] * g.k / seconds, 1)}


def _final(g: Group, k: int, scores: dict | None) -> None:
    """Member k's final files. One retired mid-run (pruned, diverged) also keeps what they hold
    in `final`, which the group's state carries: its trial folder reaches storage only when Ray
    syncs it after a checkpoint, and a launch killed in between left a state that retired the
    member and no folder; the relaunch then ran it again from epoch 1, unpruned."""
    m, now = g.members[k], time.time()
    weights = member_state_dict(g, k) if scores is not None else None
    m.result = write_final(m.writer, g.device, g.meta, m.history, m.status, scores, _labels(g), lambda: weights, now)
    if m.status != "ok":
        m.final = {"scores": scores and {f"{s}_logits": scores[f"{s}_logits"].half().cpu() for s in ("val", "test")},
                   "weights": weights and {n: t.cpu() for n, t in weights.items()}, "finished_at": now}


def _written_again(g: Group, m) -> dict:
    """A member retired before the resumed state: its files as they were (nothing, from a state
    written before gridrun kept `final`)."""
    f = m.final or {}
    return write_final(m.writer, g.device, g.meta, m.history, m.status, f.get("scores"), _labels(g),
                       lambda: f.get("weights"), f.get("finished_at"))


def _labels(g: Group) -> dict:
    return {"val": g.splits.val_y, "test": g.splits.test_y}
