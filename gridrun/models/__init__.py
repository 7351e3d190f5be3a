"""The model zoo: one file per family, all registered by name."""
from ._registry import (count_params, create_model, is_zoo, list_models, model_defaults, model_family, model_kwargs,
                        profile, register_model, resolve_model_args)
from . import inception, preact_resnet, resnet, tiny, vgg, wide_resnet  # noqa: F401  (registration)
from .. import hooks

hooks.load()  # a test's nets (tests/gridrun_hooks.py registers chaos_net) when $GRIDRUN_HOOKS names them

__all__ = ["count_params", "create_model", "is_zoo", "list_models", "model_family", "model_kwargs", "register_model",
           "resolve_model_args", "model_defaults", "profile"]
