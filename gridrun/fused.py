"""train_fused(configs) -> results: K trials of one architecture trained as one batched model.
Knows nothing of Ray.

The members' parameters and buffers are stacked (torch.func.stack_module_state) and one
vmap(functional_call) runs all K forward and backward passes at once: vmap turns each conv into
a grouped conv, so a launch-bound tiny net gets K times the work per kernel. Each member keeps
what makes it its own trial: its batch order and augmentation draws (its own generator), its
initial weights (its seed), its BatchNorm statistics and dropout masks (its slice of the stacked
buffers), its learning-rate schedule (a shadow torch scheduler per member) and its optimizer
state and hyperparameters (an SGD/Adam step on the stacked tensors with per-member values).
A member whose loss goes non-finite is marked diverged, zeroed and frozen; the others go on.

Each member writes an ordinary trial folder (train.Writer, write_final): metrics.csv,
TensorBoard, logits, model.pt loadable into create_model(name), summary.json.

Not bit-identical to training the members one by one: the batched conv sums in another order,
and the loss is computed for all members at once, so results agree to float rounding, which
training then amplifies a little (the test states the tolerance).
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from .augment import Augment, Draws
from .graphs import StepGraphs, wanted
from .config import ConfigError, TrainConfig
from .models import create_model, model_defaults, model_kwargs, resolve_model_args
from .models._layers import seed_dropout, set_dropout_rate
from .train import (STATE_VERSION, StateError, Writer, _threads_restored, atomic_save, epoch_metrics, evaluate,
                    is_clean_epoch, make_optimizer, make_scheduler, precise_bn, prepare_device, prepare_splits,
                    read_state, seed_all, step_epoch_scheduler, versions, write_trial_files)


@dataclass
class Member:
    """One trial inside a fused group."""

    cfg: TrainConfig
    aug: Augment
    dgen: torch.Generator
    shadow: torch.optim.Optimizer      # holds this member's lr/momentum/betas as its scheduler sets them
    sched: object
    per_batch: bool
    keys: list[str]                    # its state_dict's keys (what model.pt must hold)
    history: list = field(default_factory=list)
    status: str = "ok"
    alive: bool = True
    result: dict | None = None
    writer: Writer | None = None


@dataclass
class Group:
    cfgs: list[TrainConfig]
    device: torch.device
    splits: object
    members: list[Member]
    base: torch.nn.Module              # the architecture on the meta device; weights come stacked
    params: dict
    buffers: dict
    opt: dict                          # stacked optimizer state: momentum buffers / Adam moments
    kind: str                          # sgd | adam | adamw
    ema: dict | None                   # stacked weight average (params and buffers)
    meta: dict
    strategy: str = "vmap"             # vmap (one batched call) | loop (member by member), see _forward
    step: int = 0
    start_epoch: int = 1
    graphs: "FusedGraphs | None" = None  # set when the steps are recorded as CUDA graphs

    @property
    def k(self) -> int:
        return len(self.members)

    def alive_mask(self) -> torch.Tensor:
        return torch.tensor([m.alive for m in self.members], device=self.device)


def check_group(cfgs: list[TrainConfig]) -> None:
    """Members must share what one batched model needs (spec.FUSE_SHARED) and the deskew step."""
    from .identity import FUSE_SHARED

    for name in FUSE_SHARED:
        values = {repr(getattr(c, name)) for c in cfgs}
        if len(values) > 1:
            raise ConfigError(f"fused trials must share {name}, but the group has {', '.join(sorted(values))}")
    if len({Augment(c.augment, c.aug).align for c in cfgs}) > 1:
        raise ConfigError("fused trials must agree on 'align' (deskewing changes the data they share)")


def _dropout_rate(cfg: TrainConfig) -> float | None:
    """The member's dropout rate: its config's, else its model's default; None if it has none."""
    if "dropout" not in model_kwargs(cfg.model):
        return None
    return cfg.dropout if cfg.dropout is not None else model_defaults(cfg.model)["dropout"]


