"""Report plots on fabricated experiments: which figures exist, what their axes show, and that
the markdown links exactly the figures written."""
import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from gridrun import report as rep
from gridrun import reportplots
from test_report import logits_for, val_scores

LABELS = np.arange(30) % 10


def trial(exp: Path, name: str, config: dict, val: list[float], params: int = 1000) -> None:
    """A finished trial folder whose validation accuracy per epoch is `val`."""
    d = exp / name
    d.mkdir(parents=True)
    cfg = {"model": "m", "seed": 0, "epochs": len(val), "batch_size": 64, "scheduler": "none", "augment": "none",
           "data_dir": str(exp / "no-data-here"), **config, "_meta": {"params": params}}
    (d / "config.json").write_text(json.dumps(cfg))
    with open(d / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_acc", "lr", "seconds"])
        for e, v in enumerate(val, 1):
            w.writerow([e, 0.1, 0.9, 0.2, v, 1.0, 0.01, 1.0])
    (d / "summary.json").write_text(json.dumps({"status": "ok", "params": params}))
    logits = np.zeros((30, 10), np.float16)
    logits[np.arange(30), LABELS] = 4
    np.save(d / "logits_test.npy", logits)
    np.save(d / "labels_test.npy", LABELS.astype(np.uint8))
    val_labels, val_pred = val_scores(val[-1])  # predictions that score the final validation accuracy
    np.save(d / "logits_val.npy", logits_for(val_pred))
    np.save(d / "labels_val.npy", val_labels.astype(np.uint8))


def one_model_grid(exp: Path) -> None:
    """lr x augment x 2 seeds, one model (one parameter count), 3 epochs."""
    for i, lr in enumerate((0.003, 0.03, 0.3)):
        for j, aug in enumerate(("rotate", "none")):
            for seed in (0, 1):
                top = 0.80 + 0.05 * i + 0.02 * j + 0.01 * seed
                trial(exp, f"lr{lr}_{aug}_s{seed}", {"lr": lr, "augment": aug, "seed": seed},
                      [top - 0.2, top - 0.1, top])


@pytest.fixture
def figures(monkeypatch):
    """The figures the report saves, by file name (still open for inspection)."""
    saved = {}

    def keep(plt, fig, path):
        fig.canvas.draw()
        saved[Path(path).name] = fig
        Path(path).write_bytes(b"png")
        return True

    monkeypatch.setattr(reportplots, "_save", keep)
    yield saved
    import matplotlib.pyplot as plt

    plt.close("all")


def links(md: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)


def test_one_model_grid_plots_accuracy_per_field_and_no_params_plot(tmp_path):
    exp = tmp_path / "runs" / "g"
    one_model_grid(exp)
    out = tmp_path / "reports"
    md = rep.report([str(exp)], reports_dir=str(out), echo=lambda _: None)[0].read_text()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["g_curves.png", "g_hparams.png"]  # one parameter count: no params plot
    assert sorted(links(md)) == pngs and "_params.png" not in md and "parameters" not in md.split("## Plots")[1]
    assert all((out / p).read_bytes().startswith(b"\x89PNG") for p in pngs)


def test_a_stale_params_plot_is_removed_when_it_no_longer_applies(tmp_path):
    exp = tmp_path / "g"
    one_model_grid(exp)
    out = tmp_path / "reports"
    out.mkdir()
    (out / "g_params.png").write_bytes(b"old")
    rep.report([str(exp)], reports_dir=str(out), echo=lambda _: None)
    assert not (out / "g_params.png").exists()


def test_hparams_figure_has_a_log_lr_axis_and_sorted_categories(tmp_path, figures):
    exp = tmp_path / "g"
    one_model_grid(exp)
    rep.report([str(exp)], reports_dir=str(tmp_path / "r"), echo=lambda _: None)
    fig = figures["g_hparams.png"]
    axes = [a for a in fig.axes if a.get_visible()]
    assert [a.get_xlabel() for a in axes] == ["augment", "lr (log scale)"]
    aug, lr = axes
    assert lr.get_xscale() == "log" and aug.get_xscale() == "linear"
    assert [t.get_text() for t in aug.get_xticklabels()] == ["none", "rotate"]
    # one point per config with its mean and error bar (std over its two seeds)
    ys = sorted(round(float(line.get_ydata()[0]), 2) for line in lr.lines if line.get_marker() == "o")
    assert ys == [80.5, 82.5, 85.5, 87.5, 90.5, 92.5]
    assert len(lr.collections) == 6  # the error bars


def test_curves_have_a_seed_band_and_integer_epoch_ticks(tmp_path, figures):
    exp = tmp_path / "g"
    one_model_grid(exp)
    rep.report([str(exp)], reports_dir=str(tmp_path / "r"), echo=lambda _: None)
    ax = figures["g_curves.png"].axes[0]
    assert len(ax.lines) == 5  # the five best configs
    bands = [c for c in ax.collections if c.get_paths()]
    assert len(bands) == 5  # mean ± std across seeds, shaded
    ticks = [t for t in ax.get_xticks() if 1 <= t <= 3]
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert ax.lines[0].get_label() == "m augment=none lr=0.3 (n=2)"  # the readable label, best first


def test_two_models_of_different_size_get_a_params_plot(tmp_path):
    exp = tmp_path / "two"
    for model, params in (("small", 1000), ("big", 9000)):
        for seed in (0, 1):
            trial(exp, f"{model}_s{seed}", {"model": model, "seed": seed}, [0.5, 0.9], params=params)
    out = tmp_path / "reports"
    md = rep.report([str(exp)], reports_dir=str(out), echo=lambda _: None)[0].read_text()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["two_curves.png", "two_hparams.png", "two_params.png"]
    assert sorted(links(md)) == pngs
