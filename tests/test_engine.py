"""The engine's parts against their references: the one optimizer against torch.optim, each
strategy against the members computed one by one, `auto`, and the fuse_strategy key's place.

Tolerances: the optimizer follows torch.optim's formulas with the hyperparameters read from a
tensor (a separate multiply where torch fuses an `alpha`): rtol 1e-5, atol 1e-6 after four
steps. A strategy's logits, gradients and BatchNorm statistics agree with the member's own
model to rtol 1e-4, atol 1e-5 (one pass: only the order of a conv's sums differs).
"""
import json

import pytest
import torch

from gridrun.config import ConfigError, TrainConfig
from gridrun.engine import strategies
from gridrun.train import train
from gridrun.engine.optim import Optimizer, host_values
from gridrun.hooks import Hooks
from gridrun.identity import fuse_key, trial_id
from gridrun.models import create_model


@pytest.mark.parametrize("kind,nesterov,wd", [("sgd", [True, True], 5e-4), ("sgd", [False, False], 0.0),
                                              ("sgd", [True, False], 1e-3), ("adam", [False, False], 1e-3),
                                              ("adamw", [False, False], 1e-2)])
def test_the_optimizer_is_torch_optim_member_by_member(kind, nesterov, wd):
    """Two members with their own hyperparameters, changed every step as a scheduler does."""
    torch.manual_seed(0)
    models = [create_model("tinynet_7k") for _ in range(2)]
    stacked = [torch.stack([p.detach().clone() for p in ps]) for ps in zip(*(m.parameters() for m in models))]
    torch_cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[kind]
    extra = lambda k: dict(momentum=0.9, nesterov=nesterov[k]) if kind == "sgd" else {}  # noqa: E731
    refs = [torch_cls(m.parameters(), lr=0.1, weight_decay=wd * (k + 1), **extra(k)) for k, m in enumerate(models)]
    opt = Optimizer(kind, stacked, nesterov)
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    for step, (lr, mom) in enumerate([(0.1, 0.9), (0.05, 0.85), (0.2, 0.95), (0.01, 0.9)]):
        grads = []
        for k, (m, ref) in enumerate(zip(models, refs)):
            for g in ref.param_groups:
                g["lr"] = lr / (k + 1)
                g["momentum" if kind == "sgd" else "betas"] = mom if kind == "sgd" else (mom, 0.999)
            ref.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            grads.append([p.grad.clone() for p in m.parameters()])
        opt.refresh([r.param_groups[0] for r in refs], [True, True])
        opt.step([torch.stack(gs) for gs in zip(*grads)])
        for ref in refs:
            ref.step()
        for k, m in enumerate(models):
            for a, b in zip(m.parameters(), stacked):
                torch.testing.assert_close(b[k], a, rtol=1e-5, atol=1e-6, msg=f"step {step} member {k}")


def test_a_retired_member_gets_no_update():
    p = [torch.ones(2, 3)]
    opt = Optimizer("adam", p, [False, False])
    groups = [{"lr": 0.1, "weight_decay": 0.0, "betas": (0.9, 0.999)}] * 2
    assert host_values("adam", groups, [True, False], 1)[-2] == [pytest.approx(1.0), 0.0]  # step sizes
    opt.refresh(groups, [True, False])
    opt.step([torch.ones(2, 3)])
    assert torch.equal(p[0][1], torch.ones(3)) and not torch.equal(p[0][0], torch.ones(3))


def _members(name: str, k: int, **kw) -> list:
    out = []
    for seed in range(k):
        torch.manual_seed(seed)
        m = create_model(name, **kw)
        from gridrun.models._layers import seed_dropout

        seed_dropout(m, seed)
        out.append(m)
    return out


@pytest.mark.parametrize("name,kw,strategy", [(n, kw, s) for n, kw in (("tinynet_7k", {}), ("two_maxpool", {"dropout": 0.3}))
                                               for s in ("loop", "vmap", "blockdiag")] +
                         [pytest.param("resnet20", {}, "blockdiag", marks=pytest.mark.slow)])  # residual adds, dense
