"""headkit's metadata type system: every key a file may hold has a type that bounds its size, checked before parsing.

A type (`Text`, `Int`, `Number`, `BOOL`, `ListOf`, `MapOf`, `Record`, `Json`, `Either`) says what a value may be and
how large it may get; a record refuses a key it does not know, by name. Before a value is parsed (`parse`), its text is
measured against what its type allows (bytes, values, lists and objects, nesting depth), so a crafted value costs at
most its type's size once parsed, not ~50x its text as JSON of empty lists does. Counts and lengths a `Limits` field
bounds (classes, name length, image size) are refused as `LimitExceeded`, naming the limit. The file types built from
these are `headkit.artefact`'s.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass
from typing import Any, NamedTuple

from .labels import clip
from .limits import LimitExceeded, Limits


class FileRefused(ValueError):
    """A file headkit will not read: damaged, of another type, or outside its schema; the message says which and how
    to get a good one. (A file over a limit is refused as `LimitExceeded`, naming the limit.)"""


@dataclass(frozen=True)
class Text:
    max_chars: int = 0
    limit: str | None = None  # a Limits field bounding the length instead of max_chars
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Int:
    low: int = -(2**31)
    high: int = 2**31
    limit: str | None = None  # a Limits field bounding the value instead of high


@dataclass(frozen=True)
class Number:
    """Any finite number (JSON's NaN and Infinity are refused)."""


@dataclass(frozen=True)
class Bool:
    pass


@dataclass(frozen=True)
class Null:
    pass


@dataclass(frozen=True)
class ListOf:
    item: Spec
    max_items: int


@dataclass(frozen=True)
class MapOf:
    value: Spec
    key: Text
    max_items: int = 0
    limit: str | None = None  # a Limits field bounding the count (plus `extra`) instead of max_items
    extra: int = 0
    counted: str = "entries"  # what a refusal calls the entries ("classes")


@dataclass(frozen=True)
class Record:
    fields: dict[str, Spec]
    required: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Either:
    options: tuple[Spec, ...]


@dataclass(frozen=True)
class Json:
    """Any JSON of bounded size, checked later as data by its reader (architecture rows: `branch.check_rows`)."""

    depth: int
    max_bytes: int
    max_values: int
    max_containers: int


Spec = Text | Int | Number | Bool | Null | ListOf | MapOf | Record | Either | Json
BOOL, NUMBER, NULL = Bool(), Number(), Null()


def nullable(spec: Spec) -> Either:
    return Either((spec, NULL))


def _count(spec: MapOf, limits: Limits) -> int:
    return (getattr(limits, spec.limit) if spec.limit else spec.max_items) + spec.extra


def _chars(spec: Text, limits: Limits) -> int:
    if spec.choices:
        return max(map(len, spec.choices))
    return getattr(limits, spec.limit) if spec.limit else spec.max_chars


class Size(NamedTuple):
    """The most a value of a spec takes as JSON text: bytes, values (each list item, key and value counts one),
    lists and objects among them, and nesting depth."""

    bytes: int
    values: int
    containers: int
    depth: int


def size(spec: Spec, limits: Limits) -> Size:
    """What a value of `spec` takes at most, as JSON text (see `Size`)."""
    if isinstance(spec, Text):
        return Size(12 * _chars(spec, limits) + 2, 1, 0, 0)  # a character outside the BMP is two \uXXXX escapes
    if isinstance(spec, Int):
        return Size(len(str(getattr(limits, spec.limit) if spec.limit else max(abs(spec.low), spec.high))) + 1, 1, 0, 0)
    if isinstance(spec, Number | Bool | Null):
        return Size(32 if isinstance(spec, Number) else 5, 1, 0, 0)
    if isinstance(spec, Json):
        return Size(spec.max_bytes, spec.max_values, spec.max_containers, spec.depth)
    if isinstance(spec, Either):
        sizes = [size(option, limits) for option in spec.options]
        return Size(*(max(s[i] for s in sizes) for i in range(4)))
    if isinstance(spec, ListOf | MapOf):
        count = spec.max_items if isinstance(spec, ListOf) else _count(spec, limits)
        key = size(spec.key, limits) if isinstance(spec, MapOf) else Size(-1, 0, 0, 0)  # -1: no ":" without a key
        item = size(spec.item if isinstance(spec, ListOf) else spec.value, limits)
        return Size(
            2 + count * (key.bytes + item.bytes + 2), 1 + count * (key.values + item.values), 1 + count * item.containers,
            1 + item.depth,
        )  # fmt: skip
    parts = [size(value, limits) for value in spec.fields.values()]
    return Size(
        2 + sum(len(key) + 4 for key in spec.fields) + sum(p.bytes for p in parts),
        1 + sum(1 + p.values for p in parts),
        1 + sum(p.containers for p in parts),
        1 + max((p.depth for p in parts), default=0),
    )


def describe(spec: Spec, limits: Limits) -> str:
    """What a refusal says a value should be."""
    if isinstance(spec, Text):
        return f"one of {list(spec.choices)}" if spec.choices else f"text of at most {_chars(spec, limits)} characters"
    if isinstance(spec, Int):
        high = getattr(limits, spec.limit) if spec.limit else spec.high
        return "an integer" if spec == Int() else f"an integer in {spec.low}..{high}"
    if isinstance(spec, Number | Bool | Null | Json):
        return {Number: "a finite number", Bool: "true or false", Null: "null", Json: "JSON"}[type(spec)]
    if isinstance(spec, ListOf):
        return f"a list of at most {spec.max_items} items, each {describe(spec.item, limits)}"
    if isinstance(spec, MapOf):
        return f"an object of at most {_count(spec, limits)} {spec.counted}, each {describe(spec.value, limits)}"
    if isinstance(spec, Either):
        return " or ".join(describe(option, limits) for option in spec.options)
    return f"an object with keys among {sorted(spec.fields)}"


def shown(value: Any, limit: int = 100) -> str:
    """A value from a file as a refusal quotes it: JSON, cut to `limit` characters."""
    return clip(json.dumps(value, default=str), limit)


def check(value: Any, spec: Spec, name: str, where: str, limits: Limits) -> None:
    """Refuse a parsed value that is not of `spec`, naming it (`metadata 'branch'.'start'`) and what it should be.

    Raises:
        LimitExceeded: a count or length over the `Limits` field its spec names.
        FileRefused: any other mismatch.
    """

    def refuse() -> FileRefused:
        return FileRefused(f"{where}: {name} {shown(value, 60)} should be {describe(spec, limits)}")

    if isinstance(spec, Either):
        over = None
        for option in spec.options:
            try:
                return check(value, option, name, where, limits)
            except LimitExceeded as e:  # of the right type, over a limit: that refusal names the limit
                over = over or e
            except ValueError:
                continue
        raise over or refuse()
    if isinstance(spec, Text):
        if not isinstance(value, str) or (spec.choices and value not in spec.choices):
            raise refuse()
        if spec.limit:
            limits.check(spec.limit, len(value), f"{where}: length of {name}")
        elif len(value) > _chars(spec, limits):
            raise refuse()
    elif isinstance(spec, Int):
        if not isinstance(value, int) or isinstance(value, bool) or value < spec.low:
            raise refuse()
        if spec.limit:
            limits.check(spec.limit, value, f"{where}: {name}")
        elif value > spec.high:
            raise refuse()
    elif isinstance(spec, Number):
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            raise refuse()
    elif isinstance(spec, Bool):
        if not isinstance(value, bool):
            raise refuse()
    elif isinstance(spec, Null):
        if value is not None:
            raise refuse()
    elif isinstance(spec, ListOf):
        if not isinstance(value, list) or len(value) > spec.max_items:
            raise refuse()
        for number, item in enumerate(value):
            check(item, spec.item, f"{name}[{number}]", where, limits)
    elif isinstance(spec, MapOf):
        if not isinstance(value, dict):
            raise refuse()
        if spec.limit:
            limits.check(spec.limit, len(value) - spec.extra, f"{where}: number of {spec.counted}")
        elif len(value) > spec.max_items:
            raise refuse()
        for key, item in value.items():
            check(key, spec.key, f"a key of {name}", where, limits)
            entry = f"class {clip(key, 12)}'s name" if spec is NAMES else f"{name}.{shown(key, 40)}"
            check(item, spec.value, entry, where, limits)
    elif isinstance(spec, Record):
        if not isinstance(value, dict):
            raise refuse()
        refuse_keys(set(value), spec, name, where)
        for key, item in value.items():
            check(item, spec.fields[key], f"{name}.'{key}'", where, limits)


_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_INNERMOST = re.compile(r"\[[^\[\]{}]*\]|\{[^\[\]{}]*\}")


def parse(text: str, spec: Spec, name: str, where: str, limits: Limits) -> Any:
    """`text` as JSON of `spec`: its entries, bytes, values, lists and objects, and nesting depth bounded before it is
    parsed."""
    bare = _STRING.sub('""', text)
    if isinstance(spec, MapOf) and spec.limit and size(spec.value, limits).containers == 0:
        limits.check(spec.limit, bare.count(":") - spec.extra, f"{where}: number of {spec.counted}")  # one ":" each
    most, values, containers, depth = size(spec, limits)
    if len(text) > most:
        raise FileRefused(
            f"{where}: {name} takes {len(text):,} bytes; its schema allows at most {most:,} "
            f"({describe(spec, limits)[:120]})"
        )
    found = bare.count("[") + bare.count("{")
    if found > containers:
        raise FileRefused(f"{where}: {name} holds {found:,} lists and objects; its schema allows {containers:,}")
    found = bare.count(",") + bare.count(":") + 1
    if found > values:
        raise FileRefused(f"{where}: {name} holds over {found - 1:,} values; its schema allows {values:,}")
    for _ in range(depth + 1):
        bare, changed = _INNERMOST.subn("0", bare)
        if not changed:
            break
    else:
        raise FileRefused(f"{where}: {name} is nested deeper than the {depth} levels its schema allows")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, or an integer of over 4,300 digits
        raise FileRefused(f"{where}: {name} is not headkit's JSON ({str(e)[:80]})") from e
    check(value, spec, name, where, limits)
    return value


def metadata_bytes(value: Any) -> int:
    """What parsed metadata takes in memory (objects, lists, text and numbers), bounded by the schema."""
    if isinstance(value, dict):
        return sys.getsizeof(value) + sum(metadata_bytes(k) + metadata_bytes(v) for k, v in value.items())
    if isinstance(value, list):
        return sys.getsizeof(value) + sum(metadata_bytes(v) for v in value)
    return sys.getsizeof(value)


def refuse_keys(found: set, spec: Record, name: str, where: str) -> None:
    """Refuse keys a record does not know, by name, and required keys it lacks."""
    unknown, missing = sorted(found - spec.fields.keys()), sorted(spec.required - found)
    if unknown or missing:
        holds = f"holds unknown keys {[clip(k, 40) for k in unknown[:5]]}" if unknown else ""
        lacks = f"lacks {missing}" if missing else ""
        raise FileRefused(
            f"{where}: {name} {' and '.join(filter(None, (holds, lacks)))} (the keys it may hold: {sorted(spec.fields)})"
        )


# A class table, as every headkit file writes it: "0".."n-1" → name, its count and name lengths bounded by `Limits`.
NAMES = MapOf(Text(limit="max_class_name_chars"), key=Text(12), limit="max_classes", counted="classes")


def indexed_names(names: Any) -> bool:
    """True for a non-empty class table keyed "0".."n-1", as every headkit file writes its names."""
    return isinstance(names, dict) and bool(names) and set(names) == {str(i) for i in range(len(names))}
