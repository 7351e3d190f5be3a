import json
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridrun.cli import main
from gridrun.plan import plan_units
from gridrun.record import read_manifest
from gridrun.spec import SpecError, apply_overrides, check_budget, expand, load_trials, parse

GRIDS = Path(__file__).resolve().parent.parent / "grids"
GOOD = {"name": "t", "base": {"epochs": 2}, "grid": {"model": ["vanilla", "tinynet_7k"], "batch_size": [32, 64]},
        "seeds": 3, "resources": {"cpu": 1, "gpu": 0.25}}


def test_expansion_is_the_cross_product_times_seeds():
    trials = expand(parse(GOOD))
    assert len(trials) == 2 * 2 * 3
    assert len({t.name for t in trials}) == 12 and len({t.id for t in trials}) == 12
    combos = {(t.train["model"], t.train["batch_size"], t.train["seed"]) for t in trials}
    assert len(combos) == 12 and all(t.train["epochs"] == 2 for t in trials)
    assert all(t.train["gpu_memory_fraction"] == 0.25 for t in trials)  # soft GPU-memory cap
    assert trials[0].name == "vanilla_32_s0"


def test_names_do_not_depend_on_position():
    """A grown grid keeps every existing trial's name (and identity)."""
    small = {t.name: t.id for t in expand(parse({**GOOD, "seeds": 1}))}
    big = {t.name: t.id for t in expand(parse({**GOOD, "seeds": 3, "grid": {**GOOD["grid"],
                                                                                 "batch_size": [16, 32, 64]}}))}
    assert small.items() <= big.items()


def test_dict_axis_sets_fields_jointly():
    spec = parse({"name": "z", "grid": {"run": [{"model": "vanilla", "batch_size": 64},
                                               {"model": "tinynet_7k", "batch_size": 128}]}})
    assert [(t.train["model"], t.train["batch_size"]) for t in expand(spec)] == \
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
    ({"fuse": 4, "early_stop": {}, "prune": {"rungs": [1]}}, "prune and early_stop", "keep one"),  # early_stop
    # with fuse alone is allowed: it becomes rungs in each group (tests/test_prune.py)
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
    """One data folder per grid, refused before anything runs: the report, status and the ensemble
    score every trial against one test set (a second folder's trials were reported broken)."""
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    for grid in ({"data": [{"data_dir": a, "val_size": 100}, {"data_dir": b, "val_size": 200}]},
                 {"data_dir": [a, b]}):
        want = f"different data_dir values ({a}, {b}): set it once under data:"
        with pytest.raises(SpecError, match=re.escape(want)):
            expand(parse({**GOOD, "grid": grid}))


def test_overrides_are_validated_like_the_file():
    raw = apply_overrides(GOOD, ["seeds=5", "base.epochs=7", "grid.batch_size=[16]", "resources.gpu=0.5"])
    trials = expand(parse(raw))
    assert len(trials) == 2 * 1 * 5 and {t.train["epochs"] for t in trials} == {7}
    assert {t.train["gpu_memory_fraction"] for t in trials} == {0.5}
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
    fused = [u for u in units if u.fused]
    assert sum(len(u.members) for u in units) == 8
    assert all(len(u.members) <= 3 for u in units)
    for u in fused:
        assert len({m.train["model"] for m in u.members}) == 1
    assert [len(u.members) for u in units] == [3, 1, 3, 1]


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
        # a study's trials are asked as it runs (study.py), a grid's expanded here
        assert (spec.search.trials > 0 and not trials if spec.search else trials) and spec.name == path.stem


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
    from gridrun.plan import plan_table

    lines, trials = [], check_budget(spec, expand(spec))
    plan_table(spec, trials, plan_units(spec, trials), cpus=16, gpus=2, out=lines.append)
    assert lines[-1].endswith("4 trial(s) per GPU; 2 GPU(s), 16 CPU(s) -> 8 trial(s) at once")


def test_an_experiment_from_before_a_field_existed_stays_the_same_grid():
    """A manifest written before a config field existed (no key, an id hashed without it) is the
    same grid to a relaunch: the missing field reads as its default. A real change still is not."""
    from gridrun.identity import trial_id
    from gridrun.plan import check_growth

    trials = expand(parse(GOOD))
    old = []
    for t in trials:
        train = {k: v for k, v in t.train.items() if k not in ("precise_bn", "clean_epochs")}
        old.append({"name": t.name, "id": "hashed-by-an-older-version", "train": train})
        assert trial_id(train) == t.id  # identity is by value: a missing field reads as its default
    old = read_manifest(old)  # as a relaunch reads the folder's manifest
    check_growth("runs/t", old, trials)  # no error
    changed = expand(parse({**GOOD, "base": {"epochs": 2, "precise_bn": True}}))
    with pytest.raises(SpecError, match="precise_bn was False, now True"):
        check_growth("runs/t", old, changed)


