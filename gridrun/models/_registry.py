"""Model registry: `@register_model` fills a dict; `create_model(name, **kw)` builds by name.

A name is a zoo model's, or a user's net as an import path `module:function` (the module is
imported from the Python path or the current folder; a `@register_model` in it registers too).
Nets are told the data they get through the arguments they take of DATA_ARGS: in_channels,
num_classes and image_size (a (height, width) pair); a net that takes none is built for MNIST.
"""
from __future__ import annotations

import fnmatch
import importlib
import inspect
import os
import sys
import warnings

import torch

from ..errors import GridrunError

_MODELS: dict = {}   # name -> factory
_FAMILY: dict = {}   # name -> family (the module it lives in)
DATA_ARGS = ("in_channels", "num_classes", "image_size")  # set from the dataset, never by a config
MNIST = (1, 28, 28, 10)  # (channels, height, width, classes) a net is built for when not told


def register_model(fn):
    """Register a factory under its function name; its module's last part is the family."""
    name = fn.__name__
    if name in _MODELS:
        warnings.warn(f"model {name!r} registered twice; the later one wins", stacklevel=2)
    _MODELS[name] = fn
    _FAMILY[name] = fn.__module__.rsplit(".", 1)[-1]
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style pattern, sorted (import paths not listed)."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern) and ":" not in n)


def _import(mod: str, what: str):
    """A user's module, imported from the Python path or the current folder; one line naming it
    when it cannot be imported."""
    if not all(p.isidentifier() for p in mod.split(".")):
        raise GridrunError(f"{what}: {mod!r} is not a module name such as mynets")
    if os.getcwd() not in sys.path:  # `gridrun` as a console script does not look in the current folder
        sys.path.append(os.getcwd())
    try:
        return importlib.import_module(mod)
    except (Exception, SystemExit) as e:  # its own error, whatever it is (an exit too): the user's code, named in one line
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        raise GridrunError(f"{what}: module {mod!r} cannot be imported ({type(e).__name__}"
                           f"{': ' + first if first else ''}): fix it, or put it on the Python path") from None


def import_model(path: str):
    """The factory at an import path `module:function`, imported once; one line naming the module
    when it cannot be imported or holds no such function."""
    mod, _, fn = path.partition(":")
    if path in _MODELS:
        return _MODELS[path]
    if not mod or not fn.isidentifier():
        raise GridrunError(f"model {path!r} is not an import path such as mynets:small_cnn (module:function)")
    module = _import(mod, f"model {path!r}")
    factory = getattr(module, fn, None)
    if not callable(factory):
        raise GridrunError(f"model {path!r}: module {mod!r} ({getattr(module, '__file__', '?')}) has no function "
                           f"{fn!r}: name a function that returns an nn.Module")
    _MODELS[path], _FAMILY[path] = factory, mod.rsplit(".", 1)[-1]
    return factory


def module_models(mod: str) -> list[str]:
    """The names a user's module registers with @register_model (imported once)."""
    module = _import(mod, "spec modules")
    return sorted(n for n, f in _MODELS.items() if ":" not in n and f.__module__ == module.__name__)


def module_file(name: str) -> str | None:
    """The file or package folder of the module a model comes from (what a Ray worker must be sent);
    None for the zoo's."""
    if ":" not in name:
        return None
    module = sys.modules[import_model(name).__module__]
    f = getattr(module, "__file__", None)
    if f is None:
        return None
    return os.path.dirname(f) if os.path.basename(f) == "__init__.py" else f


def model_family(name: str) -> str:
    return _FAMILY[_check(name)]


def is_zoo(name: str) -> bool:
    """Whether a net is gridrun's own (registered in gridrun.models), not a user's or a test's."""
    return _MODELS[_check(name)].__module__.startswith(f"{__package__}.")


def _params(name: str) -> dict:
    return dict(inspect.signature(_MODELS[_check(name)]).parameters)


def model_kwargs(name: str) -> set[str]:
    """The keyword arguments a model's factory accepts (the data's, DATA_ARGS, aside)."""
    return set(_params(name)) - set(DATA_ARGS)


def model_defaults(name: str) -> dict:
    """The default value of each keyword argument of a model's factory (DATA_ARGS aside)."""
    return {k: p.default for k, p in _params(name).items()
            if p.default is not inspect.Parameter.empty and k not in DATA_ARGS}


