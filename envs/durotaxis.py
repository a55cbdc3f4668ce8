"""Durotaxis: a cluster of cells migrating up a stiffness gradient, batched in torch.

The substrate is a square of side `2 * half_width` whose axes follow the gradient
direction, drawn at random each episode, so that the policy has to *see* which way is
stiff. Stiffness (intensity) rises along the gradient coordinate `s` either linearly,
`I = b + m (s + R)`, or exponentially, `I = b exp(k (s + R))`. Each step the policy picks
a hybrid action: a kind (spawn / delete / hold) and five continuous parameters
(direction x, direction y, Hill gamma, Hill alpha, noise). Spawning adds a cell next to
the cell that leads in the chosen direction, at distance given by the Hill equation of
the parent's local intensity, `r = gamma / (1 + (alpha / I)^2) + noise * N(0, 1)`;
deleting removes the cell that trails in the chosen direction; hold does nothing.

Reward: the change of normalised progress of the front cell (potential-based, so it
sums to the net progress), a bonus on success (the front reaches `success_fraction` of
the way from its start to the stiff edge; crossing the stiff edge counts as reaching
it), a penalty on failure (zero cells, a spawn beyond `max_cells`, or a cell leaving
the substrate through the soft or lateral edges). Episodes are truncated at `max_steps`.

The observation is a 1-channel uint8 image of the substrate around the cluster's
centroid (`view_size` world units across), with stiffness drawn as grey levels
0.2..0.8 of the profile's range, outside the substrate 0, and cells as bright plus
marks. All environments live as tensors on one device; `step` has no Python loop over
environments. Randomness comes from a counter-based hash of (seed, episode, step), so
an environment's trajectory depends only on its own seed, not on the batch around it:
sub-environment i of a batch seeded s replays the single environment seeded s + i.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

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

_MASK32 = 0xFFFFFFFF


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
        if self.channels not in (1, 3):
            raise ValueError(f"env.channels must be 1 or 3, got {self.channels}")
        if self.profile not in ("linear", "exponential", "random"):
            raise ValueError(
                f"env.profile must be linear, exponential or random, got {self.profile!r}"
            )
        if not 1 <= self.initial_cells <= self.max_cells:
            raise ValueError(
                f"env.initial_cells must lie in 1..max_cells ({self.max_cells}), "
                f"got {self.initial_cells}"
            )
        if self.image_size < 8:
            raise ValueError(f"env.image_size must be at least 8, got {self.image_size}")


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """32-bit integer hash held in int64 (products stay below 2**63, so nothing overflows)."""
    x = x ^ (x >> 16)
    x = (x * 0x45D9F3B) & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x45D9F3B) & _MASK32
    return x ^ (x >> 16)


def hash_uniform(
    keys: torch.Tensor, episode: torch.Tensor, step: torch.Tensor, n: int
) -> torch.Tensor:
    """B x n uniforms in (0, 1), a pure function of (key, episode, step, lane)."""
    h = _mix32((keys & _MASK32) ^ 0x9E3779B9)
    h = _mix32(h ^ ((keys >> 32) & _MASK32))
    h = _mix32(h ^ (episode & _MASK32))
    h = _mix32(h ^ ((step + 1) & _MASK32))
    lanes = torch.arange(n, device=keys.device, dtype=torch.int64)
    h = _mix32(h[:, None] ^ (lanes * 0x27D4EB2D & _MASK32)[None, :])
    # 23 bits + 0.5 keep the value strictly inside (0, 1) in float32.
    return ((h >> 9).to(torch.float32) + 0.5) * (1.0 / 2**23)


def _normals(u1: torch.Tensor, u2: torch.Tensor) -> torch.Tensor:
    """Box-Muller: standard normals from two uniforms in (0, 1)."""
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)


def _is_integer_dtype(dtype: torch.dtype) -> bool:
    return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)


def _check_core_action(kind: Any, params: Any, num_envs: int) -> None:
    """Type, shape and dtype of a batched action: host-side metadata only, no device sync."""
    for name, value in (("kind", kind), ("params", params)):
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"Durotaxis {name} must be a torch tensor, got {type(value).__name__}")
    if kind.shape != (num_envs,):
        raise ValueError(f"Durotaxis kind has shape {tuple(kind.shape)}, expected ({num_envs},)")
    if not _is_integer_dtype(kind.dtype):
        raise ValueError(f"Durotaxis kind has dtype {kind.dtype}, expected an integer dtype")
    if params.shape != (num_envs, len(PARAM_NAMES)):
        raise ValueError(
            f"Durotaxis params has shape {tuple(params.shape)}, "
            f"expected ({num_envs}, {len(PARAM_NAMES)})"
        )
    if not params.dtype.is_floating_point:
        raise ValueError(f"Durotaxis params has dtype {params.dtype}, expected a floating dtype")


class DurotaxisCore:
    """B Durotaxis environments as tensors on one device (the engine both Gym forms wrap)."""

    def __init__(
        self, config: DurotaxisConfig, num_envs: int, device: torch.device | str = "cpu"
    ) -> None:
        self.config = config
        self.num_envs = num_envs
        self.device = torch.device(device)
        b, n, dev = num_envs, config.max_cells, self.device
        self.param_low = torch.tensor(PARAM_LOW, device=dev)
        self.param_high = torch.tensor(PARAM_HIGH, device=dev)
        self._x_axis = torch.tensor([1.0, 0.0], device=dev)
        self.keys = torch.zeros(b, dtype=torch.int64, device=dev)
        self.episode = torch.zeros(b, dtype=torch.int64, device=dev)
        self.steps = torch.zeros(b, dtype=torch.int64, device=dev)
        self.pos = torch.zeros(b, n, 2, device=dev)
        self.alive = torch.zeros(b, n, dtype=torch.bool, device=dev)
        self.grad_dir = torch.zeros(b, 2, device=dev)
        self.exponential = torch.zeros(b, dtype=torch.bool, device=dev)
        self.s_ref = torch.zeros(b, device=dev)
        self.centroid = torch.zeros(b, 2, device=dev)
        self.episode_return = torch.zeros(b, device=dev)
        self._seeded = False
        # Pixel centres of the observation window, in world offsets from its centre
        # (row 0 at the top, +y up).
        size, view = config.image_size, config.view_size
        coords = (torch.arange(size, device=dev, dtype=torch.float32) + 0.5) / size - 0.5
        ys, xs = torch.meshgrid(-coords * view, coords * view, indexing="ij")
        self._pixel_offsets = torch.stack([xs, ys], dim=-1).reshape(-1, 2)
        stamp = torch.tensor([[0, 0], [0, 1], [0, -1], [1, 0], [-1, 0]], device=dev)
        self._stamp = stamp
        r = config.half_width
        self._i_min = config.intercept
        self._i_max_lin = config.intercept + config.slope * 2 * r
        self._i_max_exp = config.intercept * math.exp(config.exp_rate * 2 * r)

    # ----- randomness and geometry ---------------------------------------------------
    def seed(self, seed: int) -> None:
        """Give env i the key seed + i and restart its episode count."""
        self.keys = seed + torch.arange(self.num_envs, dtype=torch.int64, device=self.device)
        self.episode.zero_()
        self._seeded = True

    def intensity(self, s: torch.Tensor, exponential: torch.Tensor) -> torch.Tensor:
        """Stiffness at gradient coordinate s (broadcasts exponential against s)."""
        c = self.config
        x = s + c.half_width
        lin = c.intercept + c.slope * x
        exp = c.intercept * torch.exp(c.exp_rate * x)
        return torch.where(exponential, exp, lin)

    def _gradient_coords(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(s, t) of B x ... x 2 world points: along and across the gradient."""
        d = self.grad_dir.view(-1, *([1] * (points.dim() - 2)), 2)
        s = (points * d).sum(-1)
        t = points[..., 1] * d[..., 0] - points[..., 0] * d[..., 1]
        return s, t

    def front_s(self) -> torch.Tensor:
        """Gradient coordinate of the leading alive cell (-inf with no cells)."""
        s, _ = self._gradient_coords(self.pos)
        return s.masked_fill(~self.alive, -math.inf).amax(dim=1)

    def num_cells(self) -> torch.Tensor:
        """Alive cells per environment."""
        return self.alive.sum(dim=1)

    def progress(self) -> torch.Tensor:
        """Front progress: 0 at its start, 1 at the stiff edge (nan-free: 0 with no cells)."""
        front = self.front_s()
        prog = (front - self.s_ref) / (self.config.half_width - self.s_ref)
        return torch.where(torch.isfinite(front), prog, torch.zeros_like(prog))

    def _update_centroid(self) -> None:
        count = self.num_cells()
        mean = (self.pos * self.alive[..., None]).sum(1) / count.clamp(min=1)[:, None]
        # With no cells left keep the last centroid, so the final frame stays in place.
        self.centroid = torch.where((count > 0)[:, None], mean, self.centroid)

    # ----- reset / step --------------------------------------------------------------
    def reset(self, seed: int | None = None) -> torch.Tensor:
        """Reset every environment (seeding first when seed is given) and observe."""
        if seed is not None:
            self.seed(seed)
        elif not self._seeded:
            self.seed(int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> 2))
        else:
            self.episode += 1
        self._reset_state(torch.ones(self.num_envs, dtype=torch.bool, device=self.device))
        return self.observe()

    def reset_where(self, mask: torch.Tensor) -> None:
        """Start the next episode in the masked environments (no host sync)."""
        self.episode += mask.long()
        self._reset_state(mask)

    def _reset_state(self, mask: torch.Tensor) -> None:
        c, b, n = self.config, self.num_envs, self.config.max_cells
        u = hash_uniform(self.keys, self.episode, torch.full_like(self.episode, -1), 5 + 2 * n)
        angle = 2 * math.pi * u[:, 0]
        grad_dir = torch.stack([torch.cos(angle), torch.sin(angle)], dim=-1)
        if c.profile == "random":
            exponential = u[:, 1] < 0.5
        else:
            exponential = torch.full_like(mask, c.profile == "exponential")
        r = c.half_width
        start_s = (-0.6 + 0.4 * u[:, 2]) * r
        start_t = (-0.3 + 0.6 * u[:, 3]) * r
        # Cells uniform in a disc of radius start_spread around the start point.
        rad = c.start_spread * torch.sqrt(u[:, 5 : 5 + n])
        phi = 2 * math.pi * u[:, 5 + n : 5 + 2 * n]
        s_cells = start_s[:, None] + rad * torch.cos(phi)
        t_cells = start_t[:, None] + rad * torch.sin(phi)
        d = grad_dir[:, None, :]
        perp = torch.stack([-grad_dir[:, 1], grad_dir[:, 0]], dim=-1)[:, None, :]
        pos = s_cells[..., None] * d + t_cells[..., None] * perp
        alive = torch.arange(n, device=self.device)[None, :] < c.initial_cells
        alive = alive.expand(b, n)

        m = mask[:, None]
        self.grad_dir = torch.where(m, grad_dir, self.grad_dir)
        self.exponential = torch.where(mask, exponential, self.exponential)
        self.pos = torch.where(m[..., None], pos, self.pos)
        self.alive = torch.where(m, alive, self.alive)
        self.steps = torch.where(mask, torch.zeros_like(self.steps), self.steps)
        self.episode_return = torch.where(
            mask, torch.zeros_like(self.episode_return), self.episode_return
        )
        s_front = s_cells.masked_fill(~alive, -math.inf).amax(dim=1)
        self.s_ref = torch.where(mask, s_front, self.s_ref)
        self._update_centroid()

    def step(
        self, kind: torch.Tensor, params: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Apply one hybrid action per env; returns reward, terminated, truncated, info.

        kind: B integer tensor in {0 spawn, 1 delete, 2 hold}; params: B x 5 floating
        tensor. No reset happens here: see `autoreset_step`. A wrong type, shape or dtype
        raises ValueError. Values are never read back to the host (no device sync per
        step), so bad values are made harmless on the device instead: a kind outside 0..2
        holds, NaN params count as 0, and params are clamped to the action bounds (-inf
        and +inf to the nearest bound).
        """
        _check_core_action(kind, params, self.num_envs)
        c, r = self.config, self.config.half_width
        kind = kind.to(self.device).long()
        params = torch.nan_to_num(params.to(self.device).float(), nan=0.0)
        params = torch.maximum(torch.minimum(params, self.param_high), self.param_low)
        is_spawn, is_delete = kind == SPAWN, kind == DELETE
        raw_dir = params[:, :2]
        norm = raw_dir.norm(dim=-1, keepdim=True)
        fallback = self._x_axis.expand_as(raw_dir)  # a zero direction means +x
        direction = torch.where(norm > 1e-6, raw_dir / norm.clamp(min=1e-6), fallback)
        gamma, alpha, noise_scale = params[:, 2], params[:, 3], params[:, 4]

        count = self.num_cells()
        progress_before = self.progress()
        proj = (self.pos * direction[:, None, :]).sum(-1)
        parent = proj.masked_fill(~self.alive, -math.inf).argmax(dim=1)
        victim = proj.masked_fill(~self.alive, math.inf).argmin(dim=1)
        parent_pos = self.pos.gather(1, parent[:, None, None].expand(-1, 1, 2)).squeeze(1)

        # Hill equation of the parent's local stiffness.
        parent_s = (parent_pos * self.grad_dir).sum(-1)
        stiffness = self.intensity(parent_s, self.exponential)
        u = hash_uniform(self.keys, self.episode, self.steps, 2)
        eps = _normals(u[:, 0], u[:, 1])
        dist = (gamma / (1.0 + (alpha / stiffness) ** 2) + noise_scale * eps).clamp(min=0.0)
        new_pos = parent_pos + dist[:, None] * direction
        new_s = (new_pos * self.grad_dir).sum(-1)
        new_t = new_pos[:, 1] * self.grad_dir[:, 0] - new_pos[:, 0] * self.grad_dir[:, 1]
        # Crossing the stiff edge means reaching it: the cell stops on the edge.
        new_pos = new_pos - (new_s - r).clamp(min=0.0)[:, None] * self.grad_dir
        out_of_bounds = (new_s < -r) | (new_t.abs() > r)

        too_many = is_spawn & (count >= c.max_cells)
        placed = is_spawn & ~too_many & ~out_of_bounds
        free_slot = (~self.alive).long().argmax(dim=1)
        slot_hot = torch.nn.functional.one_hot(free_slot, c.max_cells).bool() & placed[:, None]
        self.pos = torch.where(slot_hot[..., None], new_pos[:, None, :], self.pos)
        victim_hot = torch.nn.functional.one_hot(victim, c.max_cells).bool() & is_delete[:, None]
        self.alive = (self.alive | slot_hot) & ~victim_hot

        failure = torch.full_like(kind, FAIL_NONE)
        failure = torch.where(is_delete & (count <= 1), FAIL_NO_CELLS, failure)
        failure = torch.where(too_many, FAIL_TOO_MANY, failure)
        failure = torch.where(is_spawn & ~too_many & out_of_bounds, FAIL_OUT_OF_BOUNDS, failure)
        failed = failure != FAIL_NONE

        progress_after = self.progress()
        success = ~failed & (progress_after >= c.success_fraction - 1e-6)
        reward = c.progress_reward * torch.where(
            self.num_cells() > 0, progress_after - progress_before, torch.zeros_like(progress_after)
        )
        reward = reward + c.success_bonus * success - c.failure_penalty * failed
        terminated = success | failed
        self.steps = self.steps + 1
        truncated = ~terminated & (self.steps >= c.max_steps)
        self.episode_return = self.episode_return + reward
        self._update_centroid()
        info = {
            "is_success": success,
            "failure": failure,
            "progress": progress_after,
            "num_cells": self.num_cells(),
            "episode_return": self.episode_return.clone(),
            "episode_length": self.steps.clone(),
        }
        return reward, terminated, truncated, info

    def autoreset_step(
        self, kind: torch.Tensor, params: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Step, reset finished envs in the same step, observe (the training loop's form)."""
        reward, terminated, truncated, info = self.step(kind, params)
        self.reset_where(terminated | truncated)
        return self.observe(), reward, terminated, truncated, info

    # ----- observation -----------------------------------------------------------------
    def observe(self) -> torch.Tensor:
        """B x C x H x W uint8 image of the substrate around each cluster, cells drawn in."""
        c, b = self.config, self.num_envs
        size = c.image_size
        points = self.centroid[:, None, :] + self._pixel_offsets[None]
        s, t = self._gradient_coords(points)
        stiff = self.intensity(s, self.exponential[:, None])
        i_max = torch.where(self.exponential, self._i_max_exp, self._i_max_lin)[:, None]
        level = 0.2 + 0.6 * (stiff - self._i_min) / (i_max - self._i_min)
        inside = (s.abs() <= c.half_width) & (t.abs() <= c.half_width)
        image = torch.where(inside, level, torch.zeros_like(level))

        # Cells as plus marks, painted by scatter (one extra pixel takes off-window marks).
        rel = (self.pos - self.centroid[:, None, :]) / c.view_size
        col = torch.floor((rel[..., 0] + 0.5) * size).long()
        row = torch.floor((0.5 - rel[..., 1]) * size).long()
        rows = row[..., None] + self._stamp[:, 0]
        cols = col[..., None] + self._stamp[:, 1]
        visible = (
            self.alive[..., None] & (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)
        )
        flat = torch.where(visible, rows * size + cols, size * size).reshape(b, -1)
        canvas = torch.cat([image, torch.zeros(b, 1, device=self.device)], dim=1)
        canvas = canvas.scatter(1, flat, 1.0)[:, :-1]
        obs = (canvas * 255.0).round().to(torch.uint8).reshape(b, 1, size, size)
        return obs.expand(b, c.channels, size, size).contiguous()

    def render_rgb(self, index: int = 0, size: int = 256) -> np.ndarray:
        """An RGB picture of env `index`'s whole substrate (for videos): H x W x 3 uint8."""
        c = self.config
        extent = c.half_width * math.sqrt(2.0) * 1.05
        coords = (torch.arange(size, device=self.device, dtype=torch.float32) + 0.5) / size
        coords = (coords - 0.5) * 2 * extent
        ys, xs = torch.meshgrid(-coords, coords, indexing="ij")
        d = self.grad_dir[index]
        s = xs * d[0] + ys * d[1]
        t = ys * d[0] - xs * d[1]
        stiff = self.intensity(s, self.exponential[index])
        i_max = self._i_max_exp if bool(self.exponential[index]) else self._i_max_lin
        level = ((stiff - self._i_min) / (i_max - self._i_min)).clamp(0, 1)
        inside = (s.abs() <= c.half_width) & (t.abs() <= c.half_width)
        # Soft = dark blue, stiff = yellow; outside black; goal line red.
        rgb = torch.stack([0.15 + 0.8 * level, 0.2 + 0.7 * level, 0.5 - 0.4 * level], dim=-1)
        rgb = rgb * inside[..., None]
        goal = self.s_ref[index] + c.success_fraction * (c.half_width - self.s_ref[index])
        on_goal = inside & ((s - goal).abs() < extent / size * 1.5)
        rgb[on_goal] = torch.tensor([1.0, 0.1, 0.1], device=self.device)
        pix = ((self.pos[index] + extent) / (2 * extent) * size).long()
        for k in range(c.max_cells):
            if bool(self.alive[index, k]):
                x, y = int(pix[k, 0]), size - 1 - int(pix[k, 1])
                rgb[max(y - 2, 0) : y + 3, max(x - 2, 0) : x + 3] = 1.0
        return (rgb.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()

    # ----- checkpointing -----------------------------------------------------------------
    # Everything that changes between steps (randomness is a hash of keys, episode and
    # steps, so these are the RNG state too); the rest is fixed by config and num_envs.
    _STATE = (
        "keys",
        "episode",
        "steps",
        "pos",
        "alive",
        "grad_dir",
        "exponential",
        "s_ref",
        "centroid",
        "episode_return",
    )

    def state_dict(self) -> dict[str, Any]:
        """A copy of the environments' state: tensors and a bool (weights_only-loadable)."""
        state: dict[str, Any] = {name: getattr(self, name).clone() for name in self._STATE}
        state["seeded"] = self._seeded
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where `state_dict()` left off (same num_envs and max_cells)."""
        for name in (*self._STATE, "seeded"):
            if name not in state:
                raise ValueError(f"environment state has no {name!r} entry")
        for name in self._STATE:
            own, saved = getattr(self, name), state[name]
            if saved.shape != own.shape or saved.dtype != own.dtype:
                raise ValueError(
                    f"environment state does not fit: {name} is {tuple(saved.shape)} "
                    f"{saved.dtype} there, {tuple(own.shape)} {own.dtype} here; use the same "
                    f"number of environments and env.max_cells"
                )
        for name in self._STATE:
            setattr(self, name, state[name].to(self.device).clone())
        self._seeded = bool(state["seeded"])


# ----- floor and ceiling policies ----------------------------------------------------------


def random_policy(
    env: DurotaxisCore, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform kind and uniform parameters within their bounds (the floor)."""
    b, dev = env.num_envs, env.device
    kind = torch.randint(0, 3, (b,), device=dev, generator=generator)
    u = torch.rand(b, len(PARAM_NAMES), device=dev, generator=generator)
    return kind, env.param_low + u * (env.param_high - env.param_low)


def heuristic_policy(env: DurotaxisCore) -> tuple[torch.Tensor, torch.Tensor]:
    """Privileged policy told the gradient: spawn straight up it, retract the rear when full.

    gamma is chosen so that the Hill distance lands on the goal line when one spawn can
    reach it (the largest step otherwise); alpha and noise at their minimum.
    """
    c = env.config
    front = env.front_s()
    goal = env.s_ref + c.success_fraction * (c.half_width - env.s_ref)
    stiffness = env.intensity(front, env.exponential)
    alpha = torch.full_like(front, PARAM_LOW[3])
    hill = 1.0 / (1.0 + (alpha / stiffness) ** 2)
    wanted = (goal - front + 1.0).clamp(min=0.0)
    gamma = (wanted / hill).clamp(PARAM_LOW[2], PARAM_HIGH[2])
    kind = torch.where(env.num_cells() >= c.max_cells, DELETE, SPAWN)
    noise = torch.full_like(front, PARAM_LOW[4])
    params = torch.stack([env.grad_dir[:, 0], env.grad_dir[:, 1], gamma, alpha, noise], dim=-1)
    return kind, params


def run_episodes(env: DurotaxisCore, policy: Any, seed: int = 0) -> dict[str, float]:
    """Play one episode in every env (all in parallel) and return success rate and mean return."""
    env.reset(seed=seed)
    done = torch.zeros(env.num_envs, dtype=torch.bool, device=env.device)
    success = torch.zeros_like(done)
    returns = torch.zeros(env.num_envs, device=env.device)
    lengths = torch.zeros(env.num_envs, device=env.device)
    for _ in range(env.config.max_steps):
        kind, params = policy(env)
        reward, terminated, truncated, info = env.step(kind, params)
        live = ~done
        returns += reward * live
        lengths += live.float()
        success |= info["is_success"] & live
        done |= terminated | truncated
        if bool(done.all()):  # one host sync per step: fine outside the training loop
            break
    return {
        "success_rate": success.float().mean().item(),
        "mean_return": returns.mean().item(),
        "mean_length": lengths.mean().item(),
        "episodes": float(env.num_envs),
    }


# ----- Gymnasium forms ---------------------------------------------------------------------


def _action_space() -> spaces.Dict:
    return spaces.Dict(
        {
            "kind": spaces.Discrete(3),
            "params": spaces.Box(
                np.array(PARAM_LOW, np.float32), np.array(PARAM_HIGH, np.float32), dtype=np.float32
            ),
        }
    )


def _gym_action(action: Any, batch: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Check a Gymnasium action (one env when batch is None) and make it core tensors.

    A missing key, wrong shape or dtype, a kind outside 0..2 or a non-finite parameter
    raises ValueError; finite parameters outside the bounds are clipped to them.
    """
    if not isinstance(action, Mapping) or set(action) != {"kind", "params"}:
        got = sorted(action) if isinstance(action, Mapping) else type(action).__name__
        raise ValueError(f"Durotaxis action must be a dict of 'kind' and 'params', got {got}")
    lead = () if batch is None else (batch,)
    last = len(KIND_NAMES) - 1
    raw_kind = action["kind"]
    if isinstance(raw_kind, int) and not isinstance(raw_kind, bool) and not 0 <= raw_kind <= last:
        # Checked before numpy: an int beyond int64 would become an object array.
        raise ValueError(f"Durotaxis action 'kind' {raw_kind} is out of range 0..{last}")
    kind = np.asarray(raw_kind)
    if kind.shape != lead:
        raise ValueError(f"Durotaxis action 'kind' has shape {kind.shape}, expected {lead}")
    if kind.dtype.kind not in "iu":
        raise ValueError(f"Durotaxis action 'kind' has dtype {kind.dtype}, expected an integer")
    bad = (kind < 0) | (kind > last)
    if bad.any():
        value = np.atleast_1d(kind)[np.atleast_1d(bad)][0]
        raise ValueError(f"Durotaxis action 'kind' {value} is out of range 0..{last}")
    params = np.asarray(action["params"])
    want = (*lead, len(PARAM_NAMES))
    if params.shape != want:
        raise ValueError(f"Durotaxis action 'params' has shape {params.shape}, expected {want}")
    if params.dtype.kind not in "iuf":
        raise ValueError(
            f"Durotaxis action 'params' has dtype {params.dtype}, expected real numbers"
        )
    # float64 first: a finite float64 such as 1e300 must clip, not overflow to inf.
    params = params.astype(np.float64)
    finite = np.isfinite(params)
    if not finite.all():
        where = tuple(np.argwhere(~finite)[0])
        raise ValueError(
            f"Durotaxis action 'params' must be finite, got "
            f"{PARAM_NAMES[where[-1]]}={params[where]}"
        )
    params = np.clip(params, PARAM_LOW, PARAM_HIGH).astype(np.float32)
    kind_t = torch.as_tensor(kind.astype(np.int64)).reshape(-1)
    return kind_t, torch.from_numpy(params).reshape(-1, len(PARAM_NAMES))


def _observation_space(config: DurotaxisConfig) -> spaces.Box:
    shape = (config.channels, config.image_size, config.image_size)
    return spaces.Box(0, 255, shape, dtype=np.uint8)


def _make_config(config: DurotaxisConfig | None, overrides: dict[str, Any]) -> DurotaxisConfig:
    return replace(config or DurotaxisConfig(), **overrides)


class DurotaxisEnv(gymnasium.Env):
    """One Durotaxis environment with the Gymnasium API (numpy in and out)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(
        self,
        config: DurotaxisConfig | None = None,
        render_mode: str | None = None,
        device: str = "cpu",
        **overrides: Any,
    ) -> None:
        self.config = _make_config(config, overrides)
        self.core = DurotaxisCore(self.config, 1, device)
        self.observation_space = _observation_space(self.config)
        self.action_space = _action_space()
        self.render_mode = render_mode

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode; seed fixes this and every later episode until the next seed."""
        super().reset(seed=seed)
        if seed is None and not self.core._seeded:
            seed = int(self.np_random.integers(0, 2**62))
        obs = self.core.reset(seed=seed)
        return obs[0].cpu().numpy(), {}

    def step(self, action: dict[str, Any]) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Apply {"kind": int, "params": 5 floats}.

        Finite params outside the bounds are clipped to them; anything else outside the
        action space (a kind not in 0..2, NaN or inf params, wrong shapes or dtypes, other
        keys) raises ValueError and leaves the state untouched.
        """
        kind, params = _gym_action(action, None)
        reward, terminated, truncated, info = self.core.step(kind, params)
        obs = self.core.observe()[0].cpu().numpy()
        info_np = {k: v[0].item() for k, v in info.items()}
        return obs, float(reward[0]), bool(terminated[0]), bool(truncated[0]), info_np

    def render(self) -> np.ndarray | None:
        """RGB view of the whole substrate when render_mode is rgb_array."""
        if self.render_mode != "rgb_array":
            return None
        return self.core.render_rgb(0)


class DurotaxisVectorEnv(gymnasium.vector.VectorEnv):
    """B Durotaxis environments with Gymnasium's vector API: same-step autoreset.

    When an env finishes, its returned observation already starts the next episode;
    the last observation of the finished one is in info["final_obs"] (rows masked by
    info["_final_obs"]) and its info in info["final_info"]. Sub-env i seeded s + i.
    """

    metadata = {"render_modes": ["rgb_array"], "autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(
        self,
        num_envs: int = 1,
        config: DurotaxisConfig | None = None,
        render_mode: str | None = None,
        device: str = "cpu",
        **overrides: Any,
    ) -> None:
        self.config = _make_config(config, overrides)
        self.num_envs = num_envs
        self.core = DurotaxisCore(self.config, num_envs, device)
        self.single_observation_space = _observation_space(self.config)
        self.single_action_space = _action_space()
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.render_mode = render_mode

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset all sub-envs (sub-env i gets seed + i)."""
        self._np_random_seed = seed
        return self.core.reset(seed=seed).cpu().numpy(), {}

    def step(
        self, actions: dict[str, Any]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step all sub-envs with {"kind": (B,), "params": (B, 5)}.

        Checked like `DurotaxisEnv.step`: out-of-bounds finite params are clipped, any
        other action outside the space raises ValueError before any sub-env moves.
        """
        kind, params = _gym_action(actions, self.num_envs)
        reward, terminated, truncated, info = self.core.step(kind, params)
        done = terminated | truncated
        final_obs = self.core.observe()
        self.core.reset_where(done)
        obs = self.core.observe().cpu().numpy()
        done_np = done.cpu().numpy()
        info_np = {k: v.cpu().numpy() for k, v in info.items()}
        infos: dict[str, Any] = {}
        if done_np.any():
            infos["final_obs"] = np.where(done_np[:, None, None, None], final_obs.cpu().numpy(), 0)
            infos["_final_obs"] = done_np
            infos["final_info"] = {
                **{k: v for k, v in info_np.items()},
                **{f"_{k}": done_np for k in info_np},
            }
            infos["_final_info"] = done_np
        return (
            obs,
            reward.cpu().numpy().astype(np.float64),
            terminated.cpu().numpy(),
            truncated.cpu().numpy(),
            infos,
        )

    def render(self) -> np.ndarray | None:
        """RGB view of sub-env 0's whole substrate when render_mode is rgb_array."""
        if self.render_mode != "rgb_array":
            return None
        return self.core.render_rgb(0)


def _main() -> None:
    """Print the random (floor) and heuristic (ceiling) success rates over one episode per env."""
    import argparse

    parser = argparse.ArgumentParser(description=_main.__doc__)
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", default="random")
    args = parser.parse_args()
    config = DurotaxisConfig(profile=args.profile)
    gen = torch.Generator().manual_seed(args.seed)
    for name, policy in (
        ("random", lambda e: random_policy(e, gen)),
        ("heuristic", heuristic_policy),
    ):
        env = DurotaxisCore(config, args.episodes)
        stats = run_episodes(env, policy, seed=args.seed)
        print(
            f"{name:9s} episodes={args.episodes} success_rate={stats['success_rate']:.3f} "
            f"mean_return={stats['mean_return']:.3f} mean_length={stats['mean_length']:.1f}"
        )


if __name__ == "__main__":
    _main()
