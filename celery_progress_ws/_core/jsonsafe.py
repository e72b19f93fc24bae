"""The one conversion of caller-supplied values to JSON, used by every encoder of entries.

Rules, applied recursively (``report_progress`` fields, ``send_event`` data, any entry a publisher encodes):

- ``str``, ``int``, ``bool`` and ``None`` are kept; a finite ``float`` is kept, NaN and ±infinity become ``null``.
- ``datetime``, ``date`` and ``time`` become ISO 8601 text (``isoformat()``); an ``Enum`` becomes its value
  (converted in turn); ``UUID``, ``Decimal`` and ``pathlib`` paths become their ``str()`` (a ``Decimal`` keeps its
  exact digits, e.g. ``"1.10"``, where a float would round; ``Decimal("NaN")`` is ``"NaN"``).
- ``bytes`` and ``bytearray`` become UTF-8 text, invalid bytes replaced by U+FFFD.
- ``list`` and ``tuple`` become arrays; ``set`` and ``frozenset`` become arrays, sorted when the items can be
  ordered, else in iteration order.
- A mapping becomes an object. Its keys must be ``str`` or ``int``, ``float``, ``bool`` or ``None`` (written as the
  text ``json`` gives them: ``1`` -> ``"1"``, ``True`` -> ``"true"``, ``None`` -> ``"null"``); any other key is a
  ``TypeError``.
- A container that contains itself, or nesting deeper than ``MAX_DEPTH`` containers, is a ``ValueError``.
- Anything else becomes its ``str()``; if ``str()`` raises, that is a ``TypeError``.

Errors name the path of the offending value, e.g. ``stats.by_page[3]``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import date, time
from enum import Enum
from typing import Any, NoReturn

MAX_DEPTH = 32
"""How deeply containers may nest inside one field value (the value itself is depth 1)."""

PLAIN_TYPES = frozenset({str, int, float, bool, type(None)})
"""Exact types whose values need no walk: a type check lets them through (a float is only checked for NaN/inf)."""


class _Refused(Exception):
    """A value the rules refuse; carries the final exception type and the path, built while unwinding."""

    def __init__(self, error: type[TypeError | ValueError], reason: str) -> None:
        super().__init__(reason)
        self.error = error
        self.reason = reason
        self.path: list[str] = []

    def raise_for(self, root: str) -> NoReturn:
        where = root + "".join(reversed(self.path))
        raise self.error(f"{where}: {self.reason}") from self.__cause__


def json_safe(value: Any, path: str = "value") -> Any:
    """``value`` converted by the module's rules; ``TypeError``/``ValueError`` naming ``path`` if it is refused."""
    try:
        return _convert(value, 1, set())
    except _Refused as refused:
        refused.raise_for(path)


def json_safe_fields(fields: Mapping[Any, Any], prefix: str = "") -> dict[str, Any]:
    """A field mapping (``data`` of an entry) converted by the rules; each field's value starts at depth 1.

    Errors name the field, after ``prefix`` (``"data."`` gives ``data.stats[3]``).
    """
    converted: dict[str, Any] = {}
    for key, value in fields.items():
        name = key if key.__class__ is str else None
        try:
            if name is None:
                name = _key_text(key)
            kind = value.__class__
            if kind is float:
                converted[name] = value if math.isfinite(value) else None
            elif kind in PLAIN_TYPES:
                converted[name] = value
            else:
                converted[name] = _convert(value, 1, set())
        except _Refused as refused:
            refused.raise_for(prefix + (name if name is not None else repr(key)))
    return converted


def text_of(value: object, path: str) -> str:
    """``str(value)``; ``TypeError`` naming ``path`` if ``str()`` raises (or its ``__str__`` returns no ``str``)."""
    try:
        text = str(value)
    except Exception as exc:  # any exception a caller's __str__ raises: refuse the value, never propagate it
        raise TypeError(f"{path}: str() of a {type(value).__name__} raised {exc!r}") from exc
    return text


def _convert(value: Any, depth: int, active: set[int]) -> Any:
    kind = value.__class__
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is float:
        return value if math.isfinite(value) else None
    if kind is dict or kind is list or kind is tuple or isinstance(value, Mapping | list | tuple | set | frozenset):
        return _container(value, depth, active)
    if isinstance(value, Enum):
        return _convert(value.value, depth, active)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return _convert(float(value), depth, active)
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    try:
        if isinstance(value, date | time):
            return value.isoformat()
        return str(value)
    except Exception as exc:  # a caller's __str__/isoformat() may raise anything: refuse the value
        raise _Refused(TypeError, f"str() of a {kind.__name__} raised {exc!r}") from exc


def _container(value: Any, depth: int, active: set[int]) -> Any:
    """Convert a mapping, list, tuple or set (``depth`` is its own depth), refusing cycles and deep nesting."""
    if depth > MAX_DEPTH:
        raise _Refused(ValueError, f"nested deeper than {MAX_DEPTH} levels")
    marker = id(value)
    if marker in active:
        raise _Refused(ValueError, "circular reference")
    active.add(marker)
    try:
        if isinstance(value, Mapping):
            return _mapping(value, depth, active)
        items = value if isinstance(value, list | tuple) else _ordered(value)
        converted = []
        for index, item in enumerate(items):
            try:
                converted.append(_convert(item, depth + 1, active))
            except _Refused as refused:
                refused.path.append(f"[{index}]")
                raise
        return converted
    finally:
        active.discard(marker)


def _mapping(value: Mapping[Any, Any], depth: int, active: set[int]) -> dict[str, Any]:
    converted: dict[str, Any] = {}
    for key, item in value.items():
        name = key if key.__class__ is str else None
        try:
            if name is None:
                name = _key_text(key)
            converted[name] = _convert(item, depth + 1, active)
        except _Refused as refused:
            refused.path.append(f".{name}" if name is not None else f"[{key!r}]")
            raise
    return converted


def _key_text(key: Any) -> str:
    """A mapping key as JSON object-key text, the way ``json`` writes it; ``_Refused`` for other key types."""
    if isinstance(key, str):
        return str.__str__(key)
    if key is True:
        return "true"
    if key is False:
        return "false"
    if key is None:
        return "null"
    if isinstance(key, int):
        return int.__repr__(key)
    if isinstance(key, float):
        if math.isnan(key):
            return "NaN"
        if math.isinf(key):
            return "Infinity" if key > 0 else "-Infinity"
        return float.__repr__(key)
    raise _Refused(TypeError, f"a {type(key).__name__} key is not str, int, float, bool or None")


def _ordered(items: set[Any] | frozenset[Any]) -> list[Any]:
    """The items of a set, sorted if they can be ordered, else in iteration order."""
    try:
        return sorted(items)
    except Exception:  # unorderable items raise TypeError, a caller's __lt__ anything: then keep iteration order
        return list(items)
