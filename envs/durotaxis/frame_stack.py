"""Frame stacking (`--env.frame_stack`): an engine whose observations are its last K frames.

The standard and hard presets redraw the observation noise every step, so one frame shows
the stiffness only through that step's noise; K frames let a policy average it out.
`FrameStack` wraps any `DurotaxisEngine` and is one itself: every observation it hands
out is B x (K*C) x H x W, the K frames oldest first and the newest last (frame j is
channels j*C .. (j+1)*C - 1). A fresh episode (reset, reset_where, the autoreset inside
autoreset_step) fills all K slots with its first frame, as gymnasium's
FrameStackObservation(padding_type="reset") does. Everything else (stepping, rewards,
the privileged read-outs, render_rgb) is the wrapped engine's, unchanged: the stack only
remembers frames, it never changes a trajectory. `make_engine` wraps when
frame_stack > 1; with 1 the engine is returned bare (no copy on the hot path).

The stack is part of the state (`state_dict`): the frames before a checkpoint cannot be
rendered again from the engine's state, and an exact resume needs them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from envs.durotaxis.config import DurotaxisConfig
from envs.durotaxis.engine import DurotaxisEngine

_STACK_KEY = "frame_stack"  # the stack's entry in state_dict, beside the engine's own


class FrameStack:
    """`engine` with observations of its last `frames` frames on the channel axis."""

    def __init__(self, engine: DurotaxisEngine, frames: int) -> None:
        if frames < 2:
            raise ValueError(f"FrameStack needs frames >= 2, got {frames}; use the engine bare")
        self._engine = engine
        self.frames = frames
        self._channels = engine.config.channels
        # Before the first reset the engine's (all-zero) state is observable, as it is
        # bare; padding its frame keeps every method defined without a reset-first rule.
        self._stack = self._pad(engine.observe())

    # ----- the stack: built anew each time, never written in place --------------------------
    def _pad(self, frame: torch.Tensor) -> torch.Tensor:
        """A fresh episode's observation: its first frame in every slot."""
        return frame.repeat(1, self.frames, 1, 1)

    def _shift_in(self, stack: torch.Tensor, frame: torch.Tensor) -> torch.Tensor:
        """Drop the oldest frame, append `frame` as the newest."""
        return torch.cat([stack[:, self._channels :], frame], dim=1)

    def _restart(self, mask: torch.Tensor, frame: torch.Tensor) -> None:
        """Masked rows start over with `frame`; the others shift it in."""
        fresh = mask[:, None, None, None]
        self._stack = torch.where(fresh, self._pad(frame), self._shift_in(self._stack, frame))

    # ----- episodes, with the stack kept in step ---------------------------------------------
    def seed(self, seed: int) -> None:
        """The engine's seed (the stack restarts with the next reset)."""
        self._engine.seed(seed)

    def reset(self, seed: int | None = None) -> torch.Tensor:
        """Reset every environment; each stack is K copies of its first frame."""
        self._stack = self._pad(self._engine.reset(seed))
        return self._stack.clone()

    def reset_where(self, mask: torch.Tensor) -> None:
        """Start the masked environments' next episodes and re-pad their stacks (no host
        sync: the whole batch is observed once and the masked rows taken)."""
        self._engine.reset_where(mask)
        fresh = mask[:, None, None, None]
        self._stack = torch.where(fresh, self._pad(self._engine.observe()), self._stack)

    def step(self, kind: torch.Tensor, params: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """The engine's step; the new frame is rendered now, while it can be (a later
        step would overwrite the state it shows)."""
        out = self._engine.step(kind, params)
        self._stack = self._shift_in(self._stack, self._engine.observe())
        return out

    def autoreset_step(
        self, kind: torch.Tensor, params: torch.Tensor, final_obs: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """The engine's autoreset_step with stacked observations: finished rows restart
        their stacks from the new episode's first frame, and info["final_obs"] (with
        final_obs) is the cut episodes' last stacked observation."""
        frame, reward, terminated, truncated, info = self._engine.autoreset_step(
            kind, params, final_obs=final_obs
        )
        if final_obs:
            rows = info["truncated_rows"]
            info["final_obs"] = self._shift_in(self._stack[rows], info["final_obs"])
        self._restart(terminated | truncated, frame)
        return self._stack.clone(), reward, terminated, truncated, info

    def observe(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """B x (K*C) x H x W uint8: the last K frames, oldest first (only the given rows'
        when rows is given). A copy, as the engine's own is a fresh render: writing into
        it leaves the stack alone."""
        return self._stack.clone() if rows is None else self._stack[rows]

    # ----- checkpointing -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The engine's state and the stack."""
        return {**self._engine.state_dict(), _STACK_KEY: self._stack.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where `state_dict()` left off (same num_envs, sizes, frame_stack)."""
        if _STACK_KEY not in state:
            raise ValueError(
                f"environment state has no {_STACK_KEY!r} entry: it was saved without frame "
                f"stacking; use env.frame_stack=1 or start afresh"
            )
        saved = state[_STACK_KEY]
        if saved.shape != self._stack.shape or saved.dtype != self._stack.dtype:
            raise ValueError(
                f"environment state does not fit: the frame stack is {tuple(saved.shape)} "
                f"{saved.dtype} there, {tuple(self._stack.shape)} {self._stack.dtype} here; "
                f"use the same number of environments, env.frame_stack, env.channels and "
                f"env.image_size"
            )
        self._engine.load_state_dict({k: v for k, v in state.items() if k != _STACK_KEY})
        self._stack = saved.to(self.device).clone()

    # ----- everything else is the engine's ----------------------------------------------
    @property
    def engine(self) -> DurotaxisEngine:
        """The wrapped engine (single-frame observations)."""
        return self._engine

    @property
    def config(self) -> DurotaxisConfig:
        return self._engine.config

    @property
    def num_envs(self) -> int:
        return self._engine.num_envs

    @property
    def device(self) -> torch.device:
        return self._engine.device

    @property
    def param_low(self) -> torch.Tensor:
        return self._engine.param_low

    @property
    def param_high(self) -> torch.Tensor:
        return self._engine.param_high

    @property
    def pos(self) -> torch.Tensor:
        return self._engine.pos

    @property
    def alive(self) -> torch.Tensor:
        return self._engine.alive

    @property
    def centroid(self) -> torch.Tensor:
        return self._engine.centroid

    @property
    def steps(self) -> torch.Tensor:
        return self._engine.steps

    def render_rgb(self, index: int = 0, size: int = 256) -> np.ndarray:
        return self._engine.render_rgb(index, size)

    def num_cells(self) -> torch.Tensor:
        return self._engine.num_cells()

    def leading_cell(self, direction: torch.Tensor) -> torch.Tensor:
        return self._engine.leading_cell(direction)

    def progress(self) -> torch.Tensor:
        return self._engine.progress()

    def goal_direction(self, points: torch.Tensor) -> torch.Tensor:
        return self._engine.goal_direction(points)

    def probe_targets(self) -> torch.Tensor:
        return self._engine.probe_targets()

    def __getattr__(self, name: str) -> Any:
        """The engine's own extras (the privileged baselines read e.g. log_stiffness,
        obstacle_pos; the Gymnasium forms _seeded)."""
        engine = self.__dict__.get("_engine")
        if engine is None:  # not constructed yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(engine, name)
