"""CUDA-graph steps (`cuda_graph`): the engine's one step function over static buffers,
recorded and replayed on CUDA, here recorded by a CPU stand-in that records as a CUDA graph
does (tests/standin.py: make_fx traces the step once with its tensors by reference and every
Python value baked, and replays the trace), passed to the engine as a hook. So a step that read
anything but its static buffers (batch indices, hyperparameter rows, alive flags) trains on
stale values when replayed and differs from the eager run: the mutation test below shows it.

What a CPU cannot check is CUDA's recording itself (torch.cuda.graph, the generator
registration, replay); `bash tools/gpu/run.sh graphs` checks that on a GPU.

Tolerance: none. Eager and replayed runs execute the same ops on the same buffers, so they
agree bit for bit, single trials (now Adam too) and fused groups alike.
"""
import pytest
import torch

from gridrun.config import ConfigError, TrainConfig
from gridrun.engine.optim import Optimizer
from gridrun.hooks import Hooks
from gridrun.train import Folders, train
from conftest import Stop, stop_after
from standin import keep_closure, trace

RECORDED = Hooks(recorder=trace)  # the stand-in recording of cuda_graph on a CPU


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


def _same_runs(a: list, b: list, dirs_a: list, dirs_b: list) -> None:
    """Histories (less the timings) and saved weights bit-identical."""
    for i, (ra, rb) in enumerate(zip(a, b, strict=True)):
        untimed = [[{k: v for k, v in row.items() if k not in ("seconds", "images_per_s")} for row in r["history"]]
                   for r in (ra, rb)]
        assert untimed[0] == untimed[1], i
        wa = torch.load(f"{dirs_a[i]}/model.pt", weights_only=True)
        wb = torch.load(f"{dirs_b[i]}/model.pt", weights_only=True)
        assert all(torch.equal(wa[k], wb[k]) for k in wa), i


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_a_replayed_single_trial_trains_like_the_eager_one(synth_dir, tmp_path, opt):
    """A single trial records its whole step whatever its optimizer (Adam too, issue 29)."""
    cfg = _trial(synth_dir, optimizer=opt, lr=0.05 if opt == "sgd" else 0.003)
    plain = train([dict(cfg, out_dir=str(tmp_path / "plain"))])
    static = train([dict(cfg, cuda_graph=True, out_dir=str(tmp_path / "static"))], hooks=RECORDED)
    assert static[0]["cuda_graph"] is True and plain[0]["cuda_graph"] is False
    assert static[0]["status"] == plain[0]["status"] == "ok" and static[0]["fuse_strategy"] == "plain"
    _same_runs(static, plain, [tmp_path / "static"], [tmp_path / "plain"])


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_the_static_fused_step_is_the_fused_step(synth_dir, tmp_path, opt):
    lr = 0.05 if opt == "sgd" else 0.003
    cfgs = [_trial(synth_dir, optimizer=opt, seed=0, lr=lr),
            _trial(synth_dir, optimizer=opt, seed=1, lr=lr / 2, scheduler="step", step_size=1, dropout=0.0,
                   augment="none", clean_epochs=0, label_smoothing=0.0)]
    plain = train([dict(c, out_dir=str(tmp_path / "p" / str(i))) for i, c in enumerate(cfgs)])
    static = train([dict(c, cuda_graph=True, out_dir=str(tmp_path / "s" / str(i))) for i, c in enumerate(cfgs)],
                 hooks=RECORDED)
    assert all(s["cuda_graph"] is True and s["status"] == p["status"] == "ok" for s, p in zip(static, plain))
    _same_runs(static, plain, [tmp_path / "s" / str(i) for i in range(2)], [tmp_path / "p" / str(i) for i in range(2)])


def test_cuda_graph_with_compile_is_one_clear_error():
    with pytest.raises(ConfigError, match="cuda_graph and compile cannot both be on"):
        TrainConfig(cuda_graph=True, compile=True)


