from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridrun.cli import main
from gridrun.spec import SpecError, apply_overrides, check_budget, expand, load_trials, parse, plan_units

GRIDS = Path(__file__).resolve().parent.parent / "grids"
GOOD = {"name": "t", "base": {"epochs": 2}, "grid": {"model": ["vanilla", "tinynet_7k"], "batch_size": [32, 64]},
        "seeds": 3, "resources": {"cpu": 1, "gpu": 0.25}}


def test_expansion_is_the_cross_product_times_seeds():
    trials = expand(parse(GOOD))
    assert len(trials) == 2 * 2 * 3
    assert len({t["name"] for t in trials}) == 12 and len({t["id"] for t in trials}) == 12
    combos = {(t["train"]["model"], t["train"]["batch_size"], t["train"]["seed"]) for t in trials}
    assert len(combos) == 12 and all(t["train"]["epochs"] == 2 for t in trials)
    assert all(t["train"]["gpu_memory_fraction"] == 0.25 for t in trials)  # soft GPU-memory cap
    assert trials[0]["name"] == "vanilla_32_s0"


def test_names_do_not_depend_on_position():
    """A grown grid keeps every existing trial's name (and identity)."""
    small = {t["name"]: t["id"] for t in expand(parse({**GOOD, "seeds": 1}))}
    big = {t["name"]: t["id"] for t in expand(parse({**GOOD, "seeds": 3, "grid": {**GOOD["grid"],
                                                                                 "batch_size": [16, 32, 64]}}))}
    assert small.items() <= big.items()


def test_dict_axis_sets_fields_jointly():
    spec = parse({"name": "z", "grid": {"run": [{"model": "vanilla", "batch_size": 64},
                                               {"model": "tinynet_7k", "batch_size": 128}]}})
    assert [(t["train"]["model"], t["train"]["batch_size"]) for t in expand(spec)] == \
        [("vanilla", 64), ("tinynet_7k", 128)]


@pytest.mark.parametrize("patch,key,why", [
    ({"resourcs": {}}, "'resourcs'", "did you mean 'resources'?"),
    ({"resources": {"gpus": 1}}, "'resources.gpus'", "did you mean 'gpu'?"),
    ({"base": {"learning_rat": 0.1}}, "'base.learning_rat'", "unknown key"),
    ({"grid": {"modle": ["vanilla"]}}, "'grid.modle'", "did you mean 'model'?"),
    ({"grid": {"model": ["vanila"]}}, "model='vanila'", "did you mean 'vanilla'?"),
    ({"base": {"scheduler": "cosin"}}, "scheduler='cosin'", "did you mean 'cosine'?"),
    ({"grid": {"augment": ["rotate+blur"]}}, "augmentation 'blur'", "unknown"),
    ({"resources": {"gpu": 1.5}}, "resources.gpu:", "a fraction in (0, 1]"),
    ({"resources": {"gpu": -0.5}}, "resources.gpu:", "greater than or equal to 0"),
    ({"base": {"lr": -1}}, "lr=-1", "must be > 0"),
    ({"grid": {"model": []}}, "grid.model is empty", "at least one value"),
    ({"seeds": [0, 0]}, "seeds:", "seed 0 twice"),
    ({"seeds": 0}, "seeds:", "at least 1"),
    ({"seeds": []}, "seeds:", "empty list"),
    ({"base": {"seed": 3}}, "'base.seed'", "set by 'seeds:'"),
    ({"name": "../escape"}, "name:", "safe folder name"),
    ({"name": ".hidden"}, "name:", "safe folder name"),
    ({"base": {"dropout": 0.1, "model": "resnet20"}, "grid": {}}, "dropout=0.1", "takes no dropout"),
    ({"grid": {"run": [{"model": "vanilla"}, {"model": "vanilla"}]}}, "one config twice", "remove the repeat"),
    ({"max_trials": 5}, "12 trials", "max_trials: 12"),
    ({"fuse": 4, "early_stop": {}}, "early_stop and fuse", "cannot be combined"),
])
def test_each_validation_error_is_one_line_naming_the_key(patch, key, why):
    raw = {**GOOD, **patch}
    with pytest.raises(SpecError) as e:
        s = parse(raw, "g.yaml")
        check_budget(s, expand(s))
    msg = str(e.value)
    assert key in msg and why in msg and "\n" not in msg, msg


