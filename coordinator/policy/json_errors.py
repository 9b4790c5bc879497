"""Where a proto3 JSON mapping fails to parse, as a field path and a reason.

``json_format.ParseDict`` says what is wrong but locates it only partly (no
index inside nested lists); this finds the exact entry by parsing one field,
and one list element, at a time. Used by :mod:`coordinator.policy.validate`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from google.protobuf import json_format
from google.protobuf.message import Message

__all__ = ["PARSE_ERRORS", "clean_parse_message", "kind_of", "locate_parse_error"]


# What ParseDict raises on bad input: ParseError mostly, the others for some
# shapes it does not check before using them.
PARSE_ERRORS: Final = (json_format.ParseError, TypeError, ValueError, AttributeError, KeyError, IndexError)


def kind_of(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def clean_parse_message(exc: BaseException) -> str:
    """json_format's message without its nesting prefixes and location suffix
    (the path is reported separately)."""
    text = str(exc).split("\n", 1)[0]
    while True:
        stripped = re.sub(r"^Failed to parse \S+ field: ", "", text)
        if stripped == text:
            break
        text = stripped
    text = re.sub(r"\s+at\s+\"?[A-Za-z_][\w.\[\]]*\"?\.*$", "", text)
    return text.rstrip(".").strip() or "cannot be parsed"


def _parses(message_class: type[Message], data: dict[str, Any]) -> BaseException | None:
    try:
        json_format.ParseDict(data, message_class())
    except PARSE_ERRORS as exc:
        return exc
    return None


def _leaf_reason(enum_names: Sequence[str], value: object, exc: BaseException) -> str:
    if enum_names:
        return f"invalid value {value!r}; expected one of {', '.join(enum_names)}"
    return clean_parse_message(exc)


def locate_parse_error(message: Message, data: object, path: str) -> tuple[str, str] | None:
    """Find the first entry of ``data`` that ParseDict rejects, as (path, reason),
    by parsing one field (and one list element) at a time."""
    if not isinstance(data, Mapping):
        return path, f"expected a mapping, got {kind_of(data)}"
    message_class = type(message)
    fields = {name: fd for fd in message.DESCRIPTOR.fields for name in (fd.name, fd.json_name)}
    for key, value in data.items():
        fd = fields.get(key) if isinstance(key, str) else None
        if fd is None:
            return _join(path, str(key)), "unknown field"
        field_path = _join(path, fd.name)
        exc = _parses(message_class, {key: value})
        if exc is None:
            continue
        enum_names = [v.name for v in fd.enum_type.values] if fd.enum_type is not None else []
        sub_class: type[Message] | None = None
        if fd.message_type is not None:
            # An instance of the field's message type, for its class.
            container = getattr(message_class(), fd.name)
            sub_class = type(container.add() if fd.is_repeated else container)
        if fd.is_repeated:
            if not isinstance(value, list):
                return field_path, f"expected a list, got {kind_of(value)}"
            for i, element in enumerate(value):
                element_path = f"{field_path}[{i}]"
                if element is None:
                    return element_path, "null is not allowed in a list"
                if sub_class is not None:
                    found = locate_parse_error(sub_class(), element, element_path)
                    if found is not None:
                        return found
                else:
                    element_exc = _parses(message_class, {key: [element]})
                    if element_exc is not None:
                        return element_path, _leaf_reason(enum_names, element, element_exc)
            return field_path, clean_parse_message(exc)
        if sub_class is not None:
            found = locate_parse_error(sub_class(), value, field_path)
            return found if found is not None else (field_path, clean_parse_message(exc))
        return field_path, _leaf_reason(enum_names, value, exc)
    return None
