"""Who is calling: identity (from the client certificate) and role."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Role(enum.Enum):
    HOST = "host"
    ADMIN = "admin"


@dataclass(frozen=True)
class Caller:
    identity: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    def may_see(self, owner: str) -> bool:
        """A host sees only what it created; an admin sees everything."""
        return self.is_admin or owner == self.identity
