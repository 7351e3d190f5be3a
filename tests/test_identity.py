"""Identity by value: a trial is its resolved config values however the spec writes them, for
duplicates, finished-trial matching, growth and fused-group membership."""
import hashlib
import json
from pathlib import Path

import pytest
import yaml

from gridrun.config import PLUMBING, TrainConfig
from gridrun.identity import OFF, SINCE, canonical, config_key, fuse_key, trial_id, varying_fields
from gridrun.plan import plan_units, regroup
from gridrun.record import read_manifest
from gridrun.spec import SpecError, load_trials, parse
from conftest import write_spec


def base(**kw) -> dict:
    return TrainConfig.from_dict({"model": "tinynet_7k", **kw}).to_dict()


@pytest.mark.parametrize("a, b", [
    ({"lr": 1}, {"lr": 1.0}),                                   # an int for a float field
    ({"weight_decay": 0.0005}, {"weight_decay": 0.00050}),      # the number's spelling
    ({"weight_decay": 5e-4}, {}),                               # a default written out
    ({"label_smoothing": 0}, {"label_smoothing": 0.0}),
    ({"model_args": {"dropout": 0.0}}, {}),                     # a model default written out
    ({"dropout": 0.0}, {}),
    ({"model_args": {"dropout": 0.1}}, {"dropout": 0.1}),       # the same argument, either place
    ({"augment": "rotate", "aug": {"rotate_deg": 10}}, {"augment": "rotate"}),  # a policy's strength
    ({"augment": "rotate", "aug": {"rotate_deg": 10}}, {"augment": "rotate", "aug": {"rotate_deg": 10.0}}),
    ({"model": "tinynet"}, {}),                                 # one net, two names (issue 38 item 5)
    ({"model": "tinynet", "model_args": {"arch": "C10:0 C16:0 M T10 C14:0 C16:0 C16:0 O G"}}, {}),
    ({"model": "tinynet", "model_args": {"arch": " C10:0  C16:0 M T10 C14:0\tC16:0 C16:0 O G\n"}}, {}),
    ({"model": "tinynet", "dropout": 0.1}, {"dropout": 0.1}),
    ({"model": "tinynet", "model_args": {"arch": "C8:0 C16 M T10 C16:0 C16:0 C16:0 O G"}},   # spaces, C16 = C16:1
     {"model": "tinynet", "model_args": {"arch": "C8:0  C16:1 M T10 C16:0 C16:0 C16:0 O  G"}}),
    ({"model": "tinynet", "model_args": {"arch": "C10:0 C16:0 M S24:1 S024 O G"}},             # S24:1 = S24
     {"model": "tinynet", "model_args": {"arch": "C10:0 C16:0 M S24 S24 O G"}}),
])
def test_one_config_written_two_ways_is_one_trial(a, b):
    x, y = base(**a), base(**b)
    assert trial_id(x) == trial_id(y) and config_key(x) == config_key(y) and fuse_key(x) == fuse_key(y)
    assert varying_fields([x, y]) == []


@pytest.mark.parametrize("a, b", [
    ({"lr": 0.1}, {"lr": 0.10000001}), ({"dropout": 0.1}, {}), ({"model_args": {"dropout": 0.05}}, {}),
    ({"augment": "rotate", "aug": {"rotate_deg": 11}}, {"augment": "rotate"}), ({"nesterov": False}, {}),
    ({"model": "tinynet", "model_args": {"arch": "C10:0 C16:0 M T10 C14:0 C16:0 C16:1 O G"}}, {}),  # a real change
    ({"model": "tinynet", "model_args": {"arch": "C10:0 C16:0 M S24:0 O G"}},
     {"model": "tinynet", "model_args": {"arch": "C10:0 C16:0 M S24 O G"}}),
])
def test_different_values_stay_different(a, b):
    assert trial_id(base(**a)) != trial_id(base(**b))


def test_ids_of_configs_already_in_canonical_form_are_unchanged():
    """Older experiments keep their ids (and fused group names): the hash of a config whose
    values are already canonical is the hash the earlier, by-key version computed."""
    for cfg in (base(), base(lr=0.05, weight_decay=0.0), base(model="chaos_net", seed=3)):
        # as an older version stored it: without the fields added since (identity.SINCE at their
        # defaults, identity.OFF while off: these configs have no rungs)
        old = hashlib.sha256(json.dumps({k: v for k, v in cfg.items() if k not in PLUMBING and k not in SINCE
                                         and k not in OFF},
                                        sort_keys=True,
                                        default=str).encode()).hexdigest()[:12]
        assert trial_id(cfg) == old
    assert canonical({"model": "tinynet_7k"})["weight_decay"] == 5e-4  # filled in from the defaults