def test_dry_run_refuses_a_changed_grid_as_the_launch_would(tmp_path, capsys, synth_dir, monkeypatch):
    import json

    monkeypatch.setenv("GRIDRUN_DATA", str(synth_dir))
    spec = tmp_path / "g.yaml"
    spec.write_text(yaml.safe_dump({**GOOD, "base": {"epochs": 2, "subset": 200, "val_size": 100}}))
    trials = load_trials(str(spec))[1]
    (tmp_path / "runs" / "t").mkdir(parents=True)
    (tmp_path / "runs" / "t" / "gridrun_trials.json").write_text(json.dumps([t.to_dict() for t in trials]))
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
    assert {t.train["weight_decay"] for t in trials} == {0.0005}
    assert {t.train["momentum"] for t in trials} == {0.9}
    from gridrun.spec import safe_yaml

    assert safe_yaml("[1_000, 10, 1.5, e3, 1e, 0x1f]", "x") == [1000, 10, 1.5, "e3", "1e", 31]
    assert yaml.safe_load("a: 1e-3") == {"a": "1e-3"}  # PyYAML's own loader is left as it is


def test_yaml_still_refuses_aliases_and_duplicate_keys():
    from gridrun.spec import safe_yaml

    with pytest.raises(SpecError, match="aliases"):
        safe_yaml("a: &x 1e-3\nb: *x\n", "g.yaml")
    with pytest.raises(SpecError, match="appears twice"):
        safe_yaml("lr: 1e-3\nlr: 2e-3\n", "g.yaml")


def test_the_notebook_launch_checks_its_arguments_and_names_a_spec_dict_in_errors(tmp_path):
    """gridrun.launch(spec, storage=5) was a raw TypeError; a spec dict's errors named the
    temporary file it was written to, gone after the call (the probe)."""
    import gridrun
    from gridrun.errors import GridrunError

    with pytest.raises(GridrunError, match=r"^gridrun.launch: storage=5 must be a string \(a path or URI\)$"):
        gridrun.launch({"name": "nb"}, storage=5)
    with pytest.raises(SpecError) as e:
        gridrun.launch({**GOOD, "name": "nb1", "seeds": -1}, storage=str(tmp_path / "runs"), dry_run=True)
    assert str(e.value).startswith("spec dict 'nb1': ") and "gridrun-spec-" not in str(e.value), e.value


def test_a_deeply_nested_spec_is_one_clear_error(tmp_path, capsys):
    """It was `gridrun: internal error: RecursionError` (after 0.6 s of PyYAML's scanner, quadratic
    in the depth): now refused at the 33rd level, naming the file and the line."""
    from gridrun.yamlsafe import safe_yaml

    (tmp_path / "deep.yaml").write_text("name: deep\ngrid:\n  lr: " + "[" * 5000 + "]" * 5000 + "\n")
    assert main(["launch", str(tmp_path / "deep.yaml"), "--dry-run"]) != 0
    err = capsys.readouterr().err
    assert "deep.yaml: YAML nested more than 32 levels deep at line 3" in err and "internal error" not in err, err
    assert err.count("\n") == 1
    assert safe_yaml("a: " + "[" * 30 + "1" + "]" * 30, "x")["a"] == eval("[" * 30 + "1" + "]" * 30)


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
    from gridrun.plan import check_growth

    grown = expand(parse(apply_overrides(GOOD, ["grid.lr=[0.1, 0.05]", "seeds=1"])))
    original = expand(parse(apply_overrides(GOOD, ["grid.lr=[0.05]", "seeds=1"])))
    with pytest.raises(SpecError) as e:
        check_growth("runs/t", grown, original)
    msg = str(e.value)
    assert ("holds trial vanilla_32_0.1_s0 of a different grid: this spec lacks it and 3 more (vanilla_64_0.1_s0, "
            "tinynet_7k_32_0.1_s0, tinynet_7k_64_0.1_s0)") in msg
    assert "gridrun launch runs/t/spec.yaml --name t --storage runs" in msg and "lr was" not in msg


# ---------------------------------------------------------------- issue 30: search beyond the grid

RANDOM = {"name": "r", "base": {"epochs": 1, "model": "tinynet_7k"}, "seeds": 2, "samples": 5,
          "grid": {"batch_size": [32, 64], "lr": {"loguniform": [1e-3, 1]}, "label_smoothing": {"uniform": [0, 0.2]},
                   "step_size": {"randint": [2, 4]}, "augment": {"choice": ["none", "rotate"]}}}


