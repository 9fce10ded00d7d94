"""Unit tests for the set checker in tests/checkers."""

from __future__ import annotations

from typing import Literal

import pytest

from tests.checkers.sets import SetAdd, check_set


def add(element: int, status: Literal["ok", "fail", "info"] = "ok") -> SetAdd:
    ret = None if status == "info" else float(element) + 0.5
    return SetAdd(element, status, float(element), ret)


def test_every_acknowledged_add_present_passes() -> None:
    adds = [add(1), add(2), add(3, "fail"), add(4, "info"), add(5, "info")]
    result = check_set(adds, [frozenset({1, 2, 4}), frozenset({1, 2, 4})])
    assert result.ok, result.explanation
    assert result.recovered == (4,)
    assert result.lost == result.unexpected == result.stale_reads == ()
    assert "1 of the info adds present" in result.explanation


def test_lost_acknowledged_add() -> None:
    result = check_set([add(1), add(2), add(3)], [frozenset({2})])
    assert not result.ok
    assert result.lost == (1, 3)
    assert "lost 2 acknowledged adds: 1, 3" in result.explanation


def test_element_never_added_is_unexpected() -> None:
    result = check_set([add(1)], [frozenset({1, 99})])
    assert not result.ok
    assert result.unexpected == (99,)
    assert "never added" in result.explanation


def test_failed_add_present_is_unexpected() -> None:
    result = check_set([add(1), add(2, "fail")], [frozenset({1, 2})])
    assert not result.ok
    assert result.unexpected == (2,)
    assert "whose add failed" in result.explanation


def test_final_reads_must_agree() -> None:
    result = check_set([add(1), add(2, "info")], [frozenset({1, 2}), frozenset({1})])
    assert not result.ok
    assert result.stale_reads == (1,)
    assert result.lost == ()


def test_lost_in_one_read_only_is_lost() -> None:
    result = check_set([add(1)], [frozenset({1}), frozenset()])
    assert result.lost == (1,)
    assert result.stale_reads == (1,)


def test_no_final_read_is_never_a_pass() -> None:
    result = check_set([add(1)], [])
    assert not result.ok
    assert "no final read" in result.explanation


def test_explanation_shows_only_the_first_lost_elements() -> None:
    result = check_set([add(element) for element in range(100)], [frozenset()])
    assert len(result.lost) == 100
    assert "and 90 more" in result.explanation


def test_duplicate_add_raises() -> None:
    with pytest.raises(ValueError, match="twice"):
        check_set([add(1), add(1, "fail")], [frozenset()])
