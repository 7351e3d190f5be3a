"""Checks of the expanded trials before anything runs: each model built on the `meta` device
against its data's shape and the memory cap, the parameter and epoch budget, and ASHA's rungs."""
from __future__ import annotations

import json

from ..errors import GridrunError
from ..record import Trial
from .schema import Spec, SpecError, asha, asha_milestones


def _check_unfused_rungs(spec: Spec, trials: list[Trial]) -> None:
    """Unfused trials are pruned by Ray's ASHA (each is its own Tune trial, with no group to cut):
    `prune`'s rungs must then be ASHA's milestones, or the fused and unfused rules would differ."""
    if not spec.prune or (spec.fuse or 1) > 1 or not trials:
        return
    grace, rf = asha(spec)
    want = asha_milestones(grace, rf, max(t.train["epochs"] for t in trials))
    if list(spec.prune.rungs) != want:
        raise SpecError(f"prune.rungs {list(spec.prune.rungs)}: unfused trials are pruned by Ray's ASHA, which cuts at "
                        f"{want} (the first rung times (1/keep)^k): use rungs {want}, or fuse: K to cut inside groups "
                        f"at any epochs")


# A trial whose estimated peak memory is over this is refused at spec time: every registered model
# at its defaults needs at most ~3 GiB (inception_v4_light at batch 128), and the probe's
# `arch: "C10:100 O G"` (a 226x226 map at eval batch 4096) grew to 24 GB until the kernel killed it.
MAX_TRIAL_GIB = 16


def data_shape(c: dict) -> tuple:
    """(channels, height, width, classes) of a trial's dataset (headers and labels read, cached)."""
    from ..datasets import describe

    try:
        return tuple(describe(c["dataset"], c["data_dir"]))
    except GridrunError as e:
        raise SpecError(str(e)) from None


def check_models(trials: list[Trial]) -> None:
    """Each distinct model and its arguments built once on the `meta` device and run on a 28x28
    batch (no memory used): bad arguments, shapes that do not fit MNIST and activations that would
    not fit in MAX_TRIAL_GIB at the trial's batch sizes are one line naming the trial."""
    from ..models import profile, resolve_model_args

    seen: dict[str, dict | GridrunError] = {}
    for t in trials:
        c = t.train
        try:
            kw = resolve_model_args(c["model"], c["dropout"], c["model_args"])
            data = data_shape(c)
            key = json.dumps([c["model"], kw, data], sort_keys=True, default=repr)
            if key not in seen:
                try:
                    seen[key] = profile(c["model"], data, **kw)
                except GridrunError as e:
                    seen[key] = e
            if isinstance(seen[key], GridrunError):
                raise seen[key]
        except GridrunError as e:
            raise SpecError(f"trial {t.name}: {e}") from None
        _check_memory(t, seen[key])


def _check_memory(t: Trial, prof: dict) -> None:
    """Training keeps every layer's output and its gradient for the batch; inference holds up to
    three layers' outputs (input, conv, BatchNorm) of the eval batch at once. float32 throughout."""
    c = t.train
    train = c["batch_size"] * prof["act_per_sample"] * 4 * 2
    infer = c["eval_batch_size"] * prof["max_act_per_sample"] * 4 * 3
    need = max(train, infer)
    if need > MAX_TRIAL_GIB * 2**30:
        what = (f"batch_size={c['batch_size']} x {prof['act_per_sample'] * 4 / 2**20:.1f} MiB of activations per "
                f"image" if train >= infer else f"eval_batch_size={c['eval_batch_size']} x "
                f"{prof['max_act_per_sample'] * 4 / 2**20:.1f} MiB for its largest layer per image")
        args = f" with model_args {json.dumps(c['model_args'], sort_keys=True)}" if c["model_args"] else ""
        raise SpecError(f"trial {t.name}: model {c['model']}{args} would need about {need / 2**30:.0f} GiB "
                        f"({what}), over the {MAX_TRIAL_GIB} GiB a trial may use: shrink its feature maps or "
                        f"channels, or lower {'batch_size' if train >= infer else 'eval_batch_size'}")


def check_budget(spec: Spec, trials: list[Trial]) -> list[Trial]:
    """The trials with their parameter counts (each distinct model config counted once, on the
    `meta` device); over max_params or max_epochs is an error."""
    from ..models import count_params, resolve_model_args

    counts, out = {}, []
    for t in trials:
        c = t.train
        kw = resolve_model_args(c["model"], c["dropout"], c["model_args"])
        data = data_shape(c)
        key = json.dumps([c["model"], kw, data], sort_keys=True)
        if key not in counts:
            counts[key] = count_params(c["model"], data, **kw)
        out.append(t.relabel(params=counts[key]))
        cap = spec.constraints.max_params
        if cap and counts[key] > cap:
            raise SpecError(f"trial {t.name}: model {c['model']} has {counts[key]:,} parameters, over "
                            f"constraints.max_params={cap:,}: pick a smaller model or raise the limit")
        cap_e = spec.constraints.max_epochs
        if cap_e and c["epochs"] > cap_e:
            raise SpecError(f"trial {t.name}: epochs={c['epochs']} is over constraints.max_epochs={cap_e}")
    return out
