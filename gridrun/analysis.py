"""Numbers from an experiment's records, for the report, `status` and `gridrun best`: each config's
seeds summarized, the fields the configs vary, the checks against the spec's constraints, the
config chosen on validation, and the majority-vote ensemble of the runs best on validation.
Computed once per experiment (`analyse`); the callers only render them.

The one place of the validation rule: a config's score is the mean validation accuracy of its
finished seeds (finite values only); the chosen config has the highest score, among the configs
within the spec's budget (parameters, epochs) when it sets one; a tie is kept in trial order and
said, never broken by test accuracy; with no validation value at all (val_size: 0) nothing is
chosen. Identity (which trials are seeds of one config, its id and label) is gridrun/identity.py's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from .identity import config_label, varying_of
from .storage.layout import finite_number
from .results import Experiment, TrialRecord

TIE_TOL = 1e-9  # validation means closer than this are a tie
BUDGET = ("max_params", "max_epochs")  # constraints that bound what may be chosen; the test target is none


def mean_std(values) -> tuple[float | None, float | None, int]:
    """(mean, sample std or None for one value, n) of the finite values."""
    v = [float(x) for x in values if finite_number(x)]
    if not v:
        return None, None, 0
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else None), len(v)


# ---------------------------------------------------------------- configs

@dataclass(frozen=True)
class Check:
    """One config against one of the spec's constraints: `value` (parameters, epochs, mean test
    accuracy) within `limit` or not."""
    name: str           # the constraint's key: max_params, max_epochs or target_test_acc
    limit: float
    value: float | None
    ok: bool


@dataclass
class ConfigSummary:
    """The finished seeds of one config (its numbers computed on first use, then kept)."""
    members: list[TrialRecord]
    varying: list[str] = field(default_factory=list)  # the fields in which the experiment's configs differ
    constraints: dict = field(default_factory=dict)   # the spec's, which `checks` holds it against

    @property
    def config(self) -> dict:
        return self.members[0].config

    @property
    def model(self) -> str:
        return str(self.config.get("model"))

    @cached_property
    def id(self) -> str:
        return self.members[0].trial.config_id

    @cached_property
    def label(self) -> str:
        return config_label(self.config, self.varying)

    @property
    def params(self) -> int | None:
        return self.members[0].params

    @cached_property
    def train(self) -> tuple[float | None, float | None, int]:
        return mean_std(m.final.get("train_acc") for m in self.members)

    @cached_property
    def val(self) -> tuple[float | None, float | None, int]:
        return mean_std(m.final.get("val_acc") for m in self.members)

    @cached_property
    def test(self) -> tuple[float | None, float | None, int]:
        """Final-epoch test accuracy, as recomputed from the trials' predictions where it was."""
        return mean_std(m.test_acc_recomputed if m.test_acc_recomputed is not None else m.final.get("test_acc")
                        for m in self.members)

    @property
    def val_mean(self) -> float | None:
        return self.val[0]

    @cached_property
    def checks(self) -> list[Check]:
        """Against each constraint the spec sets, in the order of constraint_checks."""
        return constraint_checks(self, self.constraints)

    @property
    def within(self) -> bool:
        """Within the budget of the spec's constraints (parameters, epochs; the test target is no budget)."""
        return all(c.ok for c in self.checks if c.name in BUDGET)

    @property
    def meets(self) -> bool:
        """Meets every constraint, the test target included (reported, never a choice)."""
        return all(c.ok for c in self.checks)


def constraint_checks(s: ConfigSummary, cons: dict) -> list[Check]:
    """The config against each constraint the spec sets: parameters, epochs, mean test accuracy."""
    checks = []
    if cons.get("max_params"):
        checks.append(Check("max_params", cons["max_params"], s.params, (s.params or 0) <= cons["max_params"]))
    if cons.get("max_epochs"):
        epochs = s.config.get("epochs")
        checks.append(Check("max_epochs", cons["max_epochs"], epochs, (epochs or 0) <= cons["max_epochs"]))
    if target := cons.get("target_test_acc"):
        mean = s.test[0]
        checks.append(Check("target_test_acc", target, mean, mean is not None and mean >= target))
    return checks


