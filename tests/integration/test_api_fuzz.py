"""Fuzzing the real server: random well-typed messages (built from the
proto descriptors) and random bytes for every Coordinator RPC, as a host, an
admin and an identity without a role. After each batch: the daemon answers
Health, every answer was one of the documented codes with no exception text
in its details, and nothing leaked (every stored attachment is BOUND, each
pool's free count plus its attachments is its size, the bridge holds exactly
the uplink and the attachments' ports). `make fuzz-api` runs a long one."""

from __future__ import annotations

import asyncio
import os
import re
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from coordinator.identifiers import MAX_ID_LENGTH
from tests.integration.api_served import ADMIN, METHODS, Served
from tests.integration.invariants import inert_ports, ports_of

pytestmark = pytest.mark.ovs

BRIDGE = "br-fuzz"
LONG = bool(os.environ.get("API_FUZZ_BATCHES"))
BATCHES = int(os.environ.get("API_FUZZ_BATCHES", "12"))
CALLS_PER_BATCH = 24
ROLES = ("host", "admin", "stranger")
# README "Errors": every code an RPC may answer, for a caller with a role.
DOCUMENTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
# What a detail must never show: a traceback, an exception class, a source path.
LEAKS = re.compile(r"Traceback|\b[A-Z]\w*(Error|Exception)\b|\.py\b|site-packages|/usr/")

_INT_RANGES = {
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
}
_IDS = st.from_regex(rf"[A-Za-z0-9][A-Za-z0-9._:@/-]{{0,{MAX_ID_LENGTH - 1}}}", fullmatch=True)
_STRINGS = st.one_of(
    _IDS,
    st.sampled_from(["", "sb-1", "198.51.100.10", "2001:db8::1", "new", "est", "dpu-ovs-isolated"]),
    st.text(max_size=300),
    st.builds(lambda n: "x" * n, st.integers(0, 200_000)),
)


def _scalar(field: FieldDescriptor) -> SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_STRING:
        return _STRINGS
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type == FieldDescriptor.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-(2**31), 2**31 - 1))
    if field.type in _INT_RANGES:
        low, high = _INT_RANGES[field.type]
        return st.one_of(st.integers(low, high), st.sampled_from([low, high, 0, 1, 65535, 65536, 255, 256]))
    if field.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    raise AssertionError(f"no strategy for {field.full_name}")


def _fields(descriptor: Descriptor, depth: int) -> SearchStrategy[dict[str, Any]]:
    parts: dict[str, SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth > 2 or field.message_type.full_name.startswith("google.protobuf"):
                continue
            value: SearchStrategy[Any] = _fields(field.message_type, depth + 1)
        else:
            value = _scalar(field)
        if field.is_repeated:
            value = st.lists(value, max_size=4)
        parts[field.name] = value
    return st.fixed_dictionaries({}, optional=parts)


def _fill(message: Any, values: dict[str, Any]) -> Any:
    for name, value in values.items():
        field = message.DESCRIPTOR.fields_by_name[name]
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.is_repeated:
                for item in value:
                    _fill(getattr(message, name).add(), item)
            else:
                getattr(message, name).SetInParent()
                _fill(getattr(message, name), value)
        elif field.is_repeated:
            getattr(message, name).extend(value)
        else:
            setattr(message, name, value)
    return message


def _build(descriptor: Descriptor, values: dict[str, Any]) -> bytes:
    return bytes(_fill(GetMessageClass(descriptor)(), values).SerializeToString())


def _call() -> SearchStrategy[tuple[str, str, bytes]]:
    """(role, method, body): a well-typed message of the method's type, or random bytes."""
    typed = st.sampled_from(sorted(METHODS)).flatmap(
        lambda m: _fields(METHODS[m].input_type, 0).map(lambda v, m=m: (m, _build(METHODS[m].input_type, v)))
    )
    raw = st.tuples(st.sampled_from(sorted(METHODS)), st.binary(max_size=512))
    return st.tuples(st.sampled_from(ROLES), st.one_of(typed, raw)).map(lambda t: (t[0], *t[1]))


async def _check_invariants(served: Served) -> None:
    code, details = await served.callers["admin"].call("Health", b"")
    assert code == grpc.StatusCode.OK, details
    records = served.stack.store.list_attachments()
    assert all(r.state.name == "BOUND" for r in records), records
    attached: dict[str, int] = {}
    for record in records:
        attached[record.device.kind.name] = attached.get(record.device.kind.name, 0) + 1
    for pool in await served.stack.service.pools():
        assert pool.free + attached.get(pool.kind.name, 0) == pool.total, (pool, attached)
    ports = set(served.stack.ovs.vsctl("list-ports", BRIDGE).split())
    parked = ports_of(served.stack.ovs, parked=True)
    assert ports - parked == {"uplink", *(r.device.representor for r in records)}, (ports, records)
    assert parked <= inert_ports(served.stack.ovs, BRIDGE), parked
    assert len(served.stack.service._locks) == 0


async def _reset(served: Served) -> None:
    for record in served.stack.store.list_attachments():
        await served.stack.service.detach(ADMIN, record.attachment_id, record.lease_generation)


async def test_random_calls_as_every_role(served: Served) -> None:
    # Hypothesis drives the calls from a thread; the server runs on this loop.
    loop = asyncio.get_running_loop()
    seen: dict[str, set[grpc.StatusCode]] = {role: set() for role in ROLES}

    @settings(
        max_examples=BATCHES,
        deadline=None,
        derandomize=not LONG,
        suppress_health_check=list(HealthCheck),
        # Shrinking reruns whole batches against the server: only in the long run.
        phases=list(Phase) if LONG else [Phase.explicit, Phase.generate],
    )
    @given(st.lists(_call(), min_size=CALLS_PER_BATCH, max_size=CALLS_PER_BATCH))
    def batch(calls: list[tuple[str, str, bytes]]) -> None:
        async def run() -> None:
            for role, method, body in calls:
                code, details = await served.callers[role].call(method, body, timeout=30)
                seen[role].add(code)
                assert not LEAKS.search(details), (role, method, details)
                if role == "stranger":
                    assert code == grpc.StatusCode.PERMISSION_DENIED, (method, code, details)
                else:
                    assert code in DOCUMENTED, (role, method, code, details)
            await _check_invariants(served)
            await _reset(served)

        asyncio.run_coroutine_threadsafe(run(), loop).result()

    await asyncio.to_thread(batch)
    assert seen["stranger"] == {grpc.StatusCode.PERMISSION_DENIED}
    assert grpc.StatusCode.INVALID_ARGUMENT in seen["host"] | seen["admin"]