def test_each_strategy_computes_each_member_as_alone(name, kw, strategy):
    """Logits, weight gradients, BatchNorm statistics and dropout masks of K=3 members from
    their own batches, against each member's own model: a strategy that mixed members (a
    mask that let off-diagonal blocks through, a slice of the wrong member) would fail here."""
    k = 3
    alone = _members(name, k, **kw)
    s = strategies.make(strategy, _members(name, k, **kw))
    x, y = torch.randn(k, 8, 1, 28, 28), torch.randint(0, 10, (k, 8))
    for _ in range(2):  # twice: the dropout step counters move on as they do alone
        out = s.forward(x)
        loss = torch.nn.functional.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="sum")
        grads = dict(zip(s.params, torch.autograd.grad(loss, s.leaves)))
        for i, m in enumerate(alone):
            ref = m(x[i])
            torch.testing.assert_close(out[i], ref, rtol=1e-4, atol=1e-5)
            ref_grads = torch.autograd.grad(torch.nn.functional.cross_entropy(ref, y[i], reduction="sum"),
                                            list(m.parameters()))
            for (n, _), g in zip(m.named_parameters(), ref_grads):
                torch.testing.assert_close(grads[n][i], g, rtol=1e-4, atol=1e-5, msg=f"{n} of member {i}")
            for n, b in m.named_buffers():
                torch.testing.assert_close(s.buffers[n][i], b, rtol=1e-4, atol=1e-5, msg=f"{n} of member {i}")
    shared = torch.randn(5, 1, 28, 28)
    s.module.eval()
    with torch.no_grad():
        out = s.forward(shared, shared=True)
    for i, m in enumerate(alone):
        torch.testing.assert_close(out[i], m.eval()(shared), rtol=1e-4, atol=1e-5)


def test_blockdiag_refuses_a_model_it_cannot_compute_with_one_line():
    class Cat(torch.nn.Module):  # a channel concatenation interleaves the members' channels
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(1, 2, 3), torch.nn.Conv2d(1, 2, 3)
            self.fc = torch.nn.Linear(4 * 26 * 26, 10)

        def forward(self, x):
            return self.fc(torch.cat([self.a(x), self.b(x)], 1).flatten(1))

    models = [Cat() for _ in range(2)]
    s = strategies.make("blockdiag", models)
    with pytest.raises(ConfigError, match="blockdiag does not compute this model's members apart.*use vmap or loop"):
        strategies.check_same(s, strategies.make("loop", models), torch.randn(4, 1, 28, 28))


def _tiny(synth_dir, **kw):
    return dict(dict(model="tinynet_7k", epochs=1, batch_size=40, val_size=100, subset=200, data_dir=str(synth_dir),
                     threads=2, lr=0.05, augment="none"), **kw)


@pytest.mark.slow  # three short trainings: 20-160 s on the busy 2-core CPU
def test_auto_takes_plain_for_one_loop_on_a_cpu_and_the_fastest_when_timed(synth_dir, tmp_path):
    one = train(_tiny(synth_dir))
    two = train([_tiny(synth_dir, seed=s) for s in (0, 1)])
    assert one["fuse_strategy"] == "plain" and "fused" not in one
    assert {r["fuse_strategy"] for r in two} == {"loop"} and "fuse_timings_s" not in two[0]
    timed = train([_tiny(synth_dir, seed=s, out_dir=str(tmp_path / str(s))) for s in (0, 1)], hooks=Hooks(timed=True))
    meta = json.loads((tmp_path / "0" / "config.json").read_text())["_meta"]
    times = meta["fuse_timings_s"]
    assert set(times) == {"loop", "vmap", "blockdiag"} and all(t > 0 for t in times.values())
    assert meta["fuse_strategy"] == timed[0]["fuse_strategy"] == min(times, key=times.get)


