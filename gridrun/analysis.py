"""Numbers from an experiment's records, for the report, `status` and `gridrun best`: each config's
seeds summarized, the fields the configs vary, and the config chosen on validation.

The one place of the validation rule: a config's score is the mean validation accuracy of its
finished seeds (finite values only); the chosen config has the highest score, among the configs
within the spec's budget (parameters, epochs) when it sets one; a tie is kept in trial order and
said, never broken by test accuracy; with no validation value at all (val_size: 0) nothing is
chosen. Identity (which trials are seeds of one config, its id and label) is gridrun/identity.py's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .identity import config_id, config_key, config_label, varying_fields
from .results import TrialRecord

TIE_TOL = 1e-9  # validation means closer than this are a tie


def finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def mean_std(values) -> tuple[float | None, float | None, int]:
    """(mean, sample std or None for one value, n) of the finite values."""
    v = [float(x) for x in values if finite(x)]
    if not v:
        return None, None, 0
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else None), len(v)


@dataclass
class ConfigSummary:
    """The finished seeds of one config."""
    members: list[TrialRecord]
    varying: list[str] = field(default_factory=list)  # the fields in which the experiment's configs differ

    @property
    def config(self) -> dict:
        return self.members[0].config

    @property
    def id(self) -> str:
        return config_id(self.config)

    @property
    def label(self) -> str:
        return config_label(self.config, self.varying)

    @property
    def params(self) -> int | None:
        return self.members[0].params

    @property
    def val(self) -> tuple[float | None, float | None, int]:
        return mean_std(m.final.get("val_acc") for m in self.members)

    @property
    def test(self) -> tuple[float | None, float | None, int]:
        """Final-epoch test accuracy, as recomputed from the trials' predictions where it was."""
        return mean_std(m.test_acc_recomputed if m.test_acc_recomputed is not None else m.final.get("test_acc")
                        for m in self.members)

    @property
    def val_mean(self) -> float | None:
        return self.val[0]

    def within(self, cons: dict) -> bool:
        """Within the budget of the spec's constraints (parameters, epochs; the test target is no budget)."""
        ok = True
        if cons.get("max_params"):
            ok &= (self.params or 0) <= cons["max_params"]
        if cons.get("max_epochs"):
            ok &= (self.config.get("epochs") or 0) <= cons["max_epochs"]
        return bool(ok)


def config_summaries(trials: list[TrialRecord]) -> list[ConfigSummary]:
    """Finished trials grouped by config (every field but the seed and plumbing), in trial order."""
    groups: dict[str, list[TrialRecord]] = {}
    for t in trials:
        if t.status == "finished":
            groups.setdefault(config_key(t.config), []).append(t)
    varying = varying_fields([g[0].config for g in groups.values()])
    return [ConfigSummary(g, varying) for g in groups.values()]


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
        model = str(s.config.get("model"))
        if s.val_mean is not None and (model not in out or s.val_mean > out[model].val_mean):
            out[model] = s
    return out


def chosen(summaries: list[ConfigSummary], cons: dict | None = None) -> tuple[ConfigSummary | None, list[ConfigSummary]]:
    """The report's choice: the best by validation among the configs within the budget."""
    cons = cons or {}
    return best_by_validation([s for s in summaries if s.within(cons)])


def rank_by_validation(trials: list[TrialRecord]) -> list[TrialRecord]:
    """Finished runs, best validation accuracy first (then lower val loss, then name): the
    ensemble's members are the first K."""
    done = [t for t in trials if t.status == "finished" and finite(t.final.get("val_acc"))]
    return sorted(done, key=lambda t: (-t.final["val_acc"], t.final.get("val_loss") or 0.0, t.name))
