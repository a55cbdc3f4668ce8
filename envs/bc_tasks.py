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

# ---- Darkroom: Algorithm Distillation of learning histories (envs/darkroom_task.py)
# Paper optimiser settings: batch 128 (Adam 3e-4 with cosine decay lives in the agent config).
# eval_episodes counts in-context episodes per held-out task: AD keeps improving to ~80.
_DARKROOM_DEFAULTS = {
    "offline_steps": 20_000,
    "batch_size": 128,
    "eval_interval": 5_000,
    "eval_episodes": 100,
    "save_interval": 5_000,
}
register_bc_task(BCTask("darkroom", "envs.darkroom_task", "ad", dict(_DARKROOM_DEFAULTS),
                        {"env": "darkroom"}))
register_bc_task(BCTask("darkroom-hard", "envs.darkroom_task", "ad", dict(_DARKROOM_DEFAULTS),
                        {"env": "darkroom-hard"}))
register_bc_task(BCTask("dark-key-to-door", "envs.darkroom_task", "ad",
                        {**_DARKROOM_DEFAULTS, "eval_episodes": 60}, {"env": "dark-key-to-door"}))

# ---- Lift: flow-matching BC on robomimic camera demos (envs/lift_task.py)
# Horizons are robomimic's (ph 400, mh 500). lift-ph/mh-image need --dataset: the real
# files cannot be downloaded here (envs.lift_demos render makes their image version).
_LIFT_DEFAULTS = {
    "offline_steps": 20_000,
    "batch_size": 256,
    "eval_interval": 5_000,
    "eval_episodes": 50,
    "eval_workers": 2,
    "save_interval": 5_000,
}
register_bc_task(BCTask("lift-scripted-image", "envs.lift_task", "fbc", dict(_LIFT_DEFAULTS),
                        {"variant": "scripted", "num_demos": 100, "operators": 3,
                         "horizon": 400}))
register_bc_task(BCTask("lift-ph-image", "envs.lift_task", "fbc", dict(_LIFT_DEFAULTS),
                        {"variant": "ph", "horizon": 400}))
register_bc_task(BCTask("lift-mh-image", "envs.lift_task", "fbc", dict(_LIFT_DEFAULTS),
                        {"variant": "mh", "horizon": 500}))
