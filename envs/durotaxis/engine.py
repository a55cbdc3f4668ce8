"""What a Durotaxis engine offers (`DurotaxisEngine`) and which engine a preset runs.

Two engines share this contract: `DurotaxisCore` (envs/durotaxis/core.py) runs the
`easy` preset, `MigrationCore` (envs/durotaxis/migration.py) `standard` and `hard`;
`FrameStack` (envs/durotaxis/frame_stack.py) wraps either when `frame_stack` > 1. The
Gymnasium forms, train_ppo.py, the baselines and the pretraining data reach an engine
only through `make_engine` and these methods.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch

from envs.durotaxis.config import DurotaxisConfig


class DurotaxisEngine(Protocol):
    """B environments as tensors on one device; randomness from (seed + i, episode, step)."""

    config: DurotaxisConfig
    num_envs: int
    device: torch.device
    param_low: torch.Tensor
    param_high: torch.Tensor
    pos: torch.Tensor  # B x max_cells x 2 cell positions
    alive: torch.Tensor  # B x max_cells
    centroid: torch.Tensor  # B x 2
    steps: torch.Tensor  # B steps into the current episode

    def seed(self, seed: int) -> None: ...
    def reset(self, seed: int | None = None) -> torch.Tensor: ...
    def reset_where(self, mask: torch.Tensor) -> None: ...
    def step(self, kind: torch.Tensor, params: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]: ...
    def autoreset_step(self, kind: torch.Tensor, params: torch.Tensor, final_obs: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                  dict[str, torch.Tensor]]: ...
    # B x (frame_stack*C) x H x W uint8: what a policy sees now (only the given rows' when
    # rows is given); with frame_stack > 1 the last frames, oldest first (FrameStack).
    def observe(self, rows: torch.Tensor | None = None) -> torch.Tensor: ...
    def render_rgb(self, index: int = 0, size: int = 256) -> np.ndarray: ...
    def num_cells(self) -> torch.Tensor: ...
    def leading_cell(self, direction: torch.Tensor) -> torch.Tensor: ...
    def progress(self) -> torch.Tensor: ...
    def goal_direction(self, points: torch.Tensor) -> torch.Tensor: ...
    def probe_targets(self) -> torch.Tensor: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def make_engine(config: DurotaxisConfig, num_envs: int,
                device: torch.device | str = "cpu") -> DurotaxisEngine:
    """The engine of config.preset with num_envs environments on device, its observations
    stacked over config.frame_stack frames when that is above 1 (FrameStack)."""
    engine: DurotaxisEngine
    if config.preset == "easy":
        from envs.durotaxis.core import DurotaxisCore

        engine = DurotaxisCore(config, num_envs, device)
    else:
        from envs.durotaxis.migration import MigrationCore

        engine = MigrationCore(config, num_envs, device)
    if config.frame_stack == 1:
        return engine
    from envs.durotaxis.frame_stack import FrameStack

    return FrameStack(engine, config.frame_stack)
