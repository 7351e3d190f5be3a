"""Model registry: `@register_model` fills a dict; `create_model(name, **kw)` builds by name."""
from __future__ import annotations

import fnmatch
import inspect
import warnings

import torch

from ..errors import GridrunError

_MODELS: dict = {}   # name -> factory
_FAMILY: dict = {}   # name -> family (the module it lives in)


def register_model(fn):
    """Register a factory under its function name; its module's last part is the family."""
    name = fn.__name__
    if name in _MODELS:
        warnings.warn(f"model {name!r} registered twice; the later one wins", stacklevel=2)
    _MODELS[name] = fn
    _FAMILY[name] = fn.__module__.rsplit(".", 1)[-1]
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style pattern, sorted."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def model_family(name: str) -> str:
    return _FAMILY[_check(name)]


def model_kwargs(name: str) -> set[str]:
    """The keyword arguments a model's factory accepts."""
    return set(inspect.signature(_MODELS[_check(name)]).parameters)


def model_defaults(name: str) -> dict:
    """The default value of each keyword argument of a model's factory."""
    return {k: p.default for k, p in inspect.signature(_MODELS[_check(name)]).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _check(name: str) -> str:
    if name not in _MODELS:
        raise GridrunError(f"unknown model {name!r}: valid models are {', '.join(list_models())}")
    return name


def resolve_model_args(name: str, dropout: float | None = None, model_args: dict | None = None) -> dict:
    """The factory's keyword arguments for a config: model_args plus `dropout`. An argument the
    model does not take is one error; so is a dropout for a model without one (silently
    dropping it would make a `dropout:` axis yield identical trials under different names)."""
    kw = dict(model_args or {})
    takes = model_kwargs(name)
    bad = sorted(set(kw) - takes)
    if bad:
        raise GridrunError(f"model {name!r} takes no argument {bad[0]!r}: it takes "
                           f"{', '.join(sorted(takes)) or 'no arguments'}")
    if dropout is not None:
        if "dropout" not in takes:
            with_dropout = [n for n in list_models() if "dropout" in model_kwargs(n)]
            raise GridrunError(f"dropout={dropout} is set but model {name!r} takes no dropout: remove it, or "
                               f"use a model that takes one ({', '.join(with_dropout)})")
        if "dropout" in kw:
            raise GridrunError(f"model {name!r}: dropout is set twice (dropout and model_args.dropout): keep one")
        kw["dropout"] = dropout
    return kw


def create_model(name: str, **kw) -> torch.nn.Module:
    """Build a registered model; an unknown name or keyword is one clear error."""
    resolve_model_args(name, None, kw)
    try:
        return _MODELS[name](**kw)
    except (ValueError, TypeError) as e:
        raise GridrunError(f"model {name!r}: {e}") from None


def count_params(name: str, **kw) -> int:
    """Trainable parameters, counted on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        model = create_model(name, **kw)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def profile(name: str, **kw) -> dict:
    """A model built and run once on the `meta` device (no memory, no weights): its parameters and
    the float32 activations one 28x28 image makes, summed over layers (what training keeps for the
    backward pass) and the largest single one (what inference holds at once). A model that cannot
    take an MNIST batch, or does not give 10 logits, is one error naming its arguments."""
    with torch.device("meta"):
        model = create_model(name, **kw)
    acts = []

    def hook(_mod, _inp, out):
        if isinstance(out, torch.Tensor):
            acts.append(out[0].numel())

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    what = f"model {name!r}" + (f" with {', '.join(f'{k}={v!r}' for k, v in sorted(kw.items()))}" if kw else "")
    try:
        with torch.no_grad():
            out = model.eval()(torch.empty(2, 1, 28, 28, device="meta"))
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise GridrunError(f"{what} cannot take a 28x28 MNIST batch ({first}): change its arguments") from None
    finally:
        for h in handles:
            h.remove()
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, 10):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise GridrunError(f"{what} gives outputs of shape {shape} for a batch of 2, not (2, 10) logits for the "
                           f"10 digits: change its arguments")
    return {"params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "act_per_sample": sum(acts), "max_act_per_sample": max(acts, default=0)}
