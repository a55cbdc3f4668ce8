"""Durotaxis's settings and action space: `DurotaxisConfig`, the kinds and parameter bounds.

The dynamics these settings drive are in envs/durotaxis/core.py (see its docstring).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from training.ranges import ConfigError, at_least, at_least_finite, positive, unit_interval

SPAWN, DELETE, HOLD = 0, 1, 2
KIND_NAMES = ("spawn", "delete", "hold")
PARAM_NAMES = ("dir_x", "dir_y", "gamma", "alpha", "noise")
PARAM_LOW = (-1.0, -1.0, 0.5, 0.5, 0.05)
PARAM_HIGH = (1.0, 1.0, 15.0, 4.0, 0.5)
# Which parameters each kind reads: spawn reads all five, delete only the direction
# (it removes the cell trailing in that direction), hold none. The hybrid log-prob of
# an action counts exactly these.
PARAMS_USED = (
    (True, True, True, True, True),
    (True, True, False, False, False),
    (False, False, False, False, False),
)
FAIL_NONE, FAIL_NO_CELLS, FAIL_TOO_MANY, FAIL_OUT_OF_BOUNDS = 0, 1, 2, 3

# Largest stiffness the profiles may reach (at the stiff edge): far inside float32's range.
_MAX_STIFFNESS = 1e30


@dataclass(frozen=True)
class DurotaxisConfig:
    """Durotaxis environment settings."""

    image_size: int = 64
    """Side of the square observation image in pixels."""
    channels: int = 1
    """Observation channels: 1 (stiffness image) or 3 (the same image repeated, like a camera)."""
    view_size: float = 80.0
    """World units the observation window spans (centred on the cluster's centroid)."""
    half_width: float = 50.0
    """Half the side of the square substrate (R), in world units."""
    profile: Literal["linear", "exponential", "random"] = "random"
    """Stiffness profile; random draws linear or exponential per episode."""
    slope: float = 0.01
    """Linear profile slope m in I = b + m (s + R)."""
    intercept: float = 1.0
    """Profile intercept b (stiffness at the soft edge)."""
    exp_rate: float = 0.01
    """Exponential profile rate k in I = b exp(k (s + R))."""
    initial_cells: int = 2
    """Cells at the start of an episode."""
    max_cells: int = 10
    """Most cells allowed; a spawn beyond it fails the episode."""
    start_spread: float = 3.0
    """Initial cells lie within this radius of the start point."""
    success_fraction: float = 0.95
    """Success when the front covers this fraction of the way from its start to the stiff edge."""
    max_steps: int = 32
    """Steps before truncation."""
    progress_reward: float = 10.0
    """Reward for the whole way from the front's start to the stiff edge (potential-based)."""
    success_bonus: float = 1.0
    """Reward added on success."""
    failure_penalty: float = 1.0
    """Reward subtracted on failure (no cells, too many cells, out of bounds)."""

    def __post_init__(self) -> None:
        """Ranges and geometry, refused with one line (ConfigError: --env.FLAG=VALUE ...)."""
        if self.channels not in (1, 3):
            raise ConfigError(f"--env.channels={self.channels} is out of range; allowed: 1 or 3")
        if self.profile not in ("linear", "exponential", "random"):
            raise ConfigError(
                f"--env.profile={self.profile} is out of range; allowed: linear, exponential "
                f"or random"
            )
        at_least("env.image_size", self.image_size, 8)
        at_least("env.max_cells", self.max_cells, 1)
        if not 1 <= self.initial_cells <= self.max_cells:
            raise ConfigError(
                f"--env.initial_cells={self.initial_cells} is out of range; allowed: "
                f"1..env.max_cells ({self.max_cells})"
            )
        at_least("env.max_steps", self.max_steps, 1)
        for name in ("view_size", "half_width", "slope", "intercept", "exp_rate"):
            positive(f"env.{name}", getattr(self, name))
        unit_interval("env.success_fraction", self.success_fraction)
        for name in ("start_spread", "progress_reward", "success_bonus", "failure_penalty"):
            at_least_finite(f"env.{name}", getattr(self, name), 0.0)
        # The start point lies 0.2R..0.6R from the soft edge and up to 0.3R off the middle
        # (see DurotaxisCore._reset_state): a spread over 0.4R puts starting cells off the
        # substrate (and from 1.2R on, past the stiff edge, where progress divides by 0).
        if self.start_spread > 0.4 * self.half_width:
            raise ConfigError(
                f"--env.start_spread={self.start_spread} is out of range; allowed: "
                f"0..{0.4 * self.half_width:g} (0.4 x env.half_width): starting cells must lie "
                f"on the substrate"
            )
        # The observation scales stiffness by its value at the stiff edge, in float32.
        edge = 2 * self.half_width
        if self.intercept + self.slope * edge > _MAX_STIFFNESS:
            raise ConfigError(
                f"--env.slope={self.slope} is out of range with env.intercept="
                f"{self.intercept} and env.half_width={self.half_width}: the stiffness at the "
                f"stiff edge must stay below {_MAX_STIFFNESS:g} (float32)"
            )
        if math.log(self.intercept) + self.exp_rate * edge > math.log(_MAX_STIFFNESS):
            bound = (math.log(_MAX_STIFFNESS) - math.log(self.intercept)) / edge
            raise ConfigError(
                f"--env.exp_rate={self.exp_rate} is out of range; allowed: <= {bound:.4g} with "
                f"env.intercept={self.intercept} and env.half_width={self.half_width}: the "
                f"stiffness at the stiff edge must stay below {_MAX_STIFFNESS:g} (float32)"
            )
