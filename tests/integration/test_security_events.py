"""OCSF security events after real operations over mTLS: an in-process
coordinator (real store, emulated eswitch, private OVS) served by the real
gRPC server with the security-event wiring the daemon uses, driven by the
typed client and by examples/host_extension.py."""

from __future__ import annotations

import asyncio
import datetime
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from coordinator._proto.bluefield.coordinator.v1 import coordinator_pb2 as pb
from coordinator._proto.bluefield.gateway.v1 import policy_pb2
from coordinator.api.auth import RoleMap
from coordinator.api.server import start_server
from coordinator.api.servicer import CoordinatorServicer
from coordinator.callers import Caller, Role
from coordinator.certs import DevPki, init_dev_pki, issue_client_cert
from coordinator.client import CoordinatorClient, RetryPolicy, TlsFiles
from coordinator.dev.ovs_instance import OvsInstance
from coordinator.policy.validate import scope_from_mapping
from coordinator.security_events import SecurityEvents, start_security_events
from tests.integration.api_served import served_config
from tests.integration.stack import Stack, Uplink, build_stack

pytestmark = pytest.mark.ovs

BRIDGE = "br-sec"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "host_extension.py"
T = TypeVar("T")
# Cleans up after a test as an admin would, whoever attached.
OWNER = Caller("spiffe://bluefield.local/admin/admin", Role.ADMIN)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return init_dev_pki(tmp_path_factory.mktemp("pki"))


