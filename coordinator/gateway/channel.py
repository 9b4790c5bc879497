"""The channel to the policy gateway, built afresh for every session.

Each (re)connection reads the coordinator's own certificate and key, the
gateway's CA and the CRLs again and validates them as one set (key file
mode, key matches certificate, not expired, CRLs signed by the CA and
current); a set that fails keeps the last good one, so a botched renewal
does not cut the policy stream.

grpcio's channel credentials take no CRL and a Python client cannot see
the certificate the server presented. With ``crl`` set, the TLS session to
the gateway is therefore made by Python's ``ssl`` module in a relay
(``tls_relay``): gRPC speaks plaintext HTTP/2 to a unix socket in a private
directory, and the relay carries each connection over a TLS connection
whose peer certificate it checked against the CRL first. Without a CRL,
gRPC's own TLS is used.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import grpc
from cryptography import x509

from coordinator.client import TlsFiles
from coordinator.gateway.tls_relay import OnRefused, TlsRelay
from coordinator.trust.material import MaterialError, TrustFiles, TrustSet, TrustState, load_trust_set
from coordinator.trust.peer import PeerCheck

log = logging.getLogger(__name__)

OnFailure = Callable[[str, MaterialError], None]
OnReloaded = Callable[[str, TrustSet, bool], None]


class GatewayChannels:
    def __init__(
        self, target: str, tls: TlsFiles, *, server_name: str = "", crl: tuple[str, ...] = ()
    ) -> None:
        self._target = target
        self._server_name = server_name
        self._files = TrustFiles(
            str(tls.cert), str(tls.key), str(tls.ca), crl,
            "gateway.cert", "gateway.key", "gateway.ca", "gateway.crl",
        )  # fmt: skip
        # Validated now: unusable material refuses the start (MaterialError).
        self._state = TrustState(1, self._load())
        self.on_failure: OnFailure | None = None
        self.on_reloaded: OnReloaded | None = None
        # Told when the gateway's certificate is refused (CRL, chain, expiry).
        self.on_refused: OnRefused | None = None
        self._failing = False

    def _load(self) -> TrustSet:
        # The coordinator's certificate is not chained to gateway.ca: that is
        # the gateway's CA, which need not be the one that issued ours.
        return load_trust_set(self._files, chain_to_bundle=False)

    def _refresh(self) -> TrustState:
        try:
            material = self._load()
        except MaterialError as exc:
            log.error("gateway credentials not reloaded, the previous set stays in use: %s", exc)
            self._failing = True
            if self.on_failure is not None:
                self.on_failure("gateway", exc)
            return self._state
        recovered, self._failing = self._failing, False
        if material != self._state.material or recovered:
            self._state = TrustState(self._state.version + 1, material)
            if self.on_reloaded is not None:
                self.on_reloaded("gateway", material, recovered)
        return self._state

    def _refused(self, target: str, certificate: x509.Certificate, refusal: str) -> None:
        if self.on_refused is not None:
            self.on_refused(target, certificate, refusal)

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[grpc.aio.Channel]:
        """A channel for one session, with the material as it is now."""
        state = self._refresh()
        material = state.material
        if material.crls.empty:
            options = [("grpc.ssl_target_name_override", self._server_name)] if self._server_name else []
            credentials = grpc.ssl_channel_credentials(
                root_certificates=material.bundle_pem,
                private_key=material.key_pem,
                certificate_chain=material.cert_chain_pem,
            )
            async with grpc.aio.secure_channel(self._target, credentials, options=options) as channel:
                yield channel
            return
        relay = TlsRelay(
            self._target, self._server_name, self._files, PeerCheck(lambda: state), self._refused
        )
        socket_path = await relay.start()
        try:
            options = [("grpc.default_authority", self._server_name or self._target.rpartition(":")[0])]
            async with grpc.aio.insecure_channel(f"unix:{socket_path}", options=options) as channel:
                yield channel
        finally:
            await relay.close()