def test_a_grid_listing_one_value_twice_is_refused(synth_dir, tmp_path):
    spec = write_spec(tmp_path / "dup.yaml", synth_dir, grid={"model": ["tinynet_7k"], "weight_decay": [0.0005, 0.00050]})
    with pytest.raises(SpecError, match="holds one config twice"):
        load_trials(spec)
    spec = write_spec(tmp_path / "dup2.yaml", synth_dir, grid={"variant": [{"model": "tinynet_7k"},
                                                                           {"model": "tinynet_7k",
                                                                            "model_args": {"dropout": 0.0}}]})
    with pytest.raises(SpecError, match="holds one config twice"):
        load_trials(spec)


def spec_without_weight_decay(tmp_path: Path, synth_dir: Path, **kw) -> Path:
    """write_spec's grid with the weight decay left at TrainConfig's default (5e-4)."""
    path = write_spec(tmp_path / "copies.yaml", synth_dir, **kw)
    raw = yaml.safe_load(path.read_text())
    del raw["base"]["weight_decay"]
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_default_added_as_an_axis_reruns_nothing_and_counts_nothing_twice(ray_local, synth_dir, tmp_path):
    """The probe's case 2: a one-value axis at the default re-planned the same configs under
    new names, ran them again and reported each config with n=2."""
    from gridrun.launch import launch
    from gridrun.results import load_experiment
    from gridrun.storage.layout import ExperimentDir

    spec = spec_without_weight_decay(tmp_path, synth_dir, seeds=1, grid={"model": ["tinynet_7k"], "lr": [0.1, 0.05]},
                                     base={"epochs": 1})
    storage = tmp_path / "runs"
    assert launch(str(spec), storage=str(storage), out=lambda _: None) == 0
    exp = storage / "copies"
    names = sorted(e["name"] for e in ExperimentDir(exp).read_manifest())
    summaries = {p: p.read_bytes() for p in exp.rglob("summary.json")}
    grid = "grid={model: [tinynet_7k], lr: [0.1, 0.05], weight_decay: [0.00050]}"
    lines = []
    assert launch(str(spec), overrides=[grid], storage=str(storage), dry_run=True, out=lines.append) == 0
    text = "\n".join(lines)
    assert "matched by value" in text and "nothing to run" in text
    lines = []
    assert launch(str(spec), overrides=[grid], storage=str(storage), out=lines.append) == 0
    assert "2 trial(s) of this grid are already in the experiment under another name" in "\n".join(lines)
    assert "nothing to run" in lines[-1]
    assert sorted(e["name"] for e in ExperimentDir(exp).read_manifest()) == names  # no second entry per config
    assert {p: p.read_bytes() for p in exp.rglob("summary.json")} == summaries  # nothing rerun or rewritten
    assert len(load_experiment(exp).trials) == 2
    lines = []  # a real new value next to the default: only the new configs are planned
    grow = "grid={model: [tinynet_7k], lr: [0.1, 0.05], weight_decay: [0.0005, 0.001]}"
    assert launch(str(spec), overrides=[grow], storage=str(storage), dry_run=True, out=lines.append) == 0
    assert "2 of 4 trials already finished; the launch would run the other 2" in "\n".join(lines)
    lines = []  # the probe's item 1: --storage file:///... is the same folder, not a rerun of everything
    assert launch(str(spec), storage=f"file://{storage}", dry_run=True, out=lines.append) == 0
    assert "nothing to run" in lines[-1]


def test_an_interrupted_fused_group_keeps_its_members_when_the_grid_grows(synth_dir, tmp_path):
    """Item 8: inserting an axis value used to regroup an interrupted group's members (a new
    group name, no checkpoint) and restart them from epoch 1."""
    spec_path = write_spec(tmp_path / "fz.yaml", synth_dir, grid={"lr": [0.01, 0.03]}, seeds=2, fuse=4,
                           base={"model": "tinynet_7k"})
    spec, trials = load_trials(spec_path)
    (group,) = plan_units(spec, trials)
    exp = tmp_path / "runs" / "fz"
    (exp / group.name / "checkpoint_000001").mkdir(parents=True)
    old = read_manifest([{"name": t.name, "train": t.train, "group": group.name} for t in trials])
    grown_spec, grown = load_trials(spec_path, ["grid={lr: [0.01, 0.02, 0.03]}"])
    assert all(u.name != group.name for u in plan_units(grown_spec, grown))  # regrouped without keep
    lines = []
    units = regroup(grown_spec, grown, old, exp, lines.append)
    kept = next(u for u in units if u.name == group.name)
    assert sorted(m.name for m in kept.members) == sorted(t.name for t in trials)
    assert sorted(m.name for u in units for m in u.members) == sorted(t.name for t in grown)
    assert not lines
    fewer_spec, fewer = load_trials(spec_path, ["grid={lr: [0.01, 0.02, 0.03]}", "fuse=2"])
    regroup(fewer_spec, fewer, old, exp, lines.append)  # a group that cannot be kept is said
    assert "start again from epoch 1" in lines[0]


