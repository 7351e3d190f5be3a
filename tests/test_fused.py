"""Fused trials: K configs of one architecture as one group of the engine, computed by each
strategy (fuse_strategy: loop, vmap, blockdiag), against the same configs trained one by one
(each a group of one, the plain strategy).

Tolerance, and why it is not exact: vmap runs each conv as one batched (grouped) conv and
blockdiag as one dense conv over K*C channels, whose sums are ordered differently from K
separate convs; after one step the weights agree to ~1e-7 relative. Training amplifies such rounding
differences where a trajectory crosses a ReLU or max-pool tie, so after two short epochs a
member can drift to ~3e-3 relative. The test allows 2e-2 relative L2 distance of the final
weights, 1e-3 relative train loss and 2% accuracy per epoch (4 of 200 images).
"""
import json

import numpy as np
import pytest
import torch

from gridrun.models import create_model
from gridrun.train import Folders, train
from conftest import Stop, stop_after


def _configs(synth_dir, opt):
    base = dict(model="two_maxpool", epochs=2, batch_size=40, val_size=200, subset=320, data_dir=str(synth_dir),
                threads=2, optimizer=opt, eval_batch_size=512)
    lr = 0.05 if opt == "sgd" else 0.003
    return [dict(base, seed=0, lr=lr, scheduler="onecycle", dropout=0.1, augment="rotate+jitter",
                 nesterov=opt == "sgd", weight_decay=5e-4, clean_epochs=1),  # epoch 2 unaugmented
            dict(base, seed=1, lr=lr / 2, scheduler="step", step_size=1, gamma=0.5, dropout=0.0, augment="none"),
            dict(base, seed=2, lr=lr, scheduler="onecycle", dropout=0.05, augment="affine", label_smoothing=0.1)]


def _rel_l2(a: dict, b: dict) -> float:
    keys = [k for k in a if a[k].is_floating_point()]
    num = sum(float(((a[k] - b[k]) ** 2).sum()) for k in keys) ** 0.5
    return num / sum(float((b[k] ** 2).sum()) for k in keys) ** 0.5


@pytest.mark.parametrize("opt,strategy", [("sgd", "vmap"), ("adam", "vmap"), ("sgd", "loop"), ("sgd", "blockdiag"),
                                          ("adamw", "blockdiag")])
def test_three_fused_members_train_like_three_separate_trials(synth_dir, tmp_path, opt, strategy):
    cfgs = _configs(synth_dir, opt)
    fused = train([dict(c, fuse_strategy=strategy, out_dir=str(tmp_path / "f" / str(i)))
                         for i, c in enumerate(cfgs)])
    assert all(f["fuse_strategy"] == strategy for f in fused)
    alone = [train(dict(c, out_dir=str(tmp_path / "a" / str(i)))) for i, c in enumerate(cfgs)]
    for i, (f, a) in enumerate(zip(fused, alone)):
        assert f["status"] == a["status"] == "ok" and len(f["history"]) == len(a["history"]) == 2
        for hf, ha in zip(f["history"], a["history"]):
            assert hf["train_loss"] == pytest.approx(ha["train_loss"], rel=1e-3), (i, hf, ha)
            assert hf["lr"] == pytest.approx(ha["lr"], rel=1e-9)
            for k in ("train_acc", "val_acc", "test_acc"):
                assert abs(hf[k] - ha[k]) <= 0.02, (i, k, hf[k], ha[k])
        wf = torch.load(tmp_path / "f" / str(i) / "model.pt", weights_only=True)
        wa = torch.load(tmp_path / "a" / str(i) / "model.pt", weights_only=True)
        assert wf.keys() == wa.keys() and _rel_l2(wf, wa) < 2e-2
        create_model("two_maxpool", dropout=cfgs[i]["dropout"]).load_state_dict(wf)  # an ordinary model.pt
        files = sorted(p.name for p in (tmp_path / "f" / str(i)).iterdir())
        assert {"config.json", "metrics.csv", "summary.json", "logits_test.npy", "labels_test.npy"} <= set(files)


@pytest.mark.parametrize("strategy", ["loop", "vmap", "blockdiag"])
def test_members_are_independent_and_a_diverging_member_does_not_touch_the_others(synth_dir, tmp_path, strategy):
    base = dict(model="tinynet_7k", epochs=2, batch_size=40, val_size=200, subset=400, data_dir=str(synth_dir),
                threads=2, optimizer="sgd", scheduler="none", fuse_strategy=strategy)
    ok = dict(base, seed=3, lr=0.01)
    pair = train([dict(ok, out_dir=str(tmp_path / "ok")), dict(base, seed=4, lr=1e12, out_dir=str(tmp_path / "nan"))])
    solo = train([dict(ok, fuse_strategy="auto", out_dir=str(tmp_path / "solo"))])  # a group of one: plain
    assert pair[1]["status"].startswith("diverged at epoch") and pair[0]["status"] == "ok"
    assert json.loads((tmp_path / "nan" / "summary.json").read_text())["status"] == pair[1]["status"]
    assert [h["train_loss"] for h in pair[0]["history"]] == pytest.approx([h["train_loss"] for h in solo[0]["history"]],
                                                                           rel=1e-5)
    assert np.isfinite(np.load(tmp_path / "ok" / "logits_test.npy")).all()


