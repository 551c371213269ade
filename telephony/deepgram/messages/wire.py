"""The machinery every Deepgram message shares: dataclasses whose field names are the wire
keys, strict converters for what a message needs, `Unknown` for types we do not know, and the
`Word` object Flux and Nova both send."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import orjson


class DeepgramMessageError(ValueError):
    """A frame that is not a valid message for that endpoint; the text says why."""


# --- the generic machinery: field names are wire keys --------------------------------------


class _Wire:
    """Base of every message and nested object: `to_dict` drops None fields, adds `type`."""

    __slots__ = ()
    TYPE: ClassVar[str] = ""  # the wire `type`; "" for nested objects (Word, FunctionCall)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.TYPE} if self.TYPE else {}
        for name in _SPECS[type(self)].names:
            value = getattr(self, name)
            if value is not None:
                out[name] = _plain(value)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Any:
        return _SPECS[cls].build(d)


def _plain(value: Any) -> Any:
    if isinstance(value, _Wire):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def encode(msg: _Wire) -> str:
    """The JSON text of a message (what goes in a WebSocket text frame)."""
    return orjson.dumps(msg.to_dict()).decode()


def _fail(where: str, why: str) -> DeepgramMessageError:
    return DeepgramMessageError(f"{where}: {why}")


def _as_str(v: Any, where: str) -> str:
    if not isinstance(v, str):
        raise _fail(where, f"expected a string, got {type(v).__name__}")
    return v


def _as_int(v: Any, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise _fail(where, f"expected an integer, got {type(v).__name__}")
    return v


def _as_float(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise _fail(where, f"expected a number, got {type(v).__name__}")
    return float(v)


def _as_bool(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise _fail(where, f"expected a boolean, got {type(v).__name__}")
    return v


def _as_dict(v: Any, where: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise _fail(where, f"expected an object, got {type(v).__name__}")
    return v


def _as_list(v: Any, where: str) -> list[Any]:
    if not isinstance(v, list):
        raise _fail(where, f"expected an array, got {type(v).__name__}")
    return v


def _tuple_of(item: Callable[[Any, str], Any]) -> Callable[[Any, str], tuple[Any, ...]]:
    def convert(v: Any, where: str) -> tuple[Any, ...]:
        items = _as_list(v, where)
        try:
            return tuple([item(x, where) for x in items])
        except DeepgramMessageError:
            for i, x in enumerate(items):  # again, to name the index of the bad item
                item(x, f"{where}[{i}]")
            raise

    return convert


def _nested(cls: type[_Wire]) -> Callable[[Any, str], Any]:
    def convert(v: Any, where: str) -> Any:
        try:
            return cls.from_dict(_as_dict(v, where))
        except DeepgramMessageError as exc:
            raise _fail(where, str(exc)) from None

    return convert


def _optional(conv: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
    return lambda v, where: None if v is None else conv(v, where)


# Annotation text (this module uses postponed annotations) -> converter. Nested types are
# added as they are defined; `_message` refuses an annotation missing here at import time.
_CONVERTERS: dict[str, Callable[[Any, str], Any]] = {
    "str": _as_str,
    "int": _as_int,
    "float": _as_float,
    "bool": _as_bool,
    "dict[str, Any]": _as_dict,
    "tuple[str, ...]": _tuple_of(_as_str),
    "tuple[int, ...]": _tuple_of(_as_int),
}
for _name in ("str", "int", "float", "bool", "dict[str, Any]"):
    _CONVERTERS[f"{_name} | None"] = _optional(_CONVERTERS[_name])


@dataclass(slots=True)
class _Spec:
    cls: type
    names: tuple[str, ...]
    # name, convert, required, and the field's place for error text ("TurnInfo.words"), built
    # once here: formatting it per field per message was most of a Flux Update's parse time.
    fields: tuple[tuple[str, Callable[[Any, str], Any], bool, str], ...]

    def build(self, d: Mapping[str, Any]) -> Any:
        kwargs: dict[str, Any] = {}
        for name, convert, required, where in self.fields:
            if name in d:
                kwargs[name] = convert(d[name], where)
            elif required:
                raise _fail(self.cls.TYPE or self.cls.__name__, f"missing {name!r}")  # type: ignore[attr-defined]
        return self.cls(**kwargs)


_SPECS: dict[type, _Spec] = {}
_W = TypeVar("_W", bound=type)


def _message(cls: _W) -> _W:
    """Register a message dataclass: derive its parser from the field annotations."""
    fields = []
    for f in dataclasses.fields(cls):
        if f.type not in _CONVERTERS:
            raise TypeError(f"{cls.__name__}.{f.name}: no converter for {f.type!r}")
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        where = f"{cls.TYPE or cls.__name__}.{f.name}"  # type: ignore[attr-defined]
        fields.append((f.name, _CONVERTERS[f.type], required, where))
    _SPECS[cls] = _Spec(cls, tuple(f[0] for f in fields), tuple(fields))
    return cls


@dataclass(slots=True)
class Unknown:
    """A message whose `type` this module does not know (kept whole, never an error)."""

    type: str
    raw: dict[str, Any]


def _load(text: str | bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise DeepgramMessageError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise DeepgramMessageError("expected a JSON object")
    if not isinstance(data.get("type"), str):
        raise DeepgramMessageError("missing or non-string 'type'")
    return data


def _parser(*classes: type[_Wire]) -> Callable[[str | bytes], Any]:
    table = {c.TYPE: c for c in classes}

    def parse(text: str | bytes) -> Any:
        data = _load(text)
        cls = table.get(data["type"])
        return Unknown(data["type"], data) if cls is None else cls.from_dict(data)

    return parse


def _const(msg: _Wire) -> str:
    return encode(msg)


# --- shared nested objects -----------------------------------------------------------------


@_message
@dataclass(slots=True)
class Word(_Wire):
    """A word with times in seconds from the connection's first audio byte (Flux and Nova)."""

    word: str
    confidence: float = 1.0
    start: float | None = None  # Flux: may be absent
    end: float | None = None
    speaker: int | None = None  # Nova with diarize=true: 0, 1, ... per voice on the channel
    # Nova with punctuate/smart_format: `word` stays lowercase and bare, this is the word as
    # it stands in the transcript ("Hello,").
    punctuated_word: str | None = None


_CONVERTERS["tuple[Word, ...]"] = _tuple_of(_nested(Word))
