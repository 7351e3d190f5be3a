"""`gridrun best`: the config the report's validation rule chooses, as text, a spec-ready YAML block
or the command that retrains it; `chosen_config` is the same as a dict (gridrun.launch's handle)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

from . import analysis, study
from .errors import GridrunError
from .report import _cons_words, _pm
from .results import Experiment, find_experiments, load_experiment
from .storage.layout import CONFIG


def best(target: str, storage: str = "runs", how: str = "text") -> str:
    """The config the report's validation rule chooses (within the spec's budget when it sets
    one), with its mean ± std and n: as text, as a spec-ready YAML block, or as the command that
    retrains its first seed's trial; with several datasets, one per dataset (as YAML: one spec
    document each, named after its dataset)."""
    exp = study.shown(load_experiment(find_experiments([target], storage)[0]))[0]  # a study: its confirmation
    if len(exp.datasets()) > 1:
        sep = "---\n" if how == "yaml" else ""
        return "\n".join(f"{sep}# dataset {ds}\n{_best(exp.view(ds), target, how, _tag(ds))}" for ds in exp.datasets())
    return _best(exp, target, how)


def _tag(dataset: str) -> str:
    """A dataset in a spec's name: mnist, or a file's or folder's name without its suffix."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", Path(dataset).stem) or "data"


def _best(exp, target: str, how: str, tag: str = "") -> str:
    """`best` of the trials of one dataset."""
    a = analysis.analyse(exp)
    if not a.summaries:
        raise GridrunError(f"{exp.name} has no finished trial yet: `{shlex.join(['gridrun', 'status', target])}` "
                           f"shows where it is")
    chosen, cons = a.chosen, a.constraints
    if chosen is None:
        budget = " and ".join(w for w in _cons_words(cons) if not w.startswith("mean test"))
        why = ("no trial recorded a validation accuracy (val_size: 0), and test accuracy chooses nothing"
               if not a.has_validation else f"no config is within {budget}")
        raise GridrunError(f"no config of {exp.name} can be chosen: {why}")
    if how == "command":
        first = min(chosen.members, key=lambda t: (t.config.get("seed", 0), t.name))
        return shlex.join(["gridrun", "train", "--config", _shown_path(first.dir / CONFIG)])  # read by a shell
    budget = [w for w in _cons_words(cons) if not w.startswith("mean test")]
    rule = "highest mean validation accuracy" + (f" among the configs within {' and '.join(budget)}" if budget else "")
    numbers = f"val {_pm(chosen.val)}, test {_pm(chosen.test)}"
    tie = (f"; ties on validation with {'; '.join(t.label for t in a.chosen_ties)} (the first in trial order is shown)"
           if a.chosen_ties else "")
    if how == "yaml":
        return _spec_block(exp, chosen, f"# gridrun best {exp.name}: {chosen.label} ({rule}): {numbers}{tie}", tag)
    return (f"{exp.name}: {chosen.label} (config {chosen.id}), chosen by {rule}{tie}\n"
            f"  {numbers}\n  trials: {', '.join(t.name for t in chosen.members)}")


def _shown_path(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def _spec_block(exp: Experiment, chosen, comment: str, tag: str = "") -> str:
    """A YAML spec that reruns the chosen config with as many seeds: data fields under data:, every
    other config field (not seed, not plumbing) under base:."""
    import yaml

    from .config import NOT_CONFIG
    from .spec import Data

    cfg = {k: v for k, v in chosen.config.items() if k not in NOT_CONFIG}
    data = {k: cfg.pop(k) for k in list(cfg) if k in Data.model_fields}
    seeds = sorted({t.config.get("seed", 0) for t in chosen.members})
    spec = {"name": f"{exp.name}-best" + (f"-{tag}" if tag else ""), "data": data, "base": cfg,
            "seeds": seeds if seeds != list(range(len(seeds))) else len(seeds)}
    return comment + "\n" + yaml.safe_dump(spec, sort_keys=False, default_flow_style=False).rstrip()


def chosen_config(target: str, storage: str | None = None) -> dict:
    """`gridrun best` as a dict (gridrun.launch's handle): the chosen config's label, id, fields,
    validation and test accuracy (mean, std, n) and its trials; a study's from its confirmation runs."""
    from .results import resolve_experiment

    exp = study.shown(load_experiment(resolve_experiment(target, storage)))[0]
    a = analysis.analyse(exp)
    if a.chosen is None:
        best(str(exp.dir))  # says why nothing can be chosen
    c = a.chosen
    return {"label": c.label, "config_id": c.id, "config": dict(c.config), "val_acc": c.val, "test_acc": c.test,
            "trials": [t.name for t in c.members], "ties": [t.label for t in a.chosen_ties]}
