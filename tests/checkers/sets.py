"""Checker for the set workload: unique adds, then final reads of the whole set.

Owns the decision "did the store keep every acknowledged add and invent
nothing?" for a workload that adds unique ints (each add writes a key of its
own) and, once the faults are healed, reads the whole set one or more times.
It knows nothing about keys or clocks: callers record ``SetAdd`` values and
the final reads, and call ``check_set``.

Promises:

1. ``lost``: every add acknowledged (``ok``) that some final read lacks.
2. ``unexpected``: every element a final read holds that was never added,
   or whose add definitely failed (``fail``): a failed write took effect.
3. ``recovered``: the adds of unknown outcome (``info``) that some final
   read holds; they are legal, and reported so a run shows how many of its
   indeterminate writes landed.
4. ``stale_reads``: indexes of the final reads that lack an element another
   final read holds. Reads taken after healing must agree.
5. ``ok=True`` only when at least one final read was given and ``lost``,
   ``unexpected`` and ``stale_reads`` are all empty. With no final read
   nothing was checked, which is never a pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["SetAdd", "SetResult", "check_set"]

# How many elements of each list the explanation spells out.
_SHOWN = 10


@dataclass(frozen=True, slots=True)
class SetAdd:
    """One add as its client saw it; ``ret=None`` when no answer arrived."""

    element: int
    status: Literal["ok", "fail", "info"]
    call: float
    ret: float | None


@dataclass(frozen=True)
class SetResult:
    """The verdict on a set history; see the module docstring.

    Element tuples are sorted; ``stale_reads`` are indexes into the final reads.
    """

    ok: bool
    lost: tuple[int, ...]
    unexpected: tuple[int, ...]
    recovered: tuple[int, ...]
    stale_reads: tuple[int, ...]
    explanation: str


def check_set(adds: Sequence[SetAdd], final_reads: Sequence[frozenset[int]]) -> SetResult:
    """Check the final reads against the adds; see the module docstring.

    Raises ``ValueError`` when two adds share an element or a status is
    unknown, since a recorder bug must not read as a verdict.
    """
    status_of: dict[int, str] = {}
    for add in adds:
        if add.status not in ("ok", "fail", "info"):
            raise ValueError(f"add of {add.element}: unknown status {add.status!r}")
        if add.element in status_of:
            raise ValueError(f"{add.element} is added twice; elements must be unique")
        status_of[add.element] = add.status
    if not final_reads:
        return SetResult(
            ok=False,
            lost=(),
            unexpected=(),
            recovered=(),
            stale_reads=(),
            explanation=f"no final read: {len(adds)} adds were never checked",
        )

    seen = frozenset().union(*final_reads)
    everywhere = frozenset.intersection(*final_reads)
    acknowledged = {element for element, status in status_of.items() if status == "ok"}
    lost = sorted(acknowledged - everywhere)
    never_added = sorted(element for element in seen if element not in status_of)
    failed_present = sorted(element for element in seen if status_of.get(element) == "fail")
    recovered = sorted(element for element in seen if status_of.get(element) == "info")
    stale_reads = [index for index, read in enumerate(final_reads) if read != seen]

    counts = {status: 0 for status in ("ok", "fail", "info")}
    for status in status_of.values():
        counts[status] += 1
    lines = [
        f"{len(status_of)} adds ({counts['ok']} ok, {counts['fail']} fail,"
        f" {counts['info']} info), {len(final_reads)} final reads of up to"
        f" {len(seen)} elements; {len(recovered)} of the info adds present"
    ]
    if lost:
        lines.append(f"lost {len(lost)} acknowledged adds: {_show(lost)}")
    if never_added:
        lines.append(
            f"{len(never_added)} elements read that were never added: {_show(never_added)}"
        )
    if failed_present:
        lines.append(
            f"{len(failed_present)} elements read whose add failed: {_show(failed_present)}"
        )
    if stale_reads:
        lines.append(
            f"final reads disagree: {len(stale_reads)} reads ({_show(stale_reads)}) lack"
            f" {_show(sorted(seen - everywhere))} that another final read holds"
        )
    ok = not (lost or never_added or failed_present or stale_reads)
    lines[0] = ("set holds: " if ok else "set violated: ") + lines[0]
    return SetResult(
        ok=ok,
        lost=tuple(lost),
        unexpected=tuple(sorted(never_added + failed_present)),
        recovered=tuple(recovered),
        stale_reads=tuple(stale_reads),
        explanation="\n".join(lines),
    )


def _show(values: Sequence[int]) -> str:
    shown = ", ".join(map(str, values[:_SHOWN]))
    more = f" and {len(values) - _SHOWN} more" if len(values) > _SHOWN else ""
    return f"{shown}{more}"