def config_summaries(trials: list[TrialRecord], cons: dict | None = None,
                     varying: list[str] | None = None) -> list[ConfigSummary]:
    """Finished trials grouped by config (every field but the seed and plumbing), in trial order,
    each checked against the constraints `cons` (the spec's; none: no checks) and labelled by the
    fields `varying` (default: those in which they differ)."""
    groups: dict[str, list[TrialRecord]] = {}
    for t in trials:
        if t.status == "finished":
            groups.setdefault(t.trial.config_key, []).append(t)
    varying = varying if varying is not None else varying_of([g[0].trial.canonical for g in groups.values()])
    return [ConfigSummary(g, varying, cons or {}) for g in groups.values()]


def has_validation(summaries: list[ConfigSummary]) -> bool:
    return any(s.val_mean is not None for s in summaries)


def best_by_validation(summaries: list[ConfigSummary]) -> tuple[ConfigSummary | None, list[ConfigSummary]]:
    """(the config with the highest mean validation accuracy, the others that tie with it); the
    first in trial order among ties; (None, []) when no config has a validation value."""
    scored = [s for s in summaries if s.val_mean is not None]
    if not scored:
        return None, []
    best = max(scored, key=lambda s: s.val_mean)  # max keeps the first of equals
    return best, [s for s in scored if s is not best and abs(s.val_mean - best.val_mean) < TIE_TOL]


def best_per_model(summaries: list[ConfigSummary]) -> dict[str, ConfigSummary]:
    """Each model's best config by mean validation accuracy (models with no validation value: none)."""
    out: dict[str, ConfigSummary] = {}
    for s in summaries:
        if s.val_mean is not None and (s.model not in out or s.val_mean > out[s.model].val_mean):
            out[s.model] = s
    return out


def chosen(summaries: list[ConfigSummary]) -> tuple[ConfigSummary | None, list[ConfigSummary]]:
    """The report's choice: the best by validation among the configs within the budget."""
    return best_by_validation([s for s in summaries if s.within])


def rank_by_validation(trials: list[TrialRecord]) -> list[TrialRecord]:
    """Finished runs, best validation accuracy first (then lower val loss, then name): the
    ensemble's members are the first K."""
    done = [t for t in trials if t.status == "finished" and finite_number(t.final.get("val_acc"))]
    return sorted(done, key=lambda t: (-t.final["val_acc"], t.final.get("val_loss") or 0.0, t.name))


def constraints(exp: Experiment) -> dict:
    """The spec's constraints (none when the spec sets none)."""
    return exp.spec.get("constraints") or {}


@dataclass(frozen=True)
class Analysis:
    """Every number the report, `status` and `gridrun best` show of an experiment's configs."""
    experiment: str                      # its name (the folder's)
    constraints: dict                    # the spec's, as the checks used them
    summaries: list[ConfigSummary]       # finished configs, in trial order
    varying: list[str]                   # the fields in which they differ
    best: ConfigSummary | None           # by validation over every config (status)
    best_ties: list[ConfigSummary]
    chosen: ConfigSummary | None         # by validation within the budget (the report, `best`)
    chosen_ties: list[ConfigSummary]
    best_per_model: dict[str, ConfigSummary]
    ranked: list[TrialRecord]            # finished runs, best validation first

    @property
    def has_validation(self) -> bool:
        return has_validation(self.summaries)

    @property
    def meeting(self) -> int:
        """How many configs meet every constraint (the test target included: a count, no choice)."""
        return sum(s.meets for s in self.summaries)


def analyse(exp: Experiment) -> Analysis:
    """The experiment's configs summarized, checked and chosen on validation, once."""
    cons = constraints(exp)
    summaries = config_summaries(exp.trials, cons, exp.label_fields or None)
    varying = summaries[0].varying if summaries else []
    best, best_ties = best_by_validation(summaries)
    pick, pick_ties = chosen(summaries)
    return Analysis(exp.name, cons, summaries, varying, best, best_ties, pick, pick_ties,
                    best_per_model(summaries), rank_by_validation(exp.trials))


# ---------------------------------------------------------------- the ensemble

def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def decide(votes: np.ndarray, tiebreak: np.ndarray) -> np.ndarray:
    """The one vote rule: per image, the class with the most of the (N, C) `votes`; a tie goes to
    the tied class with the largest `tiebreak` (N, C)."""
    return np.where(votes == votes.max(1, keepdims=True), tiebreak, -np.inf).argmax(1)


