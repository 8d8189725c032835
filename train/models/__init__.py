"""Model families, built by name.

Every model's ``forward(x)`` returns ``dict[str, Tensor]``.  The keys listed in the
class attribute ``export_outputs`` (name -> (role, activation)) are the ones export
writes into the ONNX graph and the model card; the roles are the runtime's:

- ``scores``      (N, K) raw logits; ``activation`` says softmax (single-label) or sigmoid;
- ``grade_value`` (N,) continuous DR grade, cut by QWK-optimal cut points at run time;
- ``heatmap``     (N, k, h, w) non-negative map, built from forward tensors only (no
  autograd), so it survives ONNX export.

Any other key is training-only; ``ExportView(model)`` returns just the exported ones, as
a tuple in ``export_outputs`` order, for tracing.  Each class also carries ``task`` and
``family``.

    model = build_model("multitask", num_classes=5, tiny=True)
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: make a builder available to ``build_model(name, ...)``."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = builder
        return builder

    return wrap


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; builder arguments are keyword-only."""
    try:
        builder = _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(list_models())}") from None
    return builder(**kwargs)


def list_models() -> list[str]:
    return sorted(_REGISTRY)


# The family modules register themselves on import; they need `register` defined above.
from . import agcnn, m2cnn, multitask, ran, zoomin  # noqa: E402,F401
from .common import ExportView  # noqa: E402

__all__ = ["ExportView", "build_model", "list_models", "register"]