@dataclass
class Served:
    stack: Stack
    pki: DevPki
    target: str
    log: Path

    def client(self, cert: Path, key: Path) -> CoordinatorClient:
        tls = TlsFiles(self.pki.ca_cert, cert, key)
        return CoordinatorClient(self.target, tls, timeout=10, retry=RetryPolicy(attempts=2))

    def host(self) -> CoordinatorClient:
        return self.client(self.pki.host_cert, self.pki.host_key)

    def admin(self) -> CoordinatorClient:
        return self.client(self.pki.admin_cert, self.pki.admin_key)

    def lines(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [e for e in self.lines() if predicate(e)]
            if found:
                return found[-1]
            await asyncio.sleep(0.05)
        raise AssertionError(f"no matching security event in {self.lines()}")


@pytest_asyncio.fixture
async def served(tmp_path: Path, ovs: OvsInstance, uplink: Uplink, pki: DevPki) -> AsyncIterator[Served]:
    stack = await build_stack(tmp_path, ovs, BRIDGE, "uplink")
    log = tmp_path / "security-events.jsonl"
    config = served_config(stack.config, pki, log)
    # The same wiring as daemon.run_daemon.
    security: SecurityEvents = start_security_events(config, stack.async_store, stack.events)
    servicer = CoordinatorServicer(
        stack.service, stack.async_store, stack.events, RoleMap(config.auth), "emulated"
    )
    server, port = await start_server(config.server, servicer, interceptors=security.interceptors)
    try:
        yield Served(stack, pki, f"127.0.0.1:{port}", log)
    finally:
        await server.stop(0)
        await stack.events.close()
        await asyncio.gather(*security.tasks, return_exceptions=True)
        security.close()
        for record in stack.store.list_attachments():
            await stack.service.detach(OWNER, record.attachment_id, record.lease_generation)
        await stack.close()


async def _in_thread(call: Callable[[], T]) -> T:
    # The clients are blocking; the server runs on this test's event loop.
    return await asyncio.to_thread(call)


def _is(class_uid: int, activity_id: int, attachment_id: str = "") -> Callable[[dict[str, Any]], bool]:
    def match(event: dict[str, Any]) -> bool:
        if event["class_uid"] != class_uid or event["activity_id"] != activity_id:
            return False
        return not attachment_id or any(r.get("uid") == attachment_id for r in event.get("resources", []))

    return match


def _check_common(event: dict[str, Any]) -> None:
    assert event["type_uid"] == event["class_uid"] * 100 + event["activity_id"]
    assert event["category_uid"] == event["class_uid"] // 1000
    assert event["metadata"]["version"] == "1.1.0"
    assert isinstance(event["time"], int) and abs(event["time"] / 1000 - time.time()) < 120
    assert event["severity_id"] in (1, 2, 3, 4)


async def test_attach_and_detach_are_api_activity(served: Served) -> None:
    host = served.host()
    attachment = await _in_thread(lambda: host.attach("sb-sec", "hi-1", f"req-{uuid.uuid4()}"))
    created = await served.wait_for(_is(6003, 1, attachment.attachment_id))
    _check_common(created)
    assert created["status"] == "Success" and created["api"]["operation"] == "Attach"
    assert created["actor"]["user"]["uid"] == served.pki.host_identity
    assert created["resources"][0]["labels"] == ["sandbox_id=sb-sec"]
    assert await _in_thread(lambda: host.detach(attachment.attachment_id, attachment.lease_generation))
    deleted = await served.wait_for(_is(6003, 4, attachment.attachment_id))
    _check_common(deleted)
    assert deleted["status"] == "Success" and deleted["api"]["operation"] == "Detach"
    assert deleted["metadata"]["sequence"] > created["metadata"]["sequence"]
    # Every line is one JSON object (lines() would have raised otherwise).
    assert all(isinstance(e, dict) for e in served.lines())
    host.close()


async def test_host_calling_an_admin_rpc_is_a_denied_api_call(served: Served) -> None:
    host = served.host()
    attachment = await _in_thread(lambda: host.attach("sb-deny", "hi-1", f"req-{uuid.uuid4()}"))
    request = pb.ExplainPacketRequest(
        attachment_id=attachment.attachment_id,
        direction=pb.DIRECTION_EGRESS,
        protocol=policy_pb2.PROTOCOL_TCP,
        src_ip="198.51.100.10",
        dst_ip="203.0.113.5",
        src_port=40000,
        dst_port=443,
        ct_state="new",
    )
    with pytest.raises(grpc.RpcError) as err:
        await _in_thread(lambda: host.explain(request))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
    denied = await served.wait_for(lambda e: e["class_uid"] == 6003 and e.get("status") == "Failure")
    _check_common(denied)
    assert denied["activity_name"] == "Read" and denied["severity"] == "Medium"
    assert denied["api"]["operation"] == "ExplainPacket"
    assert (
        denied["api"]["response"]["error"] == "PERMISSION_DENIED" and denied["api"]["response"]["code"] == 7
    )
    assert denied["actor"]["user"]["uid"] == served.pki.host_identity
    assert denied["actor"]["user"]["groups"] == [{"name": "host"}]
    assert denied["src_endpoint"]["ip"] == "127.0.0.1" and denied["src_endpoint"]["port"] > 0
    assert denied["resources"][0]["uid"] == attachment.attachment_id
    # The admin may: no new failure line.
    before = len(served.lines())
    admin = served.admin()
    assert (await _in_thread(lambda: admin.explain(request))).rule
    await asyncio.sleep(0.2)
    assert not [e for e in served.lines()[before:] if e.get("status") == "Failure"]
    host.close()
    admin.close()


async def test_identity_without_a_role_and_certificate_without_identity(
    served: Served, tmp_path: Path
) -> None:
    pki = served.pki
    cert, key = issue_client_cert(
        pki.ca_cert, pki.ca_key, tmp_path, "stranger", uri="spiffe://bluefield.local/host/stranger"
    )
    stranger = served.client(cert, key)
    with pytest.raises(grpc.RpcError) as err:
        await _in_thread(stranger.list)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
    denied = await served.wait_for(lambda e: e["class_uid"] == 6003 and e.get("status") == "Failure")
    assert denied["api"]["operation"] == "ListAttachments"
    assert denied["actor"]["user"]["uid"] == "spiffe://bluefield.local/host/stranger"
    assert "groups" not in denied["actor"]["user"]  # no role
    stranger.close()

    nameless_cert, nameless_key = _certificate_without_san(pki, tmp_path)
    nameless = served.client(nameless_cert, nameless_key)
    with pytest.raises(grpc.RpcError) as err:
        await _in_thread(nameless.health)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    failed = await served.wait_for(_is(3002, 1))
    _check_common(failed)
    assert failed["status"] == "Failure" and failed["status_code"] == "UNAUTHENTICATED"
    assert "subjectAltName" in failed["status_detail"]
    assert failed["auth_protocol"] == "mTLS" and failed["user"]["uid"] == "unknown"
    assert "CN=nameless" in failed["certificate"]["subject"]
    assert failed["src_endpoint"]["ip"] == "127.0.0.1"
    nameless.close()


async def test_stale_and_never_issued_lease_generations(served: Served) -> None:
    host = served.host()
    attachment = await _in_thread(lambda: host.attach("sb-lease", "hi-1", f"req-{uuid.uuid4()}"))
    # A new host instance takes the attachment over: generation 1 -> 2.
    served.stack.store.take_over(attachment.attachment_id, "hi-2")
    await served.stack.events.notify()
    takeover = await served.wait_for(_is(6003, 3, attachment.attachment_id))
    assert takeover["api"]["operation"] == "Reconcile" and takeover["status"] == "Success"

    for generation, refusal in ((1, "stale"), (3, "never-issued")):
        with pytest.raises(grpc.RpcError) as err:
            await _in_thread(lambda g=generation: host.detach(attachment.attachment_id, g, "hi-1"))  # type: ignore[misc]
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
        refused = await served.wait_for(
            lambda e, r=refusal: e.get("unmapped", {}).get("lease_refusal") == r  # type: ignore[misc]
        )
        _check_common(refused)
        assert refused["class_uid"] == 6003 and refused["activity_name"] == "Delete"
        assert refused["status"] == "Failure" and refused["api"]["response"]["error"] == "FAILED_PRECONDITION"
        assert refused["unmapped"]["lease_generation"] == generation
        assert refused["resources"][0]["uid"] == attachment.attachment_id
        assert refused["actor"]["user"]["uid"] == served.pki.host_identity
    stale = next(e for e in served.lines() if e.get("unmapped", {}).get("lease_refusal") == "stale")
    assert "stale lease generation" in stale["api"]["response"]["message"]
    # The current generation still works.
    assert await _in_thread(lambda: host.detach(attachment.attachment_id, 2, "hi-2"))
    host.close()


async def test_policy_applied_degraded_and_stale_are_compliance_findings(served: Served) -> None:
    host = served.host()
    attachment = await _in_thread(lambda: host.attach("sb-policy", "hi-1", f"req-{uuid.uuid4()}"))
    service = served.stack.service
    scope = scope_from_mapping({"version": 3, "addresses": ["198.51.100.10"]})
    await service.apply_policy("sb-policy", scope)
    applied = await served.wait_for(_is(2003, 1, attachment.attachment_id))
    _check_common(applied)
    assert (
        applied["compliance"]["status"] == "Pass" and applied["compliance"]["control"] == "DpuPolicyApplied"
    )
    assert "version 3" in applied["compliance"]["status_detail"]
    await service.degrade("sb-policy", "InvalidPolicy", "egress[0].cidrs[0]: not a CIDR")
    degraded = await served.wait_for(lambda e: e.get("compliance", {}).get("control") == "DpuPolicyDegraded")
    assert degraded["compliance"]["status"] == "Fail" and degraded["severity"] == "Medium"
    assert degraded["compliance"]["status_code"] == "InvalidPolicy"
    await service.mark_stale(deny=False)
    stale = await served.wait_for(lambda e: e.get("compliance", {}).get("control") == "DpuPolicyStale")
    assert stale["compliance"]["status"] == "Warning"
    assert stale["resources"][0]["uid"] == attachment.attachment_id
    host.close()


async def test_host_extension_example_end_to_end(served: Served) -> None:
    pki = served.pki
    argv = [
        sys.executable, str(EXAMPLE), "--target", served.target, "--ca", str(pki.ca_cert),
        "--cert", str(pki.host_cert), "--key", str(pki.host_key), "--sandbox", "sb-example",
        "--device-kind", "vf", "--watch-timeout", "20",
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, (out.decode(), err.decode())
    steps = [json.loads(line) for line in out.decode().splitlines()]
    assert [s["step"] for s in steps if s["step"] != "event"] == ["health", "attached", "detached", "done"]
    attached = next(s for s in steps if s["step"] == "attached")
    assert attached["kind"] == "DEVICE_KIND_VF" and attached["lease_generation"] == 1
    events = [(s["type"], s["status"]) for s in steps if s["step"] == "event"]
    assert ("DpuAttachmentBound", True) in events and events[-1] == ("DpuAttachmentBound", False)
    assert next(s for s in steps if s["step"] == "detached")["detached"] is True
    # Nothing is left, and the security log has both ends of it.
    assert served.stack.store.get(attached["attachment_id"]) is None
    await served.wait_for(_is(6003, 1, attached["attachment_id"]))
    await served.wait_for(_is(6003, 4, attached["attachment_id"]))


async def test_host_extension_example_reports_errors(served: Served, tmp_path: Path) -> None:
    pki = served.pki
    other = init_dev_pki(tmp_path / "other")
    argv = [
        sys.executable, str(EXAMPLE), "--target", served.target, "--ca", str(pki.ca_cert),
        "--cert", str(other.host_cert), "--key", str(other.host_key), "--sandbox", "sb-x", "--attempts", "1",
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 1
    (last,) = [json.loads(line) for line in out.decode().splitlines()][-1:]
    assert last["step"] == "error" and last["code"] == "UNAVAILABLE"


def _certificate_without_san(pki: DevPki, out: Path) -> tuple[Path, Path]:
    """A client certificate the CA signed that names no identity."""
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nameless")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = out / "nameless.pem", out / "nameless.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path
