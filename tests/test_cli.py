"""The command line's conventions: overrides anywhere, --version, one error prefix, exit codes,
environment variables, shell completion, `train -h` and `train --config` (issue 30)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from gridrun.cli import main
from gridrun.errors import GridrunError, __version__

ROOT = Path(__file__).resolve().parent.parent
SPEC = {"name": "c", "base": {"epochs": 1}, "grid": {"model": ["vanilla", "tinynet_7k"]}, "seeds": 2}


@pytest.fixture
def spec_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a dry run writes nothing, but never into the repository
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    return path


@pytest.mark.parametrize("argv", [
    ["launch", "c.yaml", "--dry-run", "seeds=1", "--name", "X", "base.epochs=3"],  # after options
    ["launch", "seeds=1", "c.yaml", "base.epochs=3", "--dry-run"],                  # before the spec
    ["launch", "--dry-run", "c.yaml", "seeds=1", "base.epochs=3"],                  # the old place
])
def test_overrides_anywhere_on_the_line(spec_file, argv, capsys):
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "plan: 2 trials" in out
    assert {r["trial"]: r["epochs"] for r in _table(out)} == {"vanilla_s0": "3", "tinynet_7k_s0": "3"}


def _table(out: str) -> list[dict]:
    """The rows of the markdown table a dry run prints."""
    lines = [r for r in out.splitlines() if r.startswith("|")]
    cells = [[c.strip() for c in r.strip("|").split("|")] for r in lines]
    return [dict(zip(cells[0], row)) for row in cells[2:]]


def test_a_stray_word_that_is_no_override_is_refused_in_one_line(spec_file, capsys):
    with pytest.raises(SystemExit) as e:
        main(["launch", "c.yaml", "--dry-run", "oops"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gridrun: error: launch: unrecognized arguments: oops") and "\n" not in err


@pytest.mark.parametrize("argv,code", [(["bogus"], 2), (["launch"], 2), (["train", "--epochs", "x"], 2),
                                       (["report", "nope"], 2), (["launch", "absent.yaml"], 2)])
def test_one_error_prefix(argv, code, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    assert rc == code
    err = capsys.readouterr().err
    assert err.count("gridrun: error:") == 1 and "gridrun: error: gridrun" not in err and err.count("\n") == 1, err


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"gridrun {__version__}"


@pytest.mark.parametrize("raised,code,needle", [
    (GridrunError("bad spec: fix it"), 2, "gridrun: error: bad spec: fix it"),
    (RuntimeError("boom"), 1, "gridrun: internal error: RuntimeError: boom"),
    (KeyboardInterrupt(), 130, "gridrun: interrupted"),
    (PermissionError(13, "Permission denied", "/x"), 2, "gridrun: error: Permission denied: /x"),
])
def test_exit_codes_are_the_documented_ones(raised, code, needle, monkeypatch, capsys):
    def fail(_args):
        raise raised

    monkeypatch.delenv("GRIDRUN_DEBUG", raising=False)
    monkeypatch.setattr("gridrun.cli.cmd_models", fail)
    assert main(["models"]) == code
    assert needle in capsys.readouterr().err
    readme = (ROOT / "README.md").read_text()
    assert f"| {code} |" in readme  # the README's exit-code table names it


def test_storage_and_reports_folders_from_the_environment(tmp_path, monkeypatch, capsys):
    from test_report import LABELS, fake_trial

    monkeypatch.chdir(tmp_path)
    fake_trial(tmp_path / "elsewhere" / "e", "t0", LABELS, val_acc=0.9)
    monkeypatch.setenv("GRIDRUN_STORAGE", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("GRIDRUN_REPORTS", str(tmp_path / "rep"))
    assert main(["report", "e"]) == 0
    assert (tmp_path / "rep" / "e.md").is_file() and not (tmp_path / "reports").exists()
    assert main(["status", "e", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    monkeypatch.delenv("GRIDRUN_STORAGE")
    assert main(["status", "e"]) == 2  # without it, runs/ is looked in: no experiment there


def _fresh_data_module(name: str, monkeypatch):
    """gridrun/data.py executed again as a new module (CACHE_DIR is read when it is imported)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"gridrun.{name}", ROOT / "gridrun" / "data.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_mnist_cache_follows_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _fresh_data_module("_xdg_probe", monkeypatch).CACHE_DIR == tmp_path / "xdg" / "gridrun" / "mnist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert _fresh_data_module("_xdg_probe2", monkeypatch).CACHE_DIR == Path("~/.cache/gridrun/mnist").expanduser()


@pytest.mark.skipif(not shutil.which("bash"), reason="no bash here")
def test_bash_completion_completes_subcommands_and_options(capsys):
    assert main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    probe = ("\nCOMP_WORDS=(gridrun la); COMP_CWORD=1; _shtab_gridrun; echo \"${COMPREPLY[@]}\"\n"
             "COMP_WORDS=(gridrun launch --dry); COMP_CWORD=2; _shtab_gridrun; echo \"${COMPREPLY[@]}\"\n"
             "COMP_WORDS=(gridrun train --optimizer ''); COMP_CWORD=3; _shtab_gridrun; echo \"${COMPREPLY[@]}\"\n")
    out = subprocess.run(["bash", "-c", script + probe], capture_output=True, text=True, check=True).stdout
    lines = [line.split() for line in out.strip().splitlines()]
    assert lines[0] == ["launch"] and lines[1] == ["--dry-run"] and sorted(lines[2]) == ["adam", "adamw", "sgd"]
    assert main(["completion", "zsh"]) == 0 and "#compdef gridrun" in capsys.readouterr().out


