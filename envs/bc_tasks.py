"""The tasks `train_bc.py` trains on, looked up by full name.

A task is data plus an evaluation runner for one environment: `data` names the function
that makes the data and `evaluator` the one that makes the evaluation runner, each as a
"module:function" string (e.g. "envs.lift.dataset:make_data"). This table only names
them, so that importing it loads neither robosuite nor a dataset.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from training.plan import PhaseTimes


@dataclass(frozen=True)
class BCTask:
    """One entry of the task table (the contracts: training/contracts.py)."""

    name: str
    data: str
    """The "module:function" making the data (a BCData): f(dataset, *, device, seed,
    cache_dir, **agent_fields, **data_options), e.g. envs/lift/dataset.py's make_data."""
    evaluator: str
    """The "module:function" making the Evaluator: f(spec, *, device, seed, num_workers,
    video_dir, **evaluator_options), e.g. envs/lift/evaluation.py's make_evaluator."""
    default_agent: str
    """Agent used when --agent is not given."""
    defaults: dict = field(default_factory=dict)
    """Training defaults (offline_steps, batch_size, ...) that suit this task."""
    data_options: dict = field(default_factory=dict)
    """Task-specific keyword arguments of the data function (variant, horizon, env, ...)."""
    evaluator_options: dict = field(default_factory=dict)
    """Task-specific keyword arguments of the evaluator function."""
    agent_fields: tuple[str, ...] = ()
    """Agent settings the data is shaped by (e.g. chunk_length), read from --agent's
    config and passed to the data function by name; an agent without them does not fit."""
    phase_times: PhaseTimes | None = None
    """What each phase of the task's default command took on a named machine, scaled into
    the plan a run prints at its start (training/plan.py); None: no plan printed."""
    cpu_bf16_slower: str | None = None
    """Why --precision=auto runs fp32 on a CPU for this task although the CPU computes bf16
    natively (its agents gain nothing from bf16 there); None: auto as everywhere."""
    agent_defaults: dict = field(default_factory=dict)
    """Agent settings that suit this task (e.g. Dark Room's CPU-sized learning rate), each
    applied to the agents that have it; the agent's own defaults otherwise."""

    def load_data(self) -> Callable[..., Any]:
        """Import the function that makes the task's data."""
        return _load(self.data)

    def load_evaluator(self) -> Callable[..., Any]:
        """Import the function that makes the task's evaluation runner."""
        return _load(self.evaluator)


def _load(target: str) -> Callable[..., Any]:
    """The function a "module:function" string names."""
    module, sep, name = target.partition(":")
    if not (module and sep and name):
        raise ValueError(f"expected 'module:function', got {target!r}")
    return getattr(importlib.import_module(module), name)


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

# ---- Darkroom: Algorithm Distillation of learning histories (envs/darkroom/)
# Paper optimiser settings: batch 128 (Adam 3e-4 with cosine decay lives in the agent config).
# eval_episodes counts in-context episodes per held-out task: AD keeps improving to ~80.
_DARKROOM_DEFAULTS = {
    "offline_steps": 20_000,
    "batch_size": 128,
    "eval_interval": 5_000,
    "eval_episodes": 100,
    "save_interval": 5_000,
}
# The quickstart, `--env_name=darkroom`, runs the budget of docs/darkroom.md's context
# study instead, so that it ends within minutes on a CPU and reproduces that study's
# context-8 row: 1,000 updates x batch 64, lr 1e-3 cosine-decayed over the 1,000, 200
# in-context episodes at updates 500 and 1,000. The paper's budget is README's GPU line;
# darkroom-hard and dark-key-to-door keep it.
_DARKROOM_CPU_DEFAULTS = {
    "offline_steps": 1_000,
    "batch_size": 64,
    "eval_interval": 500,
    "eval_episodes": 200,
    "save_interval": 500,
}
_DARKROOM_CPU_AGENT = {"lr": 1e-3, "lr_decay_steps": 1_000}
# The quickstart's phases on a fresh clone (README's table), scaled into a run's plan.
_DARKROOM_TIMES = PhaseTimes(
    machine="the 2-core AMD EPYC VM in fp32, 2 threads, 2026-12-08",
    data=3.0, data_work="Q-learning histories of the 65 fit goals",
    step=0.36, batch_size=64, agent=(("context_episodes", 8), ("prefix_episodes", 0)),
    episode=0.32, eval_workers=1,
)
# AD's transformer is small (64-dim): on the AMD EPYC's CPU bf16's casts cost more than its
# matmuls save (the quickstart: 2.03 updates/s in bf16 against 2.73 in fp32).
_DARKROOM_CPU_BF16 = "AD's 64-dim transformer trains slower in bf16 on a CPU"
_DARKROOM_DATA = "envs.darkroom.dataset:make_data"
_DARKROOM_EVALUATOR = "envs.darkroom.evaluation:make_evaluator"
# The data windows are sized by the agent's context and compressed prefix (in episodes).
_DARKROOM_AGENT_FIELDS = ("context_episodes", "prefix_episodes")
# goals: the held-out split evaluated in context (train_bc.py --eval_goals=valid|test).
register_bc_task(BCTask("darkroom", _DARKROOM_DATA, _DARKROOM_EVALUATOR, "ad",
                        dict(_DARKROOM_CPU_DEFAULTS),
                        data_options={"env": "darkroom"},
                        evaluator_options={"env": "darkroom", "goals": "test"},
                        agent_fields=_DARKROOM_AGENT_FIELDS,
                        agent_defaults=dict(_DARKROOM_CPU_AGENT),
                        cpu_bf16_slower=_DARKROOM_CPU_BF16, phase_times=_DARKROOM_TIMES))
