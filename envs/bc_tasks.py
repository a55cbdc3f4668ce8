"""The tasks `train_bc.py` trains on, looked up by full name.

A task is data plus an evaluation runner for one environment. Each task module provides
`make_data(...)` and `make_evaluator(...)` (see the protocol in train_bc.py); this table
only names them, so that importing it loads neither robosuite nor a dataset.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType


@dataclass(frozen=True)
class BCTask:
    """One entry of the task table."""

    name: str
    module: str
    """Module that provides make_data and make_evaluator."""
    default_agent: str
    """Agent used when --agent is not given."""
    defaults: dict = field(default_factory=dict)
    """Training defaults (offline_steps, batch_size, ...) that suit this task."""
    options: dict = field(default_factory=dict)
    """Task-specific keyword arguments passed to make_data / make_evaluator."""

    def load(self) -> ModuleType:
        """Import the task's module."""
        return importlib.import_module(self.module)


BC_TASKS: dict[str, BCTask] = {}


def register_bc_task(task: BCTask) -> None:
    """Add a task to the table; names are unique."""
    if task.name in BC_TASKS:
        raise ValueError(f"BC task {task.name!r} is registered twice")
    BC_TASKS[task.name] = task


def get_bc_task(name: str) -> BCTask:
    """Look a task up by its full name, failing with the list of known names."""
    try:
        return BC_TASKS[name]
    except KeyError:
        known = ", ".join(sorted(BC_TASKS))
        raise ValueError(f"unknown env_name {name!r}; known: {known}") from None
