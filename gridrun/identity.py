"""Which config is this: the one owner of trial identity, config identity, fuse keys, the
fields a set of trials varies and a config's readable label. Everything that matches, groups
or names trials (spec, plan, launch, results, report, status, hparams) asks this module.

A *trial* is identified by every field that changes what it computes (not plumbing); a
*config* by those fields less the seed, so the seeds of one config share a config id.
Identity is by value (`canonical`): however a spec writes a config (an axis or base, a
default written out or left out, 5e-4 or 0.0005, 1 or 1.0 for a float field, a model
argument at its factory's default), the same resolved values are the same trial. A config
already in canonical form hashes as it always did, so older experiments keep their ids.
"""
from __future__ import annotations

import functools
import hashlib
import json
import re

from .config import DEFAULTS, FIELD_TYPES, NOT_CONFIG, PLUMBING, field_extra, field_names, with_defaults

# What the members of one fused group must share (the fields config.py marks `fuse_shared`): one
# batched model, one data split, one epoch loop, one device. The other config fields (lr, weight
# decay, augmentation, seed, ...) may differ member by member.
FUSE_SHARED = tuple(n for n in field_names() if field_extra(n)["fuse_shared"])
# Fields added after experiments were run: at their default they are left out of a config's
# resolved values, so every trial that ran before them keeps its id.
SINCE = ("dataset", "grad_clip")


def _text(d: dict) -> str:
    return json.dumps(d, sort_keys=True, default=str)


def _hash(text: str, n: int = 12) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def _number(v):
    """A float field's value as a float (1 and 1.0 are one value); -0.0 is 0.0."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return v
    v = float(v)
    return 0.0 if v == 0 else v


@functools.lru_cache(maxsize=256)
def _model_defaults(model: str) -> dict:
    from .models import model_defaults

    try:
        return model_defaults(model)
    except Exception:  # an unknown model (a foreign or older folder): no defaults to drop
        return {}


@functools.lru_cache(maxsize=64)
def _aug_defaults(policy: str) -> dict:
    from dataclasses import asdict

    from .augment import make_params

    try:
        return asdict(make_params(None, policy))
    except Exception:  # an unknown policy: no defaults to drop
        return {}


def _same(a, b) -> bool:
    """Equal values (1 == 1.0), but None, False and 0 stay apart."""
    return a == b and (a is None) == (b is None) and isinstance(a, bool) == isinstance(b, bool)


def _model_part(train: dict) -> tuple:
    """(dropout, model_args) with every argument at its factory's default left out, and a
    dropout given in model_args moved to `dropout`: the spellings of one model are one value."""
    args = dict(train.get("model_args") or {}) if isinstance(train.get("model_args"), dict) else train.get("model_args")
    dropout = train.get("dropout")
    if not isinstance(args, dict) or (not args and dropout is None):
        return dropout, args
    defaults = _model_defaults(str(train.get("model")))
    if dropout is None and "dropout" in args:
        dropout = args.pop("dropout")
    if dropout is not None and "dropout" in defaults and _same(_number(dropout), _number(defaults["dropout"])):
        dropout = None
    args = {k: v for k, v in args.items() if not (k in defaults and _same(v, defaults[k]))}
    return (_number(dropout) if dropout is not None else None), args  # an int argument stays an int


# Two names of one net: a model at its factory's defaults (model_args empty once defaults are left
# out) that another registered name builds layer for layer. tinynet's default arch is tinynet_7k's
# layers (tests/test_identity.py builds both and compares). Kept here, not in models/, so that
# identity (status, report) never imports torch for a config without model arguments.
MODEL_ALIASES = {"tinynet": "tinynet_7k"}

# One layer token of a TinyNet arch string (models/tiny.py's grammar), leading zeros allowed.
_ARCH_TOKEN = re.compile(r"([CS])0*(\d+)(?::0*(\d+))?|(T)0*(\d+)|([MOG])", re.ASCII)


def _arch_token(tok: str) -> str:
    """A token in the spelling gridrun's grids use: C with its padding written (C16 is C16:1), S
    with its padding only when 0 (S24:1 is S24); anything else is left for the model to refuse."""
    m = _ARCH_TOKEN.fullmatch(tok)
    if m is None:
        return tok
    if m[1]:
        pad = int(m[3]) if m[3] is not None else 1
        return f"C{int(m[2])}:{pad}" if m[1] == "C" else f"S{int(m[2])}" + (f":{pad}" if pad != 1 else "")
    return f"T{int(m[5])}" if m[4] else m[6]


def canonical_arch(arch):
    """An arch string as its tokens, single-spaced, each in one spelling: strings that build the
    same layers (other spaces, C16 for C16:1, S24:1 for S24) are one value."""
    return " ".join(_arch_token(t) for t in arch.split()) if isinstance(arch, str) else arch


def _model_name(c: dict) -> str:
    """The model's one name: an alias's when the config is that net at its factory's defaults."""
    model = c.get("model")
    return MODEL_ALIASES.get(model, model) if c.get("model_args") == {} else model