for _env, _episodes in (("darkroom-hard", 100), ("dark-key-to-door", 60)):
    register_bc_task(BCTask(_env, _DARKROOM_DATA, _DARKROOM_EVALUATOR, "ad",
                            {**_DARKROOM_DEFAULTS, "eval_episodes": _episodes},
                            data_options={"env": _env},
                            evaluator_options={"env": _env, "goals": "test"},
                            agent_fields=_DARKROOM_AGENT_FIELDS,
                            cpu_bf16_slower=_DARKROOM_CPU_BF16))

# ---- Lift: flow-matching BC on robomimic camera demos (envs/lift/)
# Horizons are robomimic's (ph 400, mh 500). lift-ph/mh-image need --dataset: the real
# files cannot be downloaded here (envs.lift.demos render makes their image version).
_LIFT_DEFAULTS = {
    "offline_steps": 20_000,
    "batch_size": 256,
    # One look at progress halfway, on the first 10 of the fixed seeds; the last evaluation,
    # the number to report, runs all 50. (Interim looks at 5k, 10k and 15k cost 3.1 of the
    # headline's 22 minutes on the 2-core EPYC: 96, 56 and 34 s.)
    "eval_interval": 10_000,
    "eval_episodes": 50,
    "interim_eval_episodes": 10,
    "eval_workers": 2,
    "save_interval": 5_000,
}
_LIFT_DATA = "envs.lift.dataset:make_data"
# Observation keys (train_bc.py --cameras / --lowdim_keys); None = the data function's
# defaults: both cameras and the proprioception.
_LIFT_OBS = {"image_keys": None, "lowdim_keys": None}
_LIFT_EVALUATOR = "envs.lift.evaluation:make_evaluator"
# The headline command's phases, `python train_bc.py --agent.freeze_encoder=True` on a
# fresh clone (README's quickstart table): the plan a run prints scales these.
_LIFT_TIMES = PhaseTimes(
    machine="the 2-core AMD EPYC VM in bf16, 2 threads, 2026-12-07",
    data=390.0, data_work="100 scripted demos rendered in robosuite",
    cache=220.0, cache_work="ResNet-18 on 9 crops x 2 cameras of every training frame",
    step=1 / 57, batch_size=256, agent=(("encoder_config.freeze_mode", "all"),),
    episode=3.7, eval_workers=2,
)
# Training samples are action chunks of the agent's chunk_length.
register_bc_task(BCTask("lift-scripted-image", _LIFT_DATA, _LIFT_EVALUATOR, "fbc",
                        dict(_LIFT_DEFAULTS),
                        {"variant": "scripted", "num_demos": 100, "operators": 3,
                         "horizon": 400, "filter_key": "auto", **_LIFT_OBS},
                        agent_fields=("chunk_length",), phase_times=_LIFT_TIMES))
# The scripted mh preset: 6 operators x 50 demos of three skill levels, robomimic's masks.
register_bc_task(BCTask("lift-scripted-mh-image", _LIFT_DATA, _LIFT_EVALUATOR, "fbc",
                        dict(_LIFT_DEFAULTS),
                        {"variant": "scripted", "preset": "mh", "num_demos": 300,
                         "horizon": 500, "filter_key": "auto", **_LIFT_OBS},
                        agent_fields=("chunk_length",)))
register_bc_task(BCTask("lift-ph-image", _LIFT_DATA, _LIFT_EVALUATOR, "fbc",
                        dict(_LIFT_DEFAULTS),
                        {"variant": "ph", "horizon": 400, "filter_key": "auto", **_LIFT_OBS},
                        agent_fields=("chunk_length",)))
register_bc_task(BCTask("lift-mh-image", _LIFT_DATA, _LIFT_EVALUATOR, "fbc",
                        dict(_LIFT_DEFAULTS),
                        {"variant": "mh", "horizon": 500, "filter_key": "auto", **_LIFT_OBS},
                        agent_fields=("chunk_length",)))
