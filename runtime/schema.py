"""Typed dataclasses <-> plain JSON data, with errors that name the offending field.

model.json is the contract between stages, so every section of it is a frozen dataclass
and is read through `from_data`: a missing field, a wrong type or an unknown key is
refused with its dotted path (``decision.thresholds.Effusion``), never half-accepted.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from .errors import CardError

T = TypeVar("T")

_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def from_data(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass `cls` from JSON-like `data`, validating every field recursively."""
    if not isinstance(data, Mapping):
        raise CardError(f"must be an object, got {type(data).__name__}", field=where)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise CardError(
            f"unknown field(s) {', '.join(unknown)}; known: {', '.join(fields)}",
            field=f"{where}.{unknown[0]}" if where else unknown[0],
        )
    kwargs = {}
    for name, f in fields.items():
        path = f"{where}.{name}" if where else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise CardError("required field is missing", field=path)
            continue
        kwargs[name] = _convert(data[name], hints[name], path)
    try:
        obj = cls(**kwargs)
    except CardError as exc:
        # A section's own __post_init__ check knows its field, not where the section sits.
        if where and exc.field and not exc.field.startswith(where):
            _, dot, rest = exc.field.partition(".")
            raise CardError(exc.problem, field=f"{where}.{rest}" if dot else where) from None
        raise
    except (TypeError, ValueError) as exc:
        raise CardError(str(exc), field=where) from exc
    check = getattr(obj, "validate", None)
    if check is not None:
        check(where)
    return obj


def to_data(obj: Any) -> Any:
    """Dataclasses, tuples and dicts to JSON-ready lists/dicts/scalars."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_data(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_data(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): to_data(v) for k, v in obj.items()}
    return obj


def _convert(value: Any, hint: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        candidates = [a for a in args if a is not type(None)]
        errors = []
        for candidate in candidates:
            try:
                return _convert(value, candidate, path)
            except CardError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is typing.Literal:
        if value not in args:
            raise CardError(
                f"must be one of {', '.join(map(repr, args))}, got {value!r}", field=path
            )
        return value
    if dataclasses.is_dataclass(hint):
        # A section that owns its validation (preprocessing, quality limits) reads itself.
        own = getattr(hint, "from_dict", None)
        return own(value, where=path) if own is not None else from_data(hint, value, path)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise CardError(f"must be a list, got {type(value).__name__}", field=path)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise CardError(f"must have {len(args)} items, got {len(value)}", field=path)
        return tuple(
            _convert(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if origin in (dict, Mapping) or hint is dict:
        if not isinstance(value, Mapping):
            raise CardError(f"must be an object, got {type(value).__name__}", field=path)
        key_t, val_t = args or (str, Any)
        return {
            _convert(k, key_t, path): _convert(v, val_t, f"{path}.{k}") for k, v in value.items()
        }
    if hint is float:
        # JSON has one number type: accept ints for floats, never bools.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CardError(f"must be {_TYPE_NAMES[float]}, got {value!r}", field=path)
        return float(value)
    if hint in (int, str, bool):
        if isinstance(value, bool) and hint is not bool or not isinstance(value, hint):
            raise CardError(f"must be {_TYPE_NAMES[hint]}, got {value!r}", field=path)
        return value
    raise TypeError(f"schema: unsupported annotation {hint!r} at {path}")
