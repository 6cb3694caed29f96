"""Plain dataclass configs: (de)serialisation to JSON-able dicts and `a.b.c=value` overrides."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import pathlib
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass tree as nested dicts and lists (JSON-able)."""

    def convert(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (tuple, list)):
            return [convert(v) for v in value]
        return value

    return convert(config)


def _coerce(annotation: Any, value: Any) -> Any:
    """Turn a JSON value back into the annotated type (nested dataclasses, tuples, optionals)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _coerce(options[0], value) if len(options) == 1 else value
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value) if isinstance(value, dict) else value
    if origin is tuple and isinstance(value, (list, tuple)):
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v) for v in value)
        return tuple(_coerce(a, v) for a, v in zip(args, value, strict=True))
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build dataclass `cls` from `to_dict` output; unknown keys are an error (a typo must not pass)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown config keys {unknown}; known keys are {sorted(names)}")
    return cls(**{k: _coerce(hints[k], v) for k, v in data.items()})


def override(config: T, assignments: list[str]) -> T:
    """Apply `path.to.field=value` strings (value parsed as a Python literal, else a string)."""
    for assignment in assignments:
        if "=" not in assignment:
            raise ValueError(f"override {assignment!r} must look like 'section.field=value'")
        path, raw = assignment.split("=", 1)
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        config = _replace_path(config, path.split("."), value, path)
    return config


def _replace_path(node: Any, parts: list[str], value: Any, full: str) -> Any:
    if not dataclasses.is_dataclass(node):
        raise ValueError(f"override {full!r}: {parts[0]!r} is not a config section")
    fields = {f.name for f in dataclasses.fields(node)}
    if parts[0] not in fields:
        raise ValueError(f"override {full!r}: no field {parts[0]!r} in {type(node).__name__} "
                         f"(fields: {sorted(fields)})")
    if len(parts) == 1:
        hint = typing.get_type_hints(type(node))[parts[0]]
        return dataclasses.replace(node, **{parts[0]: _coerce(hint, value)})
    child = _replace_path(getattr(node, parts[0]), parts[1:], value, full)
    return dataclasses.replace(node, **{parts[0]: child})


def load_config(path: str | pathlib.Path) -> Any:
    """Import a config file from `configs/` and return its `get_config()`."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist (see the configs/ folder)")
    spec = importlib.util.spec_from_file_location(f"_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path} has no get_config() function")
    return module.get_config()