def setup_group(cfgs: list[TrainConfig], arrays: dict | None = None, strategy: str = "auto") -> Group:
    c0 = cfgs[0]
    device = prepare_device(c0)
    cuda = device.type == "cuda"
    splits = prepare_splits(c0, device, arrays)
    n_train = len(splits.train_y)
    members, models = [], []
    for cfg in cfgs:  # each member exactly as train.setup would build it alone
        seed_all(cfg.seed)
        dgen = torch.Generator(device=device).manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        kw = resolve_model_args(cfg.model, cfg.dropout, cfg.model_args)
        model = create_model(cfg.model, **kw).to(device)
        seed_dropout(model, cfg.seed)
        shadow = make_optimizer(cfg, [torch.zeros(1, requires_grad=True)])
        sched, per_batch = make_scheduler(cfg, shadow, math.ceil(n_train / cfg.batch_size))
        # The stacked update stands in for the shadow's step(); one step without gradients changes
        # nothing and tells its scheduler that steps happen (no "scheduler before step" warning).
        shadow.step()
        members.append(Member(cfg, Augment(cfg.augment, cfg.aug), dgen, shadow, sched, per_batch,
                              list(model.state_dict().keys())))
        models.append(model)
    rates = [_dropout_rate(c) for c in cfgs]
    if any(rates):  # a member at rate 0 still runs the (identity) mask so that others can drop
        for model, r in zip(models, rates):
            set_dropout_rate(model, r or 0.0, active=True)
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    n_params = sum(p.numel() for p in models[0].parameters() if p.requires_grad)
    ema = ({n: t.detach().clone() for n, t in {**params, **buffers}.items()} if c0.ema else None)
    # Fused groups train in fp32, whatever cfg.amp says (so no autocast below): on CUDA (torch
    # 2.11, H100) the backward of vmap's batch norm refuses bf16 activations with fp32 running
    # statistics ("Expected running_mean to have type BFloat16 but got Float"), and bf16 bought a
    # tiny net nothing there (tinynet_7k step, batch 512: 127k img/s bf16 vs 131k fp32;
    # reports/benchmarks.md).
    meta = {"params": n_params, "device": str(device), "threads": torch.get_num_threads(), "n_train": n_train,
            "n_val": len(splits.val_y), "n_test": len(splits.test_y), "fused": len(cfgs),
            "amp": False, "channels_last": False, **versions()}  # what ran, whatever the config says
    if strategy == "auto":
        strategy = "vmap" if cuda else "loop"
    if strategy not in ("vmap", "loop"):
        raise ConfigError(f"fused strategy {strategy!r}: use auto, vmap or loop")
    meta["fused_strategy"] = strategy
    meta["cuda_graph"] = wanted(c0.cuda_graph, device)
    g = Group(cfgs, device, splits, members, base, params, buffers, {}, c0.optimizer, ema, meta, strategy)
    if meta["cuda_graph"]:
        g.graphs = FusedGraphs(g)
    return g


def _forward(g: Group, params: dict, buffers: dict, x: torch.Tensor, shared_input: bool) -> torch.Tensor:
    """All members' logits: x is (K, B, ...) (each its own batch) or (B, ...) (the same images).
    "vmap": one batched call (grouped convs), for GPUs. "loop": the members one after another on
    views of the stacked tensors (gradients and BN statistics land in the stacks all the same),
    for CPUs, where grouped convolutions are slower than K plain ones (reports/benchmarks.md)."""
    def f(p, b, xb):
        return functional_call(g.base, (p, b), (xb,))
    if g.strategy == "loop":
        return torch.stack([f({n: t[k] for n, t in params.items()}, {n: t[k] for n, t in buffers.items()},
                              x if shared_input else x[k]) for k in range(g.k)])
    return vmap(f, in_dims=(0, 0, None if shared_input else 0))(params, buffers, x)


def _batches(g: Group) -> list[list[torch.Tensor]]:
    """Each member's index batches for this epoch, from its own generator."""
    per = [g.splits.index_batches(m.cfg.batch_size, m.dgen) for m in g.members]
    return [list(step) for step in zip(*per)]


