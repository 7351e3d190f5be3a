"""One trial as one typed, frozen record from the spec to the report: `spec.expand` makes it, the
plan groups it, the manifest stores it and reads it back (`entry`/`read`), Tune carries it
(`to_dict`/`from_dict`, only at that boundary). Its canonical config, trial id, config key, config
id and fuse key are computed once, on first use, by identity.py's rules.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import cached_property

from . import identity


class Frozen(dict):
    """A mapping that refuses changes: a record's config, so its cached identity never goes stale.
    Still a dict for JSON, pydantic and `{**train}`; values nested in it are not frozen."""

    def _refuse(self, *args, **kwargs):
        raise TypeError("a trial record's mapping is frozen: build a new record (dataclasses.replace)")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self):  # pickle and deepcopy rebuild it from a plain dict (not item by item)
        return Frozen, (dict(self),)


@dataclass(frozen=True)
class Trial:
    """One config of the grid: its folder name, identity, axis values, TrainConfig dict, parameters;
    read back from a manifest, also the fused group it ran in and its labels' checksums."""
    name: str
    id: str
    axes: Frozen | None      # the grid point ({axis: value}); None for a manifest entry without one
    train: Frozen
    params: int | None = None
    stage: str | None = None    # a study's: "search" or "confirm" (study.py); None in a grid
    group: str | None = field(default=None, compare=False)   # the manifest's: the fused group it runs in
    labels: Frozen | None = field(default=None, compare=False)  # the manifest's: val/test label checksums

    def __post_init__(self):
        for k in ("axes", "train", "labels"):
            v = getattr(self, k)
            if isinstance(v, dict) and not isinstance(v, Frozen):
                object.__setattr__(self, k, Frozen(v))

    @classmethod
    def make(cls, name: str, axes: dict, train: dict, params: int | None = None, stage: str | None = None) -> "Trial":
        """A new trial: its id computed from its config (the canonical form is kept for the other keys)."""
        t = cls(name, "", axes, train, params, stage)
        object.__setattr__(t, "id", identity.id_of(t.canonical))
        return t

    def relabel(self, **changes) -> "Trial":
        """A copy under another name, params, stage or group, keeping the keys computed so far
        (the config, and so its id, never changes: that is a new trial, `make`)."""
        if set(changes) - {"name", "params", "stage", "group"}:
            raise ValueError(f"relabel changes name, params, stage or group, not {sorted(changes)}")
        t = copy.copy(self)  # shares the cached canonical form and keys
        for k, v in changes.items():
            object.__setattr__(t, k, v)
        return t

    @cached_property
    def canonical(self) -> dict:
        """The config's resolved values (identity.canonical), computed once."""
        return identity.canonical(dict(self.train))

    @cached_property
    def config_key(self) -> str:
        return identity.key_of(self.canonical)

    @cached_property
    def config_id(self) -> str:
        return identity.config_id_of(self.config_key)

    @cached_property
    def fuse_key(self) -> str:
        return identity.fuse_key_of(self.canonical)

    def to_dict(self) -> dict:
        """What Tune carries (and a manifest entry starts with): plain values, in the order always written."""
        return {"name": self.name, "id": self.id, "axes": _plain(self.axes), "params": self.params,
                "train": _plain(self.train), **({"stage": self.stage} if self.stage else {})}

    @classmethod
    def from_dict(cls, d: dict) -> "Trial":
        """Back from Tune: the record `to_dict` wrote (its id as computed at expansion)."""
        stage = d.get("stage") if isinstance(d.get("stage"), str) else None
        return cls(d["name"], d["id"], dict(d.get("axes") or {}), dict(d["train"]), d.get("params"), stage)

    def entry(self, group: str | None, labels: dict | None) -> dict:
        """Its manifest entry: the record, the fused group it runs in and its labels' checksums."""
        return {**self.to_dict(), "group": group, "labels": _plain(labels)}

    @classmethod
    def read(cls, e: dict) -> "Trial":
        """A manifest entry (storage.layout.ExperimentDir.read_manifest's, of any gridrun version) as a record: its id as this
        version resolves its config (a field added since it ran at the default that reproduces it)."""
        train = e.get("train") if isinstance(e.get("train"), dict) else {}
        axes = e.get("axes") if isinstance(e.get("axes"), dict) else None
        stage = e.get("stage") if isinstance(e.get("stage"), str) else None
        t = cls(e["name"], "", axes, train, e.get("params"), stage, e.get("group"), e.get("labels"))
        object.__setattr__(t, "id", identity.id_of(t.canonical) if train else str(e.get("id") or ""))
        return t


def _plain(v):
    """A frozen mapping as a plain dict again (JSON and Ray's serialisers see what they always saw)."""
    return dict(v) if isinstance(v, Frozen) else v


def read_manifest(entries: list[dict]) -> list[Trial]:
    """A manifest's entries (storage.layout.ExperimentDir.read_manifest) as records."""
    return [Trial.read(e) for e in entries]
