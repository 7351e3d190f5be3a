"""Rungs inside a fused group (successive halving): after a rung epoch the best `rung_keep` of the
members still training go on; the rest are retired as pruned, with readable files, and cost no
further compute in any strategy (the group goes on as a smaller one)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gridrun.config import ConfigError, TrainConfig
from gridrun.engine import step as engine_step
from gridrun.engine.run import rung_survivors
from gridrun.train import Folders, train
from gridrun.models import create_model
from conftest import Stop, stop_after

STRATEGIES = ["loop", "vmap", "blockdiag"]


def _group(synth_dir, tmp_path, strategy, rungs=(1,), keep=0.5, k=4, epochs=2, tag="g"):
    base = dict(model="tinynet_7k", epochs=epochs, batch_size=40, val_size=200, subset=240, data_dir=str(synth_dir),
                threads=2, optimizer="sgd", scheduler="onecycle", fuse_strategy=strategy, augment="rotate",
                rungs=list(rungs), rung_keep=keep)
    return [dict(base, seed=i, lr=[0.3, 0.01, 0.1, 0.001][i % 4], out_dir=str(tmp_path / tag / f"m{i}"))
            for i in range(k)]


def test_the_cut_keeps_the_best_fraction_at_least_one_ties_to_the_earlier_member():
    assert rung_survivors([0.5, 0.9, 0.9, 0.1], 0.5) == [1, 2]
    assert rung_survivors([0.7, 0.7, 0.7, 0.7], 0.5) == [0, 1]
    assert rung_survivors([0.2, 0.9, 0.5], 0.34) == [1, 2]      # ceil(1.02) = 2
    assert rung_survivors([0.2, 0.9, 0.5], 0.1) == [1]          # at least one
    assert rung_survivors([0.1] * 8, 0.25) == [0, 1]            # 0.25 * 8 is exactly 2
    assert rung_survivors([float("nan"), 0.3], 0.5) == [1]


@pytest.mark.parametrize("bad,why", [({"rungs": [3, 2]}, "strictly increasing"), ({"rungs": [0]}, r"\[1, epochs=5\)"),
                                     ({"rungs": [5]}, r"\[1, epochs=5\)"), ({"rungs": [2, 2]}, "strictly increasing"),
                                     ({"rung_keep": 1.0}, r"in \(0, 1\)"), ({"rung_keep": 0}, r"in \(0, 1\)"),
                                     ({"rungs": ["2"]}, "whole number"), ({"rungs": 2}, "must be a list")])
def test_bad_rungs_are_one_line(bad, why):
    with pytest.raises(ConfigError, match=why):
        TrainConfig(epochs=5, **bad)
    assert TrainConfig(epochs=5, rungs=[1, 4]).rungs == (1, 4)


def _counted(monkeypatch):
    """Record, per training step, the members (by seed) the step computes and the strategy's width."""
    steps, widths = [], []
    real_step = engine_step.Trainer.step

    def counting_step(self, idx, clean):
        steps.append(sorted(m.cfg.seed for m in self.g.members))
        widths.append(self.g.strategy.k)
        return real_step(self, idx, clean)
    monkeypatch.setattr(engine_step.Trainer, "step", counting_step)
    return steps, widths


NUMBERS = ("train_loss", "train_acc", "val_loss", "val_acc", "test_acc", "lr")  # not the seconds


def _numbers(r: dict) -> list:
    return [[h[k] for k in NUMBERS] for h in r["history"]]


