"""A study (the spec's `search:`): the grid's axes as a search space, asked `fuse` configs at a
time of Optuna's TPE sampler (or its random one), each batch trained as ordinary (fused)
trials, then the best configs rerun with fresh seeds (the confirmation).

The experiment folder is the study's record; there is no Optuna database. The manifest lists
every trial the study asked, in the order asked, with its stage ("search" or "confirm"), and
each trial's folder says how it ended. Before every ask a new Optuna study is told all of them
in that order (`told`): a finished trial its final validation accuracy; a pruned one as pruned,
with its validation accuracy per epoch; a diverged one 0 (a config that cannot train is bad, not
unknown); any other (pending, interrupted, failed: the next launch runs it) as running, so the
constant liar keeps new asks away from it. The sampler's seed is derived from search.seed and
the number of trials told, so one folder and one seed give the same next suggestions, in this
process or after a relaunch.

One ask fills one fused group: the first suggestion fixes the fields its members must share
(model, batch size, ...: identity.FUSE_SHARED), the other K-1 are asked with those fixed
(Optuna's enqueue_trial with partial parameters), so suggestions of different architectures go
to different groups. A point that was trained before gets the next seed (a repeat is another
seed of the config, never a copy). The objective is validation accuracy; test accuracy chooses
nothing.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from . import results
from .identity import FUSE_SHARED, fuse_key, varying_of
from .plan import Trial
from .spec import SAMPLE_DIGITS, SpecError, check_budget, expand

SEARCH, CONFIRM = "search", "confirm"
ENDED = ("finished", "pruned", "stopped", "diverged")  # a search trial that counts in the budget and is told


# ---------------------------------------------------------------- the search space

def space(spec) -> dict:
    """The grid's axes as Optuna distributions: a list or a choice is categorical (its values
    as tokens: a dict value as its JSON), uniform/loguniform a float, randint an int."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out = {}
    for axis, values in spec.grid.items():
        kind, args = ("choice", values) if isinstance(values, list) else next(iter(values.items()))
        if kind == "choice":
            out[axis] = CategoricalDistribution(list(dict.fromkeys(token(v) for v in args)))
        elif kind == "randint":
            out[axis] = IntDistribution(int(args[0]), int(args[1]))
        else:
            out[axis] = FloatDistribution(float(args[0]), float(args[1]), log=kind == "loguniform")
    return out


def token(v):
    """A value as Optuna's categorical holds it: itself when plain, else its JSON."""
    return v if v is None or isinstance(v, (bool, int, float, str)) else json.dumps(v, sort_keys=True)


def value(axis: str, dist, t):
    """A suggested parameter back as the axis value: a categorical's token as the value it stands
    for, a float rounded to SAMPLE_DIGITS significant digits (names and tables read well)."""
    if isinstance(t, str) and t.startswith(("{", "[")):
        return json.loads(t)
    if isinstance(t, float) and type(dist).__name__ == "FloatDistribution":
        r = float(f"{t:.{SAMPLE_DIGITS}g}")
        return r if dist.low <= r <= dist.high else t
    return t


def shared_axes(spec) -> list[str]:
    """The axes a fused group's members must share: those whose values change the fuse key of the
    spec's config (model, model_args, batch size, a deskewing policy, ...), and ranges over a
    fuse-shared field."""
    from .config import field_names

    fields, out = set(field_names()), []
    for axis, values in spec.grid.items():
        options = values if isinstance(values, list) else values.get("choice")
        if options is None:  # a range of numbers: shared when its field is
            out += [axis] if axis in FUSE_SHARED else []
            continue
        keys = {fuse_key({**spec.data.model_dump(), **spec.base, **(v if axis not in fields else {axis: v})})
                for v in options}
        out += [axis] if len(keys) > 1 else []
    return out


# ---------------------------------------------------------------- what the folder tells

@dataclass(frozen=True)
class Told:
    """One asked trial as the sampler hears it: its point, state, value, per-epoch values."""
    axes: dict
    state: str                      # "complete", "pruned" or "running"
    value: float | None = None
    steps: dict = field(default_factory=dict)  # epoch -> validation accuracy