def test_an_interrupted_group_resumes_like_an_uninterrupted_one(synth_dir, tmp_path):
    cfgs = [dict(c, epochs=3, fuse_strategy="vmap") for c in _configs(synth_dir, "adam")]
    straight = train([dict(c, out_dir=str(tmp_path / "s" / str(i))) for i, c in enumerate(cfgs)])

    out = [dict(c, out_dir=str(tmp_path / "r" / str(i))) for i, c in enumerate(cfgs)]
    with pytest.raises(Stop):
        train(out, Folders(str(tmp_path / "state"), stop_after(2)))
    resumed = train(out, Folders(str(tmp_path / "state")), resume_from=str(tmp_path / "state" / "state.pt"))
    for s, r in zip(straight, resumed):
        assert [h["epoch"] for h in r["history"]] == [1, 2, 3]
        for k in ("train_loss", "val_acc", "test_acc", "lr"):
            assert [h[k] for h in r["history"]] == [h[k] for h in s["history"]], k
    for i in range(3):
        a = torch.load(tmp_path / "s" / str(i) / "model.pt", weights_only=True)
        b = torch.load(tmp_path / "r" / str(i) / "model.pt", weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_members_that_cannot_share_a_batched_model_are_refused(synth_dir):
    from gridrun.config import ConfigError

    base = dict(model="tinynet_7k", epochs=1, data_dir=str(synth_dir))
    with pytest.raises(ConfigError, match="must share batch_size"):
        train([dict(base, batch_size=32), dict(base, batch_size=64)])
    with pytest.raises(ConfigError, match="must share model"):
        train([dict(base), dict(base, model="vanilla")])


def _reference_precise_bn(model, splits):
    """torch's own cumulative average (momentum=None) over the clean training images, 1,024 at a time."""
    model.eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
            m.train()
    with torch.no_grad():
        for xb in splits.train_x.split(1024):
            model(splits.normalize(xb))
    return model.eval()


@pytest.mark.parametrize("fused", [False, True])
def test_precise_bn_leaves_exactly_the_clean_training_statistics(synth_dir, tmp_path, fused):
    """precise_bn=True: the saved (scored, here the weight average's) BN statistics are what
    recomputing them from the saved weights over the un-augmented training images gives, and
    the saved logits are that model's; without it they are not."""
    from gridrun.config import TrainConfig
    from gridrun.train import prepare_splits
    base = dict(model="tinynet_7k", epochs=1, batch_size=64, val_size=200, subset=520, data_dir=str(synth_dir),
                threads=2, augment="rotate+affine", ema=0.9, lr=0.05)
    cfgs = [dict(base, seed=s, precise_bn=p, out_dir=str(tmp_path / f"{p}{s}")) for p in (True, False) for s in (0, 1)]
    if fused:
        train([dict(c, fuse_strategy="vmap") for c in cfgs[:2]])
        train([dict(c, fuse_strategy="blockdiag") for c in cfgs[2:]])
    else:
        for c in cfgs:
            train(c)
    splits = prepare_splits(TrainConfig.from_dict(cfgs[0]), torch.device("cpu"))
    for c in cfgs:
        saved = torch.load(f"{c['out_dir']}/model.pt", weights_only=True)
        model = create_model("tinynet_7k")
        model.load_state_dict(saved)
        ref = _reference_precise_bn(model, splits).state_dict()
        stats = [n for n in saved if n.endswith(("running_mean", "running_var"))]
        close = all(torch.allclose(saved[n], ref[n], rtol=1e-3, atol=1e-5) for n in stats)
        assert close == c["precise_bn"], c["out_dir"]
        if c["precise_bn"]:
            with torch.no_grad():
                logits = model.eval()(splits.normalize(splits.val_x))
            np.testing.assert_allclose(np.load(f"{c['out_dir']}/logits_val.npy").astype(np.float32),
                                       logits.numpy(), rtol=2e-2, atol=2e-2)


def test_a_diverging_member_does_not_shrink_the_others_clipped_gradients(synth_dir, tmp_path):
    """grad_clip clips each member by its own gradient norm: beside a member whose lr (1e4) blows
    its weights and gradients up, a member trains bit for bit as it does alone with the same clip
    (one norm over the group, clip_grad_norm_ over the stacked tensors, would have scaled its
    gradients down by the other's norm)."""
    base = dict(model="tinynet_7k", epochs=1, batch_size=40, val_size=200, subset=330, data_dir=str(synth_dir),
                threads=2, optimizer="sgd", scheduler="none", augment="none", grad_clip=0.05)
    pair = train([dict(base, seed=3, lr=0.05, fuse_strategy="loop", out_dir=str(tmp_path / "p" / "ok")),
                  dict(base, seed=4, lr=1e4, fuse_strategy="loop", out_dir=str(tmp_path / "p" / "wild"))])
    alone = train(dict(base, seed=3, lr=0.05, out_dir=str(tmp_path / "alone")))
    unclipped = train(dict(base, seed=3, lr=0.05, grad_clip=None))
    assert pair[0]["history"][0]["train_loss"] != unclipped["history"][0]["train_loss"]  # the clip clips
    numbers = ("train_loss", "train_acc", "val_loss", "val_acc", "test_acc")
    assert [pair[0]["history"][0][k] for k in numbers] == [alone["history"][0][k] for k in numbers]
    wp, wa = (torch.load(d / "model.pt", weights_only=True) for d in (tmp_path / "p" / "ok", tmp_path / "alone"))
    assert all(torch.equal(wp[n], wa[n]) for n in wa)