def test_distributions_draw_samples_for_each_list_combination_with_all_seeds():
    trials = expand(parse(RANDOM))
    assert len(trials) == 2 * 5 * 2 and len({t.id for t in trials}) == 20
    configs = {}
    for t in trials:
        c = t.train
        assert 1e-3 <= c["lr"] < 1 and 0 <= c["label_smoothing"] < 0.2 and c["step_size"] in (2, 3, 4)
        assert c["augment"] in ("none", "rotate") and float(f"{c['lr']:.4g}") == c["lr"]  # 4 significant digits
        configs.setdefault(json.dumps({k: v for k, v in c.items() if k != "seed"}, sort_keys=True), []).append(c["seed"])
    assert len(configs) == 10 and all(sorted(s) == [0, 1] for s in configs.values())
    draws = {bs: [t.axes["lr"] for t in trials if t.train["batch_size"] == bs and t.train["seed"] == 0]
             for bs in (32, 64)}
    assert draws[32] == draws[64] and len(set(draws[32])) == 5  # the same draws for each combination
    assert trials[0].name == f"tinynet_7k_32_{trials[0].axes['lr']}_" \
                                f"{trials[0].axes['label_smoothing']}_{trials[0].axes['step_size']}_" \
                                f"{trials[0].axes['augment']}_s0"


def test_sampled_trials_fuse_into_groups():
    spec = parse({**RANDOM, "fuse": 4})
    units = plan_units(spec, expand(spec))
    assert sum(len(u.members) for u in units) == 20
    assert [len(u.members) for u in units] == [4, 4, 2, 4, 4, 2]  # one batch size per group
    assert all(len({m.train["batch_size"] for m in u.members}) == 1 for u in units)


def test_more_samples_grow_the_experiment_and_another_seed_is_a_different_grid():
    from gridrun.plan import check_growth

    five, eight = expand(parse(RANDOM)), expand(parse({**RANDOM, "samples": 8}))
    assert {t.id for t in five} < {t.id for t in eight}
    assert {t.name for t in five} < {t.name for t in eight}
    check_growth("runs/r", five, eight)  # growing: no error
    with pytest.raises(SpecError, match="this spec lacks"):
        check_growth("runs/r", five, expand(parse({**RANDOM, "sample_seed": 1})))


def test_a_discrete_space_gives_distinct_draws_or_a_clear_refusal():
    spec = {"name": "d", "base": {"epochs": 1}, "grid": {"step_size": {"randint": [1, 3]}}, "samples": 3}
    assert sorted(t.train["step_size"] for t in expand(parse(spec))) == [1, 2, 3]  # both ends included
    with pytest.raises(SpecError, match="hold only 3 distinct configs"):
        expand(parse({**spec, "samples": 4}))


def test_dry_run_shows_the_drawn_values(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(RANDOM))
    assert main(["launch", "r.yaml", "--dry-run", "samples=2", "seeds=1"]) == 0
    out = capsys.readouterr().out
    trials = load_trials(tmp_path / "r.yaml", ["samples=2", "seeds=1"])[1]
    assert "plan: 4 trials" in out
    for t in trials:
        assert t.name in out and str(t.axes["lr"]) in out


@pytest.mark.parametrize("grid,extra,needle", [
    ({"lr": {"loguniform": [0, 1]}}, {}, "grid.lr: loguniform needs 0 < low"),
    ({"lr": {"uniform": [1, 0.1]}}, {}, "grid.lr: uniform needs low < high"),
    ({"lr": {"uniform": [1]}}, {}, "grid.lr: uniform takes [low, high], two numbers"),
    ({"lr": {"uniform": ["a", 1]}}, {}, "two numbers"),
    ({"lr": {"logunifrom": [0.1, 1]}}, {}, "unknown distribution 'logunifrom' (did you mean 'loguniform'?)"),
    ({"lr": {"uniform": [0.1, 1], "choice": [1]}}, {}, "a distribution is one key"),
    ({"lr": {"choice": []}}, {}, "choice takes a non-empty list"),
    ({"batch_size": {"uniform": [16, 64]}}, {}, "batch_size takes whole numbers: use {randint"),
    ({"augment": {"loguniform": [1, 2]}}, {}, "augment takes text: use {choice"),
    ({"batch_size": {"randint": [16.5, 64]}}, {}, "randint takes whole-number bounds"),
    ({"nesterov": {"randint": [0, 1]}}, {}, "nesterov takes true or false"),
    ({"lrr": {"uniform": [0.1, 1]}}, {}, "'lrr' is not one (did you mean 'lr'?)"),
    ({"run": {"choice": [{"lrr": 0.1}]}}, {}, "unknown key 'grid.run[].lrr'"),
    ({"lr": {"uniform": [0.1, 1]}}, {"samples": None}, "grid.lr is a distribution: say how many"),
    ({"lr": [0.1]}, {"samples": 3}, "samples: 3 draws configs from distribution axes, but the grid has none"),
    ({"lr": [0.1]}, {"sample_seed": 2, "samples": None}, "sample_seed is set but nothing is sampled"),
    ({"dropout": {"uniform": [0.5, 1.5]}, "model": ["two_maxpool"]}, {}, "dropout="),
])
def test_each_search_mistake_is_one_line(grid, extra, needle):
    raw = {"name": "m", "base": {"epochs": 1}, "grid": grid, "samples": 4, **extra}
    raw = {k: v for k, v in raw.items() if v is not None}
    with pytest.raises(SpecError) as e:
        expand(parse(raw, "g.yaml"))
    msg = str(e.value)
    assert needle in msg and "\n" not in msg, msg


