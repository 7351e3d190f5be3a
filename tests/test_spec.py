from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridrun.cli import main
from gridrun.spec import SpecError, check_budget, expand, load_trials, parse

GRIDS = Path(__file__).resolve().parent.parent / "grids"
GOOD = {"name": "t", "base": {"epochs": 2}, "grid": {"model": ["vanilla", "tinynet_7k"], "batch_size": [32, 64]},
        "seeds": 3, "resources": {"cpu": 1, "gpu": 0.25}}


def test_expansion_is_the_cross_product_times_seeds():
    trials = expand(parse(GOOD))
    assert len(trials) == 2 * 2 * 3
    assert len({t["name"] for t in trials}) == 12
    combos = {(t["train"]["model"], t["train"]["batch_size"], t["train"]["seed"]) for t in trials}
    assert len(combos) == 12 and all(t["train"]["epochs"] == 2 for t in trials)
    assert all(t["train"]["gpu_memory_fraction"] == 0.25 for t in trials)  # soft GPU-memory cap


def test_dict_axis_sets_fields_jointly():
    spec = parse({"name": "z", "grid": {"run": [{"model": "vanilla", "batch_size": 64},
                                               {"model": "tinynet_7k", "batch_size": 128}]}})
    assert [(t["train"]["model"], t["train"]["batch_size"]) for t in expand(spec)] == \
        [("vanilla", 64), ("tinynet_7k", 128)]


@pytest.mark.parametrize("patch,needle", [
    ({"resourcs": {}}, "unknown key 'resourcs' (did you mean 'resources'?)"),
    ({"resources": {"gpus": 1}}, "unknown key 'resources.gpus' (did you mean 'gpu'?)"),
    ({"base": {"learning_rat": 0.1}}, "unknown key 'base.learning_rat'"),
    ({"grid": {"modle": ["vanilla"]}}, "unknown key 'grid.modle' (did you mean 'model'?)"),
    ({"grid": {"model": ["vanila"]}}, "unknown model 'vanila'"),
    ({"base": {"scheduler": "cosin"}}, "scheduler"),
    ({"grid": {"augment": ["rotate+blur"]}}, "unknown augmentation 'blur'"),
    ({"resources": {"gpu": 1.5}}, "gpu must be 0, a fraction in (0, 1]"),
    ({"resources": {"gpu": -0.5}}, "gpu must be"),
    ({"base": {"lr": -1}}, "lr"),
    ({"grid": {"model": []}}, "grid.model is empty"),
])
def test_each_validation_error_is_one_named_line(patch, needle):
    raw = {**GOOD, **patch}
    with pytest.raises(SpecError) as e:
        s = parse(raw, "g.yaml")
        check_budget(s, expand(s))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_over_the_parameter_budget_is_refused():
    s = parse({**GOOD, "constraints": {"max_params": 8000}})
    with pytest.raises(SpecError, match=r"vanilla has 9,182 parameters, over constraints.max_params=8,000"):
        check_budget(s, expand(s))


# Malformed specs: whatever the input, the answer is a spec or one SpecError line, never a crash.
_scalar = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(-2, 2, allow_nan=False),
                    st.sampled_from(["vanilla", "adam", "step", "rotate", "x", ""]))
_keys = st.sampled_from(["name", "base", "grid", "seeds", "resources", "data", "retries", "constraints",
                         "model", "lr", "gpu", "cpu", "epochs", "early_stop", "bogus"])
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
@given(st.sampled_from(["resources", "data", "constraints", "early_stop"]), _keys, _scalar)
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


def test_tiny_nets_grid_has_216_trials(capsys):
    assert main(["launch", str(GRIDS / "tiny_nets.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "plan: 216 trials" in out and "0215_one_maxpool" in out


def test_bad_yaml_and_missing_file(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("name: x\ngrid: [unclosed\n")
    assert main(["launch", str(tmp_path / "bad.yaml"), "--dry-run"]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["launch", str(tmp_path / "none.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "over.yaml").write_text(yaml.safe_dump({**GOOD, "constraints": {"max_params": 100}}))
    assert main(["launch", str(tmp_path / "over.yaml")]) == 2  # refused before Ray starts
    assert "max_params" in capsys.readouterr().err


def test_early_stop_and_dry_run_plan_for_gpus(tmp_path, capsys):
    spec = parse({**GOOD, "early_stop": {"grace_period": 2}})
    assert spec.early_stop.grace_period == 2 and spec.early_stop.reduction_factor == 3
    from gridrun.launch import _plan

    lines, trials = [], expand(spec)
    check_budget(spec, trials)
    _plan(spec, trials, cpus=16, gpus=2, out=lines.append)
    assert lines[-1].endswith("4 trial(s) per GPU; 2 GPU(s), 16 CPU(s) -> 8 trial(s) at once")
