"""Caller identity from the TLS client certificate, and its role."""

from __future__ import annotations

from typing import Any

from coordinator.callers import Caller, Role
from coordinator.certs import IdentityError, identity_from_certificate
from coordinator.config import AuthConfig
from coordinator.trust.peer import PeerCheck


class Unauthenticated(Exception):
    pass


class Forbidden(Exception):
    pass


class RoleMap:
    def __init__(self, config: AuthConfig, peer_check: PeerCheck | None = None) -> None:
        self._roles = {i: Role.ADMIN for i in config.admins} | {i: Role.HOST for i in config.hosts}
        # Revocation and the current CA bundle, checked on every call.
        self._peer_check = peer_check

    def caller_from_auth_context(self, auth_context: dict[str, Any]) -> Caller:
        pems = auth_context.get("x509_pem_cert") or []
        if not pems:
            # Cannot happen with require_client_auth, but never assume.
            raise Unauthenticated("no client certificate presented")
        if self._peer_check is not None:
            refusal = self._peer_check.refusal(pems[0], auth_context.get("x509_pem_cert_chain") or ())
            if refusal:
                raise Unauthenticated(refusal)
        try:
            identity = identity_from_certificate(pems[0])
        except IdentityError as exc:
            raise Unauthenticated(str(exc)) from exc
        role = self._roles.get(identity)
        if role is None:
            raise Forbidden(f"identity {identity} has no role on this coordinator")
        return Caller(identity=identity, role=role)
