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

This is the `easy` preset (the first version's task); standard and hard run
envs/durotaxis/migration.py. This module holds the counter-based hashing RNG (which both
engines use) and the easy engine (`DurotaxisCore`);
the settings (`DurotaxisConfig`) and the action space are in `envs.durotaxis.config`, the
Gymnasium forms in `envs.durotaxis.gymnasium_env`, the floor and ceiling policies in
`envs.durotaxis.baselines`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from envs.durotaxis.cluster import CellClusters, hill_length
from envs.durotaxis.config import (  # noqa: F401  (the action space, re-exported)
    DELETE,
    FAIL_NO_CELLS,
    FAIL_NONE,
    FAIL_OUT_OF_BOUNDS,
    FAIL_TOO_MANY,
    HOLD,
    KIND_NAMES,
    PARAM_HIGH,
    PARAM_LOW,
    PARAM_NAMES,
    PARAMS_USED,
    SPAWN,
    DurotaxisConfig,
)

_MASK32 = 0xFFFFFFFF


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


class DurotaxisCore(CellClusters):
    """B Durotaxis environments as tensors on one device (the engine both Gym forms wrap)."""

    def __init__(
        self, config: DurotaxisConfig, num_envs: int, device: torch.device | str = "cpu"
    ) -> None:
        if config.preset != "easy":
            raise ValueError(
                f"DurotaxisCore runs the easy preset, not {config.preset!r}; use "
                f"envs.durotaxis.make_engine"
            )
        super().__init__(config, num_envs, device)
        b, dev = num_envs, self.device
        self.grad_dir = torch.zeros(b, 2, device=dev)
        self.exponential = torch.zeros(b, dtype=torch.bool, device=dev)
        self.s_ref = torch.zeros(b, device=dev)
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

    # ----- geometry ------------------------------------------------------------------------
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

    def progress(self) -> torch.Tensor:
        """Front progress: 0 at its start, 1 at the stiff edge (nan-free: 0 with no cells)."""
        front = self.front_s()
        prog = (front - self.s_ref) / (self.config.half_width - self.s_ref)
        return torch.where(torch.isfinite(front), prog, torch.zeros_like(prog))

    # ----- reset / step --------------------------------------------------------------
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
        s_front = s_cells.masked_fill(~alive, -math.inf).amax(dim=1)
        self.s_ref = torch.where(mask, s_front, self.s_ref)

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
        c, r = self.config, self.config.half_width
        kind, params, direction = self._read_action(kind, params)
        is_spawn, is_delete = kind == SPAWN, kind == DELETE
        gamma, alpha, noise_scale = params[:, 2], params[:, 3], params[:, 4]

        count = self.num_cells()
        progress_before = self.progress()
        parent_pos, victim = self._lead_and_trail(direction)

        # Hill equation of the parent's local stiffness.
        parent_s = (parent_pos * self.grad_dir).sum(-1)
        stiffness = self.intensity(parent_s, self.exponential)
        u = hash_uniform(self.keys, self.episode, self.steps, 2)
        eps = _normals(u[:, 0], u[:, 1])
        dist = (hill_length(gamma, alpha, stiffness) + noise_scale * eps).clamp(min=0.0)
        new_pos = parent_pos + dist[:, None] * direction
        new_s = (new_pos * self.grad_dir).sum(-1)
        new_t = new_pos[:, 1] * self.grad_dir[:, 0] - new_pos[:, 0] * self.grad_dir[:, 1]
        # Crossing the stiff edge means reaching it: the cell stops on the edge.
        new_pos = new_pos - (new_s - r).clamp(min=0.0)[:, None] * self.grad_dir
        out_of_bounds = (new_s < -r) | (new_t.abs() > r)

        too_many = is_spawn & (count >= c.max_cells)
        placed = is_spawn & ~too_many & ~out_of_bounds
        self._place_and_remove(new_pos, placed, victim, is_delete)

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

    # ----- observation -----------------------------------------------------------------
    def observe(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """B x C x H x W uint8 image of the substrate around each cluster, cells drawn in
        (only the given rows' images when rows is given)."""
        if rows is not None:
            return self.observe()[rows]
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

    # ----- what probes and baselines may know ------------------------------------------
    def goal_direction(self, points: torch.Tensor) -> torch.Tensor:
        """Unit vectors from B x 2 points towards the goal: up the gradient (privileged)."""
        return self.grad_dir.expand_as(points)

    def probe_targets(self) -> torch.Tensor:
        """B x 3 labels for pretraining probes: the gradient direction (cos, sin) and the
        centroid's distance to the stiff edge over half_width."""
        r = self.config.half_width
        distance = (r - (self.centroid * self.grad_dir).sum(-1)) / r
        return torch.cat([self.grad_dir, distance[:, None]], dim=1)

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


