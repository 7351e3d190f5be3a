"""`gridrun report`: tables, the majority-vote ensemble and plots, from what trials wrote.

Reads experiment folders only: never starts Ray, never trains. Every choice (best config per
model, ensemble members) is made on validation accuracy; test accuracy is only reported, and
is recomputed from each trial's saved logits as a check on what the trial said.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from . import GridrunError

# Config fields that never define a "config" (seed is what repeats; the rest is plumbing).
NOT_CONFIG = {"seed", "out_dir", "threads", "gpu_memory_fraction", "data_dir", "device", "eval_batch_size",
              "compile", "amp", "channels_last"}
STUDY_COLUMNS = [("model", "Model"), ("scheduler", "Scheduler"), ("augment", "Augmentation"),
                 ("batch_size", "Batch"), ("epochs", "Epochs")]
AGREE_TOL = 5e-4  # float16 logits may flip a near-tie; more than 5 in 10,000 is a real mismatch


@dataclass
class Trial:
    name: str
    dir: Path | None
    config: dict
    status: str = "pending"      # finished | diverged | failed | unfinished | pending | broken
    reason: str = ""
    params: int | None = None
    history: list = field(default_factory=list)
    val_logits: np.ndarray | None = None
    test_logits: np.ndarray | None = None
    val_labels: np.ndarray | None = None
    test_labels: np.ndarray | None = None
    test_acc_recomputed: float | None = None
    meta: dict = field(default_factory=dict)  # config.json's _meta: params, device, torch, threads

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}

    def group_key(self) -> str:
        return json.dumps({k: v for k, v in self.config.items() if k not in NOT_CONFIG}, sort_keys=True)


@dataclass
class Experiment:
    name: str
    dir: Path
    spec: dict
    trials: list[Trial]
    label_source: str = ""
    test_labels: np.ndarray | None = None  # what every finished trial was scored against


# ---------------------------------------------------------------- reading

def _read_history(path: Path) -> list[dict]:
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            rows.append({k: (float(v) if v not in ("", None, "None") else None) for k, v in row.items()})
    return rows


def _error_reason(path: Path) -> str:
    lines = [l for l in path.read_text(errors="replace").splitlines() if l.strip()]
    last = next((l for l in reversed(lines) if not l.startswith((" ", "\t"))), lines[-1] if lines else "error")
    return last.strip()[:200]


def _load_logits(d: Path, split: str) -> np.ndarray:
    arr = np.load(d / f"logits_{split}.npy")
    if arr.ndim != 2 or not np.isfinite(arr).all():
        raise ValueError(f"logits_{split}.npy has shape {arr.shape} or non-finite values")
    return arr


def read_trial(d: Path | None, name: str, config: dict | None = None) -> Trial:
    """One trial folder -> Trial with its status and reason; a broken file never raises."""
    t = Trial(name=name, dir=d, config=dict(config or {}))
    if d is None or not d.is_dir():
        return t
    try:
        cfg = json.loads((d / "config.json").read_text())
        t.meta = cfg.pop("_meta", {})
        t.params = t.meta.get("params")
        t.config = cfg
    except (OSError, ValueError):
        pass
    t.config = {k: v for k, v in t.config.items() if k != "out_dir"}
    if (d / "metrics.csv").exists():
        try:
            t.history = _read_history(d / "metrics.csv")
        except (OSError, ValueError) as e:
            t.status, t.reason = "broken", f"metrics.csv unreadable ({e})"
            return t
    summary = None
    if (d / "summary.json").exists():
        try:
            summary = json.loads((d / "summary.json").read_text())
        except ValueError as e:
            t.status, t.reason = "broken", f"summary.json unreadable ({e})"
            return t
    if summary is None:
        if (d / "error.txt").exists():
            t.status, t.reason = "failed", _error_reason(d / "error.txt")
        else:
            epochs = t.config.get("epochs", "?")
            t.status, t.reason = "unfinished", f"epoch {len(t.history)} of {epochs} (running, stopped or interrupted)"
        return t
    t.params = t.params or summary.get("params")
    if summary.get("status") != "ok":
        t.status, t.reason = "diverged", summary.get("status", "unknown status")
        return t
    try:
        t.val_logits, t.test_logits = _load_logits(d, "val"), _load_logits(d, "test")
        t.val_labels = np.load(d / "labels_val.npy").astype(np.int64)
        t.test_labels = np.load(d / "labels_test.npy").astype(np.int64)
    except (OSError, ValueError, EOFError) as e:
        t.status, t.reason = "broken", f"finished, but its logits/labels are missing or truncated ({str(e)[:120]})"
        return t
    t.status = "finished"
    return t


def _is_experiment(d: Path) -> bool:
    return d.is_dir() and ((d / "gridrun_trials.json").exists() or any((c / "config.json").exists()
                                                                       for c in d.iterdir() if c.is_dir()))


def load_experiment(path: Path) -> Experiment:
    path = Path(path)
    spec = {}
    if (path / "spec.yaml").exists():
        spec = yaml.safe_load((path / "spec.yaml").read_text()) or {}
    expected = []
    if (path / "gridrun_trials.json").exists():
        expected = json.loads((path / "gridrun_trials.json").read_text())
    dirs = {c.name: c for c in path.iterdir() if c.is_dir() and not c.name.startswith(".")
            and ((c / "config.json").exists() or (c / "params.json").exists() or (c / "error.txt").exists())}
    trials = []
    for e in expected:
        if isinstance(e, dict) and "name" in e:
            trials.append(read_trial(dirs.pop(e["name"], None), e["name"], e.get("train")))
            trials[-1].params = trials[-1].params or e.get("params")
    trials += [read_trial(d, n) for n, d in sorted(dirs.items())]
    exp = Experiment(spec.get("name", path.name), path, spec, trials)
    _check_test_accuracy(exp)
    return exp


def _true_test_labels(exp: Experiment) -> np.ndarray | None:
    """The MNIST test labels from the data files when they can be found, else the trials' own
    (which must then agree with each other)."""
    done = [t for t in exp.trials if t.status == "finished"]
    if not done:
        return None
    try:
        from .data import load_arrays

        labels = load_arrays(done[0].config.get("data_dir"))["test_labels"].astype(np.int64)
        if len(labels) == len(done[0].test_labels):
            exp.label_source = "the MNIST test-label file (checksum verified)" if len(labels) == 10000 \
                else "the test-label file of the trials' data folder"
            return labels
    except GridrunError:
        pass
    first = done[0].test_labels
    if all(np.array_equal(t.test_labels, first) for t in done):
        exp.label_source = "the labels the trials saved (the data files were not found here)"
        return first
    raise GridrunError(f"{exp.dir}: trials saved different test labels and the data files are not here: "
                       f"set GRIDRUN_DATA so the report can check them against MNIST")


def _check_test_accuracy(exp: Experiment) -> None:
    labels = exp.test_labels = _true_test_labels(exp)
    for t in exp.trials:
        if t.status != "finished":
            continue
        if t.test_logits.shape[0] != len(labels):
            t.status, t.reason = "broken", f"logits_test.npy has {t.test_logits.shape[0]} rows for {len(labels)} labels"
            continue
        t.test_acc_recomputed = float((t.test_logits.argmax(1) == labels).mean())
        said = t.final.get("test_acc")
        if said is None or abs(said - t.test_acc_recomputed) > AGREE_TOL:
            t.status = "broken"
            t.reason = f"reported test acc {said} but its logits score {t.test_acc_recomputed:.4f}"


# ---------------------------------------------------------------- ensemble

def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def majority_vote(logits: list[np.ndarray]) -> np.ndarray:
    """Per-image majority vote of the members' argmax; ties go to the larger summed softmax."""
    stack = np.stack([l.astype(np.float32) for l in logits])          # (K, N, C)
    k, n, c = stack.shape
    votes = np.zeros((n, c))
    for preds in stack.argmax(2):
        votes[np.arange(n), preds] += 1
    probs = softmax(stack, 2).sum(0)                                   # (N, C)
    return np.where(votes == votes.max(1, keepdims=True), probs, -np.inf).argmax(1)