@pytest.mark.parametrize("fused", [False, True])
def test_an_interrupted_static_run_resumes_like_an_uninterrupted_one(synth_dir, tmp_path, fused):
    """The static steps read the optimizer state and generators that resuming restores (the
    momentum buffers a resume loads replace the ones a recording would have read): one epoch,
    stop, resume, one epoch equals two straight, bit for bit."""
    cfg = _trial(synth_dir, cuda_graph=True, threads=1)
    go = (lambda out, state, on_epoch=None, **kw: train([dict(cfg, out_dir=str(out))], Folders(
        str(state), on_epoch, str(tmp_path / "group") if fused else None), hooks=RECORDED, **kw)[0])
    straight = go(tmp_path / "straight", tmp_path / "s1")
    with pytest.raises(Stop):
        go(tmp_path / "part", tmp_path / "s2", stop_after(1))
    resumed = go(tmp_path / "part", tmp_path / "s2", resume_from=str(tmp_path / "s2" / "state.pt"))
    assert resumed["cuda_graph"] is True and [h["epoch"] for h in resumed["history"]] == [1, 2]
    for k in ("train_loss", "train_acc", "val_acc", "test_acc", "lr"):
        assert [h[k] for h in resumed["history"]] == [h[k] for h in straight["history"]], k
    a = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "part" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_diverging_member_of_a_static_fused_group_is_retired_as_in_the_fused_trainer(synth_dir, tmp_path):
    base = dict(model="tinynet_7k", epochs=2, batch_size=40, val_size=200, subset=330, data_dir=str(synth_dir),
                threads=2, optimizer="sgd", scheduler="none")
    pair = [dict(base, seed=3, lr=0.01), dict(base, seed=4, lr=1e12)]
    plain = train([dict(c, out_dir=str(tmp_path / "p" / str(i))) for i, c in enumerate(pair)])
    static = train([dict(c, cuda_graph=True, out_dir=str(tmp_path / "s" / str(i))) for i, c in enumerate(pair)],
                 hooks=RECORDED)
    assert static[1]["status"] == plain[1]["status"] and static[1]["status"].startswith("diverged at epoch")
    assert static[0]["status"] == "ok"
    assert [h["train_loss"] for h in static[0]["history"]] == [h["train_loss"] for h in plain[0]["history"]]


def _sgd_reading_a_python_lr(self, grads) -> None:
    """The mutant: SGD without momentum whose learning rate is the host's Python float (the
    row `refresh` last copied), as a step that forgot its static buffers would read it."""
    torch._foreach_sub_(self.params, torch._foreach_mul(grads, self._last[0][0]))


def test_the_stand_in_bakes_a_python_learning_rate_as_a_cuda_graph_would(synth_dir, tmp_path, monkeypatch):
    """The mutation test: with the mutant step (onecycle moves its Python lr every batch) the
    recorded run replays the lr of the step it traced, so it differs from the eager run; the old
    stand-in, which kept the step's closure and called it again, re-read the lr and could not
    tell the two apart."""
    monkeypatch.setattr(Optimizer, "_sgd", _sgd_reading_a_python_lr)
    cfg = dict(model="tinynet_7k", epochs=1, batch_size=40, val_size=200, subset=330, data_dir=str(synth_dir),
               threads=2, optimizer="sgd", momentum=0.0, nesterov=False, lr=0.05, scheduler="onecycle",
               augment="none")
    def first_epoch(name, recorder=None):
        hooks = Hooks(recorder=recorder)
        out = train([dict(cfg, cuda_graph=recorder is not None, out_dir=str(tmp_path / name))], hooks=hooks)
        return out[0]["history"][0]["train_loss"]

    eager = first_epoch("eager")
    assert first_epoch("traced", trace) != eager, "the stand-in read the Python lr anew at every replay"
    assert first_epoch("kept", keep_closure) == eager  # the old stand-in: the mutant passed it