def test_over_the_parameter_budget_is_refused():
    s = parse({**GOOD, "constraints": {"max_params": 8000}})
    with pytest.raises(SpecError, match=r"vanilla has 9,\d{3} parameters, over constraints.max_params=8,000"):
        check_budget(s, expand(s))


def test_data_dirs_must_agree_before_anything_runs(tmp_path):
    raw = {**GOOD, "grid": {"data_dir": [str(tmp_path / "a"), str(tmp_path / "b")]}}
    with pytest.raises(SpecError, match="different data_dir values"):
        expand(parse(raw))


def test_overrides_are_validated_like_the_file():
    raw = apply_overrides(GOOD, ["seeds=5", "base.epochs=7", "grid.batch_size=[16]", "resources.gpu=0.5"])
    trials = expand(parse(raw))
    assert len(trials) == 2 * 1 * 5 and {t["train"]["epochs"] for t in trials} == {7}
    assert {t["train"]["gpu_memory_fraction"] for t in trials} == {0.5}
    for bad, needle in [("base.learning_rat=1", "'base.learning_rat'"), ("seeds=-1", "seeds:"),
                        ("resources.gpu=2.5", "resources.gpu:")]:
        with pytest.raises(SpecError, match=needle):
            parse(apply_overrides(GOOD, [bad]))
    for bad in ("noequals", "=5", "a..b=1", "seeds.x=1"):
        with pytest.raises(SpecError):
            parse(apply_overrides(GOOD, [bad]))


def test_yaml_aliases_and_huge_grids_are_refused_quickly(tmp_path):
    bomb = "a: &a [1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nname: x\ngrid: {lr: *b}\n"
    (tmp_path / "bomb.yaml").write_text(bomb)
    with pytest.raises(SpecError, match="aliases"):
        load_trials(tmp_path / "bomb.yaml")
    (tmp_path / "big.yaml").write_text(yaml.safe_dump({"name": "big", "seeds": 10**9}))
    with pytest.raises(SpecError, match="1,000,000,000 trials"):
        load_trials(tmp_path / "big.yaml")


def test_fused_groups_share_what_a_batched_model_needs():
    spec = parse({"name": "f", "fuse": 3, "grid": {"model": ["vanilla", "tinynet_7k"], "lr": [0.1, 0.01]},
                  "seeds": 2, "base": {"epochs": 1}})
    units = plan_units(spec, expand(spec))
    fused = [u for u in units if u["fused"]]
    assert sum(len(u["members"]) for u in units) == 8
    assert all(len(u["members"]) <= 3 for u in units)
    for u in fused:
        assert len({m["train"]["model"] for m in u["members"]}) == 1
    assert [len(u["members"]) for u in units] == [3, 1, 3, 1]


# Malformed specs: whatever the input, the answer is a spec or one SpecError line, never a crash.
_scalar = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(-2, 2, allow_nan=False),
                    st.sampled_from(["vanilla", "adam", "step", "rotate", "x", ""]))
_keys = st.sampled_from(["name", "base", "grid", "seeds", "resources", "data", "retries", "constraints",
                         "model", "lr", "gpu", "cpu", "epochs", "early_stop", "fuse", "bogus"])
_value = st.recursive(_scalar, lambda c: st.one_of(st.lists(c, max_size=3),
                                                    st.dictionaries(_keys, c, max_size=3)), max_leaves=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_keys, _value, max_size=6))
def test_malformed_specs_fail_cleanly(raw):
    try:
        s = parse(raw, "h.yaml")
        check_budget(s, expand(s))
    except SpecError as e:
        assert "\n" not in str(e) and str(e)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["resources", "data", "constraints", "early_stop", "base"]), _keys, _scalar)
