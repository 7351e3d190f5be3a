"""CUDA-graph steps (`cuda_graph`): the static-buffer step functions that a GPU records and
replays, run eagerly on this CPU (graphs.EAGER_STATIC_OFF_CUDA) against the ordinary trainer.

What a CPU cannot check is the recording itself (torch.cuda.graph, the generator registration,
replay); `bash benchmarks/gpu/run.sh graphs` checks that on a GPU. What it can check is what
the recording would hold: that the step reads its batch, lr and momentum from the static
tensors refreshed each step, that the SGD update on the optimizer's own buffers is SGD's, that
the short last batch, clean epochs, dropout, EMA, label smoothing and metrics come out as the
ordinary trainer's.

Tolerance: the fused step is the same arithmetic as the fused trainer's, so it must agree
exactly. The single-trial step updates weights with graphs.sgd_foreach_ (lr * d multiplied,
then subtracted) where torch.optim.SGD adds with alpha=-lr: the weights agree to a few ulps per
step, which training amplifies a little across ReLU and max-pool ties (as in test_fused).
"""
import copy

import pytest
import torch

from gridrun import graphs
from gridrun.config import ConfigError, TrainConfig
from gridrun.fused import train_fused
from gridrun.graphs import sgd_foreach_
from gridrun.models import create_model
from gridrun.train import train


@pytest.mark.parametrize("nesterov,wd", [(True, 5e-4), (False, 0.0)])
def test_sgd_foreach_is_torch_sgd_with_lr_and_momentum_read_from_tensors(nesterov, wd):
    torch.manual_seed(0)
    model = create_model("tinynet_7k")
    ours = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=wd)
    params = list(ours.parameters())
    bufs = [torch.zeros_like(p) for p in params]
    lr, mom = torch.zeros(()), torch.zeros(())
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    for step, (step_lr, step_mom) in enumerate([(0.1, 0.9), (0.05, 0.85), (0.2, 0.95), (0.01, 0.9)]):
        for g in opt.param_groups:
            g["lr"], g["momentum"] = step_lr, step_mom
        lr.fill_(step_lr)
        mom.fill_(step_mom)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        grads = torch.autograd.grad(torch.nn.functional.cross_entropy(ours(x), y), params)
        sgd_foreach_(params, grads, bufs, lr, mom, wd, nesterov)
        for a, b in zip(model.parameters(), params):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=f"step {step}")
    for p, buf in zip(model.parameters(), bufs):
        torch.testing.assert_close(buf, opt.state[p]["momentum_buffer"], rtol=1e-5, atol=1e-6)


def _trial(synth_dir, **kw):
    # 330 training images at batch 40: eight full batches and a short one of 10
    return dict(dict(model="two_maxpool", dropout=0.1, epochs=2, batch_size=40, val_size=200, subset=330,
                     data_dir=str(synth_dir), threads=2, lr=0.05, scheduler="onecycle", nesterov=True,
                     weight_decay=5e-4, augment="rotate+affine+jitter", ema=0.99, label_smoothing=0.1,
                     clean_epochs=1, precise_bn=True, eval_batch_size=512), **kw)


def test_cuda_graph_is_ignored_off_cuda(synth_dir):
    plain = train(_trial(synth_dir, epochs=1))
    asked = train(_trial(synth_dir, epochs=1, cuda_graph=True))
    assert asked["cuda_graph"] is False and plain["cuda_graph"] is False
    assert asked["history"][0]["train_loss"] == plain["history"][0]["train_loss"]


@pytest.mark.filterwarnings("error:Detected call of `lr_scheduler.step\\(\\)` before")
def test_the_static_step_trains_like_the_ordinary_trainer(synth_dir, tmp_path, monkeypatch):
    plain = train(_trial(synth_dir, out_dir=str(tmp_path / "plain")))
    monkeypatch.setattr(graphs, "EAGER_STATIC_OFF_CUDA", True)
    static = train(_trial(synth_dir, cuda_graph=True, out_dir=str(tmp_path / "static")))
    assert static["cuda_graph"] is True and static["status"] == plain["status"] == "ok"
    for hs, hp in zip(static["history"], plain["history"], strict=True):
        assert hs["train_loss"] == pytest.approx(hp["train_loss"], rel=1e-3)
        assert hs["lr"] == pytest.approx(hp["lr"], rel=1e-9)
        for k in ("train_acc", "val_acc", "test_acc"):
            assert abs(hs[k] - hp[k]) <= 0.02, (k, hs[k], hp[k])
    ws = torch.load(tmp_path / "static" / "model.pt", weights_only=True)
    wp = torch.load(tmp_path / "plain" / "model.pt", weights_only=True)
    num = sum(float(((ws[k] - wp[k]) ** 2).sum()) for k in wp if wp[k].is_floating_point())
    den = sum(float((wp[k] ** 2).sum()) for k in wp if wp[k].is_floating_point())
    assert (num / den) ** 0.5 < 1e-2
    # the optimizer state it saved is SGD's own: an ordinary trainer can resume from it
    state = torch.load(tmp_path / "static" / "state.pt", weights_only=True)
    assert all("momentum_buffer" in s for s in state["optimizer"]["state"].values())