def majority_vote(logits: list[np.ndarray]) -> np.ndarray:
    """Per-image majority vote of the members' argmax; ties go to the larger summed softmax."""
    stack = np.stack([l.astype(np.float32) for l in logits])          # (K, N, C)
    k, n, c = stack.shape
    votes = np.zeros((n, c))
    for preds in stack.argmax(2):
        votes[np.arange(n), preds] += 1
    return decide(votes, softmax(stack, 2).sum(0))


def majority_vote_labels(preds: list[np.ndarray]) -> np.ndarray:
    """Per-image majority vote of predicted classes, members best-by-validation first; a tie goes
    to the tied class voted by the best member among those that voted for one (labels only: a
    slim export keeps no logits, so there is no softmax to sum)."""
    stack = np.stack([np.asarray(p, np.int64) for p in preds])        # (K, N)
    k, n = stack.shape
    c = max(10, int(stack.max(initial=0)) + 1)                          # MNIST's 10, or a dataset's classes
    votes, first = np.zeros((n, c)), np.full((n, c), k)                # first: the best member voting a class
    for i in reversed(range(k)):
        votes[np.arange(n), stack[i]] += 1
        first[np.arange(n), stack[i]] = i
    return decide(votes, -first)


def tie_rule(exp: Experiment) -> str:
    """One rule for the whole experiment: summed softmax when every finished trial has logits."""
    return "labels" if exp.labels_only else "softmax"


def vote(members: list[TrialRecord], rule: str) -> np.ndarray:
    """The ensemble's class per test image; members in validation order."""
    if rule == "softmax":
        return majority_vote([t.test_logits for t in members])
    return majority_vote_labels([t.test_preds for t in members])


def ensemble_curve(ranked: list[TrialRecord], labels: np.ndarray, ks: list[int],
                   rule: str = "softmax") -> list[tuple[int, float]]:
    """(K, test accuracy of the top K's vote) for each K in `ks`."""
    if rule == "softmax":
        return _softmax_curve(ranked, labels, ks)
    return [(k, float((vote(ranked[:k], rule) == labels).mean())) for k in ks]


def _softmax_curve(ranked: list[TrialRecord], labels: np.ndarray, ks: list[int]) -> list[tuple[int, float]]:
    """majority_vote's accuracy of the top k for every k, adding one member at a time: each
    member's votes and softmax computed once (5,000 trials: one pass, not a stack of every top k;
    197 s of a 277 s report on the 2-core CPU before)."""
    out, votes, probs = [], None, None
    for i, t in enumerate(ranked[:max(ks, default=0)], 1):
        logits = t.test_logits.astype(np.float32)
        if votes is None:
            votes, probs = np.zeros(logits.shape), np.zeros(logits.shape)
        votes[np.arange(len(logits)), logits.argmax(1)] += 1
        probs += softmax(logits, 1)
        if i in ks:
            out.append((i, float((decide(votes, probs) == labels).mean())))
    return out


def ensemble_sizes(n: int, top_k: int) -> list[int]:
    """The K the report shows: a few round sizes, the spec's top_k and every run."""
    return sorted({k for k in [1, 3, 5, 7, 9, 15, 25, 50, 100, top_k, n] if 1 <= k <= n})


@dataclass(frozen=True)
class Ensemble:
    """The majority vote of the top K runs by validation, and its test accuracy for several K."""
    ranked: list[TrialRecord]            # finished runs, best validation first
    k: int                               # the report's K: top_k, or every run when fewer
    curve: list[tuple[int, float]]       # (K, test accuracy of the top K's vote)
    rule: str                            # how a tied vote is broken: "softmax" or "labels"
    single: tuple[float | None, float | None, int]  # test accuracy of one finished run: mean, std, n

    @property
    def members(self) -> list[TrialRecord]:
        return self.ranked[:self.k]

    @property
    def accuracy(self) -> float:
        return next(a for k, a in self.curve if k == self.k)


def ensemble(exp: Experiment, a: Analysis, top_k: int) -> Ensemble | None:
    """The ensemble of `a`'s runs ranked on validation (None without a validation value), scored
    against the test labels every finished trial was checked against."""
    if not a.ranked:
        return None
    rule = tie_rule(exp)
    done = [t.test_acc_recomputed for t in exp.trials if t.status == "finished"]
    curve = ensemble_curve(a.ranked, exp.test_labels, ensemble_sizes(len(a.ranked), top_k), rule)
    return Ensemble(a.ranked, min(top_k, len(a.ranked)), curve, rule, mean_std(done))
