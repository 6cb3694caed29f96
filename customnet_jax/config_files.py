"""Config text <-> typed config: config files (configs/<name>.py), `--set section.field=value` overrides, JSON.

Every value that enters a config here is checked against its field's type hint (int, float, bool, str,
Literal choices, tuples, optionals, nested config dataclasses): a wrong value is refused when it is parsed,
with a `ConfigValueError` naming the field, the type expected and the value given, before anything is built.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import pathlib
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigValueError(ValueError):
    """A config value, key or override the config's dataclasses cannot take (the message names the field)."""


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass tree as nested dicts and lists (JSON-able)."""

    def convert(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (tuple, list)):
            return [convert(v) for v in value]
        return value

    return convert(config)


def _hints(cls: type) -> dict[str, Any]:
    """The resolved type hints of a config dataclass; a hint that cannot be resolved is left unchecked (Any)."""
    try:
        return typing.get_type_hints(cls)
    except (NameError, TypeError):
        return {}


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _refuse(name: str, annotation: Any, value: Any) -> typing.NoReturn:
    raise ConfigValueError(f"{name}: expected {_type_name(annotation)}, got {value!r} ({type(value).__name__})")


def _union(name: str, annotation: Any, value: Any) -> Any:
    options = typing.get_args(annotation)
    if value is None and type(None) in options:
        return None
    for option in (a for a in options if a is not type(None)):
        try:
            return check_value(option, value, name)
        except ConfigValueError:
            continue
    _refuse(name, annotation, value)


def _sequence(name: str, annotation: Any, value: Any) -> tuple:
    if not isinstance(value, (list, tuple)):
        _refuse(name, annotation, value)
    args = typing.get_args(annotation)
    if not args:
        return tuple(value)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(check_value(args[0], v, f"{name}[{i}]") for i, v in enumerate(value))
    if len(args) != len(value):
        raise ConfigValueError(f"{name}: expected {len(args)} values ({_type_name(annotation)}), got {value!r}")
    return tuple(check_value(a, v, f"{name}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))


def check_value(annotation: Any, value: Any, name: str) -> Any:
    """`value` as the type `annotation` asks for (ints widen to float, lists to tuples, dicts to dataclasses),
    or ConfigValueError naming field `name`. Types this does not know (a callable, Any) pass unchecked."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return _union(name, annotation, value)
    if origin is typing.Literal:
        if value not in typing.get_args(annotation):
            _refuse(name, annotation, value)
        return value
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):  # checked field by field too (a config file's values)
            value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        if not isinstance(value, dict):
            _refuse(name, annotation, value)
        return from_dict(annotation, value, name)
    if origin is tuple or annotation is tuple:
        return _sequence(name, annotation, value)
    if annotation is bool:
        if not isinstance(value, bool):
            _refuse(name, annotation, value)
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _refuse(name, annotation, value)
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _refuse(name, annotation, value)
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            _refuse(name, annotation, value)
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any], name: str = "") -> T:
    """Build dataclass `cls` from `to_dict` output, every value checked; unknown keys are an error (a typo must
    not pass)."""
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigValueError(f"{name or cls.__name__}: unknown config keys {unknown}; known keys are "
                               f"{sorted(names)}")
    prefix = f"{name}." if name else ""
    return cls(**{k: check_value(hints.get(k, Any), v, prefix + k) for k, v in data.items()})


def check_config(config: T) -> T:
    """Every field of a config tree checked against its type hint (a config file's values included)."""
    if not dataclasses.is_dataclass(config):
        raise ConfigValueError(f"expected a config dataclass, got {type(config).__name__}")
    return check_value(type(config), config, "")


def _parse(raw: str, annotation: Any) -> Any:
    """The text of an override as a Python literal (1e-5, (0.0, 0.1), None, True); str fields take the text as
    it stands (quotes optional), booleans also take true / false."""
    wants_str = annotation is str or (typing.get_origin(annotation) in (typing.Union, types.UnionType)
                                      and str in typing.get_args(annotation))
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    if annotation is bool and isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if wants_str and not isinstance(value, str) and value is not None:
        return raw
    return value


def override(config: T, assignments: list[str]) -> T:
    """Apply `section.field=value` strings, each value parsed and checked against the field's type; the config
    is rebuilt once at the end, so fields that must change together (a config's own checks) may."""
    tree = to_dict(config)
    for assignment in assignments:
        if "=" not in assignment:
            raise ConfigValueError(f"override {assignment!r} must look like 'section.field=value'")
        path, raw = assignment.split("=", 1)
        _assign(tree, type(config), path.strip().split("."), raw, path.strip())
    return from_dict(type(config), tree)


def _section_type(annotation: Any) -> type | None:
    """The config dataclass a field holds (also when optional), else None."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        found = [a for a in typing.get_args(annotation) if dataclasses.is_dataclass(a)]
        return found[0] if len(found) == 1 else None
    return annotation if dataclasses.is_dataclass(annotation) else None


def _assign(tree: dict, cls: type, parts: list[str], raw: str, full: str) -> None:
    hints = _hints(cls)
    if parts[0] not in tree:
        raise ConfigValueError(f"override {full!r}: no field {parts[0]!r} in {cls.__name__} "
                               f"(fields: {sorted(tree)})")
    hint = hints.get(parts[0], Any)
    section = _section_type(hint)
    if len(parts) == 1:
        value = _parse(raw, hint)
        if section is not None and value is not None:
            raise ConfigValueError(f"override {full!r}: {full} is a config section; set its fields "
                                   f"({full}.<field>=value)")
        tree[parts[0]] = check_value(hint, value, full)
        return
    if section is None or not isinstance(tree[parts[0]], dict):
        raise ConfigValueError(f"override {full!r}: {parts[0]!r} is not a config section here")
    _assign(tree[parts[0]], section, parts[1:], raw, full)


def load_config(path: str | pathlib.Path) -> Any:
    """Import a config file from `configs/` and return its `get_config()`, every value type-checked."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist (see the configs/ folder)")
    spec = importlib.util.spec_from_file_location(f"_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigValueError(f"config file {path} has no get_config() function")
    return check_config(module.get_config())