def told(entries: list[Trial], records: dict[str, results.TrialRecord]) -> list[Told]:
    """The search trials of a manifest (in the order asked) as the sampler is told them."""
    out = []
    for e in entries:
        if e.stage != SEARCH:
            continue
        t = records.get(e.name)
        steps = {int(h["epoch"]): float(h["val_acc"]) for h in (t.history if t else [])
                 if _finite(h.get("val_acc")) and _finite(h.get("epoch"))}
        if t is not None and t.status == "finished" and _finite(t.final.get("val_acc")):
            out.append(Told(e.axes, "complete", float(t.final["val_acc"]), steps))
        elif t is not None and t.status in ("pruned", "stopped"):  # stopped: ASHA's cut of an unfused trial
            out.append(Told(e.axes, "pruned", None, steps))
        elif t is not None and t.status == "diverged":  # a config that cannot train: the worst, not unknown
            out.append(Told(e.axes, "complete", 0.0, steps))
        else:
            out.append(Told(e.axes, "running"))
    return out


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read(exp: Path | None) -> tuple[list[Trial], dict[str, results.TrialRecord]]:
    """The manifest and every trial's record (status and metrics, no logits) of a folder."""
    if exp is None or not Path(exp).is_dir():
        return [], {}
    e = results.load_experiment(Path(exp))
    return e.manifest, {t.name: t for t in e.trials}


# ---------------------------------------------------------------- asking

def sampler(search, n_told: int):
    """The search's sampler for the ask after `n_told` trials: seeded from (seed, n_told)."""
    import optuna

    seed = int(hashlib.sha256(f"{search.seed}:{n_told}".encode()).hexdigest()[:8], 16)
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant_liar is marked experimental
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def optuna_study(search, dists: dict, history: list[Told]):
    """A fresh Optuna study told `history` in order: finished and pruned trials added, the rest
    asked again at their own point (running, for the constant liar)."""
    import optuna
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=sampler(search, len(history)))
    for t in history:
        params = _params(dists, t.axes)
        if t.state == "running":
            study.enqueue_trial(params)
            _suggest(study.ask(), dists)
            continue
        state = TrialState.COMPLETE if t.state == "complete" else TrialState.PRUNED
        study.add_trial(create_trial(state=state, value=t.value, params=params, distributions=dists,
                                     intermediate_values=t.steps))
    return study


def _params(dists: dict, axes: dict) -> dict:
    """A trial's axis values as parameters of the search space (a value outside it is refused)."""
    out = {}
    for a, d in dists.items():
        out[a] = token(axes.get(a))
        try:
            inside = a in axes and d._contains(d.to_internal_repr(out[a]))
        except (ValueError, TypeError):
            inside = False
        if not inside:
            raise SpecError(f"a trial of this study has {a}={axes.get(a, '(none)')!r}, outside the spec's search "
                            f"space: a relaunch may grow search.trials but not narrow the space; launch with "
                            f"--name NEW for a new study")
    return out


def _suggest(trial, dists: dict) -> dict:
    """The trial's point: every axis asked of the sampler (a fixed one returns its fixed value)."""
    return {a: value(a, d, trial._suggest(a, d)) for a, d in dists.items()}


def ask(search, dists: dict, history: list[Told], n: int, k: int, shared: list[str]) -> list[dict]:
    """n new points in groups of up to k: each group's first point fixes the shared axes of the
    rest. Deterministic for one (search.seed, history)."""
    study = optuna_study(search, dists, history)
    points = []
    while len(points) < n:
        size = min(k, n - len(points))
        first = _suggest(study.ask(), dists)
        points.append(first)
        for _ in range(size - 1):
            study.enqueue_trial({a: token(first[a]) for a in shared})
            points.append(_suggest(study.ask(), dists))
    return points


# ---------------------------------------------------------------- the confirmation

def key(axes: dict) -> str:
    return json.dumps(axes, sort_keys=True, default=str)


def to_confirm(entries: list[Trial], records: dict[str, results.TrialRecord], top: int) -> list[dict]:
    """The points the confirmation reruns: the `top` best by mean final validation accuracy of
    their finished search trials (pruned ones never count), first asked first among ties."""
    scores: dict[str, list[float]] = {}
    points: dict[str, dict] = {}
    for e in entries:
        t = records.get(e.name)
        if e.stage == SEARCH and t is not None and t.status == "finished" and _finite(t.final.get("val_acc")):
            scores.setdefault(key(e.axes), []).append(float(t.final["val_acc"]))
            points.setdefault(key(e.axes), e.axes)
    ranked = sorted(scores, key=lambda k: -sum(scores[k]) / len(scores[k]))  # sorted is stable: ties keep order
    return [points[k] for k in ranked[:top]]