def _same_run(a: dict, b: dict, da, db) -> bool:
    wa, wb = (torch.load(d / "model.pt", weights_only=True) for d in (da, db))
    return _numbers(a) == _numbers(b) and wa.keys() == wb.keys() and all(torch.equal(wa[n], wb[n]) for n in wa)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_pruned_member_costs_nothing_after_its_rung_and_keeps_readable_files(synth_dir, tmp_path, monkeypatch,
                                                                              strategy):
    """Count, per member, the training steps it is part of and the rows the strategy computes
    after the rung (zero for a pruned member); its files are those of its rung epoch; the
    survivors' numbers against the same group trained with no rungs: bit for bit with loop. vmap
    and blockdiag then compute a smaller group with differently sized batched kernels, whose sums
    may round differently (test_fused states the tolerance for that): what holds is printed."""
    steps, widths = _counted(monkeypatch)
    epoch_at = []
    res = train(_group(synth_dir, tmp_path, strategy, tag="p"),
                Folders(on_epoch=lambda m, s: epoch_at.append(len(steps))))
    pruned = [i for i, r in enumerate(res) if r["status"] == "pruned at epoch 1"]
    kept = [i for i, r in enumerate(res) if r["status"] == "ok"]
    assert len(pruned) == len(kept) == 2 and kept == [i for i in range(4) if i not in pruned]
    after = steps[epoch_at[0]:]
    assert after and all(s == kept for s in after)                  # seeds are positions here
    assert sum(s.count(i) for s in after for i in pruned) == 0
    assert set(widths[epoch_at[0]:]) == {2} and set(widths[:epoch_at[0]]) == {4}

    for i in pruned:
        d = tmp_path / "p" / f"m{i}"
        assert len(res[i]["history"]) == 1
        assert json.loads((d / "summary.json").read_text())["status"] == "pruned at epoch 1"
        assert len((d / "metrics.csv").read_text().strip().splitlines()) == 2  # header + epoch 1
        logits = np.load(d / "logits_val.npy").astype(np.float32)
        assert (logits.argmax(1) == np.load(d / "labels_val.npy")).mean() == pytest.approx(res[i]["history"][0]["val_acc"])
        create_model("tinynet_7k").load_state_dict(torch.load(d / "model.pt", weights_only=True))
        from gridrun.results import read_trial
        t = read_trial(d, f"m{i}")
        assert t.status == "pruned" and t.reason == "pruned at epoch 1" and len(t.history) == 1

    full = train(_group(synth_dir, tmp_path, strategy, rungs=(), tag="f"))
    same = [_same_run(res[i], full[i], tmp_path / "p" / f"m{i}", tmp_path / "f" / f"m{i}") for i in kept]
    print(f"{strategy}: survivors bit-identical to the unpruned group: {same}")
    if strategy == "loop":
        assert all(same)
    for i in kept:
        for hp, hf in zip(res[i]["history"], full[i]["history"]):
            assert hp["train_loss"] == pytest.approx(hf["train_loss"], rel=1e-3)
            assert abs(hp["val_acc"] - hf["val_acc"]) <= 0.02


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_group_resumed_after_a_rung_is_bit_identical_to_one_that_ran_through(synth_dir, tmp_path, strategy):
    """Resumed with every member (a retry), or with the survivors only (a relaunch, which leaves
    pruned trials alone), from the state saved right after the rung compacted the group."""
    straight = train(_group(synth_dir, tmp_path, strategy, tag="s"))
    kept = [i for i, r in enumerate(straight) if r["status"] == "ok"]
    cfgs = _group(synth_dir, tmp_path, strategy, tag="r")
    with pytest.raises(Stop):
        train(cfgs, Folders(str(tmp_path / "state"), stop_after(1)))
    state = str(tmp_path / "state" / "state.pt")
    for relaunch in (False, True):
        again = train([cfgs[i] for i in kept] if relaunch else cfgs, resume_from=state)
        for i, r in zip(kept if relaunch else range(4), again):
            assert r["status"] == straight[i]["status"], (relaunch, i)
            if r["status"] == "ok":
                assert _same_run(r, straight[i], tmp_path / "r" / f"m{i}", tmp_path / "s" / f"m{i}"), (relaunch, i)
            else:
                assert _numbers(r) == _numbers(straight[i])


