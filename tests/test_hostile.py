"""Hostile input: every command-line option and spec key walked through edge values. The
answer is always a zero exit, or exit 2 (bad input) with one line on stderr and no traceback;
exit 1 only where a trial fails on purpose."""
import json

import numpy as np
import pytest
import yaml

from gridrun.cli import main
from gridrun.config import FIELD_TYPES, TrainConfig, field_names
from gridrun.data import write_idx
from conftest import make_data_dir

EDGE = ["", "0", "-1", "1", "2", "1e308", "-1e308", "nan", "inf", "99999999999999999999", "x", "none",
        "[]", "{}", '{"a": 1}', "ü", "../../etc/passwd", "1.5"]


def _ok_or_one_line(rc, err: str) -> None:
    assert "Traceback" not in err, err
    if rc != 0:
        assert err.strip() and err.strip().count("\n") == 0, err


def _run(argv, capsys):
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse refusals
        rc = e.code
    out = capsys.readouterr()
    return rc, out.err


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_data_dir(tmp_path_factory.mktemp("hostile"), n_train=120, n_test=40)


@pytest.mark.parametrize("name", [n for n in field_names() if n != "out_dir"])
def test_every_train_option_through_edge_values(name, capsys, monkeypatch, tiny_data):
    """Each option with each edge value: refused in one line, or accepted into a valid config."""
    seen = []
    monkeypatch.setattr("gridrun.train.train", lambda cfg, on_epoch=None: seen.append(cfg) or
                        {"status": "ok", "params": 1, "epochs": 0, "device": "cpu", "final": {}})
    flag = "--" + name.replace("_", "-")
    values = EDGE if FIELD_TYPES[name].kind != "bool" else [None]
    codes = []
    for v in values:
        argv = ["train", flag] if v is None else ["train", flag, v]
        rc, err = _run(argv + ["--data-dir", str(tiny_data)], capsys)
        _ok_or_one_line(rc, err)
        codes.append(rc)
        if rc == 0:
            TrainConfig.from_dict(seen[-1].to_dict())  # what was accepted is a valid config
    assert set(codes) <= {0, 2}  # accepted, or refused as bad input: never a crash (exit 1)
    assert len(seen) == codes.count(0)  # every accepted value reached training, every refusal stopped before it
    if values != [None]:
        assert 2 in codes  # no option takes every edge value ("x", "nan", "[]", ...)


@pytest.mark.parametrize("extra,code", [
    (["--subset", "10", "--val-size", "10", "--batch-size", "2"], 0),
    (["--val-size", "0", "--scheduler", "cosine"], 0),
    (["--augment", "rotate+affine+jitter+elastic", "--aug", '{"elastic_sigma": 28, "elastic_alpha": 100, '
                                                            '"translate": 1, "scale": 0.99, "rotate_deg": 180}'], 0),
    (["--augment", "align+eva"], 2),  # a recipe joined with an op: refused, the recipe named
    (["--label-smoothing", "0.99", "--lr", "1e9", "--optimizer", "sgd"], 0),  # diverges: a result
    (["--eval-batch-size", "1", "--batch-size", "1000000"], 0),
    (["--model", "chaos_net", "--model-args", '{"fail": "always"}'], 1),  # fails on purpose
    (["--model", "chaos_net", "--model-args", '{"fail": "sometimes"}'], 2),  # not a chaos mode
    (["--ema", "0.999999", "--scheduler", "plateau", "--plateau-metric", "val_acc", "--patience", "0"], 0),
    (["--normalize", "per_image", "--threads", "64"], 0),
])
def test_edge_configs_train_to_the_end_or_fail_as_said(extra, code, capsys, tiny_data, tmp_path):
    # An accepted config trains to the end (exit 0, a summary); a refusal is exit 2 before any
    # training; a trial that fails is exit 1: each with at most one line. (This test used to
    # accept any one-line error, so a trainer that raised on every config passed it.)
    rc, err = _run(["train", "--epochs", "1", "--data-dir", str(tiny_data), "--val-size", "20", *extra,
                    "--out", str(tmp_path / "o")], capsys)
    _ok_or_one_line(rc, err)
    assert rc == code, err
    summary = tmp_path / "o" / "summary.json"
    if code == 2:
        assert not summary.exists(), err  # refused before anything was written
    if code == 0:
        status = json.loads(summary.read_text())["status"]
        assert status == "ok" or status.startswith("diverged"), status


