"""The model zoo: one file per family, all registered by name."""
from ._registry import count_params, create_model, list_models, model_family, model_kwargs, register_model
from . import testing, tiny  # noqa: F401  (registration)

__all__ = ["count_params", "create_model", "list_models", "model_family", "model_kwargs", "register_model"]
