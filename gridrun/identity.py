"""Which config is this: the one owner of trial identity, config identity, fuse keys, the
fields a set of trials varies and a config's readable label. Everything that matches, groups
or names trials (spec, plan, launch, results, report, status, hparams) asks this module.

A *trial* is identified by every field that changes what it computes (not plumbing); a
*config* by those fields less the seed, so the seeds of one config share a config id.
"""
from __future__ import annotations

import hashlib
import json

from .config import NOT_CONFIG, PLUMBING

# What the members of one fused group must share: one batched model, one data split, one
# epoch loop, one device. The other config fields (lr, weight decay, augmentation, seed, ...)
# may differ member by member.
FUSE_SHARED = ("model", "model_args", "batch_size", "epochs", "optimizer", "val_size", "subset", "split_seed",
               "data_dir", "normalize", "ema", "precise_bn", "device", "threads", "compile", "cuda_graph", "amp",
               "channels_last", "gpu_memory_fraction", "eval_batch_size")


def _text(d: dict) -> str:
    return json.dumps(d, sort_keys=True, default=str)


def _hash(text: str, n: int = 12) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def trial_id(train: dict) -> str:
    """A trial's identity: a hash of every field that changes what it computes."""
    return _hash(_text({k: v for k, v in train.items() if k not in PLUMBING}))


def config_key(train: dict) -> str:
    """The config without seed and plumbing, as text: trials with the same key are seeds of one config."""
    return _text({k: v for k, v in train.items() if k not in NOT_CONFIG})


def config_id(train: dict) -> str:
    """A short stable id of the config (shared by its seeds)."""
    return _hash(config_key(train))


def fuse_key(train: dict) -> str:
    """Trials with the same key can train as one fused group."""
    return _text({k: train.get(k) for k in FUSE_SHARED})


def varying_fields(configs: list[dict]) -> list[str]:
    """The config fields (not seed, not plumbing) whose values differ across `configs`, sorted."""
    keys = {k for c in configs for k in c if k not in NOT_CONFIG}
    return sorted(k for k in keys if len({_text({"v": c.get(k)}) for c in configs}) > 1)


def _short(v) -> str:
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else str(v)


def config_label(train: dict, varying: list[str]) -> str:
    """A readable name of a config among others: its model, then `field=value` for each varying field."""
    parts = [str(train.get("model"))] + [f"{k}={_short(train.get(k))}" for k in varying if k != "model"]
    return " ".join(parts)
