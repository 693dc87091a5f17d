"""Typed, range-checked settings: one place that says what a valid value is.

Recipe sections are dataclasses whose fields carry a ``Range`` in their metadata; module and
surrogate hyperparameters take their type from their default and their range from
``NMNModule.limits`` (or the rule for their kind). A bad value is one error naming the key,
the value and what would be valid, raised before anything is written or trained.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

from modtrain.errors import ModtrainError


@dataclass(frozen=True)
class Range:
    """What a setting may be: bounds (open or closed) or a list of choices."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()

    def describe(self) -> str:
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '≥'} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '≤'} {self.high:g}")
        return " and ".join(parts)

    def holds(self, value: Any) -> bool:
        if self.choices:
            return value in self.choices
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True


def setting(default: Any, **limits: Any) -> Any:
    """A dataclass field with a default and a ``Range``."""
    return dataclasses.field(default=default, metadata={"range": Range(**limits)})


_KINDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def check(where: str, value: Any, kind: type, allowed: Range = Range(), optional: bool = False) -> Any:
    """``value`` as ``kind`` (an int is a valid float), or one error saying what would be valid."""
    if value is None and optional:
        return None
    if typing.get_origin(kind) is tuple:  # a list of values, each one of the choices (train.loggers)
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and allowed.holds(v) for v in value):
            raise ModtrainError(f"{where} = {value!r}: must be a list of {allowed.describe()}")
        return tuple(dict.fromkeys(value))
    ok = (type(value) is kind or (kind is float and type(value) is int)) and not (
        kind is float and not math.isfinite(value))
    if ok and kind is float:
        value = float(value)
    if not ok or not allowed.holds(value):
        condition = allowed.describe()
        what = (condition if allowed.choices
                else _KINDS.get(kind, kind.__name__) + (f" {condition}" if condition else ""))
        raise ModtrainError(f"{where} = {value!r}: must be {what}{' (or left out)' if optional else ''}")
    return value


def _field_kind(field: dataclasses.Field, hints: dict) -> tuple[type, bool]:
    hint = hints[field.name]
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return next(a for a in args if a is not type(None)), type(None) in args
    return hint, False


def build_section(cls: type, values: dict[str, Any], where: str, prefix: str) -> Any:
    """A section dataclass from a recipe table, every value checked; unknown keys are errors."""
    return cls(**check_section(cls, values, where, prefix))


def check_section(cls: type, values: dict[str, Any], where: str, prefix: str) -> dict[str, Any]:
    """The values of a recipe table checked against a section dataclass's fields."""
    if not isinstance(values, dict):
        raise ModtrainError(f"{where}: {prefix.rstrip('.')} must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ModtrainError(f"{where}: unknown key {prefix}{unknown[0]}; valid: "
                            f"{', '.join(prefix + k for k in sorted(fields))}")
    hints = typing.get_type_hints(cls)
    checked = {}
    for name, value in values.items():
        kind, optional = _field_kind(fields[name], hints)
        checked[name] = check(f"{where}: {prefix}{name}", value, kind, fields[name].metadata.get("range", Range()),
                              optional)
    return checked


def hyperparameter_range(key: str, default: Any, limits: dict[str, Range]) -> Range:
    """A hyperparameter's range: the module's own ``limits``, else the rule for its kind (sizes
    ≥ 1, dropout in [0, 1), other numbers ≥ 0)."""
    if key in limits:
        return limits[key]
    if isinstance(default, bool) or isinstance(default, str):
        return Range()
    if isinstance(default, int):
        return Range(low=1)
    if "dropout" in key:
        return Range(low=0.0, high=1.0, high_open=True)
    return Range(low=0.0)


def check_hyperparameters(defaults: dict[str, Any], given: dict[str, Any], limits: dict[str, Range],
                          what: str) -> dict[str, Any]:
    """Every value of ``given`` checked against the type of its default and its range."""
    return {key: check(f"{what}.{key}", value, type(defaults[key]), hyperparameter_range(key, defaults[key], limits))
            for key, value in given.items()}