SPEC = {"name": "h", "data": {"val_size": 20, "subset": 40}, "base": {"epochs": 1, "batch_size": 10},
        "grid": {"model": ["tinynet_7k"]}, "seeds": 1, "resources": {"cpu": 1, "gpu": 0}, "retries": 0}
SPEC_EDGES = [None, 0, -1, 1, 1.5, 10**12, "x", "", [], [0, 0], {}, {"x": 1}, True, float("nan"), "../x", "a/b"]
SPEC_KEYS = ["name", "description", "seeds", "retries", "fuse", "max_trials", "grid", "base",
             "data.val_size", "data.subset", "data.split_seed", "data.data_dir", "data.bogus",
             "resources.cpu", "resources.gpu", "early_stop", "early_stop.grace_period",
             "early_stop.reduction_factor", "constraints.max_params", "constraints.max_epochs",
             "constraints.target_test_acc", "report.top_k", "report.reference",
             "grid.model", "grid.lr", "grid.run", "grid.seed", "grid.out_dir",
             *[f"base.{n}" for n in field_names()]]


@pytest.mark.parametrize("key", SPEC_KEYS)
def test_every_spec_key_through_edge_values(key, tmp_path, capsys, tiny_data):
    codes = []
    for i, v in enumerate(SPEC_EDGES):
        raw = json.loads(json.dumps(SPEC))
        raw["data"]["data_dir"] = str(tiny_data)
        node, parts = raw, key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
        path = tmp_path / f"s{i}.yaml"
        path.write_text(yaml.safe_dump(raw))
        rc, err = _run(["launch", str(path), "--dry-run"], capsys)
        _ok_or_one_line(rc, err)
        codes.append(rc)
    assert set(codes) <= {0, 2}  # a plan, or a refusal: never a crash (exit 1)
    if key == "base.model":  # the grid sets model, and a grid axis overrides base: nothing to refuse
        assert codes == [0] * len(SPEC_EDGES)
    else:
        assert 2 in codes  # no key takes every edge value (None, -1, "x", [0, 0], nan, "../x", ...)


