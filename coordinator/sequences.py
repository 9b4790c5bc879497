"""Where two sequences differ, by identity: what a patch of the last
result needs to know when most items are the very objects they were.

Compiles hand back the same objects for what did not change (remembered
rule flows, the Rule objects of an unchanged policy), so a one-item change
of a thousand-item sequence is found by comparing references in C
(``map(operator.is_)``) rather than hashing or comparing values.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")

__all__ = ["changed_span"]


def _same_run(old: Sequence[T], new: Sequence[T], *, from_end: bool) -> int:
    """How many items from the start (or the end) are the same objects."""
    pairs = map(operator.is_, reversed(old), reversed(new)) if from_end else map(operator.is_, old, new)
    same = list(pairs)
    try:
        return same.index(False)
    except ValueError:
        return len(same)


def changed_span(old: Sequence[T], new: Sequence[T]) -> tuple[int, int, int]:
    """``(start, old_end, new_end)``: ``old[start:old_end]`` became
    ``new[start:new_end]``, every item before ``start`` and every item from
    the ends on being the same object in both. An item equal but not the
    same counts as changed."""
    start = _same_run(old, new, from_end=False)
    shorter = min(len(old), len(new))
    tail = min(_same_run(old, new, from_end=True), shorter - start)
    return start, len(old) - tail, len(new) - tail
