"""The plan: which trials a launch runs, as which Tune trials. Typed, frozen trials and units.

A `Trial` is one config of the grid (record.Trial, as spec.expand made it); a `Unit`
is one Tune trial: a single trial, or a fused group trained as one. Units cross into Ray as a
plain dict (`Unit.to_tune`) and come back with `Unit.from_tune`: that is the one conversion at
the Tune boundary. `remaining` is what a launch (and its --dry-run) runs: the grid matched to
what the experiment folder holds, read once and planned once.
"""
from __future__ import annotations

import hashlib
import os
import shlex
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from . import results
from .storage.layout import ExperimentDir, SPEC_COPY
from .record import Trial, read_manifest
from .errors import GridrunError
from .spec import Spec, SpecError, name_part


@dataclass(frozen=True)
class Unit:
    """One Tune trial: one trial (`fused` False), or a fused group of trials sharing fuse_key."""
    name: str
    fused: bool
    members: tuple[Trial, ...]

    @property
    def epochs(self) -> int:
        return max((m.train["epochs"] for m in self.members), default=0)

    @property
    def data(self) -> tuple[str, str | None]:
        """(dataset, data_dir) of its members (one: both are part of fuse_key)."""
        return self.members[0].train.get("dataset", "mnist"), self.members[0].train["data_dir"]

    def member_dirs(self, base: str | Path) -> list[Path]:
        """Its trials' folders under `base` (the unit's own folder): the members' inside a group."""
        return [Path(base, m.name) for m in self.members] if self.fused else [Path(base)]

    def to_tune(self) -> dict:
        """The dict Tune carries as the trial's config (and writes to its params.json)."""
        return {"name": self.name, "fused": self.fused, "members": [m.to_dict() for m in self.members]}

    @classmethod
    def from_tune(cls, d: dict) -> "Unit":
        return cls(d["name"], bool(d["fused"]), tuple(Trial.from_dict(m) for m in d["members"]))


def load(spec_path: str, overrides: list[str]) -> tuple[Spec, list[Trial]]:
    """The spec and its validated, budget-checked trials."""
    from .spec import load_trials

    return load_trials(spec_path, overrides)


# ---------------------------------------------------------------- units

