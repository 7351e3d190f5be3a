"""`gridrun report`: tables, the majority-vote ensemble and plots, from what trials wrote.

Rendering only: experiment folders are read by results.py (files only, no pickles, no code
from the folder) and every number and choice (config summaries, best config per model, the
constraint checks, ensemble members) comes from analysis.py, made on validation accuracy; test
accuracy is only reported, and was recomputed from each trial's saved logits as a check on what
the trial said.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from pathlib import Path

import numpy as np

from . import analysis, reportplots, study, studyview
from .errors import GridrunError
from .config import field_names
from .identity import OFF
from .results import AGREE_TOL, Experiment, TrialRecord, find_experiments, load_experiment
from .storage.layout import ExperimentDir, REFERENCE

STUDY_COLUMNS = [("model", "Model"), ("scheduler", "Scheduler"), ("augment", "Augmentation"),
                 ("batch_size", "Batch"), ("epochs", "Epochs")]


# ---------------------------------------------------------------- tables

def _pm(stats: tuple) -> str:
    """A (mean, std, n) of accuracies as percent: "mean ± std (n=k)", or "mean (n=1)"."""
    mean, std, n = stats
    if mean is None:
        return "–"
    return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "") + f" (n={n})"


def _cell(value):
    """A config value in a table cell (a dict, such as model_args, as its JSON)."""
    return json.dumps(value) if isinstance(value, dict) else value


def _extra_columns(a: analysis.Analysis) -> list[str]:
    """The varying fields beyond the study's own columns: each gets a column of its own."""
    return [k for k in a.varying if k not in {c for c, _ in STUDY_COLUMNS}]


def config_table(a: analysis.Analysis) -> list[dict]:
    """The per-config table's rows (cells by column title): each model's configs, best
    validation first, the best of each model in bold (chosen on validation, never test)."""
    extra = _extra_columns(a)
    bold = {id(s) for s in a.best_per_model.values()}
    order = sorted(a.summaries, key=lambda s: (s.model, -s.val_mean if s.val_mean is not None else math.inf))
    return [_bold(_config_row(s, extra)) if id(s) in bold else _config_row(s, extra) for s in order]


def _config_row(s: analysis.ConfigSummary, extra: list[str]) -> dict:
    cfg = s.config
    row = {title: cfg.get(k) for k, title in STUDY_COLUMNS[:1]}
    row["Params"] = f"{s.params:,}" if s.params else "?"
    row.update({title: cfg.get(k) for k, title in STUDY_COLUMNS[1:]})
    row.update({k: _cell(cfg.get(k)) for k in extra})
    row.update({"Train acc": _pm(s.train), "Val acc": _pm(s.val), "Test acc": _pm(s.test)})
    row.update({_check_title(c): _mark(c) for c in s.checks})
    return row


def _bold(row: dict) -> dict:
    return {k: f"**{v}**" if v not in (None, "") else v for k, v in row.items()}


def _check_title(c: analysis.Check) -> str:
    if c.name == "max_params":
        return f"params ≤ {c.limit:,}"
    if c.name == "max_epochs":
        return f"epochs ≤ {c.limit}"
    return f"test ≥ {100 * c.limit:.2f}"


def _mark(c: analysis.Check) -> str:
    """✓ or ✗; a test mean that misses the target but that the table's two decimals round up to
    it shows its digits."""
    near = (c.name == "target_test_acc" and not c.ok and c.value is not None
            and round(100 * c.value, 2) >= round(100 * c.limit, 2))
    return ("✓" if c.ok else "✗") + (f" ({100 * c.value:.3f})" if near else "")


def _long_label(s: analysis.ConfigSummary, extra: list[str]) -> str:
    """A config in words: its model, the study columns and the extra fields it sets."""
    cfg = s.config
    return ", ".join([str(cfg.get("model"))] + [f"{k} {cfg.get(k)}" for k, _ in STUDY_COLUMNS[1:]]
                     + [f"{k} {_cell(cfg.get(k))}" for k in extra if _cell(cfg.get(k)) not in (None, "", "{}")])


