"""The ``external_ids`` keys that mark OVSDB rows as ours: what reconcile
reads to tell our ports from anyone else's. Plain names, so the pure
planner can use them without importing ovsdbapp."""

from __future__ import annotations

from collections.abc import Mapping

OWNER_KEY = "bluefield-coordinator-owner"
OWNER_VALUE = "bluefield-coordinator"
ATTACHMENT_KEY = "bluefield-coordinator-attachment-id"
SANDBOX_KEY = "bluefield-coordinator-sandbox-id"
ROLE_KEY = "bluefield-coordinator-role"  # "uplink", "attachment" or PARKED_ROLE
# A VF representor kept on the bridge between attachments, inert
# (``dataplane_parking``): it belongs to no attachment and is no orphan.
PARKED_ROLE = "parked"
# The interface index the representor had when it was parked: a port whose
# device has since been made anew (another index) is not used again.
PARKED_IFINDEX_KEY = "bluefield-coordinator-parked-ifindex"


def parked_ids(ifindex: int) -> dict[str, str]:
    """The external_ids of a parked port: ours, nobody's attachment, and
    the index of the device it was parked on."""
    return {OWNER_KEY: OWNER_VALUE, ROLE_KEY: PARKED_ROLE, PARKED_IFINDEX_KEY: str(ifindex)}


def is_parked(ids: Mapping[str, str] | None) -> bool:
    return ids is not None and ids.get(ROLE_KEY) == PARKED_ROLE