def test_parse_keeps_spellings_apart_from_identity(tmp_path):
    spec = parse({"name": "x", "base": {"lr": 1}})
    assert spec.base["lr"] == 1  # the spec as written is recorded as written; identity is by value


def test_a_deskewing_policy_never_shares_a_fused_group_with_one_that_does_not():
    # check_group refuses such a group at trial start; the planner must not make one.
    from gridrun.config import with_defaults

    a, b = with_defaults({"augment": "rotate"}), with_defaults({"augment": "align+rotate"})
    assert fuse_key(a) != fuse_key(b)
    assert fuse_key(a) == fuse_key(with_defaults({"augment": "rotate+affine"}))  # only the deskew step splits


@pytest.mark.parametrize("cfg, tid, cid", [
    ({}, "f78833bcc398", "247d6ba6d542"),
    ({"lr": 1}, "d8d5ac49f0ce", "bf745e2d86ff"),
    ({"model": "chaos_net", "seed": 3}, "92679a0da67a", "28e2947161f5"),
    ({"ema": 0.999, "precise_bn": True, "threads": 4, "device": "cpu", "gpu_memory_fraction": 0.5},
     "4af120eed7b7", "c95fa762f1f0"),
])
def test_ids_are_the_ones_experiments_already_hold(cfg, tid, cid):
    """Pinned ids (computed by the dataclass TrainConfig before it became a pydantic model): a
    changed id would orphan every finished trial of every existing experiment."""
    from gridrun.identity import config_id

    assert trial_id(base(**cfg)) == trial_id(cfg) == tid and config_id(base(**cfg)) == cid


def test_fuse_shared_is_the_role_config_py_gives_its_fields():
    from gridrun.config import field_extra, field_names
    from gridrun.identity import FUSE_SHARED

    assert FUSE_SHARED == tuple(n for n in field_names() if field_extra(n)["fuse_shared"])
    assert set(FUSE_SHARED) == {  # the set fused groups have always shared (fuse keys must not move)
        "model", "model_args", "batch_size", "epochs", "optimizer", "val_size", "subset", "split_seed", "data_dir",
        "normalize", "ema", "precise_bn", "device", "threads", "compile", "cuda_graph", "amp", "channels_last",
        "gpu_memory_fraction", "eval_batch_size", "fuse_strategy", "dataset",
        "rungs", "rung_keep"}  # the last two are left out of keys while off (identity.SINCE): no grid's key moved
    assert PLUMBING == {"data_dir", "device", "threads", "compile", "cuda_graph", "amp", "channels_last",
                        "gpu_memory_fraction", "fuse_strategy", "eval_batch_size", "out_dir"}


def test_each_model_alias_builds_the_same_net_as_its_other_name():
    """identity.MODEL_ALIASES says two names are one net: each pair builds the same layers."""
    from gridrun.identity import MODEL_ALIASES
    from gridrun.models import count_params, create_model

    for name, alias in MODEL_ALIASES.items():
        assert repr(create_model(name)) == repr(create_model(alias)) and count_params(name) == count_params(alias)


def test_a_grid_naming_one_net_twice_is_refused(synth_dir, tmp_path):
    """tinynet (its default arch) and tinynet_7k used to be planned as two configs."""
    spec = write_spec(tmp_path / "alias.yaml", synth_dir, grid={"model": ["tinynet", "tinynet_7k"]})
    with pytest.raises(SpecError, match="holds one config twice"):
        load_trials(spec)
    arch = {"variant": [{"model": "tinynet", "model_args": {"arch": "C8:0 C16:0 M T10 C16:0 C16:0 C16:0 O G"}},
                        {"model": "tinynet", "model_args": {"arch": "C8:0 C16:0 M T10  C16:0 C16:0 C16:0 O G"}}]}
    with pytest.raises(SpecError, match="holds one config twice"):
        load_trials(write_spec(tmp_path / "arch.yaml", synth_dir, grid=arch))


def test_an_experiment_launched_under_the_other_name_keeps_its_trials(synth_dir, tmp_path):
    """A folder whose manifest holds `tinynet` trials (and their ids as hashed before aliases
    were one net) is matched by value by a relaunch that names tinynet_7k: nothing is new."""
    from gridrun.plan import adopt_names, check_growth

    spec, grid = load_trials(write_spec(tmp_path / "a.yaml", synth_dir, grid={"lr": [0.01, 0.02]},
                                        base={"model": "tinynet_7k"}))
    held = read_manifest([{"name": f"old_{i}", "id": "0123456789ab", "train": {**t.train, "model": "tinynet"}}
                          for i, t in enumerate(grid)])
    lines = []
    adopted = adopt_names(held, grid, lines.append, "exp")
    assert [t.name for t in adopted] == [f"old_{i}" for i in range(len(grid))] and "matched by value" in lines[0]
    check_growth("exp", held, adopted)  # no "different grid" refusal