def _constraint_summary(a: analysis.Analysis) -> str:
    """The answer first: the config with the best mean validation accuracy among those within
    the budget (parameters, epochs), and whether its test mean meets the target. How many
    configs' test means pass comes second, said to be no choice: picking among them by test
    accuracy would be choosing on the test set. With no validation value, nothing is chosen."""
    cons = a.constraints
    if not cons:
        return ""
    words = _cons_words(cons)
    budget = [w for w in words if not w.startswith("mean test")]
    lines = []
    if a.chosen is not None:
        lines.append(_choice_line(a, budget) + ".")
    elif a.summaries and not a.has_validation:
        lines.append("No config is chosen: no trial recorded a validation accuracy (val_size: 0).")
    elif budget:
        lines.append(f"No config is within {' and '.join(budget)}.")
    lines.append(f"{a.meeting} of {len(a.summaries)} configs meet every constraint ({', '.join(words)})"
                 + ("; the test set chose none of them." if cons.get("target_test_acc") else "."))
    return " ".join(lines)


def _choice_line(a: analysis.Analysis, budget: list[str]) -> str:
    best, extra = a.chosen, _extra_columns(a)
    where = f" among the configs within {' and '.join(budget)}" if budget else ""
    line = f"Chosen on validation{where}: {_long_label(best, extra)}, val {_pm(best.val)}, test {_pm(best.test)}"
    if target := a.constraints.get("target_test_acc"):
        line += f": it {'meets' if best.meets else 'misses'} the target of {100 * target:.2f}% mean test accuracy"
    if a.chosen_ties:  # validation cannot tell them apart, and test must not: say so, keep the first listed
        line += (f". It ties on validation with {'; '.join(_long_label(t, extra) for t in a.chosen_ties)} "
                 f"(the first listed is shown; test breaks no tie)")
    return line


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


def write_csv(exp: Experiment, path: Path) -> None:
    from .config import DEFAULTS
    from .identity import SINCE

    # a field added later (dataset) gets a column only where some trial sets it: older reports stay as they were
    # and a field that is off (identity.OFF: rungs when empty) too
    keys = sorted({k for t in exp.trials for k in t.config if (k not in SINCE or t.config[k] != DEFAULTS[k])
                   and not (k in OFF and OFF[k](t.config))})
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
                        round(sum(t.epoch_seconds), 1)])


def render(exp: Experiment, out_md: Path, top_k: int | None = None) -> str:
    """The report's markdown (plots are written beside `out_md`): the numbers analysis.py
    computes once, rendered; with several datasets, one section per dataset, each with its own
    configs, choice, ensemble and test set."""
    if len(exp.datasets()) > 1:
        return _render_datasets(exp, out_md, top_k)
    full, (exp, stage) = exp, study.shown(exp)  # a study's tables: its confirmation runs alone
    a = analysis.analyse(exp)
    done = [t for t in exp.trials if t.status == "finished"]
    lines = _header(full, a) + _conditions(full) + studyview.section(full, stage, a, out_md)
    lines += _body(exp, a, out_md, top_k) + _others_section(studyview.others(full) if stage else exp)
    return "\n".join(lines + _checks_section(exp, done, out_md))


def _body(exp: Experiment, a: analysis.Analysis, out_md: Path, top_k: int | None) -> list[str]:
    """Configs, reference, ensemble, runs and plots of one dataset's trials."""
    done = [t for t in exp.trials if t.status == "finished"]
    lines = _config_section(a) + _reference_section(exp, a)
    lines += _ensemble_section(analysis.ensemble(exp, a, _top_k(exp, top_k)), done) + _runs_section(done)
    pics = reportplots.plots(a, out_md)
    if pics:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in pics] + [""]
    return lines