def rank_by_validation(trials: list[Trial]) -> list[Trial]:
    """Finished trials, best validation accuracy first (then lower val loss, then name)."""
    done = [t for t in trials if t.status == "finished" and t.final.get("val_acc") is not None
            and not math.isnan(t.final["val_acc"])]
    return sorted(done, key=lambda t: (-t.final["val_acc"], t.final.get("val_loss") or 0.0, t.name))


def ensemble_curve(ranked: list[Trial], labels: np.ndarray, ks: list[int]) -> list[tuple[int, float]]:
    return [(k, float((majority_vote([t.test_logits for t in ranked[:k]]) == labels).mean())) for k in ks]


def _ks(n: int, top_k: int) -> list[int]:
    ks = sorted({k for k in [1, 3, 5, 7, 9, 15, 25, 50, 100, top_k, n] if 1 <= k <= n})
    return ks


# ---------------------------------------------------------------- tables

def _pct(values) -> str:
    v = [x for x in values if x is not None and not math.isnan(x)]
    if not v:
        return "–"
    mean = 100 * float(np.mean(v))
    if len(v) == 1:
        return f"{mean:.2f} (n=1)"
    return f"{mean:.2f} ± {100 * float(np.std(v, ddof=1)):.2f} (n={len(v)})"


def config_groups(trials: list[Trial]) -> dict[str, list[Trial]]:
    """Finished trials grouped by config (every field but the seed and plumbing)."""
    groups: dict[str, list[Trial]] = {}
    for t in trials:
        if t.status == "finished":
            groups.setdefault(t.group_key(), []).append(t)
    return groups