@pytest.mark.parametrize("content,says", [
    (b"\x00\x01\x02binary", "is not text (it holds NUL bytes)"), (b"\xff\xfe\xfa", "is not UTF-8 text"),
    (b"", "a spec is a YAML mapping with at least 'name'; got NoneType"),
    (b"- a\n- b\n", "a spec is a YAML mapping with at least 'name'; got list"),
    (b"name: [1, 2\n", "not valid YAML at line 2"),
    (b"name: x\n" + b"y: 1\n" * 10, "YAML key 'y' appears twice (lines 2 and 3)"),
    (b"name: x\ngrid: {lr: [1, 2]}\n" * 2, "YAML key 'name' appears twice (lines 1 and 3)"),
    (b"name: !!python/object/apply:os.system ['true']\n", "not valid YAML at line 1"),
])
def test_spec_files_that_are_not_specs(content, says, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    rc, err = _run(["launch", str(path), "--dry-run"], capsys)
    assert rc == 2 and says in err, err  # refused as bad input (an internal error would be exit 1)
    assert "bad.yaml" in err, err  # the line names the file
    _ok_or_one_line(rc, err)
    rc, err = _run(["launch", str(tmp_path), "--dry-run"], capsys)  # a folder for a spec
    assert rc == 2 and "is a folder" in err


@pytest.mark.parametrize("argv,says", [
    (["launch", "{spec}", "--max-concurrent", "0"], "--max-concurrent: must be >= 1, got 0"),
    (["launch", "{spec}", "--fuse", "-2"], "--fuse: must be >= 1, got -2"),
    (["launch", "{spec}", "--name", "../x", "--dry-run"], "experiment name '../x' is not a safe folder name"),
    (["launch", "{spec}", "seeds=", "--dry-run"], "seeds: must be a whole number or a list; got None"),
    (["launch", "{spec}", "=3", "--dry-run"], "override '=3' is not key=value"),
    (["launch", "{spec}", "grid.lr=[1,", "--dry-run"], "override grid.lr: not valid YAML"),
    (["launch", "{spec}", "base.epochs=1000000000", "--dry-run"], "config epochs=1000000000: must be"),
    (["launch", "{spec}", "seeds=100000000", "--dry-run"], "the grid expands into 100,000,000 trials"),
    (["report", "nope"], "no experiment 'nope'"), (["report", "--top-k", "0"], "--top-k: must be >= 1, got 0"),
    (["status", "nope"], "no experiment 'nope'"), (["status", "--every", "0"], "--every: must be between 0.2 and"),
    (["tensorboard", "nope"], "no experiment folder runs/nope"), (["tensorboard", "--port", "0"], "--port: must be >= 1"),
    (["models", "zzz*"], "no model matches 'zzz*'"), (["train", "--out", "{spec}"], "s.yaml is a file: give a folder"),
    (["nosuchcommand"], "invalid choice: 'nosuchcommand'"), ([], "the following arguments are required: cmd"),
])
def test_other_command_line_edges(argv, says, tmp_path, capsys, tiny_data):
    spec = tmp_path / "s.yaml"
    raw = {**SPEC, "data": {**SPEC["data"], "data_dir": str(tiny_data)}}
    spec.write_text(yaml.safe_dump(raw))
    rc, err = _run([a.replace("{spec}", str(spec)) for a in argv] + (["--storage", str(tmp_path / "runs")]
                                                                      if argv[:1] in (["report"], ["status"]) else []),
                   capsys)
    assert rc == 2 and says in err, err  # refused as bad input (an internal error would be exit 1)
    _ok_or_one_line(rc, err)


def _data_variant(tmp_path, name, mutate):
    d = make_data_dir(tmp_path / name, n_train=120, n_test=40, gz=False)
    mutate(d)
    return d


@pytest.mark.parametrize("name,mutate", [
    ("empty", lambda d: (d / "train-images-idx3-ubyte").write_bytes(b"")),
    ("header_only", lambda d: (d / "train-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1]))),
    ("wrong_kind", lambda d: write_idx(d / "train-labels-idx1-ubyte", np.zeros((120, 28, 28), np.uint8))),
    ("labels_over_9", lambda d: write_idx(d / "t10k-labels-idx1-ubyte", np.full(40, 12, np.uint8))),
    ("count_mismatch", lambda d: write_idx(d / "t10k-labels-idx1-ubyte", np.zeros(39, np.uint8))),
    ("a_folder", lambda d: ((d / "t10k-images-idx3-ubyte").unlink(), (d / "t10k-images-idx3-ubyte").mkdir())),
    ("too_few_to_split", lambda d: (write_idx(d / "train-images-idx3-ubyte", np.zeros((5, 28, 28), np.uint8)),
                                    write_idx(d / "train-labels-idx1-ubyte", np.arange(5, dtype=np.uint8)))),
])
def test_bad_data_folders_are_one_line(name, mutate, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("gridrun.data.CACHE_DIR", tmp_path / "cache")
    from gridrun.data import _load_arrays

    _load_arrays.cache_clear()
    d = _data_variant(tmp_path, name, mutate)
    rc, err = _run(["train", "--epochs", "1", "--data-dir", str(d), "--val-size", "20"], capsys)
    assert rc == 2, err
    _ok_or_one_line(rc, err)


def test_a_foreign_folder_full_of_garbage_reports_and_runs_nothing(tmp_path, capsys):
    """report and status on a folder someone else made: odd files are reported as broken, no
    code from the folder runs (pickled logits are refused, YAML aliases and tags are refused)."""
    exp = tmp_path / "runs" / "foreign"
    marker = tmp_path / "ran"
    for i, (name, content) in enumerate({
        "config.json": b"[1, 2]", "summary.json": b"null", "metrics.csv": b"\x00\xff\xfe",
    }.items()):
        d = exp / f"t{i}"
        d.mkdir(parents=True)
        (d / name).write_bytes(content)
    d = exp / "pickled"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model": "m", "epochs": 1}))
    (d / "metrics.csv").write_text("epoch,val_acc,test_acc\n1,0.9,0.9\n")
    (d / "summary.json").write_text(json.dumps({"status": "ok"}))

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    np.save(d / "logits_val.npy", np.array([Evil()], dtype=object), allow_pickle=True)
    np.save(d / "logits_test.npy", np.array([Evil()], dtype=object), allow_pickle=True)
    (exp / "gridrun_trials.json").write_text('{"not": "a list"}')
    (exp / "gridrun_launches.jsonl").write_text("garbage\n[1]\n")
    (exp / "spec.yaml").write_text("a: &a [1]\nb: *a\nname: !!python/object/apply:os.system ['touch x']\n")
    for argv in (["report", str(exp), "--out", str(tmp_path / "r.md")], ["status", str(exp)],
                 ["status", str(exp), "--json"]):
        rc, err = _run(argv, capsys)
        _ok_or_one_line(rc, err)
        assert rc == 0
    text = (tmp_path / "r.md").read_text()
    assert "| pickled | broken" in text and not marker.exists()
