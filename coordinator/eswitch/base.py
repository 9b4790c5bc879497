"""The interface every eswitch backend implements (emulated, switchdev)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol


class DeviceKind(enum.Enum):
    VF = "vf"
    SF = "sf"


@dataclass(frozen=True)
class EswitchDevice:
    """A device of the eswitch (a VF or an SF) the backend can hand out to
    one attachment, and where it shows up. Not to be confused with an
    attachment's slot, the 16-bit index behind its cookie and zone.

    VFs exist before they are claimed (the host creates them); SFs are
    created on claim, so their representor name is known only then and
    ``representor`` is the name the backend will give it.
    """

    kind: DeviceKind
    controller: int
    pf: int
    number: int  # VF index or SF number
    representor: str
    host_pci_address: str = ""

    @property
    def device_id(self) -> str:
        return f"{self.kind.value}:{self.controller}:{self.pf}:{self.number}"


@dataclass(frozen=True)
class HealthFact:
    name: str
    ok: bool
    detail: str
    required: bool


@dataclass(frozen=True)
class PreparedDevice:
    """A function the eswitch has prepared now, and the hardware address it
    carries ("" when the backend cannot read it cheaply)."""

    slot: EswitchDevice
    mac: str = ""


class EswitchError(RuntimeError):
    """A backend operation failed; the message says which step and device."""


class EswitchBackend(Protocol):
    name: str

    def inventory(self) -> list[EswitchDevice]:
        """Every function this eswitch can hand out (claimed or not)."""
        ...

    def prepare(self, slot: EswitchDevice, mac: str) -> str:
        """Make the function usable with ``mac`` (create an SF, set the
        function hw address); return the representor netdev name once it
        exists. Idempotent for a slot that is already prepared."""
        ...

    def release(self, slot: EswitchDevice) -> None:
        """Undo ``prepare`` (delete the SF, clear the address). Idempotent."""
        ...

    def set_representor_up(self, representor: str, up: bool) -> bool:
        """Set the representor netdev administratively up or down; False if
        there is no such netdev. A representor that is down carries nothing
        to or from its function, whatever the bridge's flows and port
        configuration say, and that is kernel state: it outlives an
        ovs-vswitchd restart, which forgets the ports' OpenFlow
        configuration. (On mlx5 a representor's state is also its
        function's vport state: the function's link goes down with it.)
        Raises EswitchError."""
        ...

    def prepared(self) -> list[PreparedDevice]:
        """Functions that are prepared now (an SF that exists, a function with
        an address set), claimed or not: reconcile releases the unclaimed and
        does not prepare again what is prepared with the right address."""
        ...

    def health(self) -> list[HealthFact]: ...

    def close(self) -> None: ...