def config_table(exp: Experiment) -> tuple[list[dict], list[str], str]:
    """Rows of the per-config table (markdown-ready), extra varying columns, constraint summary."""
    done = [t for t in exp.trials if t.status == "finished"]
    groups = config_groups(exp.trials)
    varying = sorted({k for t in done for k in t.config if k not in NOT_CONFIG
                      and len({json.dumps(u.config.get(k), sort_keys=True) for u in done}) > 1}
                     - {c for c, _ in STUDY_COLUMNS})
    cons = exp.spec.get("constraints") or {}
    rows = []
    for members in groups.values():
        cfg = members[0].config
        val = [m.final.get("val_acc") for m in members]
        test = [m.test_acc_recomputed for m in members]
        row = {"_model": cfg.get("model"), "_val": np.nanmean([v for v in val if v is not None] or [np.nan]),
               "_test": float(np.mean(test))}
        for k, title in STUDY_COLUMNS[:1]:
            row[title] = cfg.get(k)
        row["Params"] = f"{members[0].params:,}" if members[0].params else "?"
        for k, title in STUDY_COLUMNS[1:]:
            row[title] = cfg.get(k)
        for k in varying:
            row[k] = json.dumps(cfg.get(k)) if isinstance(cfg.get(k), dict) else cfg.get(k)
        row["Train acc"] = _pct([m.final.get("train_acc") for m in members])
        row["Val acc"] = _pct(val)
        row["Test acc"] = _pct(test)
        checks = []
        if cons.get("max_params"):
            checks.append(("params ≤ {:,}".format(cons["max_params"]), (members[0].params or 0) <= cons["max_params"]))
        if cons.get("max_epochs"):
            checks.append((f"epochs ≤ {cons['max_epochs']}", cfg.get("epochs", 0) <= cons["max_epochs"]))
        if cons.get("target_test_acc"):
            checks.append((f"test ≥ {100 * cons['target_test_acc']:.2f}", row["_test"] >= cons["target_test_acc"]))
        for title, ok in checks:
            row[title] = "✓" if ok else "✗"
        row["_ok"] = all(ok for _, ok in checks)
        rows.append(row)
    rows.sort(key=lambda r: (str(r["_model"]), -r["_val"]))
    best = {}
    for r in rows:  # best config per model: highest mean validation accuracy, never test
        if r["_model"] not in best or r["_val"] > best[r["_model"]]["_val"]:
            best[r["_model"]] = r
    for r in best.values():
        for k in list(r):
            if not k.startswith("_") and r[k] not in (None, ""):
                r[k] = f"**{r[k]}**"
    n_ok = sum(r["_ok"] for r in rows)
    summary = ""
    if cons:
        summary = f"{n_ok} of {len(rows)} configs meet every constraint ({', '.join(_cons_words(cons))})."
    return rows, varying, summary


def _cons_words(cons: dict) -> list[str]:
    words = []
    if cons.get("max_params"):
        words.append(f"params ≤ {cons['max_params']:,}")
    if cons.get("max_epochs"):
        words.append(f"epochs ≤ {cons['max_epochs']}")
    if cons.get("target_test_acc"):
        words.append(f"mean test accuracy ≥ {100 * cons['target_test_acc']:.2f}%")
    return words


# ---------------------------------------------------------------- the report