def test_train_help_shows_sections_choices_and_the_config_comments(capsys):
    with pytest.raises(SystemExit):
        main(["train", "-h"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "optimisation options:" in text and "execution options:" in text
    assert "--optimizer {adam,adamw,sgd}" in text and "--scheduler {none,step,plateau,onecycle,cosine}" in text
    assert "peak learning rate (onecycle's max_lr) (default 0.2)" in text
    # a comment continued on the next line of config.py arrives whole
    assert "training images (precise BN, Wu & Johnson 2021) (default False)" in text
    assert "one of: chaos_net," in text and "recipes: eva," in text


def test_train_options_and_help_come_from_the_config_fields(capsys):
    from gridrun.config import FIELD_TYPES, TrainConfig

    with pytest.raises(SystemExit):
        main(["train", "-h"])
    out = capsys.readouterr().out
    text, packed = " ".join(out.split()), "".join(out.split())  # argparse wraps lines, even at a hyphen
    for name, info in TrainConfig.model_fields.items():
        if name == "out_dir":  # --out sets it
            continue
        flag = "--" + name.replace("_", "-")
        choices = FIELD_TYPES[name].choices
        assert (f"{flag} {{{','.join(choices)}}}" if choices else flag) in text, name
        assert "".join((info.description or "").split()) in packed, name


def _train(argv, out: Path) -> dict:
    assert main(["train", *argv, "--out", str(out)]) == 0
    return json.loads((out / "config.json").read_text())


@pytest.mark.slow  # two short trainings: 20-40 s on a busy 2-core CPU
def test_train_config_reproduces_a_trial_bit_for_bit(synth_dir, tmp_path, monkeypatch):
    """A trial trained with flags, then again from its own config.json (data found through the
    environment, not the recorded folder): the same config and the same test logits, bit for bit."""
    flags = ["--epochs", "1", "--batch-size", "50", "--subset", "150", "--val-size", "100", "--lr", "0.05",
             "--optimizer", "adam", "--scheduler", "cosine", "--augment", "rotate", "--seed", "3"]
    a = _train([*flags, "--data-dir", str(synth_dir)], tmp_path / "A")
    monkeypatch.setenv("GRIDRUN_DATA", str(synth_dir))
    b = _train(["--config", str(tmp_path / "A" / "config.json")], tmp_path / "B")
    same = {k: v for k, v in a.items() if k not in ("_meta", "out_dir", "data_dir")}
    assert {k: v for k, v in b.items() if k in same} == same and b["data_dir"] is None
    la, lb = (np.load(tmp_path / d / "logits_test.npy") for d in ("A", "B"))
    fa, fb = (json.loads((tmp_path / d / "summary.json").read_text())["final"] for d in ("A", "B"))
    assert la.tobytes() == lb.tobytes() and fa["test_acc"] == fb["test_acc"] and fa["val_loss"] == fb["val_loss"]


def test_train_config_flags_override_its_fields(tmp_path, monkeypatch):
    """`--config FOLDER --epochs 1`: the trial's config with that one field changed; where it ran
    (out_dir, data_dir) and _meta are not taken from the file."""
    seen = {}
    monkeypatch.setattr("gridrun.train.train", lambda cfg, on_epoch=None: seen.setdefault("cfg", cfg) and
                        {"status": "ok", "params": 1, "epochs": 0, "device": "cpu", "final": {}})
    (tmp_path / "T").mkdir()
    (tmp_path / "T" / "config.json").write_text(json.dumps({"model": "vanilla", "lr": 0.05, "seed": 3, "epochs": 4,
                                                            "data_dir": "/gone", "out_dir": "/gone/T",
                                                            "_meta": {"params": 9186}}))
    assert main(["train", "--config", str(tmp_path / "T"), "--epochs", "1"]) == 0
    cfg = seen["cfg"]
    assert (cfg.model, cfg.lr, cfg.seed, cfg.epochs, cfg.data_dir, cfg.out_dir) == ("vanilla", 0.05, 3, 1, None, None)


@pytest.mark.parametrize("content,needle", [(None, "no such file"), ("{not json", "is not JSON"),
                                            ("[1, 2]", "holds list"), ('{"lr": 0.1, "bogus": 1}', "'bogus'"),
                                            ('{"lr": 0.1, "pad": "' + "x" * (2 << 20) + '"}', "at most 1,048,576")])
def test_train_config_bad_file_is_one_line(tmp_path, capsys, content, needle):
    path = tmp_path / "config.json"
    if content is not None:
        path.write_text(content)
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "--config" in err and "\n" not in err