def _render_datasets(exp: Experiment, out_md: Path, top_k: int | None) -> str:
    """One section per dataset: a config of one dataset is never compared with, chosen over or
    voted with a config of another, and each is scored against its own test labels."""
    lines = _header(exp, analysis.analyse(exp)) + _conditions(exp)
    sources = []
    for ds in exp.datasets():
        view = exp.view(ds)
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", ds)
        body = _body(view, analysis.analyse(view), out_md.with_name(f"{out_md.stem}_{safe}.md"), top_k)
        n = sum(t.status == "finished" for t in view.trials)
        lines += [f"## Dataset {ds}", "", f"{len(view.trials)} trials, {n} finished"
                  + (f"; test labels: {view.label_source}." if view.label_source else "."), ""]
        lines += ["#" + x if x.startswith("## ") else x for x in body]
        if view.label_source:
            sources.append(f"{ds}: {view.label_source}")
    done = [t for t in exp.trials if t.status == "finished"]
    checks = _checks_section(exp, done, out_md)
    if checks:
        checks[2] = checks[2].replace(f"against {exp.label_source} ", f"against its own dataset's test labels "
                                                                     f"({'; '.join(sources)}) ")
    return "\n".join(lines + _others_section(exp) + checks)


def _top_k(exp: Experiment, top_k: int | None) -> int:
    """--top-k, else the spec's report.top_k, else 5."""
    if top_k is None:
        top_k = (exp.spec.get("report") or {}).get("top_k", 5)
        top_k = top_k if isinstance(top_k, int) and not isinstance(top_k, bool) and top_k >= 1 else 5
    return top_k


def _header(exp: Experiment, a: analysis.Analysis) -> list[str]:
    lines = [f"# {exp.name}", ""]
    if isinstance(exp.spec.get("description"), str) and exp.spec["description"]:
        lines += [exp.spec["description"], ""]
    counts = exp.counts()
    return lines + [f"Experiment folder `{exp.dir}`: {len(exp.trials)} trials; "
                    + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + ".", "",
                    _compared(a), ""]


def _compared(a: analysis.Analysis) -> str:
    if a.summaries and not a.has_validation:
        return ("No trial recorded a validation accuracy (val_size: 0): no config is chosen or bold, and no "
                "ensemble is formed; test accuracy is the final epoch's, mean ± sample std over seeds, and "
                "chose nothing.")
    return ("Configs are compared by mean validation accuracy (bold: the best config of each model); "
            "test accuracy is the final epoch's, mean ± sample std over seeds, and chose nothing.")


def _config_section(a: analysis.Analysis) -> list[str]:
    import pandas as pd

    rows, cons_line = config_table(a), _constraint_summary(a)
    if not rows:
        return []
    df = pd.DataFrame(rows)
    return ["## Results by config", "", df.to_markdown(index=False), ""] + ([cons_line, ""] if cons_line else [])


TIE_RULES = {"softmax": "a tie goes to the class with the larger summed softmax",
             "labels": "a tie goes to the tied class voted by the member best on validation (some members "
                       "kept predicted labels only, as a slim export does, so there is no softmax to sum)"}


def _ensemble_section(ens: analysis.Ensemble | None, done: list[TrialRecord]) -> list[str]:
    import pandas as pd

    if ens is None:
        return ["## Ensemble", "", "No validation split (val_size: 0): members cannot be chosen honestly, "
                "so no ensemble is reported.", ""] if done else []
    best = ens.ranked[0]
    return ["## Ensemble: majority vote of the top K runs by validation accuracy", "",
            f"Top {ens.k} by validation: **{100 * ens.accuracy:.2f}%** test accuracy "
            f"(members: {', '.join(t.name for t in ens.members)}).", "",
            f"- best single run by validation: {best.name}, val {100 * best.final['val_acc']:.2f}%, "
            f"test {100 * best.test_acc_recomputed:.2f}%",
            f"- mean single run: {_pm(ens.single)}",
            "", pd.DataFrame([{"K": k, "test acc, %": 100 * acc} for k, acc in ens.curve]).to_markdown(
                index=False, floatfmt=(".0f", ".2f")),
            "", f"Each test image gets the class most members predict; {TIE_RULES[ens.rule]}.", ""]


def _runs_section(done: list[TrialRecord]) -> list[str]:
    import pandas as pd

    if not done or len(done) > 60:
        return []
    per = [{"trial": t.name, "seed": t.config.get("seed"), "epochs": len(t.history),
            "val acc, %": 100 * t.final["val_acc"] if t.final.get("val_acc") is not None else float("nan"),
            "test acc, %": 100 * t.test_acc_recomputed,
            "s/epoch": float(np.mean(t.epoch_seconds)) if t.epoch_seconds else float("nan")} for t in sorted(done, key=lambda t: t.name)]
    return ["## Runs (final epoch of each)", "", pd.DataFrame(per).to_markdown(index=False, floatfmt=".2f"), ""]


