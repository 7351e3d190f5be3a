"""Search beyond the grid: the points of a spec's grid, its distribution axes drawn `samples`
times from `sample_seed`."""
from __future__ import annotations

import itertools
import json
import math
import random

from .schema import Spec, SpecError, subgrids

# ---------------------------------------------------------------- search beyond the grid
# An axis may be a distribution instead of a list. `samples: N` configs are drawn from the
# distribution axes once, when the spec is expanded, from `sample_seed`: the trials are known
# before launch, fuse into groups, and grow and resume like grid trials. Draw i of an axis
# depends only on (sample_seed, i, axis), so N + M samples start with the same N.

SAMPLE_DIGITS = 4   # significant digits a drawn real keeps: names and tables read well


def _draw(kind: str, args: list, u: float):
    """The value of a distribution at u in [0, 1): uniform and loguniform on [low, high), randint
    on [low, high] (both included), choice one of the values."""
    if kind == "choice":
        return args[min(int(u * len(args)), len(args) - 1)]
    lo, hi = args
    if kind == "randint":
        return int(lo) + min(int(u * (int(hi) - int(lo) + 1)), int(hi) - int(lo))
    x = lo + u * (hi - lo) if kind == "uniform" else math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
    r = float(f"{x:.{SAMPLE_DIGITS}g}")
    return r if lo <= r < hi else x  # rounding must not step outside the bounds (dropout < 1)


def _space(dists: dict[str, tuple]) -> float:
    """How many distinct draws the distributions hold (infinite when one is real-valued)."""
    n = 1.0
    for kind, args in dists.values():
        if kind == "choice":
            n *= len({json.dumps(a, sort_keys=True) for a in args})
        elif kind == "randint":
            n *= int(args[1]) - int(args[0]) + 1
        else:
            return math.inf
    return n


def sample_configs(dists: dict[str, tuple], n: int, seed: int) -> list[dict]:
    """The first n distinct draws of the distribution axes ({axis: (kind, args)}): draw i of an
    axis comes from (seed, i, axis) alone, and a repeat is skipped, so more samples only add."""
    if _space(dists) < n:
        raise SpecError(f"samples: {n} but the distributions of {', '.join(dists)} hold only "
                        f"{_space(dists):.0f} distinct configs: lower samples, or widen the ranges")
    out, seen, i = [], set(), 0
    while len(out) < n:
        # random.Random(str) seeds from the text's SHA-512: the same draws on every machine and Python.
        point = {a: _draw(k, args, random.Random(f"{seed}:{i}:{a}").random()) for a, (k, args) in dists.items()}
        key = json.dumps(point, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(point)
        i += 1
        if i > 100 * n + 1000:
            raise SpecError(f"samples: {i} draws gave only {len(out)} distinct configs of the {n} samples asked: "
                            f"lower samples, or widen the ranges of {', '.join(dists)}")
    return out


def points(spec: Spec) -> list[dict]:
    """Every point of the grid as {axis: value}, in spec order: list axes crossed, and for each
    combination the `samples` draws of the distribution axes."""
    out = []
    for sub in subgrids(spec):
        lists = {a: v for a, v in sub.items() if isinstance(v, list)}
        dists = {a: next(iter(v.items())) for a, v in sub.items() if isinstance(v, dict)}
        draws = sample_configs(dists, spec.samples, spec.sample_seed) if dists else [{}]
        for combo in itertools.product(*lists.values()):
            for draw in draws:
                point = {**dict(zip(lists, combo)), **draw}
                out.append({a: point[a] for a in sub})
    return out