@pytest.mark.filterwarnings("error:Detected call of `lr_scheduler.step\\(\\)` before")
@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_the_static_fused_step_is_the_fused_step(synth_dir, tmp_path, monkeypatch, opt):
    lr = 0.05 if opt == "sgd" else 0.003
    cfgs = [_trial(synth_dir, optimizer=opt, seed=0, lr=lr),
            _trial(synth_dir, optimizer=opt, seed=1, lr=lr / 2, scheduler="step", step_size=1, dropout=0.0,
                   augment="none", clean_epochs=0, label_smoothing=0.0)]
    plain = train_fused([dict(c, out_dir=str(tmp_path / "p" / str(i))) for i, c in enumerate(cfgs)])
    monkeypatch.setattr(graphs, "EAGER_STATIC_OFF_CUDA", True)
    static = train_fused([dict(c, cuda_graph=True, out_dir=str(tmp_path / "s" / str(i))) for i, c in enumerate(cfgs)])
    for i, (s, p) in enumerate(zip(static, plain)):
        assert s["cuda_graph"] is True and s["status"] == p["status"] == "ok"
        untimed = [[{k: v for k, v in row.items() if k not in ("seconds", "images_per_s")} for row in r["history"]]
                   for r in (s, p)]
        assert untimed[0] == untimed[1], i
        ws = torch.load(tmp_path / "s" / str(i) / "model.pt", weights_only=True)
        wp = torch.load(tmp_path / "p" / str(i) / "model.pt", weights_only=True)
        assert all(torch.equal(ws[k], wp[k]) for k in wp), i


def test_a_single_adam_trial_says_it_ran_without_graphs(synth_dir, monkeypatch):
    monkeypatch.setattr(graphs, "EAGER_STATIC_OFF_CUDA", True)
    res = train(_trial(synth_dir, epochs=1, optimizer="adam", lr=0.003, cuda_graph=True))
    assert res["cuda_graph"] is False and "SGD steps only" in res["cuda_graph_error"]


def test_cuda_graph_with_compile_is_one_clear_error():
    with pytest.raises(ConfigError, match="cuda_graph and compile cannot both be on"):
        TrainConfig(cuda_graph=True, compile=True)


class _Stop(Exception):
    pass


def _stop_after_1(m, state):
    if m["epoch"] == 1:
        raise _Stop


@pytest.mark.parametrize("fused", [False, True])
def test_an_interrupted_static_run_resumes_like_an_uninterrupted_one(synth_dir, tmp_path, monkeypatch, fused):
    """The static steps read the optimizer state and generators that resuming restores (the
    momentum buffers a resume loads replace the ones a recording would have read): one epoch,
    stop, resume, one epoch equals two straight, bit for bit."""
    monkeypatch.setattr(graphs, "EAGER_STATIC_OFF_CUDA", True)
    cfg = _trial(synth_dir, cuda_graph=True, threads=1)
    run = (lambda out, **kw: train_fused([dict(cfg, out_dir=str(out))], **kw)[0]) if fused else \
        (lambda out, **kw: train(dict(cfg, out_dir=str(out)), **kw))
    straight = run(tmp_path / "straight", state_dir=str(tmp_path / "s1"))
    with pytest.raises(_Stop):
        run(tmp_path / "part", on_epoch=_stop_after_1, state_dir=str(tmp_path / "s2"))
    resumed = run(tmp_path / "part", resume_from=str(tmp_path / "s2" / "state.pt"), state_dir=str(tmp_path / "s2"))
    assert resumed["cuda_graph"] is True and [h["epoch"] for h in resumed["history"]] == [1, 2]
    for k in ("train_loss", "train_acc", "val_acc", "test_acc", "lr"):
        assert [h[k] for h in resumed["history"]] == [h[k] for h in straight["history"]], k
    a = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "part" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_diverging_member_of_a_static_fused_group_is_retired_as_in_the_fused_trainer(synth_dir, tmp_path,
                                                                                       monkeypatch):
    base = dict(model="tinynet_7k", epochs=2, batch_size=40, val_size=200, subset=330, data_dir=str(synth_dir),
                threads=2, optimizer="sgd", scheduler="none")
    pair = [dict(base, seed=3, lr=0.01), dict(base, seed=4, lr=1e12)]
    plain = train_fused([dict(c, out_dir=str(tmp_path / "p" / str(i))) for i, c in enumerate(pair)])
    monkeypatch.setattr(graphs, "EAGER_STATIC_OFF_CUDA", True)
    static = train_fused([dict(c, cuda_graph=True, out_dir=str(tmp_path / "s" / str(i))) for i, c in enumerate(pair)])
    assert static[1]["status"] == plain[1]["status"] and static[1]["status"].startswith("diverged at epoch")
    assert static[0]["status"] == "ok"
    assert [h["train_loss"] for h in static[0]["history"]] == [h["train_loss"] for h in plain[0]["history"]]