def _check(name: str) -> str:
    if ":" in name:
        import_model(name)
    if name not in _MODELS:
        raise GridrunError(f"unknown model {name!r}: valid models are {', '.join(list_models())}")
    return name


def resolve_model_args(name: str, dropout: float | None = None, model_args: dict | None = None) -> dict:
    """The factory's keyword arguments for a config: model_args plus `dropout`. An argument the
    model does not take is one error; so is a dropout for a model without one (silently
    dropping it would make a `dropout:` axis yield identical trials under different names)."""
    kw = dict(model_args or {})
    takes = model_kwargs(name)
    data = sorted(set(kw) & set(DATA_ARGS))
    if data:
        raise GridrunError(f"model {name!r}: {data[0]} is set from the dataset, never in model_args: remove it")
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


def data_kwargs(name: str, data: tuple = MNIST) -> dict:
    """The DATA_ARGS a model's factory takes, for `data` = (channels, height, width, classes); a
    net that cannot be told what it needs (MNIST's 1x28x28 and 10 classes aside) is one error."""
    c, h, w, n = data
    takes = set(_params(name))
    kw = {k: v for k, v in (("in_channels", c), ("num_classes", n), ("image_size", (h, w))) if k in takes}
    lacks = [k for k, need in (("in_channels", c != 1), ("num_classes", n != 10), ("image_size", False))
             if need and k not in takes]
    if lacks:
        able = [m for m in list_models() if {"in_channels", "num_classes"} <= set(_params(m))]
        raise GridrunError(f"model {name!r} takes no {lacks[0]}, but the dataset holds {c}x{h}x{w} images of {n} "
                           f"classes: use a net that takes in_channels and num_classes ({', '.join(able)}, or your "
                           f"own)")
    return kw


def create_model(name: str, data: tuple = MNIST, **kw) -> torch.nn.Module:
    """Build a registered model for `data` (channels, height, width, classes); an unknown name or
    keyword is one clear error, and so is a user's net that raises while it is built."""
    resolve_model_args(name, None, kw)
    kw = {**kw, **data_kwargs(name, data)}
    try:
        model = _MODELS[name](**kw)
    except (ValueError, TypeError) as e:
        raise GridrunError(f"model {name!r}: {e}") from None
    except Exception as e:
        if ":" not in name:
            raise
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        raise GridrunError(f"model {name!r} (module {name.partition(':')[0]!r}) does not build: "
                           f"{type(e).__name__}: {first}") from None
    if not isinstance(model, torch.nn.Module):
        raise GridrunError(f"model {name!r} returned {type(model).__name__}, not an nn.Module: return the net")
    return model


def count_params(name: str, data: tuple = MNIST, **kw) -> int:
    """Trainable parameters, counted on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        model = create_model(name, data, **kw)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def profile(name: str, data: tuple = MNIST, **kw) -> dict:
    """A model built and run once on the `meta` device (no memory, no weights): its parameters and
    the float32 activations one image makes, summed over layers (what training keeps for the
    backward pass) and the largest single one (what inference holds at once). A model that cannot
    take a batch of the data's images, or does not give one logit per class, is one error naming
    its arguments."""
    with torch.device("meta"):
        model = create_model(name, data, **kw)
    acts = []

    def hook(_mod, _inp, out):
        if isinstance(out, torch.Tensor):
            acts.append(out[0].numel())

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    what = f"model {name!r}" + (f" with {', '.join(f'{k}={v!r}' for k, v in sorted(kw.items()))}" if kw else "")
    c, height, width, n = data
    batch = "a 28x28 MNIST batch" if tuple(data) == MNIST else f"a batch of {c}x{height}x{width} images"
    try:
        with torch.no_grad():
            out = model.eval()(torch.empty(2, c, height, width, device="meta"))
    except Exception as e:  # a user's net may raise anything; the zoo's raise these
        if ":" not in name and not isinstance(e, (RuntimeError, ValueError, TypeError, IndexError)):
            raise
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise GridrunError(f"{what} cannot take {batch} ({first}): change its arguments") from None
    finally:
        for h in handles:
            h.remove()
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, n):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        classes = "the 10 digits" if tuple(data) == MNIST else f"the {n} classes"
        raise GridrunError(f"{what} gives outputs of shape {shape} for a batch of 2, not (2, {n}) logits for "
                           f"{classes}: change its arguments")
    return {"params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "act_per_sample": sum(acts), "max_act_per_sample": max(acts, default=0)}
