"""Splitting OVS's nested text at separators outside parentheses.

OVS prints flows, datapath actions and conntrack entries as comma-separated
fields whose values may be parenthesised groups of their own
(``ct(commit,zone=5),2``; ``orig=(src=A,dst=B),zone=5``); every reader of
that text splits at the top level only. Pure: used by ``flows/`` and ``ovs/``.
"""

from __future__ import annotations

__all__ = ["split_top_level"]


def split_top_level(text: str, separator: str = ",", *, strict: bool = True) -> list[str]:
    """``text`` split at each ``separator`` outside parentheses, parts as
    they are (not stripped, empty ones kept).

    ``strict``: unbalanced parentheses raise ValueError; otherwise a stray
    ``)`` is ignored and an unclosed ``(`` runs to the end."""
    parts: list[str] = []
    depth = 0
    start = 0
    index = 0
    while index < len(text):
        char = text[index]
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                if strict:
                    raise ValueError("unbalanced ')'")
                depth = 0
        elif depth == 0 and text.startswith(separator, index):
            parts.append(text[start:index])
            index += len(separator)
            start = index
            continue
        index += 1
    if depth and strict:
        raise ValueError("unbalanced '('")
    parts.append(text[start:])
    return parts