def plan_units(spec, todo: list[Trial], keep: dict[str, str] | None = None, slots: int = 1) -> list[Unit]:
    """Tune trials to run: one per trial, or with `fuse: K` groups of up to K trials that share
    FUSE_SHARED, in grid order. A group's name is a hash of its members' identities, so an
    interrupted group is found again by the next launch; `keep` (trial name -> group name)
    holds the members of groups that must stay together (interrupted ones, with a checkpoint).
    Groups are split further (into near-equal parts) while fewer units than `slots` (the trials
    that can run at once) would leave a CPU or GPU slot idle; otherwise chunks are of K."""
    k = spec.fuse or 1
    if k <= 1:
        return [Unit(t.name, False, (t,)) for t in todo]
    kept: dict[str, list[Trial]] = {}
    for t in todo:
        if (keep or {}).get(t.name):
            kept.setdefault(keep[t.name], []).append(t)
    # one member left is still its group (the others pruned or diverged): it resumes in the group's folder
    units = [Unit(g, True, tuple(ms)) for g, ms in kept.items()
             if len(ms) <= k and len({m.fuse_key for m in ms}) == 1]
    taken = {m.name for u in units for m in u.members}
    by_key: dict[str, list[Trial]] = {}
    for t in todo:
        if t.name not in taken:
            by_key.setdefault(t.fuse_key, []).append(t)
    groups = list(by_key.values())
    plain = [-(-len(g) // k) for g in groups]
    # a group that prunes at rungs (a fuse-shared field) is never split: its members compete
    # with each other, and a split would change who is cut (a study asks K configs for one group)
    most = [n if g[0].train.get("rungs") else len(g) for g, n in zip(groups, plain)]
    counts = _spread(most, plain, slots - len(units))
    for members, n in zip(groups, counts):
        for chunk in _chunks(members, k, n):
            if len(chunk) == 1:
                units.append(Unit(chunk[0].name, False, chunk))
                continue
            h = hashlib.sha256("".join(m.id for m in chunk).encode()).hexdigest()[:8]
            units.append(Unit(f"fused_{name_part(chunk[0].train['model'])}_{len(chunk)}x_{h}", True, chunk))
    return units


def _spread(sizes: list[int], counts: list[int], target: int) -> list[int]:
    """More chunks for the groups with the largest chunks, until there are `target` in all or
    every trial is its own: a slot with no unit is a CPU (or GPU share) left idle."""
    counts = list(counts)
    while sum(counts) < target:
        free = [i for i, n in enumerate(sizes) if counts[i] < n]
        if not free:
            break
        i = max(free, key=lambda j: sizes[j] / counts[j])
        counts[i] += 1
    return counts


def _chunks(members: list[Trial], k: int, n: int) -> list[tuple[Trial, ...]]:
    """`members` in grid order as chunks of k (the plain plan: group names stay as they were),
    or, split further, as n chunks of near-equal size."""
    if n <= -(-len(members) // k):
        return [tuple(members[i:i + k]) for i in range(0, len(members), k)]
    size, extra = divmod(len(members), n)
    bounds = [i * size + min(i, extra) for i in range(n + 1)]
    return [tuple(members[a:b]) for a, b in zip(bounds, bounds[1:])]


def slots(spec, nodes: list[tuple[float, float]]) -> int:
    """How many trials can run at once on `nodes` ((CPUs, GPUs) each); refuses a plan in which
    no node can hold one trial, naming the resource (Ray would otherwise wait forever)."""
    r, any_gpu = spec.resources, any(g for _, g in nodes)
    per_node = [min(int(c // r.cpu), _by_gpu(r.gpu, g) if r.gpu and any_gpu else 1 << 30) for c, g in nodes]
    if max(per_node, default=0) >= 1:
        return sum(per_node)
    where = "any node of the cluster" if len(nodes) > 1 else "this machine"
    cpu, gpu = max((c for c, _ in nodes), default=0), max((g for _, g in nodes), default=0)
    if r.cpu > cpu:
        raise SpecError(f"resources.cpu={r.cpu:g} per trial, but {where} has {cpu:g} CPU(s): no trial could ever "
                        f"start; set resources.cpu to at most {cpu:g} (or join a larger cluster with --address)")
    raise SpecError(f"resources.gpu={r.gpu:g} per trial, but {where} has {gpu:g} GPU(s): no trial could ever start; "
                    f"set resources.gpu to at most {gpu:g}")


def ray_nodes(ray) -> list[tuple[float, float]]:
    """(CPUs, GPUs) of each live node of a connected Ray (the `ray` module, passed in: plan imports no Ray)."""
    return [(n["Resources"].get("CPU", 0), n["Resources"].get("GPU", 0)) for n in ray.nodes() if n.get("Alive")]


def _by_gpu(need: float, gpus: float) -> int:
    """Trials a node's GPUs hold: 1 // need per GPU for a share, gpus // need for whole GPUs."""
    return int(gpus * int(1 // need)) if need <= 1 else int(gpus // need)


def regroup(spec, todo: list[Trial], old: list[Trial], exp: Path | None, out, slots: int = 1) -> list[Unit]:
    """The units to run: a fused group interrupted by an earlier launch keeps its members
    together under its name, so they resume from its checkpoint, even when the grid has grown
    (regrouping would restart them from epoch 1); says when one cannot."""
    prior = {e.name: e.group for e in old if e.group}
    has_state = {g for g in set(prior.values()) if exp is not None and any((exp / g).glob("checkpoint_*"))}
    units = plan_units(spec, todo, keep={n: g for n, g in prior.items() if g in has_state}, slots=slots)
    kept, names = {u.name for u in units}, {t.name for t in todo}
    for g in sorted(has_state - kept):
        members = [n for n, gg in prior.items() if gg == g and n in names]
        if members:
            out(f"notice: fused group {g} was interrupted, but its unfinished members {', '.join(members[:4])} are "
                f"regrouped (fuse or the fused fields changed): they start again from epoch 1")
    return units


# ---------------------------------------------------------------- what remains

@dataclass(frozen=True)
class Remaining:
    """The grid against an experiment: every trial (under the experiment's names), the manifest
    it held, the trials it has settled (finished or diverged), and the units still to run."""
    trials: tuple[Trial, ...]
    held: tuple[Trial, ...]
    done: frozenset
    units: tuple[Unit, ...]
    ended: tuple = ()  # (status, count) of the settled trials: finished, diverged, pruned

    @property
    def todo(self) -> tuple[Trial, ...]:
        """The trials still to run, in grid order."""
        return tuple(t for t in self.trials if t.name not in self.done)

    def settled(self) -> str:
        """'N of M trials already finished', or, when some ended otherwise, 'already ended (2 finished, 6 pruned)'."""
        head = f"{len(self.done)} of {len(self.trials)} trials already"
        if {s for s, _ in self.ended} <= {"finished"}:
            return f"{head} finished"
        return f"{head} ended ({', '.join(f'{n} {s}' for s, n in self.ended)})"

    def nothing_left(self, shown: str) -> str:
        verb = "finished" if {s for s, _ in self.ended} <= {"finished"} else "ended"
        return f"{shown}: all {len(self.trials)} trials have {verb}: nothing to run (--fresh starts over)"

    def manifest(self) -> list[dict]:
        """The manifest to record: what it held, and every trial of this grid with the fused group
        it runs in (a settled trial keeps the group it ran in)."""
        merged = {e.name: e.entry(e.group, e.labels) for e in self.held}
        old = {e.name: e for e in self.held}
        group_of = {m.name: u.name for u in self.units if u.fused for m in u.members}
        digests: dict = {}  # per split of the data (each trial recomputed them: ~5 ms a trial off MNIST)
        for t in self.trials:
            e = old.get(t.name)
            settled = t.name in self.done and e is not None
            group = e.group if settled else group_of.get(t.name)
            # a settled trial keeps the checksums of the labels it ran with; the others get this data's
            split = tuple(t.train.get(k, d) for k, d in SPLIT_KEYS)
            if not (settled and e.labels) and split not in digests:
                digests[split] = label_digests(t.train)
            labels = e.labels if settled and e.labels else digests[split]
            merged[t.name] = t.entry(group, labels)
        return list(merged.values())


SPLIT_KEYS = (("dataset", "mnist"), ("data_dir", None), ("val_size", 5000), ("split_seed", 0))  # what the labels depend on


def label_digests(train: dict) -> dict:
    """Checksums of the validation and test labels a trial is scored against, from its dataset's
    label files (the launch has read them): the manifest keeps them, so that a folder whose data
    is not at hand is still checked (results.true_test_labels), whatever the dataset."""
    from .data import DataError, label_digest
    from .datasets import split_labels

    try:
        labels = split_labels(*(train.get(k, d) for k, d in SPLIT_KEYS))
    except DataError:  # no data here (a test's plan); the launch itself has checked it is
        return {}
    return {split: label_digest(labels[split]) for split in ("val", "test")}


def remaining(spec, grid: list[Trial], exp: Path | None, out, shown: str | None = None, nodes=None,
              max_concurrent: int | None = None) -> Remaining:
    """What a launch of `grid` into the experiment folder `exp` (None: a fresh one) runs: names
    matched by value, the grid checked against what the folder holds, settled trials left out,
    interrupted groups kept. `shown` names the experiment in messages (its URI for a mirror).
    `nodes` (called only when something is left to run) gives each node's (CPUs, GPUs): a plan
    no node fits is refused, and fused groups are split over the slots (`slots`), of which at most
    `max_concurrent` are used at once (--max-concurrent: a group is not split for slots left idle)."""
    shown = shown or str(exp)
    held = read_manifest(ExperimentDir(exp).read_manifest()) if exp is not None else []
    grid = adopt_names(held, grid, out, shown)
    if held:
        check_growth(shown, held, grid)
    done, ended = _settled(exp, {t.name for t in grid}, out, shown) if exp is not None and exp.is_dir() \
        else (frozenset(), ())
    todo = [t for t in grid if t.name not in done]
    check_sizes(todo)
    n_slots = slots(spec, nodes()) if todo and nodes is not None else 1
    n_slots = min(n_slots, max_concurrent) if max_concurrent else n_slots
    units = regroup(spec, todo, held, exp, out, n_slots)
    return Remaining(tuple(grid), tuple(held), done, tuple(units), ended)


def _settled(exp: Path, names: set[str], out, shown: str) -> tuple[frozenset, tuple]:
    """The trials of the grid the folder has settled (finished, diverged or pruned, as the one
    reader, results.load_experiment, decides for every command) and how many ended each way; says
    which broken ones are rerun. Refused: trials broken only because the data here is other data."""
    trials = [t for t in results.load_experiment(exp).trials if t.name in names]
    broken = [t for t in trials if t.status == "broken"]
    moved = [t for t in broken if t.data_moved]
    if moved:
        raise GridrunError(f"{shown}: {len(moved)} finished trial(s) saved the labels recorded at launch, but "
                           f"{results.NOT_THE_DATA}: rerunning them would train on other data; "
                           f"{results.put_back(moved[0].config)}, or launch into a new experiment (--name NEW)")
    if broken:
        said = "; ".join(f"{t.name} ({_cut(t.reason, 100)})" for t in broken[:5]) + ("; ..." if len(broken) > 5 else "")
        out(f"{shown}: {len(broken)} broken trial(s) of this grid are rerun: {said}")
    ended = [t for t in trials if t.status in results.SETTLED]
    return frozenset(t.name for t in ended), tuple(sorted(Counter(t.status for t in ended).items()))


def _cut(text: str, n: int) -> str:
    """`text` cut to about n characters at a word's end."""
    return text if len(text) <= n else text[:n].rsplit(" ", 1)[0] + " ..."


def adopt_names(held: list[Trial], grid: list[Trial], out, shown: str) -> list[Trial]:
    """A planned trial that the experiment already holds under another name (the same values
    written another way: an axis instead of base, a default written out, 5e-4 for 0.0005)
    takes that name, so it is found finished, or resumed from its own folder, never run twice."""
    ids: dict[str, str] = {}
    for e in held:
        if e.train:
            ids.setdefault(e.id, e.name)
    if not ids:
        return grid
    matched = [(t.name, ids[t.id]) for t in grid if ids.get(t.id, t.name) != t.name]
    grid = [t.relabel(name=ids.get(t.id, t.name)) for t in grid]
    count = Counter(t.name for t in grid)
    # a new trial whose label reads like an adopted one: its hash tells them apart
    grid = [t.relabel(name=f"{t.name}_{t.id[:6]}") if count[t.name] > 1 and ids.get(t.id) != t.name else t
            for t in grid]
    if matched:
        pairs = ", ".join(f"{new} = {old}" for new, old in matched[:5]) + (", ..." if len(matched) > 5 else "")
        out(f"{shown}: {len(matched)} trial(s) of this grid are already in the experiment under another "
            f"name (the same values, written differently), matched by value and kept under their names: {pairs}")
    return grid


def check_growth(shown: str, held: list[Trial], grid: list[Trial]) -> None:
    """A relaunch may add trials (more seeds, more axis values) but not change or drop one that
    the folder already holds: that would mix results of two different grids."""
    new_ids, by_name = {t.id for t in grid}, {t.name: t for t in grid}
    for e in held:
        # Its identity from its config as this version fills it (record.Trial.read: a field added
        # since it ran at the default that reproduces it), not the id an older version hashed.
        if e.id in new_ids:
            continue
        mate = by_name.get(e.name)  # only a trial of the same name is this one changed
        diff = _changed(dict(e.train), mate.train) if mate is not None else ""
        more = [x.name for x in held if x is not e and x.name not in by_name]
        lacks = f" and {len(more)} more ({', '.join(more[:3])}{', ...' if len(more) > 3 else ''})" if more else ""
        what = f"trial {e.name} of a different grid{diff or f': this spec lacks it{lacks}'}"
        raise SpecError(f"{shown} holds {what}: a relaunch may only add trials; to go on with the experiment as it "
                        f"was launched, {_relaunch(shown, grid)} (overrides added to it grow it), or launch with --name NEW, "
                        f"or --fresh to start over")


def _changed(old: dict, new: dict) -> str:
    """The first config field that differs, as ': k was A, now B (and n more)', or ''."""
    from .config import PLUMBING, with_defaults

    a = with_defaults(old)
    changed = sorted(k for k in set(a) | set(new) if k not in PLUMBING and a.get(k) != new.get(k))
    if not changed:
        return ""
    k = changed[0]
    return f": {k} was {a.get(k)!r}, now {new.get(k)!r}" + (f" (and {len(changed) - 1} more)" if len(changed) > 1 else "")


def _relaunch(shown: str, grid: list[Trial] = ()) -> str:
    """The command that goes on with the experiment as it was launched (its recorded spec), with
    the folders of the grid's own modules on PYTHONPATH: they sat beside the spec it was launched
    from, not beside the recorded copy, which could not import them."""
    dirs = sorted({str(Path(f).parent) for f in user_modules(grid)})
    env = f"PYTHONPATH={shlex.quote(os.pathsep.join(dirs))} " if dirs else ""
    if "://" in shown:  # the spec as launched is in the object store: it must be copied here first
        again = shlex.join(["gridrun", "launch", SPEC_COPY, "--name", os.path.basename(shown),
                            "--storage", os.path.dirname(shown)])
        return f"`{env}{again}` with {SPEC_COPY} copied from {shown}/{SPEC_COPY}"
    rel = os.path.relpath(shown) if not os.path.relpath(shown).startswith("..") else shown
    return "`" + env + shlex.join(["gridrun", "launch", f"{rel}/{SPEC_COPY}", "--name", os.path.basename(rel),
                                   "--storage", os.path.dirname(rel) or "."]) + "`"


# ---------------------------------------------------------------- data and the plan table

def check_data(grid: list[Trial], dry_run: bool, out) -> None:
    """Every dataset the grid names, found and read (MNIST's headers only for a dry run, which
    never downloads); the arrays stay cached for the launch, which ships them to the trials."""
    from .data import DataError, check_files, search_dirs
    from .datasets import load_dataset

    for dataset, data_dir in sorted({(t.train.get("dataset", "mnist"), t.train["data_dir"]) for t in grid}, key=str):
        if not dry_run or dataset != "mnist":
            load_dataset(dataset, data_dir)
            continue
        try:
            check_files(data_dir, download=False)
        except DataError as e:
            if search_dirs(data_dir)[0][0] != "cache":  # a folder the user named is wrong: refuse now
                raise
            # Nothing named and nothing cached: the plan is still worth showing (it is often made on
            # another machine than the one that trains), and the launch will say the same or download.
            if os.environ.get("GRIDRUN_NO_DOWNLOAD", "") not in ("", "0"):
                out(f"notice: a launch here would stop: {e}")
            else:
                out("data: MNIST is not in the cache yet: the launch will download it first")


def check_sizes(todo: list[Trial]) -> None:
    """Each trial to run: its val_size and subset against the training images its data folder
    holds (headers only; a folder check_data could not find is left to the trial to say)."""
    from .data import DataError, check_files, check_split_sizes

    for data_dir in sorted({t.train["data_dir"] for t in todo}, key=str):
        try:
            n_train = check_files(data_dir, download=False)["train_labels"][0]
        except DataError:
            continue
        for t in (t for t in todo if t.train["data_dir"] == data_dir):
            try:
                check_split_sizes(n_train, t.train["val_size"], t.train["subset"])
            except GridrunError as e:
                raise SpecError(f"trial {t.name}: {e}") from None


def arrays(units: list[Unit]) -> dict:
    """The arrays of every dataset the units train on, keyed by (dataset, data_dir) as written in
    the config (data_dir None: $GRIDRUN_DATA or the cache), read and checked once."""
    from .datasets import load_dataset

    return {d: load_dataset(*d) for d in {u.data for u in units}}


def user_modules(grid: list[Trial]) -> list[str]:
    """The files (or package folders) of the user's modules the grid's nets come from, for Ray's
    runtime environment (py_modules): every worker, on every node, imports them as the driver did."""
    from .models._registry import module_file

    return sorted({f for f in (module_file(t.train["model"]) for t in grid) if f})


def plan_table(spec, grid: list[Trial], units: list[Unit], cpus: float, gpus: float, out=print,
               max_concurrent: int | None = None) -> None:
    """The trial table, the fused groups and how the grid packs onto `cpus`/`gpus` (at most
    `max_concurrent` Tune trials at once, as --max-concurrent caps them)."""
    import json

    import pandas as pd

    group_of = {m.name: u.name for u in units if u.fused for m in u.members}
    rows = [{"trial": t.name, **{k: (v if not isinstance(v, dict) else json.dumps(v)) for k, v in t.axes.items()},
             "seed": t.train["seed"], "epochs": t.train["epochs"], "params": t.params,
             **({"fused group": group_of.get(t.name, "-")} if group_of else {})} for t in grid]
    out(pd.DataFrame(rows).fillna("").to_markdown(index=False, intfmt=","))
    r, n_units = spec.resources, len(units)
    what = f"{len(grid)} trials" + (f" in {n_units} Tune trials ({sum(u.fused for u in units)} fused groups "
                                    f"of up to {spec.fuse})" if group_of else "")
    by_cpu = int(cpus // r.cpu) if r.cpu else n_units
    n_units = min(n_units, max_concurrent or n_units)  # the dry run said 2 at once under --max-concurrent 1
    if r.gpu and gpus:
        per_gpu = int(1 // r.gpu) if r.gpu <= 1 else 0
        by_gpu = _by_gpu(r.gpu, gpus)
        at_once = min(by_cpu, by_gpu, n_units)
        out(f"plan: {what}; {r.cpu:g} CPU + {r.gpu:g} GPU each -> {per_gpu or 1} trial(s) per GPU; "
            f"{gpus:g} GPU(s), {cpus:g} CPU(s) -> {at_once} trial(s) at once")
    else:
        note = " (GPU spec: no GPU here, trials run on CPUs)" if r.gpu else ""
        out(f"plan: {what}; {r.cpu:g} CPU each; {cpus:g} CPU(s) -> {min(by_cpu, n_units)} trial(s) at once{note}")


def check_cuda(units, gpu_per_trial: float) -> None:
    """A trial whose config asks for CUDA but that gets no GPU (none in the cluster, or
    resources.gpu 0) fails in its worker, after a retry: one line before anything runs."""
    asked = sorted({str(m.train.get("device")) for u in units for m in u.members
                    if str(m.train.get("device", "auto")).startswith("cuda")})
    if asked and not gpu_per_trial:
        raise GridrunError(f"device={asked[0]}, but the trials get no GPU (this Ray has none, or resources.gpu is 0): "
                           f"leave device at auto (a GPU when a trial has one, else its CPUs), or launch on a "
                           f"cluster with GPUs (--address) and resources.gpu > 0")