def _others_section(exp: Experiment) -> list[str]:
    import pandas as pd

    other = [t for t in exp.trials if t.status != "finished"]
    if not other:
        return []
    return ["## Trials not in the tables", "",
            pd.DataFrame([{"trial": t.name, "status": t.status, "reason": t.reason or "not started"}
                          for t in other]).to_markdown(index=False), ""]


def _checks_section(exp: Experiment, done: list[TrialRecord], out_md: Path) -> list[str]:
    unread = ["Files of the experiment that could not be read (the rest is reported without them): "
              + "; ".join(exp.problems) + ".", ""] if exp.problems else []
    if not done:
        return ["## Checks", ""] + unread if unread else []
    scores = "predicted labels (a slim export: the argmax of its logits)" if exp.labels_only else "logits"
    return ["## Checks", "",
            f"Test accuracy of every finished trial was recomputed from its saved {scores} against "
            f"{exp.label_source} and agrees with what the trial reported (to {AGREE_TOL:.0e}). "
            f"Per-trial rows: [{out_md.stem}.csv]({out_md.stem}.csv).", ""] + unread


def _reference_section(exp: Experiment, a: analysis.Analysis) -> list[str]:
    """A study's own numbers (reference.csv, copied from the spec's report.reference at launch)
    set beside gridrun's configs: each reference row is matched on the config fields it names."""
    import pandas as pd

    try:
        text = ExperimentDir(exp.dir).read_reference()
        if text is None:
            return []
        ref = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as e:
        return ["## Beside the study", "", f"{REFERENCE} could not be read ({str(e)[:100]}).", ""]
    keys = [c for c in ref.columns if c in field_names()]
    rows = []
    for _, r in ref.iterrows():
        match = [s for s in a.summaries if all(_same(s.config.get(k), r[k]) for k in keys)]
        one = match[0] if len(match) == 1 else None
        rows.append({"study run": r.get("label", ""), **{k: r[k] for k in keys},
                     "study test acc, %": r.get("test_acc", ""),
                     "gridrun test acc, % (mean ± std)": _pm(one.test) if one else ("no run" if not match else "ambiguous"),
                     "gridrun val acc, %": _pm(one.val) if one else "–"})
    note = ("The study's number is the best epoch of one run, picked on the test set; gridrun's is the "
            "final epoch, mean ± sample std over seeds (n), nothing chosen on test.")
    return ["## Beside the study", "", note, "", pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True), ""]


def _same(value, text: str) -> bool:
    """A config value against a CSV cell (numbers compared as numbers)."""
    if value is None:
        return text in ("", "none", "null", "None")
    try:
        return math.isclose(float(value), float(text))
    except (TypeError, ValueError):
        return str(value) == text


