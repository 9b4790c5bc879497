"""Where two sequences stop being the same objects."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from coordinator.sequences import ByIdentity, changed_span

# Small ints are shared objects in CPython; these are not (nor equal to each other).
POOL = [object() for _ in range(6)]


@given(st.lists(st.integers(0, 5), max_size=12), st.lists(st.integers(0, 5), max_size=12))
def test_the_span_is_where_the_two_differ_and_no_wider(a: list[int], b: list[int]) -> None:
    old, new = [POOL[i] for i in a], [POOL[i] for i in b]
    start, old_end, new_end = changed_span(old, new)
    assert 0 <= start <= old_end <= len(old) and start <= new_end <= len(new)
    assert old[:start] == new[:start] and old[old_end:] == new[new_end:]
    assert old_end - start == len(old) - start - (len(new) - new_end)  # one tail for both
    # No wider: the first changed item of each end differs (where both have one).
    if start < old_end and start < new_end:
        assert old[start] is not new[start]
    if start < old_end and start < new_end:
        assert old[old_end - 1] is not new[new_end - 1]


def test_equal_items_that_are_other_objects_count_as_changed() -> None:
    one, other = [1000.5], [float("1000.5")]
    assert changed_span(one, other) == (0, 1, 1)
    assert changed_span(one, list(one)) == (1, 1, 1)
    same = [object() for _ in range(4)]
    assert changed_span(same, [*same[:1], object(), *same[2:]]) == (1, 2, 2)
    assert changed_span(same, same[:2] + same[3:]) == (2, 3, 2)


def test_by_identity_works_each_object_out_once_and_an_equal_other_object_again() -> None:
    made: list[str] = []

    def make(item: list[str]) -> str:
        made.append(item[0])
        return item[0].upper()

    memo: ByIdentity[list[str], str] = ByIdentity(limit=3)
    a, b, equal_to_a = ["a"], ["b"], ["a"]
    assert memo.each([a, b], make) == ["A", "B"]
    assert memo.each([a, b, equal_to_a], make) == ["A", "B", "A"]
    assert made == ["a", "b", "a"]  # equal_to_a is another object: worked out
    # Not kept when ``keep`` says so; started over once full.
    assert memo.each([["c"]], make, keep=lambda item: False) == ["C"]
    assert memo.each([["d"], a], make) == ["D", "A"]
    assert made[-2:] == ["d", "a"]  # the call with c found it full and started over