def _augmented(g: Group, idx: list[torch.Tensor], clean: list[bool]) -> torch.Tensor:
    """(K, B, 1, 28, 28): each member's batch, drawn and augmented from its own generator (left
    as is for a member whose `clean` is set); the warps of members whose draws have the same
    parts run as one grid_sample."""
    s = g.splits
    x = s.train_x[torch.stack(idx)]                                   # (K, B, 1, H, W)
    draws = [None if c else m.aug.draw(len(i), m.dgen, s.train_x.device, tuple(x.shape[-2:]))
             for m, i, c in zip(g.members, idx, clean)]
    out = [x[k] if d is None else None for k, d in enumerate(draws)]
    for key in {d.key for d in draws if d is not None}:
        ks = [k for k, d in enumerate(draws) if d is not None and d.key == key]
        if key == (False, False, False):
            for k in ks:
                out[k] = x[k]
            continue
        # members picked by stacking views, not x[ks]: a list index is a host-to-device copy,
        # which a CUDA graph cannot record
        joined = Augment.apply(torch.stack([x[k] for k in ks]).flatten(0, 1), Draws.cat([draws[k] for k in ks]))
        for j, k in enumerate(ks):
            out[k] = joined[j * x.shape[1]:(j + 1) * x.shape[1]]
    return s.normalize(torch.stack(out).flatten(0, 1)).view(x.shape)


def _hyper(g: Group, name: str, device=None) -> torch.Tensor:
    """A per-member hyperparameter, shaped (K,), as the members' shadow optimizers hold it now."""
    vals = []
    for m in g.members:
        group = m.shadow.param_groups[0]
        v = group["betas"][0] if name == "beta1" else group["betas"][1] if name == "beta2" else group.get(name, 0.0)
        vals.append(float(v) if m.alive else 0.0)
    return torch.tensor(vals, device=device or g.device, dtype=torch.float32)


def step_hypers(g: Group, device=None) -> dict:
    """This step's per-member hyperparameters, (K,) tensors on `device` (default the group's),
    for the update after g.step was counted up: what optimizer_step applies."""
    device = device or g.device
    h = {"lr": _hyper(g, "lr", device), "wd": _hyper(g, "weight_decay", device)}
    if g.kind == "sgd":
        h["mom"] = _hyper(g, "momentum", device)
        h["nest"] = torch.tensor([bool(m.shadow.param_groups[0]["nesterov"]) for m in g.members], device=device)
    else:
        b1, b2 = _hyper(g, "beta1", device), _hyper(g, "beta2", device)
        bc1 = 1 - b1.double() ** g.step
        h.update(b1=b1, b2=b2, step_size=(h["lr"].double() / bc1).float(),
                 bc2_sqrt=(1 - b2.double() ** g.step).sqrt().float())
    return h


def _view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


@torch.no_grad()
def optimizer_step(g: Group, h: dict | None = None) -> None:
    """One SGD/Adam/AdamW step on the stacked parameters with each member's hyperparameters
    (`h`, from step_hypers; default: counted and read now), following torch.optim's
    single-tensor formulas."""
    if h is None:
        g.step += 1
        h = step_hypers(g)
    lr, wd = h["lr"], h["wd"]
    if g.kind == "sgd":
        mom, nest = h["mom"], h["nest"]
        for name, p in g.params.items():
            d = p.grad + _view(wd, p) * p
            buf = g.opt.get(name)
            buf = d.clone() if buf is None else buf.mul_(_view(mom, p)).add_(d)
            g.opt[name] = buf
            d = torch.where(_view(nest, p), d + _view(mom, p) * buf, buf)
            p.sub_(_view(lr, p) * d)
        return
    b1, b2, eps = h["b1"], h["b2"], 1e-8
    for name, p in g.params.items():
        grad = p.grad
        if g.kind == "adamw":
            p.mul_(1 - _view(lr * wd, p))
        else:
            grad = grad + _view(wd, p) * p
        m1, m2 = g.opt.setdefault(name, (torch.zeros_like(p), torch.zeros_like(p)))
        m1.lerp_(grad, _view(1 - b1, p).expand_as(p))
        m2.mul_(_view(b2, p)).addcmul_(grad, grad * _view(1 - b2, p))
        denom = (m2.sqrt() / _view(h["bc2_sqrt"], p)).add_(eps)
        p.sub_(_view(h["step_size"], p) * m1 / denom)


@torch.no_grad()
def _update_ema(g: Group) -> None:
    decay = g.cfgs[0].ema
    live = {**g.params, **g.buffers}
    floats = [n for n, t in g.ema.items() if t.dtype.is_floating_point]
    torch._foreach_lerp_([g.ema[n] for n in floats], [live[n].detach() for n in floats], 1 - decay)
    for n, t in g.ema.items():
        if not t.dtype.is_floating_point:
            t.copy_(live[n])