def test_a_fused_group_may_hold_one_net_under_both_names():
    """The planner fuses by canonical values, so the engine's check must accept what it fuses."""
    from gridrun.engine.group import check_group

    a, b = TrainConfig.from_dict({"model": "tinynet", "lr": 0.1}), TrainConfig.from_dict({"lr": 0.2})
    assert fuse_key(a.to_dict()) == fuse_key(b.to_dict())
    check_group([a, b])


# ---------------------------------------------------------------- issue 37 item 3: one typed record

def _count_canonical(monkeypatch) -> list:
    """Each call of identity.canonical (every resolution of a config) appends to the list returned."""
    import gridrun.identity as identity

    calls, real = [], identity.canonical
    monkeypatch.setattr(identity, "canonical", lambda train: calls.append(1) or real(train))
    return calls


def test_a_trial_is_resolved_once_from_expansion_through_the_manifest_and_tune(synth_dir, tmp_path, monkeypatch):
    """Expansion resolves each config once; grouping (fuse keys), the manifest and the Tune round
    trip reuse it (they re-resolved every config before the typed record)."""
    import pickle

    from gridrun.plan import Unit, remaining

    spec, grid = load_trials(write_spec(tmp_path / "once.yaml", synth_dir, grid={"lr": [0.01, 0.02, 0.03]},
                                        seeds=2, fuse=3, base={"model": "tinynet_7k"}))
    calls = _count_canonical(monkeypatch)
    plan = remaining(spec, grid, None, lambda _: None)
    manifest = plan.manifest()
    back = [Unit.from_tune(pickle.loads(pickle.dumps(u.to_tune()))) for u in plan.units]  # as Ray carries it
    assert [len(u.members) for u in plan.units] == [3, 3] and len(manifest) == 6
    assert back == list(plan.units)
    assert len(calls) == 0  # 2 fused groups of 3 planned, recorded, carried: none resolved again


def test_a_trial_record_is_frozen_and_crosses_its_boundaries_as_plain_values(synth_dir, tmp_path):
    import copy
    import pickle

    from gridrun.record import Frozen

    _, (t, *_) = load_trials(write_spec(tmp_path / "frozen.yaml", synth_dir))
    with pytest.raises(TypeError, match="frozen"):
        t.train["lr"] = 1.0
    with pytest.raises(ValueError, match="not \\['train'\\]"):
        t.relabel(train={})
    renamed = t.relabel(name="other", stage="search")
    assert (renamed.name, renamed.stage, renamed.id, renamed.train) == ("other", "search", t.id, t.train)
    for again in (pickle.loads(pickle.dumps(t)), copy.deepcopy(t)):
        assert again == t and isinstance(again.train, Frozen)
    d = t.to_dict()
    assert type(d["train"]) is dict and type(d["axes"]) is dict and json.loads(json.dumps(d)) == json.loads(
        json.dumps({**d, "train": dict(t.train)}))


def test_an_older_manifest_reads_back_as_records_with_this_versions_ids(synth_dir, tmp_path):
    """A manifest entry an older gridrun wrote (its own id, a field it did not have, no labels, no
    axes) is the same record type the expansion makes, with the id this version gives its config."""
    from gridrun.record import Trial

    _, grid = load_trials(write_spec(tmp_path / "old.yaml", synth_dir))
    entries = [{"name": t.name, "id": "hashed-long-ago", "params": t.params, "group": None,
                "train": {k: v for k, v in t.train.items() if k not in ("precise_bn", "clean_epochs")}} for t in grid]
    entries.append({"name": "no_config", "id": "kept-as-is"})
    held = read_manifest(entries)
    assert all(isinstance(e, Trial) for e in held)
    assert [e.id for e in held] == [t.id for t in grid] + ["kept-as-is"]
    assert [e.config_id for e in held[:-1]] == [t.config_id for t in grid] and held[-1].axes is None


def test_reading_an_experiment_resolves_each_config_at_most_twice(monkeypatch, tmp_path):
    """Loading the golden export and computing its report resolves the manifest's configs and the
    finished trials' config.json once each (analysis, identity columns and the report reuse them)."""
    from gridrun import analysis, results
    from gridrun.report import render

    calls = _count_canonical(monkeypatch)
    exp = results.load_experiment(Path(__file__).resolve().parent.parent / "reports" / "runs" / "smoke")
    analysis.analyse(exp)
    frame = results._identity_columns(exp)
    render(exp, tmp_path / "smoke.md")
    assert len(exp.trials) == 4 and len(frame) == 4
    assert len(calls) == 8  # 4 planned + 4 finished configs (22 before the typed record)
