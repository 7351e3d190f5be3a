"""A group's resumable state: its layout, its version, and the conversion of the one older layout.

Version 4 (this one): every member dimension stacked, K = 1 included: params, buffers, the
optimizer's state and the weight average are (K, ...) tensors of the members `stacked` names;
each member of the roster carries its config, history, status, generator and plateau state (the
other schedules are functions of the optimizer's step count and the epoch), and a member retired
mid-run (pruned, diverged) what its files hold (`final`: its scores and weights, when it ended),
so that a resume writes them again where a killed launch lost them before they were stored. Version 3 differed
in two places, both converted on load: a single trial's optimizer state was unstacked (its
model's own shapes), and each member carried a torch optimizer's and scheduler's state dicts.
"""
from __future__ import annotations

import json

import torch

from ..config import PLUMBING, with_defaults
from ..storage.layout import StateError, read_state
from .group import Group, Member, keep_members
from .schedule import Plateau

STATE_VERSION = 4
READS = (3, 4)  # the versions load_state reads (3: converted, see upgrade)


def state_dict(g: Group, epoch: int) -> dict:
    """Everything the group needs to go on after `epoch`, as plain tensors and containers: every
    member it started with, and which of them (`stacked`, in order) the tensors still hold."""
    return {"version": STATE_VERSION, "epoch": epoch, "params": {n: t.detach() for n, t in g.params.items()},
            "buffers": g.buffers,
            "opt": g.opt.state_dict(list(g.params)), "ema": g.ema, "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(g.device) if g.device.type == "cuda" else None,
            "stacked": [next(j for j, r in enumerate(g.roster) if r is m) for m in g.members],
            "members": [{"config": m.cfg.to_dict(), "history": m.history, "status": m.status, "alive": m.alive,
                         "dgen": m.dgen.get_state(), "plateau": m.plateau and vars(m.plateau),
                         "final": None if m.alive else m.final} for m in g.roster]}


def _computing(cfg: dict) -> dict:
    """A config's computing fields as JSON values (a stored tuple and list are one value)."""
    return json.loads(json.dumps({k: v for k, v in with_defaults(cfg).items() if k not in PLUMBING}, default=str))


def _match(g: Group, path, saved: list) -> list:
    """For each saved member, its position in `g` (None: not in g); every member of `g` must be one
    of them, and a saved member `g` lacks must be retired (a relaunch leaves pruned and diverged
    trials alone)."""
    ours = [_computing(m.cfg.to_dict()) for m in g.members]
    theirs = [_computing(s.get("config") or {}) if isinstance(s, dict) else {} for s in saved]
    where, free = [], list(range(g.k))
    for cfg in theirs:
        k = next((k for k in free if ours[k] == cfg), None)
        where.append(k)
        if k is not None:
            free.remove(k)
    lost = [j for j, k in enumerate(where)
            if k is None and (not isinstance(saved[j], dict) or saved[j].get("alive", True))]
    if free or lost:
        k = (free or [0])[0]
        other = theirs[k] if k < len(theirs) else {}
        changed = sorted(n for n in ours[k] if other.get(n) != ours[k][n])
        raise StateError(f"resume state {path} belongs to another config ("
                         + (f"differs in {', '.join(changed)})" if changed and len(saved) == g.k else
                            f"a group of {len(saved)} trials, not of these {g.k})"))
    return where


@torch.no_grad()
def load_state(g: Group, path) -> None:
    """Continue `g` from a saved state: weights, optimizer, schedules, generators, histories; the
    members the state had retired are retired here too."""
    state = upgrade(read_state(path, g.device), path)
    saved = state.get("members") or []
    where = _match(g, path, saved)
    try:
        stacked = [where[j] for j in state.get("stacked", range(len(saved)))]  # older states stacked every member
        if None in stacked:
            raise StateError(f"resume state {path} holds the weights of a trial that is not among these {g.k}")
        for k, s in zip(where, saved):
            if k is not None:
                _load_member(g.members[k], s)
        keep_members(g, stacked)
        for mine, theirs in ((g.params, state["params"]), (g.buffers, state["buffers"]), (g.ema, state["ema"])):
            for n, t in (mine or {}).items():
                t.copy_(theirs[n])
        g.opt.load_state_dict(state["opt"], list(g.params))
        torch.set_rng_state(state["rng_cpu"].cpu())
        if g.device.type == "cuda" and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(state["rng_cuda"].cpu(), g.device)
    except (KeyError, RuntimeError, ValueError, TypeError, IndexError) as e:
        raise StateError(f"resume state {path} does not fit this model ({str(e).splitlines()[0][:120]})") from None
    keep_members(g, [k for k, m in enumerate(g.members) if m.alive])
    g.start_epoch = int(state["epoch"]) + 1


def _load_member(m: Member, s: dict) -> None:
    m.history, m.status, m.alive = list(s["history"]), s["status"], bool(s["alive"])
    m.final = s.get("final")  # absent from states written before gridrun kept it
    m.dgen.set_state(s["dgen"].cpu())
    if m.plateau is not None:
        m.plateau = Plateau(**s["plateau"])


def upgrade(state: dict, path) -> dict:
    """A state of version 4, from one of 3 (converted: its unstacked K = 1 optimizer state gets its
    member dimension, its torch scheduler's plateau numbers become a Plateau), or one StateError line."""
    if state.get("version") not in READS:
        raise StateError(f"resume state {path} is of version {state.get('version')!r}; this gridrun reads "
                         f"versions {', '.join(map(str, READS))}")
    if state["version"] == 3:
        try:
            params = state["params"]
            for saved in state["opt"]["state"]:
                saved.update({n: t.unsqueeze(0) for n, t in saved.items() if t.dim() == params[n].dim() - 1})
            for m in state["members"]:
                m["plateau"] = _plateau_v3(m.pop("shadow"), m.pop("scheduler"))
        except (KeyError, TypeError, IndexError, AttributeError) as e:
            raise StateError(f"resume state {path} is of version 3 but not of its layout ({e!r:.120})") from None
    return {**state, "version": STATE_VERSION}


def _plateau_v3(shadow: dict, scheduler: dict | None) -> dict | None:
    """A version-3 member's ReduceLROnPlateau numbers (None for another schedule)."""
    if not scheduler or "num_bad_epochs" not in scheduler:
        return None
    return {"lr": float(shadow["param_groups"][0]["lr"]), "best": float(scheduler["best"]),
            "bad": int(scheduler["num_bad_epochs"])}