def _train_step(g: Group, idx: list[torch.Tensor], clean: list[bool], ls: torch.Tensor, alive: torch.Tensor,
                h: dict | None, loss_sum: torch.Tensor, correct: torch.Tensor) -> None:
    """One step of every member: forward, backward, update, weight average, and the epoch's
    running loss and accuracy sums. `h` None: the hyperparameters are counted and read now."""
    x, y = _augmented(g, idx, clean), g.splits.train_y[torch.stack(idx)]    # (K, B, ...), (K, B)
    out = _forward(g, g.params, g.buffers, x, shared_input=False).float()  # (K, B, 10)
    logp = F.log_softmax(out, -1)
    nll = -logp.gather(-1, y[..., None]).squeeze(-1)
    loss = ((1 - ls[:, None]) * nll + ls[:, None] * -logp.mean(-1)).mean(1)  # label smoothing as F.cross_entropy
    for p in g.params.values():
        p.grad = None
    torch.where(alive, loss, torch.zeros_like(loss)).sum().backward()
    optimizer_step(g, h)
    if g.ema is not None:
        _update_ema(g)
    loss_sum += loss.detach() * y.shape[1]
    correct += (out.argmax(-1) == y).sum(1)


def _label_smoothing(g: Group) -> torch.Tensor:
    return torch.tensor([m.cfg.label_smoothing for m in g.members], device=g.device)