def search_settled(entries: list[Trial], records: dict[str, results.TrialRecord], budget: int) -> bool:
    """Every trial of the budget asked and ended (finished, pruned or diverged)."""
    search = [e for e in entries if e.stage == SEARCH]
    return len(search) >= budget and all(
        (records.get(e.name) is not None and records[e.name].status in ENDED)
        for e in search)


# ---------------------------------------------------------------- the next batch as a grid

def slots(spec, max_concurrent: int | None) -> int:
    """How many fused groups one batch asks: --max-concurrent, else as many as this machine
    runs at once (its CPUs, or its GPUs when the spec asks for GPUs)."""
    if max_concurrent:
        return max_concurrent
    r = spec.resources
    if r.gpu:
        import torch

        if torch.cuda.device_count():
            return max(1, int(torch.cuda.device_count() * (1 // r.gpu if r.gpu <= 1 else 1 / r.gpu)))
    return max(1, int((os.cpu_count() or 1) // r.cpu))


def next_grid(spec, exp: Path | None, n_slots: int, out=print) -> tuple[list[Trial], int]:
    """Every trial the study has asked (from the folder), then what it asks now: up to n_slots
    fused groups of the budget it still lacks, or, when the search has ended, the confirmation
    of its best configs. Returns (the grid, how many trials are new)."""
    s = spec.search
    entries, records = read(exp)
    entries = [e for e in entries if e.stage in (SEARCH, CONFIRM) and e.axes is not None]
    runs = [(e.stage, dict(e.axes), e.train.get("seed", 0)) for e in entries]
    asked = sum(stage == SEARCH for stage, _, _ in runs)
    if asked < s.trials:
        dists = space(spec)
        k = max(1, spec.fuse or 1)
        points = ask(s, dists, told(entries, records), min(s.trials - asked, n_slots * k), k, shared_axes(spec))
        for p in points:
            _add(spec, runs, SEARCH, p)
    elif s.confirm and search_settled(entries, records, s.trials):
        confirmed = {key(a) for stage, a, _ in runs if stage == CONFIRM}
        for p in to_confirm(entries, records, s.confirm.top):
            for _ in range(s.confirm.seeds if key(p) not in confirmed else 0):
                _add(spec, runs, CONFIRM, p)
    new = len(runs) - len(entries)
    if new:
        out(f"study: {asked} of {s.trials} search trials asked before; {new} new "
            f"({'confirmation runs' if asked >= s.trials else f'{s.sampler} suggestions'})")
    return trials(spec, runs), new


def _add(spec, runs: list[tuple], stage: str, point: dict) -> None:
    """Append a run of `point` with the first seed at or after the spec's that it has not trained with."""
    used = {seed for _, a, seed in runs if key(a) == key(point)}
    seed = spec.seed_list[0]
    while seed in used:
        seed += 1
    runs.append((stage, point, seed))


def trials(spec, runs: list[tuple[str, dict, int]]) -> list[Trial]:
    """The runs (stage, point, seed) as Trials, in order, expanded as a grid of one point per
    sub-grid would be (spec.expand: names, validation, model checks): search trials with the
    spec's `prune` rungs, the confirmation's without (they run every epoch)."""
    out: list[Trial | None] = [None] * len(runs)
    batches: dict[tuple, list[int]] = {}
    for i, (stage, _, seed) in enumerate(runs):
        batches.setdefault((stage, seed), []).append(i)
    for (stage, seed), idx in batches.items():
        update = {"grid": [{a: [v] for a, v in runs[i][1].items()} for i in idx], "seeds": [seed], "samples": None}
        if stage == CONFIRM and "prune" in type(spec).model_fields:
            update["prune"] = None
        staged = spec.model_copy(update=update)
        for i, t in zip(idx, check_budget(staged, expand(staged))):
            out[i] = t.relabel(stage=stage)
    return out


# ---------------------------------------------------------------- the launch loop

def drive(spec, exp: Path, max_concurrent: int | None, out, run) -> int:
    """Ask, run (`run(grid)`: the launch's Tune path, which records and trains it), re-tell from
    the folder, repeat, until the budget is trained and confirmed; stops at the first batch that
    does not end cleanly (a failure, Ctrl-C, SIGTERM), whose code it returns: a relaunch goes on."""
    n_slots, first = slots(spec, max_concurrent), True
    while True:
        grid, new = next_grid(spec, exp, n_slots, out)
        if not new and not first:
            return 0
        code = run(grid)  # the first batch also runs what an interrupted launch left
        if code:
            return code
        first = False


def is_study(exp) -> bool:
    """Whether an experiment (results.Experiment) was launched as a study."""
    return isinstance(exp.spec.get("search"), dict)


def stages(exp) -> dict[str, str]:
    """Trial name -> its stage, from the manifest (grid trials have none)."""
    return {e.name: e.stage for e in exp.manifest if e.stage}



# ---------------------------------------------------------------- what the report shows of a study

def shown(exp) -> tuple:
    """The trials a study's report tables and chooses from: its confirmation runs once one has
    finished ("confirm"), else its search ("search"); a grid's experiment as it is ("")."""
    from dataclasses import replace

    if not is_study(exp):
        return exp, ""
    stage = stages(exp)
    confirm = [t for t in exp.trials if stage.get(t.name) == CONFIRM]
    which = CONFIRM if any(t.status == "finished" for t in confirm) else SEARCH
    trials = confirm if which == CONFIRM else [t for t in exp.trials if stage.get(t.name) != CONFIRM]
    # labelled by what the search varied: one confirmed config alone would be labelled by its model only
    searched = varying_of([t.trial.canonical for t in exp.trials  # the search's own: its rungs are not the confirmation's
                           if stage.get(t.name) != CONFIRM and t.status in ("finished", "pruned")])
    return replace(exp, trials=trials, label_fields=searched), which


def search_trials(exp) -> list[tuple]:
    """The search's (trial record, its point) in the order asked (the manifest's)."""
    by_name = {t.name: t for t in exp.trials}
    return [(by_name[e.name], e.axes) for e in exp.manifest
            if e.stage == SEARCH and e.name in by_name and e.axes is not None]


def ended_at(t) -> float | None:
    """When a trial wrote its summary (finished, pruned or diverged), from summary.json."""
    v = t.summary.get("finished_at") if isinstance(t.summary, dict) else None
    return float(v) if _finite(v) else None


def best_so_far(records: list, launches: list[dict] | None = None) -> tuple[list, list]:
    """Best final validation accuracy of the finished trials so far: [(trials asked, best)] in ask
    order, and [(seconds since the study began, best)] in the order they ended (the first launch's
    start when recorded, else the first trial's). Pruned trials never count (not finished runs)."""
    done = [(n, t) for n, t in enumerate(records, 1) if t.status == "finished" and _finite(t.final.get("val_acc"))]
    by_n = list(zip([n for n, _ in done], _running_max([float(t.final["val_acc"]) for _, t in done])))
    starts = [float(r["finished_at"]) - float(r["wall_s"]) for r in launches or []
              if _finite(r.get("finished_at")) and _finite(r.get("wall_s"))]
    starts = starts or [ended_at(t) - sum(t.epoch_seconds) for t in records if ended_at(t) is not None]
    timed = sorted((ended_at(t), float(t.final["val_acc"])) for _, t in done if ended_at(t) is not None)
    if not starts or not timed:
        return by_n, []
    t0 = min(starts)
    return by_n, list(zip([at - t0 for at, _ in timed], _running_max([v for _, v in timed])))


def _running_max(values: list[float]) -> list[float]:
    out, best = [], -math.inf
    for v in values:
        best = max(best, v)
        out.append(best)
    return out


def importance(spec, searched: list[tuple]) -> dict[str, float]:
    """Each axis's importance to final validation accuracy over the finished search trials, by
    Optuna's PED-ANOVA evaluator (how far the axis's distribution among the best 10% of trials
    departs from its distribution over all; fANOVA would need scikit-learn); {} with fewer than 5
    finished trials or nothing to apportion."""
    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

    dists = space(spec)
    done = [(t, a) for t, a in searched if t.status == "finished" and _finite(t.final.get("val_acc"))]
    if len(done) < 5:
        return {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for t, axes in done:
        study.add_trial(optuna.trial.create_trial(value=float(t.final["val_acc"]), distributions=dists,
                                                  params=_params(dists, axes)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PED-ANOVA is marked experimental
            return dict(get_param_importances(study, evaluator=PedAnovaImportanceEvaluator()))
    except (RuntimeError, ValueError):  # every axis at one value: nothing to apportion
        return {}

