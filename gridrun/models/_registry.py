"""Model registry: `@register_model` fills a dict; `create_model(name, **kw)` builds by name."""
from __future__ import annotations

import fnmatch
import inspect
import warnings

import torch

from .. import GridrunError

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


def _check(name: str) -> str:
    if name not in _MODELS:
        raise GridrunError(f"unknown model {name!r}: valid models are {', '.join(list_models())}")
    return name


def create_model(name: str, **kw) -> torch.nn.Module:
    """Build a registered model; an unknown name or keyword is one clear error."""
    bad = sorted(set(kw) - model_kwargs(name))
    if bad:
        raise GridrunError(f"model {name!r} takes no argument {bad[0]!r}: it takes "
                           f"{', '.join(sorted(model_kwargs(name))) or 'no arguments'}")
    try:
        return _MODELS[name](**kw)
    except (ValueError, TypeError) as e:
        raise GridrunError(f"model {name!r}: {e}") from None


def count_params(name: str, **kw) -> int:
    """Trainable parameters, counted on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        model = create_model(name, **kw)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