def train_epoch_fused(g: Group, epoch: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One pass over the training split for every member (1-based `epoch`: a member's last
    `clean_epochs` skip augmentation): (K,) losses, (K,) accuracies, seconds. With `cuda_graph`
    the steps go through g.graphs (FusedGraphs), else straight to _train_step."""
    g.base.train()
    t0 = time.perf_counter()
    fg = g.graphs
    if fg:
        loss_sum, correct = fg.loss_sum.zero_(), fg.correct.zero_()
    else:
        loss_sum, correct = torch.zeros(g.k, device=g.device), torch.zeros(g.k, device=g.device, dtype=torch.long)
        ls = _label_smoothing(g)
    clean = [is_clean_epoch(m.cfg, epoch) for m in g.members]
    for idx in _batches(g):
        if fg:
            fg.step(idx, clean)
        else:
            _train_step(g, idx, clean, ls, g.alive_mask(), None, loss_sum, correct)
        for m in g.members:
            if m.per_batch:
                m.sched.step()
    n = len(g.splits.train_y)
    if g.device.type == "cuda":
        torch.cuda.synchronize()
    if fg and fg.steps.error:  # the members' summary.json say what ran
        g.meta.update(cuda_graph=False, cuda_graph_error=fg.steps.error)
    return loss_sum / n, correct.double() / n, time.perf_counter() - t0


class FusedGraphs:
    """_train_step as a static-buffer function (graphs.py): the members' batch indices, float
    hyperparameters (rows of one tensor, one host-to-device copy per step) and alive flags
    (copied when one changes) live in tensors the recording reads; nesterov never changes. Full
    batches are replayed from a recording on CUDA (one per pattern of clean members), the
    epoch's last, shorter batch runs eagerly."""

    def __init__(self, g: Group):
        self.g = g
        dev = g.device
        self.idx = torch.zeros(g.k, g.cfgs[0].batch_size, dtype=torch.long, device=dev)
        h = step_hypers(g)  # its non-float entries (nesterov) are final already
        self.floats = [k for k, v in h.items() if v.dtype.is_floating_point]
        self.hbuf = torch.zeros(len(self.floats), g.k, device=dev)
        self.h = {**h, **dict(zip(self.floats, self.hbuf))}
        self.alive = torch.zeros(g.k, dtype=torch.bool, device=dev)
        self.alive_now = None  # the members' alive flags as last copied
        self.ls = _label_smoothing(g)
        self.loss_sum = torch.zeros(g.k, device=dev)
        self.correct = torch.zeros(g.k, device=dev, dtype=torch.long)
        self.steps = StepGraphs(dev, [m.dgen for m in g.members])

    def step(self, idx: list[torch.Tensor], clean: list[bool]) -> None:
        g = self.g
        g.step += 1
        h = step_hypers(g, "cpu")
        self.hbuf.copy_(torch.stack([h[k] for k in self.floats]))
        alive = [m.alive for m in g.members]
        if alive != self.alive_now:
            self.alive_now = alive
            self.alive.copy_(torch.tensor(alive))
        args = (clean, self.ls, self.alive, self.h, self.loss_sum, self.correct)
        # Recorded once the optimizer state exists (the group's first step makes it, eagerly),
        # for full batches only.
        if len(idx[0]) == self.idx.shape[1] and all(name in g.opt for name in g.params):
            self.idx.copy_(torch.stack(idx))
            self.steps(tuple(clean), lambda: _train_step(g, list(self.idx.unbind(0)), *args))
        else:
            _train_step(g, idx, *args)


@torch.no_grad()
def score_fused(g: Group) -> list[dict]:
    """Every member's validation and test logits, loss and accuracy (shared images, one vmap)."""
    g.base.eval()
    params, buffers = (g.params, g.buffers) if g.ema is None else \
        ({n: g.ema[n] for n in g.params}, {n: g.ema[n] for n in g.buffers})
    s = g.splits
    chunk = max(256, g.cfgs[0].eval_batch_size // g.k)

    def infer(x):
        outs = []
        for xb in x.split(chunk):
            outs.append(_forward(g, params, buffers, s.normalize(xb), shared_input=True).float())
        return torch.cat(outs, 1) if outs else torch.empty(g.k, 0, 10, device=x.device)

    val, test = infer(s.val_x), infer(s.test_x)
    out = []
    for k in range(g.k):
        vl, va = evaluate(val[k], s.val_y)
        tl, ta = evaluate(test[k], s.test_y)
        out.append({"val_logits": val[k], "test_logits": test[k], "val_loss": vl, "val_acc": va,
                    "test_loss": tl, "test_acc": ta})
    return out


@torch.no_grad()
def precise_bn_fused(g: Group) -> None:
    """train.precise_bn for every member at once, on the scored weights (the average with `ema`):
    the stacked BN buffers are reset, then the clean training images go through all members."""
    params, buffers = (g.params, g.buffers) if g.ema is None else \
        ({n: g.ema[n] for n in g.params}, {n: g.ema[n] for n in g.buffers})
    for n, t in buffers.items():
        if n.endswith("running_var"):
            t.fill_(1)
        elif n.endswith(("running_mean", "num_batches_tracked")):
            t.zero_()
    precise_bn(g.base, g.splits, lambda x: _forward(g, params, buffers, x, shared_input=True))
    g.base.train()


def member_state_dict(g: Group, k: int, scored: bool = True) -> dict:
    """Member k's weights as its own model's state_dict (loadable into create_model(name))."""
    src = g.ema if (scored and g.ema is not None) else {**g.params, **g.buffers}
    return {n: src[n][k].detach().clone() for n in g.members[k].keys}


def _write_member_final(g: Group, k: int, scores: dict | None) -> None:
    m = g.members[k]
    m.result = write_trial_files(m.writer, g.device, g.meta, m.history, m.status, scores, g.splits,
                                 lambda: member_state_dict(g, k))


@torch.no_grad()
def _retire(g: Group, k: int) -> None:
    """A diverged member: zero its slice everywhere so its NaNs cost nothing and touch nothing."""
    g.members[k].alive = False
    for t in [*g.params.values(), *g.buffers.values(), *(g.ema or {}).values()]:
        if t.dtype.is_floating_point:
            t[k] = 0
    for v in g.opt.values():
        for t in (v if isinstance(v, tuple) else (v,)):
            t[k] = 0


def save_group_state(g: Group, state_dir: Path | None, epoch: int) -> str | None:
    if state_dir is None:
        return None
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "state.pt"
    atomic_save(path, {
        "version": STATE_VERSION, "fused": True, "epoch": epoch, "step": g.step,
        "params": {n: t.detach() for n, t in g.params.items()}, "buffers": g.buffers,
        "opt": {n: (list(v) if isinstance(v, tuple) else v) for n, v in g.opt.items()}, "ema": g.ema,
        "rng_cpu": torch.get_rng_state(),
        "members": [{"config": m.cfg.to_dict(), "history": m.history, "status": m.status, "alive": m.alive,
                     "dgen": m.dgen.get_state(), "shadow": m.shadow.state_dict(),
                     "scheduler": m.sched.state_dict() if m.sched is not None else None} for m in g.members]})
    return str(path)


def load_group_state(g: Group, path) -> None:
    from .config import PLUMBING, with_defaults

    state = read_state(path, g.device)
    if not state.get("fused") or len(state.get("members", [])) != g.k:
        raise StateError(f"resume state {path} is not the state of this fused group")
    for m, s in zip(g.members, state["members"]):
        ours = {k: v for k, v in m.cfg.to_dict().items() if k not in PLUMBING}
        theirs = {k: v for k, v in with_defaults(s.get("config") or {}).items() if k in ours}
        if ours != theirs:
            raise StateError(f"resume state {path} belongs to another group of configs")
    try:
        with torch.no_grad():
            for n, t in g.params.items():
                t.copy_(state["params"][n])
            for n, t in g.buffers.items():
                t.copy_(state["buffers"][n])
            if g.ema is not None:
                for n, t in g.ema.items():
                    t.copy_(state["ema"][n])
        g.opt = {n: (tuple(v) if isinstance(v, list) else v) for n, v in state["opt"].items()}
        g.step = int(state["step"])
        torch.set_rng_state(state["rng_cpu"].cpu())
        for m, s in zip(g.members, state["members"]):
            m.history, m.status, m.alive = list(s["history"]), s["status"], bool(s["alive"])
            m.dgen.set_state(s["dgen"].cpu())
            m.shadow.load_state_dict(s["shadow"])
            if m.sched is not None:
                m.sched.load_state_dict(s["scheduler"])
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise StateError(f"resume state {path} does not fit this group ({str(e).splitlines()[0][:120]})") from None
    g.start_epoch = int(state["epoch"]) + 1


def train_fused(configs: list, on_epoch=None, resume_from: str | None = None, state_dir: str | None = None,
                arrays: dict | None = None, group_dir: str | None = None, strategy: str = "auto") -> list[dict]:
    """Train K configs of one architecture as one batched model; returns their results (as
    train.train would, in order). `on_epoch(metrics, state_path)` gets the group's epoch with
    its members' mean and best validation accuracy."""
    cfgs = [TrainConfig.from_dict(c) for c in configs]
    check_group(cfgs)
    with _threads_restored():
        return _train_fused(cfgs, on_epoch, resume_from, state_dir, arrays, group_dir, strategy)


def _train_fused(cfgs, on_epoch, resume_from, state_dir, arrays, group_dir, strategy) -> list[dict]:
    g = setup_group(cfgs, arrays, strategy)
    if resume_from:
        load_group_state(g, resume_from)
    for m in g.members:
        m.writer = Writer(m.cfg.out_dir, m.history)
        m.writer.save("config.json", {**m.cfg.to_dict(), "_meta": {**g.meta, "fused_group": group_dir and
                                                                  Path(group_dir).name}})
    state_dir = Path(state_dir) if state_dir else None
    epochs, scores = cfgs[0].epochs, None
    for epoch in range(g.start_epoch, epochs + 1):
        losses, accs, seconds = train_epoch_fused(g, epoch)
        for k, m in enumerate(g.members):
            if m.alive and not math.isfinite(float(losses[k])):
                m.status = f"diverged at epoch {epoch}"
                _write_member_final(g, k, None)
                _retire(g, k)
        if not any(m.alive for m in g.members):
            break
        if epoch == epochs and cfgs[0].precise_bn:  # a shared key (spec.FUSE_SHARED)
            precise_bn_fused(g)
        scores = score_fused(g)
        for k, m in enumerate(g.members):
            if not m.alive:
                continue
            lr = m.shadow.param_groups[0]["lr"]
            step_epoch_scheduler(m.cfg, m.sched, m.per_batch, scores[k]["val_loss"], scores[k]["val_acc"])
            row = epoch_metrics(epoch, float(losses[k]), float(accs[k]), seconds, scores[k], lr, g.meta["n_train"])
            m.history.append(row)
            m.writer.epoch(row)
            if epoch == epochs:
                _write_member_final(g, k, scores[k])
        state_path = save_group_state(g, state_dir, epoch)
        if on_epoch is not None:
            val = [m.history[-1]["val_acc"] for m in g.members if m.alive]
            on_epoch({"epoch": epoch, "val_acc": max(val), "mean_val_acc": sum(val) / len(val),
                      "members_alive": len(val), "seconds": round(seconds, 3),
                      "images_per_s": round(g.meta["n_train"] * g.k / seconds, 1)}, state_path)
    if any(m.result is None for m in g.members):  # resumed from a state saved after the last epoch
        scores = score_fused(g)
        for k, m in enumerate(g.members):
            if m.result is None:
                _write_member_final(g, k, scores[k] if m.status == "ok" else None)
    for m in g.members:
        m.writer.close()
    return [m.result for m in g.members]
