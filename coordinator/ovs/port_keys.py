"""The ``external_ids`` keys that mark OVSDB rows as ours: what reconcile
reads to tell our ports from anyone else's. Plain names, so the pure
planner can use them without importing ovsdbapp."""

from __future__ import annotations

OWNER_KEY = "bluefield-coordinator-owner"
OWNER_VALUE = "bluefield-coordinator"
ATTACHMENT_KEY = "bluefield-coordinator-attachment-id"
SANDBOX_KEY = "bluefield-coordinator-sandbox-id"
ROLE_KEY = "bluefield-coordinator-role"  # "uplink" or "attachment"