def test_a_pruned_members_files_lost_with_a_killed_launch_are_written_again_on_resume(synth_dir, tmp_path):
    """A trial's folder reaches storage when Ray syncs it after a checkpoint: a launch killed in
    between (the probe: SIGSTOP, then kill -9 of the driver) kept the state that pruned two members
    and none of their files. The resume wrote nothing for them (its folder is complete, it
    assumed), the relaunch counted them interrupted and then trained them again from epoch 1,
    alone and unpruned, to 'finished' (one won a study). Now the state carries what a retired
    member's files hold, and the resume writes them again as they were."""
    import shutil

    from gridrun.results import read_trial

    cfgs = _group(synth_dir, tmp_path, "loop", k=2, tag="r")
    with pytest.raises(Stop):
        train(cfgs, Folders(str(tmp_path / "state"), stop_after(1)))
    summaries = [tmp_path / "r" / f"m{i}" / "summary.json" for i in range(2)]
    pruned = [i for i, f in enumerate(summaries) if f.is_file() and "pruned" in f.read_text()]
    assert len(pruned) == 1
    for i in pruned:  # lost with the killed launch: the resumed trial writes into a fresh folder
        shutil.copytree(tmp_path / "r" / f"m{i}", tmp_path / "as_written" / f"m{i}")
        shutil.rmtree(tmp_path / "r" / f"m{i}")
    again = train(cfgs, resume_from=str(tmp_path / "state" / "state.pt"))
    for i in pruned:
        d, ref = tmp_path / "r" / f"m{i}", tmp_path / "as_written" / f"m{i}"
        assert again[i]["status"] == "pruned at epoch 1" and len(again[i]["history"]) == 1
        for f in ("logits_val.npy", "logits_test.npy", "labels_val.npy", "labels_test.npy", "metrics.csv"):
            assert (d / f).read_bytes() == (ref / f).read_bytes(), f
        wa, wb = (torch.load(x / "model.pt", weights_only=True) for x in (d, ref))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[n], wb[n]) for n in wa)
        assert json.loads((d / "summary.json").read_text())["finished_at"] == \
            json.loads((ref / "summary.json").read_text())["finished_at"]
        t = read_trial(d, f"m{i}")
        assert t.status == "pruned" and t.reason == "pruned at epoch 1" and len(t.history) == 1


def _readme_spec() -> str:
    """The first YAML block of README.md's section "A grid spec", as written."""
    text = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## A grid spec\n", 1)[1]
    return section.split("```yaml\n", 1)[1].split("```", 1)[0]