def canonical(train: dict) -> dict:
    """A config's resolved values: every field present (defaults filled in), float fields as
    floats, arch strings in one spelling, model arguments and augmentation strengths at their
    defaults left out, and a net with two names under one (MODEL_ALIASES)."""
    c = with_defaults(train)
    if not isinstance(c, dict):
        return c
    for k in SINCE:
        if c.get(k) == DEFAULTS[k]:
            del c[k]
    for k, ft in FIELD_TYPES.items():
        if ft.kind == "float" and k in c:
            c[k] = _number(c[k])
    if isinstance(c.get("model_args"), dict) and "arch" in c["model_args"]:
        c["model_args"] = {**c["model_args"], "arch": canonical_arch(c["model_args"]["arch"])}
    if c.get("dropout") is not None or c.get("model_args"):
        c["dropout"], c["model_args"] = _model_part(c)
    c["model"] = _model_name(c)
    aug = c.get("aug")
    if isinstance(aug, dict) and aug:
        defaults = _aug_defaults(str(c.get("augment")))
        c["aug"] = {k: _number(v) for k, v in aug.items() if not (k in defaults and _same(_number(v), _number(defaults[k])))}
    return c


# Fields added after trial ids were fixed that a trial leaves out of its id while they are off, so
# every existing trial keeps its id: rungs (off when empty), rung_keep (read only with rungs).
OFF = {"rungs": lambda c: not c.get("rungs"), "rung_keep": lambda c: not c.get("rungs")}


def _identity(c: dict, left_out: frozenset) -> dict:
    """A canonical config less the fields `left_out` and those that are off (OFF)."""
    if not isinstance(c, dict):
        return c
    return {k: v for k, v in c.items() if k not in left_out and not (k in OFF and OFF[k](c))}


# The keys of a config already in canonical form (record.Trial keeps it, so each is resolved once).
def id_of(c: dict) -> str:
    """The trial id of a canonical config."""
    return _hash(_text(_identity(c, PLUMBING)))


def key_of(c: dict) -> str:
    """The config key of a canonical config."""
    return _text(_identity(c, NOT_CONFIG))


def config_id_of(key: str) -> str:
    """The config id of a config key."""
    return _hash(key)


def fuse_key_of(c: dict) -> str:
    """The fuse key of a canonical config."""
    from .augment import Augment

    return _text({**{k: c.get(k) for k in FUSE_SHARED if k in c or k not in SINCE},
                  "align": Augment(c.get("augment", "none"), c.get("aug") or {}).align})


def trial_id(train: dict) -> str:
    """A trial's identity: a hash of the resolved value of every field that changes what it computes."""
    return id_of(canonical(train))


def config_key(train: dict) -> str:
    """The config without seed and plumbing, as text: trials with the same key are seeds of one config."""
    return key_of(canonical(train))


def config_id(train: dict) -> str:
    """A short stable id of the config (shared by its seeds)."""
    return config_id_of(config_key(train))


def fuse_key(train: dict) -> str:
    """Trials with the same key can train as one fused group: they share FUSE_SHARED and
    whether their policy deskews (the engine's check_group refuses a group that mixes them:
    deskewing changes the images the members share)."""
    return fuse_key_of(canonical(train))


def varying_fields(configs: list[dict]) -> list[str]:
    """The config fields (not seed, not plumbing) whose values differ across `configs`, sorted."""
    return varying_of([canonical(c) for c in configs])


def varying_of(resolved: list[dict]) -> list[str]:
    """varying_fields of configs already in canonical form."""
    keys = {k for c in resolved for k in c if k not in NOT_CONFIG}
    return sorted(k for k in keys if len({_text({"v": c.get(k)}) for c in resolved}) > 1)


def value_text(v) -> str:
    """A config value in a label or a plot's category: JSON for dicts and lists, else as str."""
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else str(v)


def config_label(train: dict, varying: list[str]) -> str:
    """A readable name of a config among others: its model, then `field=value` for each varying field."""
    parts = [str(train.get("model"))] + [f"{k}={value_text(train.get(k))}" for k in varying if k != "model"]
    return " ".join(parts)