def _conditions(exp: Experiment) -> list[str]:
    """Where and how the trials ran, from what they recorded."""
    metas = [t.meta for t in exp.trials if t.meta]
    out = []
    if metas:
        devs = sorted({f"{m.get('device')} ({m.get('threads')} threads)" for m in metas})
        out.append(f"Ran on {', '.join(devs)}; torch {', '.join(sorted({str(m.get('torch')) for m in metas}))}.")
        gpus = sorted({str(m["gpu"]) for m in metas if m.get("gpu") and "cuda" in str(m.get("device"))})
        if gpus:
            cuda = sorted({f"CUDA {m.get('cuda')}, cuDNN {m.get('cudnn')}" for m in metas if m.get("gpu")})
            peak = [m["peak_gpu_mem_mb"] for m in metas if m.get("peak_gpu_mem_mb")]
            out.append(f"GPU {', '.join(gpus)} ({', '.join(cuda)})"
                       + (f"; peak GPU memory per trial {min(peak):,.0f}–{max(peak):,.0f} MB." if peak else "."))
    if exp.launches:
        last = exp.launches[-1]
        total = sum(r.get("wall_s", 0) for r in exp.launches if isinstance(r.get("wall_s", 0), (int, float)))
        killed = sum(r.get("outcome", "").startswith("killed") for r in exp.launches)
        out.append(f"Launched with `{last.get('command')}` on {last.get('cluster')}; wall time "
                   f"{total:.0f} s over {len(exp.launches)} launch(es)"
                   + (f" ({killed} killed without a record of its end: its time is not counted)." if killed else "."))
        prov = last.get("provenance") or {}
        if prov:
            git = prov.get("git") or {}
            code = (f"code at git {git.get('commit', '?')[:12]}" + (" with uncommitted changes (diff in "
                    "the experiment folder)" if git.get("dirty") else "") if git else "code outside git")
            vers = ", ".join(f"{k} {prov[k]}" for k in ("gridrun", "ray", "python") if prov.get(k))
            gpu = f"; driver {prov['driver']}" if prov.get("driver") else ""
            out.append(f"Provenance: {code}; {vers}{gpu}.")
    return [" ".join(out), ""] if out else []


def report_path(exp: Experiment, reports_dir: str) -> Path:
    """reports/<experiment folder name>.md, with the name made safe: a folder's name can never
    put a report outside reports_dir."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", exp.name).lstrip(".") or "experiment"
    return Path(reports_dir) / f"{safe}.md"


def report(targets: list[str], out: str | None = None, top_k: int | None = None, storage: str = "runs",
           reports_dir: str = "reports", echo=print) -> list[Path]:
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise GridrunError(f"--top-k {top_k}: the ensemble size must be a whole number >= 1")
    paths = find_experiments(targets, storage)
    if out and len(paths) > 1:
        raise GridrunError("--out names one file but several experiments were given: drop --out")
    if out and Path(out).is_dir():
        raise GridrunError(f"--out {out} is a folder: give a file name such as {Path(out) / 'report.md'}")
    written, broken = [], []
    for p in paths:
        try:
            exp = load_experiment(p)
        except (GridrunError, OSError) as e:
            if len(paths) == 1:
                raise
            broken.append(f"{p} ({str(e)[:160]})")
            continue
        md = Path(out) if out else report_path(exp, reports_dir)
        _check_out(md)
        try:
            md.parent.mkdir(parents=True, exist_ok=True)
            text = render(exp, md, top_k)
            md.write_text(text)
            write_csv(exp, md.with_suffix(".csv"))
        except OSError as e:
            raise GridrunError(f"cannot write the report to {md} ({e.strerror or e}): choose another --out") from None
        echo(text)
        echo(f"wrote {md}, {md.with_suffix('.csv')}")
        written.append(md)
    if broken:
        raise BrokenExperiments(written, broken)
    return written


def _check_out(md: Path) -> None:
    """A report (and its .csv) goes to regular files outside every experiment folder, over nothing
    but an earlier report: never onto a device or FIFO, never over someone's file."""
    from .storage.layout import experiment_above

    inside = experiment_above(md)
    if inside is not None:
        raise GridrunError(f"--out {md} is inside the experiment folder {inside}: its readers would meet the "
                           f"report among its trials; give a path outside it")
    csv_ = md.with_suffix(".csv")
    ours = csv_.is_file() and _head(csv_).startswith("trial,status,")  # a report is its .md and this .csv
    for f in (md, csv_):
        if os.path.lexists(f) and not (f.is_file() and ours):
            raise GridrunError(f"--out {md}: {f} exists and is not a report gridrun wrote: give a new file name "
                               f"(or remove it first)")


def _head(f: Path) -> str:
    try:
        with open(f, "rb") as fh:
            return fh.read(64).decode("utf-8", "replace")
    except OSError:
        return ""


class BrokenExperiments(GridrunError):
    """Some experiments could not be read; the others were reported."""

    def __init__(self, written: list[Path], broken: list[str]):
        self.written, self.broken = written, broken
        super().__init__(f"{len(broken)} of {len(written) + len(broken)} experiments could not be read and have no "
                         f"report: {'; '.join(broken)}")