def test_mutated_good_spec_fails_cleanly(section, key, value):
    raw = {**GOOD, section: {key: value}}
    try:
        s = parse(raw, "m.yaml")
        check_budget(s, expand(s))
    except SpecError as e:
        assert "\n" not in str(e)


def test_shipped_grids_are_valid():
    for path in GRIDS.glob("*.yaml"):
        spec, trials = load_trials(path)
        assert trials and spec.name == path.stem


def test_tiny_nets_grid_dry_run(capsys):
    assert main(["launch", str(GRIDS / "tiny_nets.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "plan: 180 trials in 10 Tune trials (10 fused groups of up to 32)" in out  # 60 configs x 3 seeds


def test_bad_yaml_and_missing_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a refused launch must leave no runs/ folder behind
    (tmp_path / "bad.yaml").write_text("name: x\ngrid: [unclosed\n")
    assert main(["launch", str(tmp_path / "bad.yaml"), "--dry-run"]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["launch", str(tmp_path / "none.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "over.yaml").write_text(yaml.safe_dump({**GOOD, "constraints": {"max_params": 100}}))
    assert main(["launch", str(tmp_path / "over.yaml")]) == 2  # refused before Ray starts
    assert "max_params" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_early_stop_and_dry_run_plan_for_gpus(tmp_path):
    spec = parse({**GOOD, "early_stop": {"grace_period": 2}})
    assert spec.early_stop.grace_period == 2 and spec.early_stop.reduction_factor == 3
    from gridrun.launch import plan_table

    lines, trials = [], expand(spec)
    check_budget(spec, trials)
    plan_table(spec, trials, plan_units(spec, trials), cpus=16, gpus=2, out=lines.append)
    assert lines[-1].endswith("4 trial(s) per GPU; 2 GPU(s), 16 CPU(s) -> 8 trial(s) at once")


def test_an_experiment_from_before_a_field_existed_stays_the_same_grid():
    """A manifest written before a config field existed (no key, an id hashed without it) is the
    same grid to a relaunch: the missing field reads as its default. A real change still is not."""
    from gridrun.launch import _check_growth
    from gridrun.spec import config_id

    trials = expand(parse(GOOD))
    old = []
    for t in trials:
        train = {k: v for k, v in t["train"].items() if k not in ("precise_bn", "clean_epochs")}
        old.append({"name": t["name"], "id": config_id(train), "train": train})
    assert old[0]["id"] != trials[0]["id"]
    _check_growth("runs/t", old, trials)  # no error
    changed = expand(parse({**GOOD, "base": {"epochs": 2, "precise_bn": True}}))
    with pytest.raises(SpecError, match="precise_bn was False, now True"):
        _check_growth("runs/t", old, changed)


def test_dry_run_refuses_a_changed_grid_as_the_launch_would(tmp_path, capsys, synth_dir, monkeypatch):
    import json

    monkeypatch.setenv("GRIDRUN_DATA", str(synth_dir))
    spec = tmp_path / "g.yaml"
    spec.write_text(yaml.safe_dump({**GOOD, "base": {"epochs": 2, "subset": 200, "val_size": 100}}))
    trials = load_trials(str(spec))[1]
    (tmp_path / "runs" / "t").mkdir(parents=True)
    (tmp_path / "runs" / "t" / "gridrun_trials.json").write_text(json.dumps(trials))
    argv = ["launch", str(spec), "--storage", str(tmp_path / "runs"), "--dry-run"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main([*argv[:2], "base.lr=0.3", *argv[2:]]) == 2
    err = capsys.readouterr().err
    assert "of a different grid: lr was" in err and len(err.strip().splitlines()) == 1
    assert f"gridrun launch {tmp_path / 'runs' / 't'}/spec.yaml --name t" in err or "runs/t/spec.yaml --name t" in err


# ---------------------------------------------------------------- issue 30: YAML, overrides, messages

def test_yaml_1_2_floats_are_numbers(tmp_path):
    """`1e-3` is a float in YAML 1.2 (PyYAML's 1.1 read it as a string, and the spec failed)."""
    (tmp_path / "g.yaml").write_text("name: g\nbase: {epochs: 1, weight_decay: 5e-4}\ngrid: {lr: [1e-3, 3E-4, 2.5e+1]}\n")
    spec, trials = load_trials(tmp_path / "g.yaml", ["base.momentum=9e-1"])
    assert spec.grid["lr"] == [0.001, 0.0003, 25.0]
    assert {t["train"]["weight_decay"] for t in trials} == {0.0005}
    assert {t["train"]["momentum"] for t in trials} == {0.9}
    from gridrun.spec import safe_yaml

    assert safe_yaml("[1_000, 10, 1.5, e3, 1e, 0x1f]", "x") == [1000, 10, 1.5, "e3", "1e", 31]
    assert yaml.safe_load("a: 1e-3") == {"a": "1e-3"}  # PyYAML's own loader is left as it is


def test_yaml_still_refuses_aliases_and_duplicate_keys():
    from gridrun.spec import safe_yaml

    with pytest.raises(SpecError, match="aliases"):
        safe_yaml("a: &x 1e-3\nb: *x\n", "g.yaml")
    with pytest.raises(SpecError, match="appears twice"):
        safe_yaml("lr: 1e-3\nlr: 2e-3\n", "g.yaml")


def test_a_base_override_shadowed_by_a_grid_axis_is_refused(tmp_path):
    (tmp_path / "g.yaml").write_text(yaml.safe_dump({**GOOD, "grid": {"lr": [0.1, 0.2], "run": [{"momentum": 0.8}]}}))
    with pytest.raises(SpecError) as e:
        load_trials(tmp_path / "g.yaml", ["base.lr=0.3"])
    msg = str(e.value)
    assert "base.lr=0.3" in msg and "grid.lr" in msg and "grid.lr=[0.3]" in msg and "\n" not in msg
    with pytest.raises(SpecError, match="base.momentum=0.5 is shadowed by the grid axis grid.run"):
        load_trials(tmp_path / "g.yaml", ["base.momentum=0.5"])
    load_trials(tmp_path / "g.yaml", ["base.weight_decay=0.001"])  # a field no axis sets is fine


@pytest.mark.parametrize("override,needle", [
    ("grid.lr=0.1", "grid.lr: must be a list of values such as [0.1, 0.3], or a distribution"),
    ("seeds=abc", "seeds: must be a whole number or a list; got 'abc'"),
    ("seeds=[a]", "seeds[0]: must be a whole number; got 'a'"),
    ("resources=3", "resources: must be a mapping (key: value); got 3"),
    ("data.subset=1.5", "data.subset: must be a whole number; got 1.5"),
    ("grid=3", "grid: must be a mapping of axes"),
    ("grid=[3]", "grid[0]: must be a mapping of axes"),
    ("early_stop=1", "early_stop: must be a mapping"),
])
def test_messages_name_no_library_types(override, needle):
    with pytest.raises(SpecError) as e:
        parse(apply_overrides(GOOD, [override]), "g.yaml")
    msg = str(e.value)
    assert needle in msg, msg
    for word in ("dict[", "list[", "str,", "any]", "int]", "Resources", "EarlyStop", "Input should"):
        assert word not in msg, msg


def test_the_different_grid_refusal_names_the_missing_trials_and_the_relaunch():
    """An override grew the grid (lr 0.1 -> [0.1, 0.05]) and the original file (lr 0.05 only)
    is relaunched: the folder holds trials the spec lacks; say which and how to go on."""
    from gridrun.launch import _check_growth

    grown = expand(parse(apply_overrides(GOOD, ["grid.lr=[0.1, 0.05]", "seeds=1"])))
    original = expand(parse(apply_overrides(GOOD, ["grid.lr=[0.05]", "seeds=1"])))
    with pytest.raises(SpecError) as e:
        _check_growth("runs/t", grown, original)
    msg = str(e.value)
    assert "holds 4 trial(s) this spec lacks (vanilla_32_0.1_s0, vanilla_64_0.1_s0, tinynet_7k_32_0.1_s0, ...)" in msg
    assert "gridrun launch runs/t/spec.yaml --name t --storage runs" in msg and "lr was" not in msg
