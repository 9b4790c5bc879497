"""A Scope as the store keeps it, and back (pure).

The stored form is the protobuf binary encoding of the NetworkScope. Rows
written by earlier versions hold its canonical proto3 JSON mapping as text
instead; both read back. The two are told apart by the value's type (bytes
or text), which SQLite keeps as it was written. Decoding validates like a
policy from the gateway: a stored policy is trusted no more than the file it
lives in.

Encoding a 1,000-rule policy whole costs tens of milliseconds, and a policy
change usually changes one rule: so each rule's encoding is remembered per
Rule value, and a scope's encoding is put together from them.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Final

from google.protobuf.message import DecodeError

from coordinator._proto.bluefield.gateway.v1 import policy_pb2
from coordinator.policy.json_errors import kind_of
from coordinator.policy.scope import Rule, Scope
from coordinator.policy.validate import (
    ROOT_FIELD,
    PolicyError,
    rule_to_proto,
    scope_from_mapping,
    scope_from_proto,
    scope_to_proto,
)
from coordinator.sequences import ByIdentity

#: Rule encodings remembered (of both directions; and as many again by
#: identity, per direction, below), and the rules that are small enough to
#: be: since a remembered encoding keeps its Rule alive, at most some 60 MB
#: of rules no policy holds any more (20 MB when the rules by identity are
#: the ones validation hands back, as they are for a policy from the
#: gateway), typically a few.
RULE_ENCODING_CACHE_SIZE: Final = 4096
RULE_ENCODING_MAX_TERMS: Final = 8


def scope_to_stored(scope: Scope) -> bytes:
    """The stored bytes of ``scope``: its NetworkScope's binary encoding."""
    # A serialized message followed by another parses as the two merged, and
    # a repeated field's entries from both are kept in order: so the scope's
    # fields before its rules, each rule as a one-rule NetworkScope, then the
    # fields after them (all encoded by the library) is the encoding of the
    # whole scope, byte for byte. Only the rules that changed since they were
    # last encoded cost an encoding.
    head = policy_pb2.NetworkScope(
        version=scope.version, addresses=[str(net) for net in scope.addresses]
    ).SerializeToString()
    egress = _entries(scope.egress, "egress")
    ingress = _entries(scope.ingress, "ingress")
    rest = scope_to_proto(dataclasses.replace(scope, version=0, addresses=(), egress=(), ingress=()))
    return head + egress + ingress + rest.SerializeToString()


def scope_from_stored(value: object) -> Scope:
    """The Scope a stored value holds: binary (bytes) or, as earlier versions
    wrote it, canonical JSON (text). Raises ValueError: PolicyError (naming
    the field) for a value that is not a valid NetworkScope, json's own error
    for a text that is not JSON."""
    if isinstance(value, bytes):
        try:
            msg = policy_pb2.NetworkScope.FromString(value)
        except DecodeError as exc:
            raise PolicyError(ROOT_FIELD, f"not an encoded NetworkScope ({exc})") from exc
        return scope_from_proto(msg)
    if isinstance(value, str):
        return scope_from_mapping(json.loads(value))
    raise PolicyError(ROOT_FIELD, f"a stored policy is bytes or text, not {kind_of(value)}")


# The encodings of the very Rule objects encoded last, by identity: an
# apply of a policy whose unchanged rules are the same objects as before
# (a policy kept while one rule of it changes) finds each with a lookup of
# an int, not the Python-level hash of a Rule.
_by_identity: dict[str, ByIdentity[Rule, bytes]] = {
    "egress": ByIdentity(RULE_ENCODING_CACHE_SIZE),
    "ingress": ByIdentity(RULE_ENCODING_CACHE_SIZE),
}


def _entries(rules: tuple[Rule, ...], direction: str) -> bytes:
    """``rules`` as entries of ``direction``, encoded and joined."""
    return b"".join(_by_identity[direction].each(rules, lambda rule: _entry(rule, direction), keep=_small))


def _small(rule: Rule) -> bool:
    return len(rule.cidrs) <= RULE_ENCODING_MAX_TERMS and len(rule.ports) <= RULE_ENCODING_MAX_TERMS


def _entry(rule: Rule, direction: str) -> bytes:
    """``rule`` as the one rule of a NetworkScope's ``direction`` field, encoded."""
    if not _small(rule):
        return _encode_entry(rule, direction)
    return _remembered_entry(rule, direction)


def _encode_entry(rule: Rule, direction: str) -> bytes:
    msg = policy_pb2.NetworkScope()
    getattr(msg, direction).append(rule_to_proto(rule))
    return msg.SerializeToString()


_remembered_entry = functools.lru_cache(maxsize=RULE_ENCODING_CACHE_SIZE)(_encode_entry)


def forget_rule_encodings() -> None:
    """Forget every remembered rule encoding (what a measurement of the cold cost needs)."""
    _remembered_entry.cache_clear()
    for known in _by_identity.values():
        known.clear()


__all__ = ["forget_rule_encodings", "scope_from_stored", "scope_to_stored"]
