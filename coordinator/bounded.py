"""Caller input echoed back (status details) or kept (logs, security
events) is cut to a fixed size, so nobody can make us repeat or store a
megabyte they sent."""

from __future__ import annotations

# Each echoed caller-supplied value; longer ones end in TRUNCATED_MARK.
ECHO_LIMIT = 128
# A whole status detail or log/OCSF message, whatever it quotes.
DETAIL_LIMIT = 1024
TRUNCATED_MARK = "...[truncated]"


def bounded(text: str, limit: int = ECHO_LIMIT) -> str:
    """``text`` if it fits in ``limit`` characters, else its start and the
    mark, ``limit`` characters in all."""
    if len(text) <= limit:
        return text
    return text[: max(0, limit - len(TRUNCATED_MARK))] + TRUNCATED_MARK


def quoted(value: str, limit: int = ECHO_LIMIT) -> str:
    """``repr`` of a bounded caller value, for messages that quote it."""
    return repr(bounded(value, limit))
