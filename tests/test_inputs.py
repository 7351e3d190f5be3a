"""Issue 38 item 9: every numeric input bounded, restore held to its storage and to what an
export can be, report and export outputs only where they belong, full-disk lines that fit the
command."""
import io
import re
import shutil
import tarfile
from pathlib import Path

import pytest

from gridrun.cli import main
from gridrun.config import ConfigError, TrainConfig
from gridrun.errors import GridrunError
from conftest import write_spec

SMOKE = Path(__file__).resolve().parents[1] / "reports" / "runs" / "smoke"


@pytest.mark.parametrize("field, value, said", [
    ("threads", 10**6, "config threads=1000000: must be in [0, 1024]"),
    ("seed", -1, "config seed=-1: must be in [0, 2147483648)"),
    ("seed", 2**31, "config seed=2147483648: must be in [0, 2147483648)"),
    ("split_seed", -1, "config split_seed=-1: must be in [0, 4294967296)"),
    ("split_seed", 2**40, "config split_seed=1099511627776: must be in [0, 4294967296)"),
])
def test_numeric_config_fields_are_bounded(field, value, said):
    with pytest.raises(ConfigError, match=f"^{re.escape(said)}"):
        TrainConfig.from_dict({field: value})


def test_a_subset_larger_than_the_data_is_refused(synth_dir, tmp_path, capsys):
    """A subset above the training images left after validation silently trained on all of them.
    (A seed count is bounded by max_trials: test_hostile's seeds=100000000.)"""
    spec = write_spec(tmp_path / "big.yaml", synth_dir, data={"val_size": 200, "subset": 100_000,
                                                             "data_dir": str(synth_dir)})
    assert main(["launch", str(spec), "--dry-run", "--storage", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "subset=100000 is more than the" in err and "training images left after val_size=200" in err
    from gridrun.data import DataError, load_splits

    with pytest.raises(DataError, match="subset=100000 is more than"):  # `gridrun train` says the same
        load_splits(str(synth_dir), val_size=200, subset=100_000)


def _archive(path: Path, arcroot: str) -> Path:
    """The smoke export as a .tar.gz whose members start with `arcroot` ('./' is `tar -C dir .`)."""
    with tarfile.open(path, "w:gz") as tar:
        if arcroot == "./":
            tar.add(SMOKE, arcname=".")
        else:
            tar.add(SMOKE, arcname=arcroot)
    return path


def test_restore_reads_an_archive_made_with_tar_C_dir_dot(tmp_path, capsys):
    arc = _archive(tmp_path / "smokeflat.tar.gz", "./")
    assert main(["restore", str(arc), "--storage", str(tmp_path / "runs")]) == 0, capsys.readouterr().err
    assert "restored " in capsys.readouterr().out
    assert (tmp_path / "runs" / "smokeflat" / "gridrun_trials.json").is_file()
    assert (tmp_path / "runs" / "smokeflat" / "vanilla_s0" / "metrics.csv").is_file()


def test_restore_name_stays_inside_the_storage_and_members_are_capped(tmp_path, capsys, monkeypatch):
    from gridrun import export

    storage = tmp_path / "deep" / "runs"
    for bad in ("../escape", "a/b", "x\n"):
        assert main(["restore", str(SMOKE), "--storage", str(storage), "--name", bad]) == 2
        assert "is not a safe experiment name" in capsys.readouterr().err
    assert not (tmp_path / "deep" / "escape").exists() and not (storage / "a").exists()
    arc = _archive(tmp_path / "s.tar.gz", "smoke")
    monkeypatch.setattr(export, "MAX_ARCHIVE_MEMBERS", 5)
    with pytest.raises(GridrunError, match="holds more than 5 members"):
        export.restore(str(arc), storage=str(storage))
    assert not (storage / "smoke").exists()


def test_report_outputs_go_only_where_they_belong(tmp_path, capsys):
    exp = tmp_path / "runs" / "smoke"
    shutil.copytree(SMOKE, exp)
    theirs = tmp_path / "notes.md"
    theirs.write_text("my notes\n")
    for out, said in ((exp / "report.md", "is inside the experiment folder"),
                      (theirs, "is not a report gridrun wrote"),
                      (Path("/dev/null"), "is not a report gridrun wrote")):
        assert main(["report", str(exp), "--out", str(out)]) == 2, out
        assert said in capsys.readouterr().err
    assert theirs.read_text() == "my notes\n" and not (exp / "report.md").exists()
    mine = tmp_path / "rep" / "smoke.md"
    assert main(["report", str(exp), "--out", str(mine)]) == 0
    assert main(["report", str(exp), "--out", str(mine)]) == 0  # its own report: rewritten
    capsys.readouterr()


def test_export_outputs_go_only_where_they_belong(tmp_path, capsys):
    other = tmp_path / "runs" / "other"
    other.mkdir(parents=True)
    (other / "gridrun_trials.json").write_text("[]")
    theirs = tmp_path / "backup.tar.gz"
    with tarfile.open(theirs, "w:gz") as tar:
        info = tarfile.TarInfo("mine.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    for out, said in ((other / "smoke", "is inside the experiment folder"),
                      (theirs, "is not an archive `gridrun export` wrote")):
        assert main(["export", str(SMOKE), "--out", str(out)]) == 2, out
        assert said in capsys.readouterr().err
    assert not (other / "smoke").exists() and tarfile.open(theirs).getnames() == ["mine.txt"]
    arc = tmp_path / "s.tar.gz"
    assert main(["export", str(SMOKE), "--out", str(arc)]) == 0
    assert main(["export", str(SMOKE), "--out", str(arc)]) == 0  # over its own earlier archive
    capsys.readouterr()


@pytest.fixture
def small_disk(tmpfs):
    """A 256 KiB tmpfs (conftest.tmpfs)."""
    return tmpfs("256k")


def test_a_full_disk_line_fits_the_command(small_disk, tmp_path, capsys):
    """export and restore on a full disk said "launch with --storage on a larger disk ... to resume"."""
    (small_disk / "filler").write_bytes(b"\1" * (240 * 1024))
    assert main(["export", str(SMOKE), "--out", str(small_disk / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert "the disk is full" in err and "give --out on a larger disk" in err and "launch" not in err, err
    assert main(["restore", str(SMOKE), "--storage", str(small_disk / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert "the disk is full" in err and "restore with --storage on a larger disk" in err and "launch" not in err, err


@pytest.mark.parametrize("argv, said", [
    (["report", "x", "--top-k", "100000"], "--top-k: must be at most 10,000, got 100000"),
    (["launch", "s.yaml", "--fuse", "1000"], "--fuse: must be at most 256, got 1000"),
    (["launch", "s.yaml", "--max-concurrent", "10000000"], "--max-concurrent: must be at most 100,000"),
])
def test_numeric_options_are_bounded(argv, said, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and said in capsys.readouterr().err
