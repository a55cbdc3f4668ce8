"""A run's plan, printed before it starts: its phases, with an estimate of each.

A first Lift run generates demos, caches frozen features, trains and evaluates; each of
those takes minutes on a CPU, and a user should know at once whether the whole is twenty
minutes or three hours. The estimates scale times measured for a task's default command
on a named machine (`PhaseTimes`, kept in the task table) by the run's sizes; a phase
that the reference does not cover (another freeze mode, another agent) says so rather
than guessing. Each phase then shows its own progress bar with a live ETA.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@runtime_checkable
class CachesFeatures(Protocol):
    """An agent config that may cache what a frozen body computes (fbc's)."""

    @property
    def uses_feature_cache(self) -> bool: ...


@dataclass(frozen=True)
class PhaseTimes:
    """Seconds that each phase of a task's default command took on `machine`.

    The per-unit figures are what a run's sizes scale: a training step at `batch_size`,
    an evaluation episode with `eval_workers` workers.
    """

    machine: str
    """Where and how they were measured (the machine, precision, threads, the date)."""
    data: float
    """Making the default data on first use (Lift: the demos; Dark Room: the histories)."""
    data_work: str
    """What that is, as the plan names it (e.g. "100 scripted demos in robosuite")."""
    step: float
    """One training step at batch_size with the task's default agent and the settings of
    `agent` below."""
    batch_size: int
    episode: float
    """One evaluation episode, with eval_workers workers."""
    eval_workers: int
    cache: float = 0.0
    """Building the frozen-feature cache of the default data (0: the agent has none)."""
    cache_work: str = ""
    agent: tuple[tuple[str, object], ...] = ()
    """The agent settings the step time holds for (e.g. (("freeze_mode", "all"),)):
    a run with other values gets no training estimate."""


@dataclass(frozen=True)
class Phase:
    """One phase of a run: what it does, how much of it, and about how long it takes."""

    name: str
    work: str
    seconds: float | None
    """The estimate; None: not estimated (the reference does not cover it)."""
    condition: str = ""
    """When the phase runs, if not always: "first use only (...)" for one whose output a
    later run finds on disk."""


def format_plan(phases: Sequence[Phase], machine: str) -> str:
    """The plan as printed: one line per phase and the total of the estimated ones."""
    width = max(len(p.name) for p in phases)
    lines = [f"plan (estimates from {machine}; your machine may differ):"]
    for p in phases:
        when = f", {p.condition}" if p.condition else ""
        lines.append(f"  {p.name:<{width}}  {_duration(p.seconds):>9}  {p.work}{when}")
    known = [p.seconds for p in phases if p.seconds is not None]
    unknown = len(phases) - len(known)
    total = f"  {'total':<{width}}  {_duration(sum(known)):>9}"
    notes = []
    if any(p.condition and p.seconds is not None for p in phases):
        # A second run skips what the first left on disk: say what that run costs too.
        always = sum(p.seconds for p in phases if p.seconds is not None and not p.condition)
        if always and _duration(always) != _duration(sum(known)):
            notes.append(f"{_duration(always)} once the first-use phases are on disk")
    if unknown:
        notes.append(f"+ {unknown} phase{'s' if unknown > 1 else ''} not estimated")
    if notes:
        total += f"  ({'; '.join(notes)})"
    lines.append(total)
    return "\n".join(lines)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 90:
        return f"~{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"~{round(seconds / 60)} min"
    return f"~{seconds / 3600:.1f} h"
