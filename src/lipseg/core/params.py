"""params.yaml: one section per stage, read and checked into a config dataclass by `Section.from_params`.

Every stage starts with `Config.from_params(load_params("<section>"), "<section>")`. The dataclass is the
schema: an unknown key, a missing key, a value of the wrong type or outside its range is a `ParamsError`
that names the key, raised before the stage does any work.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, Self

PARAMS_FILE = Path("params.yaml")


class ParamsError(ValueError):
    """params.yaml lacks a section or key a stage needs, or holds one it cannot use; the message names it."""


def run_stage(main: Callable[[], None]) -> None:
    """A stage script's entry point: a params.yaml problem is one line naming the key and exit status 2,
    not a traceback (other errors keep theirs: they are bugs or data problems worth the stack)."""
    try:
        main()
    except ParamsError as error:
        print(f"{Path(sys.argv[0]).stem}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def load_params(section: str, path: Path = PARAMS_FILE) -> dict[str, Any]:
    """One stage's own section of params.yaml (stages never read other sections)."""
    if not path.is_file():
        raise ParamsError(f"{path} not found (run stages from the project root)")
    import yaml  # here, not at the top: `lipseg predict` uses this module's range check, not the file

    with path.open(encoding="utf-8") as handle:
        params = yaml.safe_load(handle) or {}
    if not isinstance(params, dict) or section not in params:
        raise ParamsError(f"{path} has no '{section}' section")
    return params[section]


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}: the leaf-key form DVC and MLflow both use."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def param(
    default: Any = dataclasses.MISSING, *, low: float | None = None, high: float | None = None, low_open: bool = False
) -> Any:
    """A dataclass field with a range: `low <= value <= high` (`low < value` with `low_open`). For a list,
    the range applies to each item. Mutable defaults become default factories."""
    metadata = {"low": low, "high": high, "low_open": low_open}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def seed_param(default: int = 0) -> Any:
    """A random seed: what Python, NumPy (`np.random.seed`: 0 to 2**32 - 1) and torch all accept."""
    return param(default, low=0, high=2**32 - 1)


_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _describe(kind: Any) -> str:
    origin = typing.get_origin(kind)
    if origin is Literal:
        return "one of " + ", ".join(repr(choice) for choice in typing.get_args(kind))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(option) for option in typing.get_args(kind))
    if origin in (list, tuple):
        return "a list"
    if origin is dict or kind is dict:
        return "a mapping"
    if kind is type(None):
        return "null"
    return _TYPE_WORDS.get(kind, getattr(kind, "__name__", str(kind)))


class _Mismatch(Exception):
    """The value does not have the declared type (the caller names the key)."""


def _convert(kind: Any, value: Any, key: str) -> Any:
    """`value` as the declared type `kind`, or _Mismatch. Nested sections raise ParamsError themselves."""
    origin = typing.get_origin(kind)
    if kind is Any:
        return value
    if origin is Literal:
        if any(value == choice and type(value) is type(choice) for choice in typing.get_args(kind)):
            return value
        raise _Mismatch
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(kind):
            try:
                return _convert(option, value, key)
            except _Mismatch:
                continue
        raise _Mismatch
    if kind is type(None):
        if value is None:
            return None
        raise _Mismatch
    if isinstance(kind, type) and issubclass(kind, Section):
        if not isinstance(value, Mapping):
            raise _Mismatch
        return kind.from_params(value, key)
    if origin is list or kind is list:
        if not isinstance(value, list):
            raise _Mismatch
        (item_kind,) = typing.get_args(kind) or (Any,)
        return [_convert(item_kind, item, f"{key}[{index}]") for index, item in enumerate(value)]
    if origin is tuple:
        item_kinds = typing.get_args(kind)
        if not isinstance(value, (list, tuple)) or len(value) != len(item_kinds):
            raise _Mismatch
        return tuple(
            _convert(item, part, f"{key}[{index}]") for index, (item, part) in enumerate(zip(item_kinds, value))
        )
    if origin is dict or kind is dict:
        if not isinstance(value, Mapping):
            raise _Mismatch
        key_kind, item_kind = typing.get_args(kind) or (Any, Any)
        return {
            _convert(key_kind, name, key): _convert(item_kind, item, f"{key}.{name}") for name, item in value.items()
        }
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise _Mismatch
    if kind is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    raise TypeError(f"{key}: params of type {kind!r} are not supported")


def range_text(low: float | None, high: float | None, low_open: bool = False) -> str:
    """'>= low and <= high' (or '> low' with `low_open`; either end may be open), for messages."""
    bounds = [f"> {low}" if low_open else f">= {low}"] if low is not None else []
    return " and ".join(bounds + ([f"<= {high}"] if high is not None else []))


def in_range(value: float, low: float | None, high: float | None, low_open: bool = False) -> bool:
    too_low = low is not None and (value <= low if low_open else value < low)
    return not too_low and not (high is not None and value > high)


def _check_range(field: dataclasses.Field, value: Any, key: str) -> None:
    low, high, low_open = field.metadata.get("low"), field.metadata.get("high"), field.metadata.get("low_open")
    if low is None and high is None:
        return
    for item in value if isinstance(value, (list, tuple)) else [value]:
        if not isinstance(item, (int, float)) or isinstance(item, bool):
            continue  # e.g. "auto" beside an integer range
        if not in_range(item, low, high, low_open):
            raise ParamsError(f"params.yaml: {key} must be {range_text(low, high, low_open)}, got {item!r}")


class Section:
    """Base of the dataclasses that describe a params.yaml section (or a nested part of one)."""

    @classmethod
    def from_params(cls, values: Mapping[str, Any], name: str) -> Self:
        """The section `name` (its dotted path in params.yaml, used in messages) checked into `cls`."""
        if not isinstance(values, Mapping):
            raise ParamsError(f"params.yaml: {name} must be a mapping of keys, got {type(values).__name__}")
        fields = {field.name: field for field in dataclasses.fields(cls) if field.init}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ParamsError(
                f"params.yaml: unknown key{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(f'{name}.{key}' for key in unknown)} (known: {', '.join(fields)})"
            )
        missing = [key for key in fields if key not in values]
        if missing:
            keys = ", ".join(f"{name}.{key}" for key in missing)
            raise ParamsError(f"params.yaml: missing key{'s' if len(missing) > 1 else ''} {keys}")
        hints = typing.get_type_hints(cls)
        converted = {}
        for key, field in fields.items():
            dotted = f"{name}.{key}"
            try:
                converted[key] = _convert(hints[key], values[key], dotted)
            except _Mismatch:
                raise ParamsError(
                    f"params.yaml: {dotted} must be {_describe(hints[key])}, got {values[key]!r}"
                ) from None
            _check_range(field, converted[key], dotted)
        section = cls(**converted)
        section.check(name)
        return section

    def check(self, name: str) -> None:
        """Checks across keys (a range whose low end must not pass its high end, say); raise ParamsError."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]
