"""Where two sequences differ, by identity: what a patch of the last
result needs to know when most items are the very objects they were; and
what was worked out per object, found again by identity (``ByIdentity``).

Compiles hand back the same objects for what did not change (remembered
rule flows, the Rule objects of an unchanged policy), so a one-item change
of a thousand-item sequence is found by comparing references in C
(``map(operator.is_)``) rather than hashing or comparing values.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
V = TypeVar("V")

__all__ = ["ByIdentity", "changed_span"]


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


class ByIdentity(Generic[T, V]):
    """What was worked out for each of many objects, found again by the
    object's identity: an int hashed in C, where the object's own hash (a
    frozen dataclass's, of every field) would be worked out in Python every
    time. Each entry keeps its object alive, so no other object can take its
    id meanwhile; started over when full."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._kept: dict[int, tuple[T, V]] = {}

    def each(
        self, items: Iterable[T], make: Callable[[T], V], *, keep: Callable[[T], bool] | None = None
    ) -> list[V]:
        """``make(item)`` of every item, worked out once for an item kept
        (``keep``: whether an item's value is kept at all)."""
        kept = self._kept
        if len(kept) >= self._limit:
            kept.clear()
        lookup = kept.get  # the loop runs once per item
        out = []
        for item in items:
            held = lookup(id(item))
            if held is not None and held[0] is item:
                out.append(held[1])
                continue
            value = make(item)
            if len(kept) < self._limit and (keep is None or keep(item)):
                kept[id(item)] = (item, value)
            out.append(value)
        return out

    def __len__(self) -> int:
        return len(self._kept)

    def clear(self) -> None:
        self._kept.clear()