def _plots(exp: Experiment, out_md: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [t for t in exp.trials if t.status == "finished"]
    if not done:
        return []
    names = []
    groups = config_groups(exp.trials)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    models = sorted({str(t.config.get("model")) for t in done})
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(models)}
    for members in groups.values():
        acc = [100 * m.test_acc_recomputed for m in members]
        m0 = members[0]
        ax.errorbar(m0.params or 0, np.mean(acc), yerr=np.std(acc, ddof=1) if len(acc) > 1 else 0, fmt="o",
                    color=colors[str(m0.config.get("model"))], capsize=3, alpha=0.8)
    for m in models:
        ax.plot([], [], "o", color=colors[m], label=m)
    names.append(_finish(plt, fig, ax, "parameters", "test accuracy, % (mean ± std over seeds)",
                         f"{exp.name}: test accuracy against parameters (one point per config)",
                         out_md.with_name(out_md.stem + "_params.png")))

    with_val = [g for g in groups.values() if all(t.final.get("val_acc") is not None for t in g)]
    ranked_groups = sorted(with_val, key=lambda g: -np.mean([t.final["val_acc"] for t in g]))[:5]
    if ranked_groups:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for g in ranked_groups:
            n_ep = min(len(t.history) for t in g)
            curve = 100 * np.mean([[h["val_acc"] for h in t.history[:n_ep]] for t in g], axis=0)
            ax.plot(range(1, n_ep + 1), curve, marker=".", label=f"{_label(g[0], groups)} (n={len(g)})")
        names.append(_finish(plt, fig, ax, "epoch", "validation accuracy, %",
                             f"{exp.name}: validation curves of the best configs (by validation)",
                             out_md.with_name(out_md.stem + "_curves.png")))
    return names


def _label(t: Trial, groups: dict) -> str:
    """A config's model plus the fields in which configs differ."""
    cfgs = [g[0].config for g in groups.values()]
    keys = sorted(k for k in t.config if k not in NOT_CONFIG and k != "model"
                  and len({json.dumps(c.get(k), sort_keys=True) for c in cfgs}) > 1)
    return ", ".join([str(t.config.get("model"))] + [f"{k}={t.config.get(k)}" for k in keys])


