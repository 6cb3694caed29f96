"""Ordered (regex -> value) rules over parameter paths, as big_vision's sharding rules: first match wins.

A parameter's path is its nested-dict keys joined by "/", e.g. "unet/middle/attention/blocks/0/attn2/to_k_text/kernel".
The config's rule lists (what trains, at what learning rate, how it starts) are matched with `re.search`, so
"^unet/" anchors at the start and "/to_[kv]_text/" matches anywhere; end a list with (".*", default) to give
every other parameter a value. A path that no rule matches is an error naming it (a rule list must not leave a
parameter undecided silently).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

Path = tuple[str | int, ...]
Rules = tuple[tuple[str, Any], ...]


class RuleError(ValueError):
    """A rule list that cannot be applied: a bad pattern, a value of the wrong kind, or a path no rule matches."""


def path_name(path: Path | str) -> str:
    """("unet", "conv_in", "kernel") -> "unet/conv_in/kernel" (strings pass through)."""
    return path if isinstance(path, str) else "/".join(map(str, path))


def compile_rules(rules: Iterable, what: str, check: Callable[[Any], bool] | None = None,
                  expected: str = "") -> list[tuple[re.Pattern, Any]]:
    """[(compiled pattern, value)]; every rule must be a (pattern, value) pair whose value passes `check`."""
    compiled = []
    for index, rule in enumerate(rules):
        if not isinstance(rule, (tuple, list)) or len(rule) != 2 or not isinstance(rule[0], str):
            raise RuleError(f"{what}: rule {index} is {rule!r}; each rule is a (regex, value) pair")
        pattern, value = rule
        try:
            regex = re.compile(pattern)
        except re.error as error:
            raise RuleError(f"{what}: rule {index} pattern {pattern!r} is not a regular expression ({error})") from None
        if check is not None and not check(value):
            raise RuleError(f"{what}: rule {index} ({pattern!r}) has value {value!r}; expected {expected}")
        compiled.append((regex, value))
    return compiled


def first_match(compiled: list[tuple[re.Pattern, Any]], path: Path | str, what: str) -> Any:
    """The value of the first rule whose pattern is found in the path; a clear error if none is."""
    name = path_name(path)
    for regex, value in compiled:
        if regex.search(name):
            return value
    raise RuleError(f"{what}: no rule matches parameter {name}; add one (e.g. ('.*', <default>) last)")


def resolve(rules: Iterable, paths: Iterable[Path], what: str, check: Callable[[Any], bool] | None = None,
            expected: str = "") -> dict[Path, Any]:
    """path -> the value of its first matching rule, for every path."""
    compiled = compile_rules(rules, what, check, expected)
    return {path: first_match(compiled, path, what) for path in paths}


def map_tree(rules: Iterable, tree: Mapping, what: str, check: Callable[[Any], bool] | None = None,
             expected: str = "") -> dict:
    """A nested dict like `tree` holding each leaf's rule value instead of the leaf."""
    compiled = compile_rules(rules, what, check, expected)

    def walk(node: Mapping, prefix: Path) -> dict:
        return {key: walk(value, (*prefix, key)) if isinstance(value, Mapping)
                else first_match(compiled, (*prefix, key), what) for key, value in node.items()}

    return walk(tree, ())


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def is_bool(value: Any) -> bool:
    return isinstance(value, bool)
