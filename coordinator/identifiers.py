"""The one rule for identifiers a caller or the gateway hands us.

Sandbox ids, host instance ids, request ids, attachment ids and network
class names end up in OVS ``external_ids``, the store, file names of the
reference gateway, logs and security events. So they are short, printable
ASCII from a small set, and checked with ``fullmatch`` (``$`` would let a
trailing newline through).

The set: letters, digits and ``. _ : @ / -``, starting with a letter or a
digit, at most ``MAX_ID_LENGTH`` characters.
"""

from __future__ import annotations

import re

MAX_ID_LENGTH = 128
ID_CHARACTERS = "letters, digits and ._:@/-"
_ID = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._:@/-]{{0,{MAX_ID_LENGTH - 1}}}")
RULE = f"1-{MAX_ID_LENGTH} characters of {ID_CHARACTERS}, starting with a letter or digit"


def is_identifier(value: str) -> bool:
    return _ID.fullmatch(value) is not None