def _finish(plt, fig, ax, xlabel: str, ylabel: str, title: str, path: Path) -> str:
    """Label, save (no timestamp in the PNG, so reruns give the same bytes), close."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path.name


def write_csv(exp: Experiment, path: Path) -> None:
    keys = sorted({k for t in exp.trials for k in t.config})
    metric_keys = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_acc"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial", "status", "reason", "params", *keys, *[f"final_{k}" for k in metric_keys],
                    "test_acc_recomputed", "train_seconds"])
        for t in exp.trials:
            w.writerow([t.name, t.status, t.reason, t.params,
                        *[json.dumps(t.config.get(k)) if isinstance(t.config.get(k), dict) else t.config.get(k)
                          for k in keys],
                        *[t.final.get(k) for k in metric_keys], t.test_acc_recomputed,
                        round(sum(h.get("seconds") or 0 for h in t.history), 1)])


def render(exp: Experiment, out_md: Path, top_k: int | None = None) -> str:
    import pandas as pd

    top_k = top_k or (exp.spec.get("report") or {}).get("top_k", 5)
    counts = {}
    for t in exp.trials:
        counts[t.status] = counts.get(t.status, 0) + 1
    lines = [f"# {exp.name}", ""]
    if exp.spec.get("description"):
        lines += [exp.spec["description"], ""]
    lines += [f"Experiment folder `{exp.dir}`: {len(exp.trials)} trials; "
              + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + ".", "",
              "Configs are compared by mean validation accuracy (bold: the best config of each model); "
              "test accuracy is the final epoch's, mean ± sample std over seeds, and chose nothing.", ""]
    lines += _conditions(exp)
    rows, _, cons_line = config_table(exp)
    if rows:
        df = pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows])
        lines += ["## Results by config", "", df.to_markdown(index=False), ""]
        if cons_line:
            lines += [cons_line, ""]
    ranked = rank_by_validation(exp.trials)
    done = [t for t in exp.trials if t.status == "finished"]
    if ranked:
        curve = ensemble_curve(ranked, exp.test_labels, _ks(len(ranked), top_k))
        single = [t.test_acc_recomputed for t in done]
        best = ranked[0]
        k_main = min(top_k, len(ranked))
        ens_main = next(a for k, a in curve if k == k_main)
        lines += ["## Ensemble: majority vote of the top K runs by validation accuracy", "",
                  f"Top {k_main} by validation: **{100 * ens_main:.2f}%** test accuracy "
                  f"(members: {', '.join(t.name for t in ranked[:k_main])}).", "",
                  f"- best single run by validation: {best.name}, val {100 * best.final['val_acc']:.2f}%, "
                  f"test {100 * best.test_acc_recomputed:.2f}%",
                  f"- mean single run: {_pct(single)}",
                  "", pd.DataFrame([{"K": k, "test acc, %": 100 * a} for k, a in curve]).to_markdown(index=False, floatfmt=(".0f", ".2f")),
                  "", "Each test image gets the class most members predict; a tie goes to the class with the "
                  "larger summed softmax.", ""]
    elif done:
        lines += ["## Ensemble", "", "No validation split (val_size: 0): members cannot be chosen honestly, "
                  "so no ensemble is reported.", ""]
    if done and len(done) <= 60:
        per = [{"trial": t.name, "seed": t.config.get("seed"), "epochs": len(t.history),
                "val acc, %": 100 * t.final["val_acc"] if t.final.get("val_acc") is not None else float("nan"),
                "test acc, %": 100 * t.test_acc_recomputed,
                "s/epoch": float(np.mean([h["seconds"] for h in t.history]))} for t in sorted(done, key=lambda t: t.name)]
        lines += ["## Runs (final epoch of each)", "", pd.DataFrame(per).to_markdown(index=False, floatfmt=".2f"), ""]
    pics = _plots(exp, out_md)
    if pics:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in pics] + [""]
    other = [t for t in exp.trials if t.status != "finished"]
    if other:
        lines += ["## Trials not in the tables", "",
                  pd.DataFrame([{"trial": t.name, "status": t.status, "reason": t.reason or "not started"}
                                for t in other]).to_markdown(index=False), ""]
    if done:
        lines += ["## Checks", "",
                  f"Test accuracy of every finished trial was recomputed from its saved logits against "
                  f"{exp.label_source} and agrees with what the trial reported (to {AGREE_TOL:.0e}). "
                  f"Per-trial rows: [{out_md.stem}.csv]({out_md.stem}.csv).", ""]
    return "\n".join(lines)


def _conditions(exp: Experiment) -> list[str]:
    """Where and how the trials ran, from what they recorded."""
    metas = [t.meta for t in exp.trials if t.meta]
    out = []
    if metas:
        devs = sorted({f"{m.get('device')} ({m.get('threads')} threads)" for m in metas})
        out.append(f"Ran on {', '.join(devs)}; torch {', '.join(sorted({str(m.get('torch')) for m in metas}))}.")
    launches = exp.dir / "gridrun_launches.jsonl"
    if launches.exists():
        runs = [json.loads(l) for l in launches.read_text().splitlines() if l.strip()]
        if runs:
            last = runs[-1]
            total = sum(r.get("wall_s", 0) for r in runs)
            out.append(f"Launched with `{last['command']}` on {last['cluster']}; wall time "
                       f"{total:.0f} s over {len(runs)} launch(es).")
    return [" ".join(out), ""] if out else []


def find_experiments(targets: list[str], storage: str = "runs") -> list[Path]:
    if not targets:
        root = Path(storage)
        found = sorted(d for d in root.iterdir() if _is_experiment(d)) if root.is_dir() else []
        if not found:
            raise GridrunError(f"no experiments under {root}/: run `gridrun launch SPEC` first or name a folder")
        return found
    paths = []
    for t in targets:
        for cand in (Path(t), Path(storage) / t):
            if cand.is_dir() and _is_experiment(cand):
                paths.append(cand)
                break
        else:
            raise GridrunError(f"no experiment {t!r} (looked for {t} and {Path(storage) / t}): "
                               f"give a name under {storage}/ or an experiment folder")
    return paths


def report(targets: list[str], out: str | None = None, top_k: int | None = None, storage: str = "runs",
           reports_dir: str = "reports", echo=print) -> list[Path]:
    paths = find_experiments(targets, storage)
    if out and len(paths) > 1:
        raise GridrunError("--out names one file but several experiments were given: drop --out")
    written = []
    for p in paths:
        exp = load_experiment(p)
        md = Path(out) if out else Path(reports_dir) / f"{exp.name}.md"
        md.parent.mkdir(parents=True, exist_ok=True)
        text = render(exp, md, top_k)
        md.write_text(text)
        write_csv(exp, md.with_suffix(".csv"))
        echo(text)
        echo(f"wrote {md}, {md.with_suffix('.csv')}")
        written.append(md)
    return written


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="markdown tables, ensemble and plots from experiment folders")
    p.add_argument("targets", nargs="*", metavar="NAME|PATH", help="experiments (default: all under runs/)")
    p.add_argument("--out", default=None, help="markdown file (default reports/NAME.md)")
    p.add_argument("--top-k", type=int, default=None, help="ensemble size (default: the spec's report.top_k, or 5)")
    p.add_argument("--storage", default="runs", help="where experiment names are looked up")
    p.set_defaults(func=lambda a: (report(a.targets, a.out, a.top_k, a.storage), 0)[1])