_bounds = st.tuples(st.floats(1e-6, 10, allow_nan=False), st.floats(1.001, 100)).map(lambda b: [b[0], b[0] * b[1]])
_dist = st.one_of(_bounds.map(lambda b: ("loguniform", b)), _bounds.map(lambda b: ("uniform", b)),
                  st.tuples(st.integers(-50, 50), st.integers(1, 50)).map(lambda b: ("randint", [b[0], b[0] + b[1]])),
                  st.lists(st.integers(), min_size=1, max_size=6).map(lambda v: ("choice", v)))


@settings(max_examples=80, deadline=None)
@given(st.dictionaries(st.sampled_from(["lr", "momentum", "gamma", "ema", "extra"]), _dist, min_size=1, max_size=3),
       st.integers(0, 2**40), st.integers(1, 6), st.integers(0, 6))
def test_the_same_spec_draws_the_same_and_more_samples_start_with_the_first(dists, seed, n, m):
    """Draws are a function of (sample_seed, i, axis): the same spec gives the same trials, and
    N + M samples begin with the N (if the space holds them; else the refusal is a SpecError)."""
    from gridrun.spec import sample_configs

    try:
        first = sample_configs(dists, n, seed)
    except SpecError:
        return
    assert sample_configs(dict(dists), n, seed) == first and len({json.dumps(p) for p in first}) == n
    try:
        more = sample_configs(dists, n + m, seed)
    except SpecError:
        return
    assert more[:n] == first
    for point in first:
        for axis, (kind, args) in dists.items():
            if kind == "choice":
                assert point[axis] in args
            elif kind == "randint":
                assert args[0] <= point[axis] <= args[1] and isinstance(point[axis], int)
            else:
                assert args[0] <= point[axis] < args[1]


def test_the_same_spec_expands_to_the_same_trials():
    assert expand(parse(RANDOM)) == expand(parse(json.loads(json.dumps(RANDOM))))


@pytest.mark.slow
def test_a_random_search_launch_fuses_and_grows_like_a_grid(ray_local, synth_dir, tmp_path):
    """Two drawn configs train as one fused group; samples=3 later runs only the third config
    into the same experiment and leaves the first two untouched."""
    import hashlib

    from conftest import write_spec
    from gridrun.launch import launch
    from gridrun.storage.layout import ExperimentDir

    # 2 CPUs a trial: one slot on the test's 2-CPU Ray, so the planner keeps the two in one group
    # (with two slots it splits them so that no CPU idles, issue 38 item 7)
    spec = write_spec(tmp_path / "rs.yaml", synth_dir, grid={"lr": {"loguniform": [0.005, 0.05]}}, samples=2,
                      seeds=1, fuse=4, base={"epochs": 1, "model": "tinynet_7k"}, resources={"cpu": 2, "gpu": 0})
    storage, lines = tmp_path / "runs", []
    assert launch(str(spec), storage=str(storage), out=lines.append) == 0
    assert "2 trials in 1 Tune trials" in "\n".join(lines) and "2 finished" in lines[-1]
    exp = storage / "rs"

    def sums():
        return {n: hashlib.sha256((d / "summary.json").read_bytes()).hexdigest() for n, (d, _) in ExperimentDir(exp).trial_dirs().items()}

    before, lines = sums(), []
    assert launch(str(spec), overrides=["samples=3"], storage=str(storage), out=lines.append) == 0
    after = sums()
    assert "2 of 3 trials already finished" in "\n".join(lines) and len(after) == 3
    assert {n: after[n] for n in before} == before
    assert {n for n in after} == {t.name for t in load_trials(spec, ["samples=3"])[1]}
    with pytest.raises(SpecError, match=r"this spec lacks it.*gridrun launch .*rs/spec.yaml --name rs --storage"):
        launch(str(spec), storage=str(storage), out=lambda _: None)  # the file without the override
    lines = []  # the command the refusal gives goes on with the experiment as it was launched
    assert launch(str(exp / "spec.yaml"), name="rs", storage=str(storage), out=lines.append) == 0
    assert "all 3 trials have finished" in lines[-1]
