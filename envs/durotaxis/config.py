"""Durotaxis's settings and action space: `DurotaxisConfig`, its presets, the kinds.

Three presets (`--env.preset`): `easy` is the first version's task (the front cell climbs
to the stiff edge of a linear or exponential gradient; envs/durotaxis/core.py), kept for
tests and regression; `standard` (the default) and `hard` are the migration task
(envs/durotaxis/migration.py): the whole cluster must reach the stiffest spot of a
substrate whose stiffness sets how far a cell can protrude, with noisy steering, a
tight cell budget, per-episode stiffness and observation noise; `hard` adds obstacles.
A setting left unset (None) takes its preset's value (`PRESETS`); one given on the
command line wins over the preset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from training.ranges import ConfigError, at_least, at_least_finite, positive, unit_interval

SPAWN, DELETE, HOLD = 0, 1, 2
KIND_NAMES = ("spawn", "delete", "hold")
PARAM_NAMES = ("dir_x", "dir_y", "gamma", "alpha", "noise")
# The easy preset's (the first version's) bounds; every preset's are config fields.
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

Preset = Literal["easy", "standard", "hard"]

# The values a preset gives the settings left unset. Why these numbers (measured with
# `python -m envs.durotaxis.baselines`, docs/durotaxis.md): the cell budget (4 cells, at
# most 6) makes retraction necessary; the protrusion limit (max_link) against the
# stiffness-dependent Hill step makes gamma a function of the local stiffness; the horizon
# leaves the privileged policy room and a constant gamma too little.
PRESETS: dict[str, dict[str, Any]] = {
    "easy": dict(view_size=80.0, initial_cells=2, max_cells=10, start_spread=3.0,
                 max_steps=32, gamma_range=(0.5, 15.0), obstacles=0),
    "standard": dict(view_size=64.0, initial_cells=4, max_cells=6, start_spread=4.0,
                     max_steps=42, gamma_range=(0.5, 30.0), obstacles=0),
    "hard": dict(view_size=64.0, initial_cells=4, max_cells=6, start_spread=4.0,
                 max_steps=64, gamma_range=(0.5, 30.0), obstacles=3),
}

# Largest stiffness the profiles may reach (at the stiff edge): far inside float32's range.
_MAX_STIFFNESS = 1e30


@dataclass(frozen=True)
class DurotaxisConfig:
    """Durotaxis environment settings (a preset, then any setting given explicitly)."""

    preset: Preset = "standard"
    """easy (the first version: front climbs a gradient) | standard (the cluster migrates to
    the stiffest spot) | hard (standard with obstacles)."""
    image_size: int = 64
    """Side of the square observation image in pixels."""
    channels: int = 1
    """Observation channels: 1 (stiffness image) or 3 (the same image repeated, like a camera)."""
    frame_stack: int = 1
    """Frames per observation, stacked on the channel axis oldest first (frame_stack x
    channels): standard and hard redraw the observation noise every step, and only a policy
    that sees several frames can average it out (envs/durotaxis/frame_stack.py)."""
    view_size: float | None = None
    """World units the observation window spans, centred on the cluster's centroid
    (preset: easy 80, standard / hard 64)."""
    initial_cells: int | None = None
    """Cells at the start of an episode (preset: easy 2, standard / hard 4)."""
    max_cells: int | None = None
    """Most cells allowed; a spawn beyond it fails the episode (preset: easy 10, else 6)."""
    start_spread: float | None = None
    """Initial cells lie within this radius of the start point (preset: easy 3, else 4)."""
    max_steps: int | None = None
    """Steps before truncation (preset: easy 32, standard 42, hard 64)."""
    progress_reward: float = 10.0
    """Reward for the whole way from the start to the goal (potential-based)."""
    success_bonus: float = 1.0
    """Reward added on success."""
    failure_penalty: float = 1.0
    """Reward subtracted on failure (no cells, too many cells; easy: also out of bounds)."""
    dir_range: tuple[float, float] = (-1.0, 1.0)
    """Bounds of each direction component (the direction is normalised)."""
    gamma_range: tuple[float, float] | None = None
    """Bounds of the Hill gamma (protrusion scale; preset: easy 0.5..15, else 0.5..30)."""
    alpha_range: tuple[float, float] = (0.5, 4.0)
    """Bounds of the Hill alpha (stiffness at half protrusion)."""
    noise_range: tuple[float, float] = (0.05, 0.5)
    """Bounds of the protrusion-length noise scale."""

    # ----- easy only: the first version's substrate ------------------------------------
    half_width: float = 50.0
    """easy: half the side of the square substrate (R), in world units."""
    profile: Literal["linear", "exponential", "random"] = "random"
    """easy: stiffness profile; random draws linear or exponential per episode."""
    slope: float = 0.01
    """easy: linear profile slope m in I = b + m (s + R)."""
    intercept: float = 1.0
    """easy: profile intercept b (stiffness at the soft edge)."""
    exp_rate: float = 0.01
    """easy: exponential profile rate k in I = b exp(k (s + R))."""
    success_fraction: float = 0.95
    """easy: success when the front covers this fraction of the way to the stiff edge."""

    # ----- standard / hard: migration to the stiffest spot -----------------------------
    start_distance: float = 120.0
    """Distance from the start centroid to the stiffness peak (the goal)."""
    goal_radius: float = 8.0
    """Success when the cluster's centroid is this close to the peak."""
    peak_stiffness: tuple[float, float] = (1.5, 4.0)
    """Range of the peak stiffness, drawn per episode."""
    start_stiffness: tuple[float, float] = (0.25, 0.4)
    """Range of the stiffness at the start distance, drawn per episode (log stiffness
    falls as the squared distance from the peak)."""
    max_link: float = 8.0
    """A protrusion longer than this detaches: the new cell is lost."""
    direction_noise: float = 0.25
    """Std (radians) of the wrapped-normal noise on the spawn direction."""
    obs_noise: int = 12
    """Observation noise: each pixel gets a uniform integer 0..2 obs_noise grey levels,
    a new draw per step."""
    lost_cell_penalty: float = 0.2
    """Reward subtracted when a new cell is lost (detached, or spawned into an obstacle)."""
    obstacles: int | None = None
    """Zero-stiffness discs between start and goal that kill cells spawned into them
    (preset: easy / standard 0, hard 4)."""
    obstacle_radius: float = 9.0
    """Radius of each obstacle."""

    def __post_init__(self) -> None:
        """Fill unset settings from the preset, then check ranges (one line each)."""
        if self.preset not in PRESETS:
            raise ConfigError(
                f"--env.preset={self.preset} is out of range; allowed: easy, standard or hard"
            )
        for name, value in PRESETS[self.preset].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if self.channels not in (1, 3):
            raise ConfigError(f"--env.channels={self.channels} is out of range; allowed: 1 or 3")
        at_least("env.image_size", self.image_size, 8)
        at_least("env.frame_stack", self.frame_stack, 1)
        at_least("env.max_cells", self.max_cells, 1)
        if not 1 <= self.initial_cells <= self.max_cells:
            raise ConfigError(
                f"--env.initial_cells={self.initial_cells} is out of range; allowed: "
                f"1..env.max_cells ({self.max_cells})"
            )
        at_least("env.max_steps", self.max_steps, 1)
        positive("env.view_size", self.view_size)
        for name in ("start_spread", "progress_reward", "success_bonus", "failure_penalty"):
            at_least_finite(f"env.{name}", getattr(self, name), 0.0)
        for name in ("dir_range", "gamma_range", "alpha_range", "noise_range"):
            _check_range(name, getattr(self, name), low=None)
        if self.alpha_range[0] <= 0 or self.gamma_range[0] < 0 or self.noise_range[0] < 0:
            raise ConfigError(
                f"--env.alpha_range must be > 0 and --env.gamma_range, --env.noise_range "
                f">= 0; got alpha_range={self.alpha_range}, gamma_range={self.gamma_range}, "
                f"noise_range={self.noise_range}"
            )
        if self.preset == "easy":
            self._check_easy()
        else:
            self._check_migration()

    @property
    def param_low(self) -> tuple[float, ...]:
        """Lower bounds of (dir_x, dir_y, gamma, alpha, noise)."""
        return (self.dir_range[0], self.dir_range[0], self.gamma_range[0],
                self.alpha_range[0], self.noise_range[0])

    @property
    def param_high(self) -> tuple[float, ...]:
        """Upper bounds of (dir_x, dir_y, gamma, alpha, noise)."""
        return (self.dir_range[1], self.dir_range[1], self.gamma_range[1],
                self.alpha_range[1], self.noise_range[1])

    def _check_migration(self) -> None:
        for name in ("start_distance", "goal_radius", "max_link", "obstacle_radius"):
            positive(f"env.{name}", getattr(self, name))
        at_least_finite("env.direction_noise", self.direction_noise, 0.0)
        at_least_finite("env.lost_cell_penalty", self.lost_cell_penalty, 0.0)
        at_least("env.obs_noise", self.obs_noise, 0)
        if self.obs_noise > 27:  # grey levels up to 200, + 2 x 27 stays below the cells' 255
            raise ConfigError(f"--env.obs_noise={self.obs_noise} is out of range; allowed: 0..27")
        at_least("env.obstacles", self.obstacles, 0)
        _check_range("peak_stiffness", self.peak_stiffness, low=0.0)
        _check_range("start_stiffness", self.start_stiffness, low=0.0)
        if self.start_stiffness[1] >= self.peak_stiffness[0]:
            raise ConfigError(
                f"--env.start_stiffness={self.start_stiffness[1]} is out of range; allowed: "
                f"below the lowest peak stiffness ({self.peak_stiffness[0]})"
            )
        if self.goal_radius >= self.start_distance:
            raise ConfigError(
                f"--env.goal_radius={self.goal_radius} is out of range; allowed: below "
                f"env.start_distance ({self.start_distance})"
            )

    def _check_easy(self) -> None:
        if self.profile not in ("linear", "exponential", "random"):
            raise ConfigError(
                f"--env.profile={self.profile} is out of range; allowed: linear, exponential "
                f"or random"
            )
        for name in ("half_width", "slope", "intercept", "exp_rate"):
            positive(f"env.{name}", getattr(self, name))
        unit_interval("env.success_fraction", self.success_fraction)
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


def _check_range(name: str, pair: tuple[float, float], low: float | None) -> None:
    """A (low, high) setting: two finite numbers, low <= high, and low above `low`."""
    ok = (len(pair) == 2 and all(math.isfinite(v) for v in pair) and pair[0] <= pair[1]
          and (low is None or pair[0] > low))
    if not ok:
        floor = "" if low is None else f", both > {low:g}"
        raise ConfigError(
            f"--env.{name}={' '.join(str(v) for v in pair)} is out of range; allowed: two "
            f"finite numbers LOW HIGH with LOW <= HIGH{floor}"
        )