def test_the_readme_spec_block_runs_as_written(tmp_path, monkeypatch, capsys):
    """Saved in grids/ as the README says (a copy beside grids/tiny_nets_study.csv), its dry run
    plans fused groups whose early_stop became rungs [3, 9] with keep 1/3."""
    from gridrun.cli import main
    from gridrun.spec import load_trials

    grids = Path(__file__).parent.parent / "grids"
    (tmp_path / "tiny_nets_study.csv").write_bytes((grids / "tiny_nets_study.csv").read_bytes())
    spec_path = tmp_path / "readme.yaml"
    spec_path.write_text(_readme_spec(), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    _, trials = load_trials(spec_path)
    assert all(list(t.train["rungs"]) == [3, 9] and t.train["rung_keep"] == pytest.approx(1 / 3) for t in trials)
    rc = main(["launch", str(spec_path), "--dry-run", "--storage", str(tmp_path / "runs")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "40 trials" in out and "fused groups" in out


def test_a_launch_prunes_inside_its_fused_group_and_a_relaunch_leaves_pruned_trials_alone(ray_local, synth_dir,
                                                                                           tmp_path):
    """prune: in the spec -> rungs in the group; status, load() and the report say pruned; no
    pruned trial counts as a run or a seed; launching again runs nothing."""
    import gridrun
    from gridrun.launch import launch
    from gridrun.report import report
    from gridrun.status import snapshot
    from conftest import write_spec

    spec = write_spec(tmp_path / "pr.yaml", synth_dir, grid={"lr": [0.03, 0.01, 0.003, 0.001]}, seeds=1,
                      base={"model": "tinynet_7k"}, fuse=4, prune={"rungs": [1], "keep": 0.5})
    storage, lines = tmp_path / "runs", []
    assert launch(str(spec), storage=str(storage), out=lines.append) == 0
    assert any("2 finished, 0 diverged, 0 failed, 2 pruned at a rung" in x for x in lines), lines
    df = gridrun.load(str(storage / "pr"))
    assert sorted(df["status"]) == ["finished", "finished", "pruned", "pruned"]
    assert set(df.loc[df["status"] == "pruned", "reason"]) == {"pruned at epoch 1"}
    snap = snapshot(storage / "pr")
    assert snap["counts"]["pruned"] == 2 and snap["counts"]["finished"] == 2
    text = report([str(storage / "pr")], reports_dir=str(tmp_path / "rep"), echo=lambda _: None)[0].read_text()
    assert "4 trials; 2 finished, 2 pruned." in text
    again = []
    assert launch(str(spec), storage=str(storage), out=again.append) == 0
    assert any("nothing to run" in x for x in again), again


def _spec(**over):
    from gridrun.spec import parse

    return parse({"name": "p", "base": {"model": "tinynet_7k", "epochs": 10}, "grid": {"lr": [0.1, 0.2]},
                  "seeds": 2, **over})


def test_early_stop_with_fuse_becomes_rungs_and_without_fuse_stays_ray_s_asha():
    from gridrun.spec import asha, expand

    fused = expand(_spec(fuse=4, early_stop={"grace_period": 2, "reduction_factor": 2}))
    assert {(tuple(t.train["rungs"]), t.train["rung_keep"]) for t in fused} == {((2, 4, 8), 0.5)}
    plain = _spec(early_stop={"grace_period": 2, "reduction_factor": 2})
    assert all(t.train["rungs"] == () for t in expand(plain)) and asha(plain) == (2, 2)
    assert [t.id for t in expand(plain)] == [t.id for t in expand(_spec())]  # ids as before


@pytest.mark.parametrize("over,why", [
    (dict(prune={"rungs": [3]}, early_stop={"grace_period": 3}), "prune and early_stop both"),
    (dict(prune={"rungs": [3]}, base={"model": "tinynet_7k", "epochs": 10, "rungs": [2]}), "drop them from base"),
    (dict(prune={"rungs": [3, 5]}), r"ASHA, which cuts at \[3, 6\].*use rungs \[3, 6\], or fuse: K"),
    (dict(prune={"rungs": [3, 12]}, fuse=4), r"rungs=\(3, 12\): must be strictly increasing epochs, each in \[1, epochs=10\)"),
    (dict(prune={"rungs": []}), "prune.rungs"),
])
def test_a_bad_prune_is_one_line(over, why):
    from gridrun.spec import SpecError, expand

    with pytest.raises(SpecError, match=why):
        expand(_spec(**over))


def test_prune_sets_the_rungs_fused_or_not_and_the_unfused_asha_cuts_at_the_same_epochs():
    from gridrun.spec import asha, asha_milestones, expand

    for spec in (_spec(prune={"rungs": [3, 6]}), _spec(prune={"rungs": [3, 6]}, fuse=4)):
        assert {tuple(t.train["rungs"]) for t in expand(spec)} == {(3, 6)}
        assert asha(spec) == (3, 2.0) and asha_milestones(3, 2.0, 10) == [3, 6]
    assert expand(_spec(prune={"rungs": [2, 7], "keep": 0.25}, fuse=4))[0].train["rungs"] == (2, 7)  # any epochs


def test_the_lone_survivor_of_an_interrupted_group_resumes_in_its_group(synth_dir, tmp_path):
    """After rungs left one member of four, a relaunch (the pruned ones settled) keeps it in its
    group, so it resumes from the group's checkpoint in the group's folder, not from epoch 1 alone."""
    from gridrun.plan import plan_units, regroup
    from gridrun.record import read_manifest
    from gridrun.spec import load_trials
    from conftest import write_spec

    spec, trials = load_trials(write_spec(tmp_path / "lone.yaml", synth_dir, grid={"lr": [0.01, 0.03]}, seeds=2,
                                          fuse=4, base={"model": "tinynet_7k"}))
    (group,) = plan_units(spec, trials)
    exp = tmp_path / "runs" / "lone"
    (exp / group.name / "checkpoint_000001").mkdir(parents=True)
    old = read_manifest([{"name": t.name, "train": dict(t.train), "group": group.name} for t in trials])
    lines = []
    (unit,) = regroup(spec, trials[2:3], old, exp, lines.append)
    assert unit.name == group.name and unit.fused and [m.name for m in unit.members] == [trials[2].name]
    assert not lines


def test_a_lone_survivor_resumed_alone_is_bit_identical_to_one_that_ran_through(synth_dir, tmp_path):
    """Interrupted after a rung cut a group of two (auto: loop on a CPU) to one, the survivor
    relaunched as a group of one (auto at K = 1) resumes from the group's stacked state, and ends
    bit for bit as in the group that ran through (it used to restart: the state did not fit)."""
    def pair(tag):
        return [dict(c, fuse_strategy="auto") for c in _group(synth_dir, tmp_path, "loop", k=2, tag=tag)]

    straight = train(pair("s"))
    (kept,) = [i for i, r in enumerate(straight) if r["status"] == "ok"]
    cfgs = pair("r")
    with pytest.raises(Stop):
        train(cfgs, Folders(str(tmp_path / "state"), stop_after(1)))
    (again,) = train([cfgs[kept]], resume_from=str(tmp_path / "state" / "state.pt"))
    assert [h["epoch"] for h in again["history"]] == [1, 2]
    assert _same_run(again, straight[kept], tmp_path / "r" / f"m{kept}", tmp_path / "s" / f"m{kept}")
