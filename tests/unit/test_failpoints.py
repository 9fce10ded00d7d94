"""The failpoint registry: parsing, counting, and POINTS naming every hook in the code."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from shardkv import failpoints
from shardkv.failpoints import POINTS, FailpointError, configure, failpoint

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    yield
    configure("")


def test_points_name_every_failpoint_call_in_the_code() -> None:
    called: set[str] = set()
    for package in ("shardkv", "router"):
        for path in (ROOT / package).rglob("*.py"):
            called.update(re.findall(r'failpoint\("([a-z_.]+)"\)', path.read_text()))
    assert called == set(POINTS)


def test_an_unnamed_point_does_nothing() -> None:
    configure("other=error")
    failpoint("raft.after_persist")


def test_error_fires_on_the_counted_hit() -> None:
    configure("fsm.after_apply=3*error")
    failpoint("fsm.after_apply")
    failpoint("fsm.after_apply")
    with pytest.raises(FailpointError, match=r"fsm\.after_apply"):
        failpoint("fsm.after_apply")


def test_a_counted_point_fires_once_and_an_uncounted_one_every_time() -> None:
    configure("a=2*error; b=error")
    failpoint("a")
    with pytest.raises(FailpointError):
        failpoint("a")
    failpoint("a")
    for _ in range(3):
        with pytest.raises(FailpointError):
            failpoint("b")


def test_sleep_is_parsed() -> None:
    configure("a=sleep(0.01); b=2*exit")
    assert failpoints._points["a"].action == "sleep"
    assert failpoints._points["a"].seconds == pytest.approx(0.01)
    assert failpoints._points["b"].countdown == 2


@pytest.mark.parametrize("spec", ["a", "a=crash", "=exit", "a=sleep()", "a=0x*exit"])
def test_unreadable_specs_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="SHARDKV_FAILPOINTS"):
        configure(spec)