def test_fuse_strategy_is_plumbing_shared_by_a_group():
    a, b = TrainConfig(fuse_strategy="vmap").to_dict(), TrainConfig(fuse_strategy="blockdiag").to_dict()
    assert trial_id(a) == trial_id(b) and fuse_key(a) != fuse_key(b)
    with pytest.raises(ConfigError, match="fuse_strategy='grouped'.*auto, vmap, loop, blockdiag"):
        TrainConfig(fuse_strategy="grouped")


def _torch_schedule(cfg: TrainConfig, per_epoch: int):
    """torch's optimizer + scheduler for cfg, as the engine ran them before schedule.py (the reference)."""
    lrs, dummy = torch.optim.lr_scheduler, [torch.zeros(1, requires_grad=True)]
    opt = (torch.optim.SGD(dummy, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
           if cfg.optimizer == "sgd" else torch.optim.Adam(dummy, lr=cfg.lr, weight_decay=cfg.weight_decay))
    sched = {"step": lambda: lrs.StepLR(opt, cfg.step_size, cfg.gamma),
             "plateau": lambda: lrs.ReduceLROnPlateau(opt, mode="max" if cfg.plateau_metric == "val_acc" else "min",
                                                      factor=cfg.gamma, patience=cfg.patience),
             "onecycle": lambda: lrs.OneCycleLR(opt, max_lr=cfg.lr, epochs=cfg.epochs, steps_per_epoch=per_epoch,
                                                pct_start=cfg.pct_start),
             "cosine": lambda: lrs.CosineAnnealingLR(opt, T_max=cfg.epochs * per_epoch),
             "none": lambda: None}[cfg.scheduler]()
    opt.step()
    return opt, sched


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("scheduler,metric", [("none", "val_loss"), ("step", "val_loss"), ("plateau", "val_loss"),
                                              ("plateau", "val_acc"), ("onecycle", "val_loss"), ("cosine", "val_loss")])
def test_each_schedule_fills_the_rows_torch_s_scheduler_would_to_the_last_bit(optimizer, scheduler, metric):
    """Every step's lr, momentum and betas of 9 epochs of 7 steps against torch's scheduler
    stepped as the engine steps it (per batch, or per epoch with the validation numbers)."""
    from gridrun.engine.schedule import Plateau, hyperparameters

    cfg = TrainConfig(optimizer=optimizer, scheduler=scheduler, plateau_metric=metric, epochs=9, step_size=2,
                      gamma=0.5, patience=1, lr=0.3)
    per_epoch, t = 7, 0
    opt, sched = _torch_schedule(cfg, per_epoch)
    plateau = Plateau.of(cfg) if scheduler == "plateau" else None
    val = [(2.0, 0.1), (1.5, 0.2), (1.6, 0.2), (1.7, 0.19), (1.1, 0.5), (1.1, 0.5), (1.2, 0.4), (0.9, 0.6), (1, .6)]
    for epoch in range(cfg.epochs):
        for _ in range(per_epoch):
            ours, theirs = hyperparameters(cfg, t, epoch, per_epoch, plateau), opt.param_groups[0]
            assert ours["lr"] == theirs["lr"], (epoch, t)
            assert (ours["momentum"] if optimizer == "sgd" else ours["betas"]) == theirs.get(
                "momentum" if optimizer == "sgd" else "betas"), (epoch, t)
            t += 1
            if scheduler in ("onecycle", "cosine"):
                sched.step()
        if scheduler == "plateau":
            sched.step(val[epoch][1] if metric == "val_acc" else val[epoch][0])
            plateau.step(cfg, *val[epoch])
        elif scheduler == "step":
            sched.step()
    assert hyperparameters(cfg, t, cfg.epochs, per_epoch, plateau)["lr"] == opt.param_groups[0]["lr"]


def test_each_member_is_clipped_by_its_own_norm_as_clip_grad_norm_clips_it_alone():
    """Three members' gradients (one of them 1e6 times larger): each member's clipped gradient
    is what torch.nn.utils.clip_grad_norm_ makes of that member's gradient alone."""
    from gridrun.engine.step import clip_per_member

    torch.manual_seed(0)
    grads = [torch.randn(3, 4, 5), torch.randn(3, 7)]
    grads = [g * torch.tensor([1.0, 1e6, 0.01]).view(-1, *[1] * (g.dim() - 1)) for g in grads]
    max_norm = torch.tensor([0.5, 0.5, float("inf")])
    ours = clip_per_member(grads, max_norm)
    for k in range(3):
        alone = [torch.zeros_like(g[k], requires_grad=True) for g in grads]
        for p, g in zip(alone, grads):
            p.grad = g[k].clone()
        torch.nn.utils.clip_grad_norm_(alone, float(max_norm[k]))
        for a, p in zip(ours, alone):
            torch.testing.assert_close(a[k], p.grad, rtol=1e-6, atol=0)


@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
def test_a_single_trials_forward_and_backward_are_its_modules_own_ops(fmt):
    """plain (K = 1) dispatches the ops of the member's own module, forward and backward, with the
    batch and the logits taken out of and into the (1, ...) layout alike on both sides: reading every
    tensor through [0] of the stacked weights added a select per tensor and a select_backward (an
    allocation, a fill and a copy) per parameter, 213 ops a step against 140."""
    import collections
    import copy

    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    mem = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
    model = create_model("tinynet_7k").to(memory_format=mem)
    x, y = torch.randn(16, 1, 28, 28).contiguous(memory_format=mem), torch.randint(0, 10, (16,))
    plain = strategies.make("plain", [copy.deepcopy(model)], fmt=mem)
    with Count() as ours:
        torch.autograd.grad(torch.nn.functional.cross_entropy(plain.forward(x[None])[0], y), plain.leaves)
    with Count() as module:  # the same (1, B, ...) in and out
        torch.autograd.grad(torch.nn.functional.cross_entropy(model(x[None][0]).unsqueeze(0)[0], y),
                            list(model.parameters()))
    assert ours.ops == module.ops, (ours.ops - module.ops, module.ops - ours.ops)


def test_a_scalar_parameter_is_clipped_too():
    """A user's net with a learnable scalar (a temperature): stacked to (K,), its gradient counts
    in its member's norm (flatten(1) raised IndexError on it, failing every step)."""
    from gridrun.engine.step import clip_per_member

    grads = [torch.tensor([[3.0], [0.0]]), torch.tensor([4.0, 0.5])]   # member 0's norm is 5, member 1's 0.5
    out = clip_per_member(grads, torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(out[1], torch.tensor([0.8, 0.5]), rtol=1e-5, atol=0)
    torch.testing.assert_close(out[0], torch.tensor([[0.6], [0.0]]), rtol=1e-5, atol=0)


def test_the_scored_loss_is_torchs_cross_entropy_to_the_last_bit():
    """The validation and test loss an epoch records is F.cross_entropy's own number (the loss
    written once added up the mean in another order: the last bits of val_loss differed from
    older trials' metrics.csv for 14 of 20 random splits)."""
    from gridrun.engine.run import evaluate

    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        logits, y = torch.randn(5000, 10, generator=g) * 3, torch.randint(0, 10, (5000,), generator=g)
        assert evaluate(logits, y)[0].item() == torch.nn.functional.cross_entropy(logits, y).item(), seed


def test_grad_clip_is_left_out_of_trial_ids_while_off():
    from gridrun.identity import canonical

    base = TrainConfig().to_dict()
    assert "grad_clip" not in canonical(base) and trial_id(base) == trial_id(dict(base, grad_clip=None))
    assert trial_id(dict(base, grad_clip=1.0)) != trial_id(base)
