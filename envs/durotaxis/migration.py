"""Durotaxis, standard and hard presets: a cluster of cells migrating to the stiffest spot.

The substrate's stiffness peaks at the origin and falls as a Gaussian of the distance d
from it, `log I = log I_peak - q d^2` (each axis's squared offset capped at
`(1.5 start_distance)^2`, far outside where episodes go), with the peak stiffness and the
stiffness at the start distance drawn per episode. The cluster starts `start_distance` from the
peak in a random direction and succeeds when its *centroid* is within `goal_radius` of
the peak, so the whole cluster must move: with at most `max_cells` cells, the rear has to
be retracted (delete) for the front to keep spawning.

Each step the policy picks a hybrid action: a kind (spawn / delete / hold) and five
continuous parameters (direction x, direction y, Hill gamma, Hill alpha, noise).
Spawning adds a cell next to the cell that leads in the chosen direction, at distance
`r = gamma / (1 + (alpha / I)^2) + noise N(0, 1)` with I the parent's local stiffness,
along the chosen direction turned by a wrapped-normal angle (std `direction_noise`): no
free steering. A protrusion longer than `max_link` detaches and the new cell is lost, as
is one spawned into an obstacle (hard: zero-stiffness discs between start and goal), at
a small penalty. Since I varies by about 10x between start and peak, the step gamma buys
varies with where the cluster is: gamma has to be read off the local stiffness. Deleting
removes the cell that trails in the chosen direction; hold does nothing. A spawn beyond
`max_cells`, or deleting the last cell, fails the episode.

Reward: the change of normalised progress of the centroid, `1 - d(centroid) /
start_distance` (potential-based), a bonus on success, a penalty on failure, a small one
per lost cell. Episodes are truncated at `max_steps`.

The observation is a uint8 image of the window `view_size` across around the centroid:
grey level affine in log stiffness on one scale for every episode (so the local stiffness
can be read off the brightness), obstacles black, cells as bright plus marks, and a new
draw of uniform noise every step. Because log stiffness is a sum of an x term and a y
term, the background is an outer sum of a row vector and a column vector, rendered in
uint8 in one pass; the noise comes from a fixed bank of noise images, picked per env and
step by the hash RNG. Randomness is the counter-based hash of envs/durotaxis/core.py, so
sub-environment i of a batch seeded s replays the single environment seeded s + i.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from envs.durotaxis.cluster import CellClusters, hill_length
from envs.durotaxis.config import (
    DELETE,
    FAIL_NO_CELLS,
    FAIL_NONE,
    FAIL_TOO_MANY,
    SPAWN,
    DurotaxisConfig,
)
from envs.durotaxis.core import _normals, hash_uniform

# Grey levels of the background: the lowest log stiffness any window can show maps to
# _DARKEST, the highest peak to _BRIGHTEST; noise goes on top and cells are 255.
_DARKEST, _BRIGHTEST = 8.0, 200.0
_NOISE_BANK = 256  # noise images to pick from
_NOISE_BANK_SEED = 0x5EED  # fixed: the bank is a function of the settings only
_CHUNK = 256  # envs rendered at a time on the CPU (keeps the image in cache)


class MigrationCore(CellClusters):
    """B migration-task environments as tensors on one device (standard and hard presets)."""

    def __init__(
        self, config: DurotaxisConfig, num_envs: int, device: torch.device | str = "cpu"
    ) -> None:
        if config.preset == "easy":
            raise ValueError("MigrationCore runs the standard and hard presets; use make_engine")
        super().__init__(config, num_envs, device)
        b, k, dev = num_envs, config.obstacles, self.device
        self.log_peak = torch.zeros(b, device=dev)
        self.falloff = torch.zeros(b, device=dev)
        self.obstacle_pos = torch.zeros(b, k, 2, device=dev)

        c = config
        self._cap = (1.5 * c.start_distance) ** 2
        size, view = c.image_size, c.view_size
        coords = ((torch.arange(size, device=dev, dtype=torch.float32) + 0.5) / size - 0.5) * view
        self._col_offsets = coords  # x of each column, from the window's centre
        self._row_offsets = -coords  # y of each row (row 0 at the top, +y up)
        self._stamp = torch.tensor([[0, 0], [0, 1], [0, -1], [1, 0], [-1, 0]], device=dev)
        # One grey scale for every episode: the log stiffness of the darkest pixel any
        # window can show (both axes capped) to that of the highest peak.
        d2_start = c.start_distance**2
        self._log_high = math.log(c.peak_stiffness[1])
        steepest = math.log(c.peak_stiffness[1]) - math.log(c.start_stiffness[0])
        self._log_low = math.log(c.peak_stiffness[1]) - steepest * 2 * self._cap / d2_start
        self._grey_per_log = (_BRIGHTEST - _DARKEST) / (self._log_high - self._log_low)
        gen = torch.Generator().manual_seed(_NOISE_BANK_SEED)
        bank = torch.randint(0, 2 * c.obs_noise + 1, (_NOISE_BANK, size, size), generator=gen)
        self._noise_bank = bank.to(torch.uint8).to(dev)

    # ----- geometry ------------------------------------------------------------------------
    def log_stiffness(self, points: torch.Tensor) -> torch.Tensor:
        """log I at B x ... x 2 world points."""
        lead = (-1,) + (1,) * (points.dim() - 2)
        sq = (points**2).clamp(max=self._cap).sum(-1)
        return self.log_peak.view(lead) - self.falloff.view(lead) * sq

    def distance_to_goal(self) -> torch.Tensor:
        """Distance from the centroid to the peak."""
        return self.centroid.norm(dim=-1)

    def progress(self) -> torch.Tensor:
        """Centroid progress: 0 at the start distance, 1 at the peak."""
        return 1.0 - self.distance_to_goal() / self.config.start_distance

    def in_obstacle(self, points: torch.Tensor) -> torch.Tensor:
        """Whether B x 2 points lie in one of their env's obstacles."""
        if self.config.obstacles == 0:
            return torch.zeros(points.shape[0], dtype=torch.bool, device=self.device)
        gap = (points[:, None, :] - self.obstacle_pos).norm(dim=-1)
        return (gap < self.config.obstacle_radius).any(dim=1)

    # ----- reset / step --------------------------------------------------------------
    def _reset_state(self, mask: torch.Tensor) -> None:
        c, b, n, k = self.config, self.num_envs, self.config.max_cells, self.config.obstacles
        u = hash_uniform(self.keys, self.episode, torch.full_like(self.episode, -1),
                         3 + 2 * n + 2 * k)
        angle = 2 * math.pi * u[:, 0]
        heading = torch.stack([torch.cos(angle), torch.sin(angle)], dim=-1)  # peak -> start
        start = c.start_distance * heading
        lo, hi = (math.log(v) for v in c.peak_stiffness)
        log_peak = lo + (hi - lo) * u[:, 1]
        lo, hi = (math.log(v) for v in c.start_stiffness)
        log_start = lo + (hi - lo) * u[:, 2]
        falloff = (log_peak - log_start) / c.start_distance**2
        rad = c.start_spread * torch.sqrt(u[:, 3 : 3 + n])
        phi = 2 * math.pi * u[:, 3 + n : 3 + 2 * n]
        pos = start[:, None, :] + rad[..., None] * torch.stack([phi.cos(), phi.sin()], dim=-1)
        alive = (torch.arange(n, device=self.device)[None, :] < c.initial_cells).expand(b, n)
        # Obstacles spread over 25-75% of the way, one per stretch (no walls), the first
        # on the straight line so that the straight path is blocked; start and goal free.
        v = u[:, 3 + 2 * n :].reshape(b, k, 2)
        stretch = (torch.arange(k, device=self.device) + 0.1 + 0.8 * v[..., 0]) / max(k, 1)
        along = c.start_distance * (0.25 + 0.5 * stretch)
        side = c.obstacle_radius * 1.5 * (2 * v[..., 1] - 1)
        if k:
            side[:, 0] = side[:, 0] * 0.2
        perp = torch.stack([-heading[:, 1], heading[:, 0]], dim=-1)
        obstacles = along[..., None] * heading[:, None, :] + side[..., None] * perp[:, None, :]

        m = mask[:, None]
        self.log_peak = torch.where(mask, log_peak, self.log_peak)
        self.falloff = torch.where(mask, falloff, self.falloff)
        self.pos = torch.where(m[..., None], pos, self.pos)
        self.alive = torch.where(m, alive, self.alive)
        self.obstacle_pos = torch.where(m[..., None], obstacles, self.obstacle_pos)

    def step(
        self, kind: torch.Tensor, params: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Apply one hybrid action per env; returns reward, terminated, truncated, info.

        As `DurotaxisCore.step`: a wrong type, shape or dtype raises ValueError; values
        are made harmless on the device (a kind outside 0..2 holds, NaN params count as 0,
        params are clamped to the config's bounds).
        """
        c = self.config
        kind, params, direction = self._read_action(kind, params)
        is_spawn, is_delete = kind == SPAWN, kind == DELETE
        gamma, alpha, noise_scale = params[:, 2], params[:, 3], params[:, 4]

        count = self.num_cells()
        progress_before = self.progress()
        parent_pos, victim = self._lead_and_trail(direction)

        stiffness = self.log_stiffness(parent_pos).exp()
        u = hash_uniform(self.keys, self.episode, self.steps, 4)
        length = hill_length(gamma, alpha, stiffness) + noise_scale * _normals(u[:, 0], u[:, 1])
        length = length.clamp(min=0.0)
        turn = c.direction_noise * _normals(u[:, 2], u[:, 3])
        cos, sin = turn.cos(), turn.sin()
        heading = torch.stack([cos * direction[:, 0] - sin * direction[:, 1],
                               sin * direction[:, 0] + cos * direction[:, 1]], dim=-1)
        new_pos = parent_pos + length[:, None] * heading

        too_many = is_spawn & (count >= c.max_cells)
        lost = is_spawn & ~too_many & ((length > c.max_link) | self.in_obstacle(new_pos))
        placed = is_spawn & ~too_many & ~lost
        self._place_and_remove(new_pos, placed, victim, is_delete)

        failure = torch.full_like(kind, FAIL_NONE)
        failure = torch.where(is_delete & (count <= 1), FAIL_NO_CELLS, failure)
        failure = torch.where(too_many, FAIL_TOO_MANY, failure)
        failed = failure != FAIL_NONE

        self._update_centroid()
        progress_after = self.progress()
        success = ~failed & (self.distance_to_goal() <= c.goal_radius)
        reward = c.progress_reward * torch.where(
            self.num_cells() > 0, progress_after - progress_before, torch.zeros_like(progress_after)
        )
        reward = (reward + c.success_bonus * success - c.failure_penalty * failed
                  - c.lost_cell_penalty * lost)
        terminated = success | failed
        self.steps = self.steps + 1
        truncated = ~terminated & (self.steps >= c.max_steps)
        self.episode_return = self.episode_return + reward
        info = {
            "is_success": success,
            "failure": failure,
            "progress": progress_after,
            "num_cells": self.num_cells(),
            "lost_cell": lost,
            "episode_return": self.episode_return.clone(),
            "episode_length": self.steps.clone(),
        }
        return reward, terminated, truncated, info

    # ----- observation -----------------------------------------------------------------
    def observe(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """B x C x H x W uint8 images around each cluster (or only the given rows' images)."""
        c = self.config
        count = self.num_envs if rows is None else len(rows)
        size = c.image_size
        out = torch.empty(count, size, size, dtype=torch.uint8, device=self.device)
        # On the CPU, a chunk of envs at a time keeps the image in cache; a GPU takes all.
        # All envs go by slices (views of the state), given rows by index.
        chunk = _CHUNK if self.device.type == "cpu" else max(1, count)
        noise = self._noise_picks(slice(None) if rows is None else rows)
        for start in range(0, count, chunk):
            stop = min(start + chunk, count)
            part = slice(start, stop) if rows is None else rows[start:stop]
            self._render(part, out[start:stop], noise[start:stop])
        return out[:, None].expand(count, c.channels, size, size).contiguous()

    def _noise_picks(self, idx: slice | torch.Tensor) -> torch.Tensor:
        """Which noise image each env shows this step (a hash of its key, episode, step)."""
        pick = hash_uniform(self.keys[idx], self.episode[idx], self.steps[idx] + 7919, 1)
        return (pick[:, 0] * _NOISE_BANK).long()

    def _render(self, idx: slice | torch.Tensor, out: torch.Tensor,
                noise: torch.Tensor) -> None:
        """Render the envs `idx` (a slice or indices) into `out` (n x H x W uint8), in place,
        with the noise images `noise`."""
        c = self.config
        centre = self.centroid[idx]
        xs = centre[:, 0:1] + self._col_offsets  # n x W world x of each column
        ys = centre[:, 1:2] + self._row_offsets  # n x H world y of each row
        falloff = self.falloff[idx, None]
        scale = self._grey_per_log
        # grey = DARKEST + scale (log_peak - q x^2 - q y^2 - log_low), split in two terms.
        col = (_DARKEST + scale * (self.log_peak[idx, None] - self._log_low)
               - scale * falloff * (xs**2).clamp(max=self._cap))
        row = -scale * falloff * (ys**2).clamp(max=self._cap)
        low = row.amin(dim=1, keepdim=True)
        # Both terms shifted so each is >= 0 and their sum <= _BRIGHTEST: plain uint8 adds.
        row_q = (row - low).round().to(torch.uint8)
        col_q = (col + low).round().clamp(min=0).to(torch.uint8)
        torch.add(row_q[:, :, None], col_q[:, None, :], out=out)
        if c.obstacles:
            self._black_out_obstacles(idx, xs, ys, out)
        if c.obs_noise:
            out += self._noise_bank.index_select(0, noise)
        self._draw_cells(idx, out)

    def _black_out_obstacles(self, idx: slice | torch.Tensor, xs: torch.Tensor,
                             ys: torch.Tensor, out: torch.Tensor) -> None:
        """Obstacles are zero stiffness: black (the noise goes on top).

        On the CPU only the windows an obstacle reaches into are touched (finding them is
        a host read, free there); a GPU masks every window instead.
        """
        c = self.config
        r2 = c.obstacle_radius**2
        reach = c.view_size / 2 + c.obstacle_radius
        for j in range(c.obstacles):
            o = self.obstacle_pos[idx, j]
            if self.device.type == "cpu":
                near = ((o - self.centroid[idx]).abs() < reach).all(dim=-1).nonzero()[:, 0]
                if near.numel() == 0:
                    continue
            else:
                near = torch.arange(out.shape[0], device=self.device)
            dx2 = (xs[near] - o[near, 0:1]) ** 2
            dy2 = (ys[near] - o[near, 1:2]) ** 2
            inside = (dy2[:, :, None] + dx2[:, None, :]) < r2
            out[near] = out[near].masked_fill(inside, 0)

    def _draw_cells(self, idx: slice | torch.Tensor, out: torch.Tensor) -> None:
        """Cells as plus marks at 255, painted in place by a max-scatter (marks off the
        window or of dead cells scatter 0, which changes nothing)."""
        c, n = self.config, out.shape[0]
        size = c.image_size
        rel = (self.pos[idx] - self.centroid[idx, None, :]) / c.view_size
        col = torch.floor((rel[..., 0] + 0.5) * size).long()
        row = torch.floor((0.5 - rel[..., 1]) * size).long()
        rows = row[..., None] + self._stamp[:, 0]
        cols = col[..., None] + self._stamp[:, 1]
        visible = (self.alive[idx][..., None] & (rows >= 0) & (rows < size) & (cols >= 0)
                   & (cols < size))
        flat = (rows.clamp(0, size - 1) * size + cols.clamp(0, size - 1)).reshape(n, -1)
        value = (visible.reshape(n, -1).to(torch.uint8) * 255)
        out.view(n, -1).scatter_reduce_(1, flat, value, reduce="amax")

    def render_rgb(self, index: int = 0, size: int = 256) -> np.ndarray:
        """An RGB picture of env `index`'s neighbourhood of the peak (for videos): H x W x 3."""
        c = self.config
        extent = 1.25 * c.start_distance
        coords = ((torch.arange(size, device=self.device, dtype=torch.float32) + 0.5) / size
                  - 0.5) * 2 * extent
        ys, xs = torch.meshgrid(-coords, coords, indexing="ij")
        points = torch.stack([xs, ys], dim=-1).reshape(1, -1, 2)
        sq = (points[0] ** 2).clamp(max=self._cap).sum(-1)
        log_i = self.log_peak[index] - self.falloff[index] * sq
        level = ((log_i - self._log_low) / (self._log_high - self._log_low)).clamp(0, 1)
        level = level.reshape(size, size)
        # Soft = dark blue, stiff = yellow; obstacles black; goal disc red outline.
        rgb = torch.stack([0.15 + 0.8 * level, 0.2 + 0.7 * level, 0.5 - 0.4 * level], dim=-1)
        r = (xs**2 + ys**2).sqrt()
        rgb[(r - c.goal_radius).abs() < extent / size * 1.5] = torch.tensor(
            [1.0, 0.1, 0.1], device=self.device)
        for j in range(c.obstacles):
            o = self.obstacle_pos[index, j]
            rgb[((xs - o[0]) ** 2 + (ys - o[1]) ** 2) < c.obstacle_radius**2] = 0.0
        pix = ((self.pos[index] + extent) / (2 * extent) * size).long()
        for k in range(c.max_cells):
            if bool(self.alive[index, k]):
                x, y = int(pix[k, 0]), size - 1 - int(pix[k, 1])
                if 0 <= x < size and 0 <= y < size:
                    rgb[max(y - 2, 0) : y + 3, max(x - 2, 0) : x + 3] = 1.0
        return (rgb.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()

    # ----- what probes and baselines may know ------------------------------------------
    def goal_direction(self, points: torch.Tensor) -> torch.Tensor:
        """Unit vectors from B x 2 points towards the peak (privileged)."""
        to_goal = -points
        return to_goal / to_goal.norm(dim=-1, keepdim=True).clamp(min=1e-6)

    def probe_targets(self) -> torch.Tensor:
        """B x 3 labels for pretraining probes: direction to the goal (cos, sin) from the
        centroid and the centroid's distance to it over start_distance."""
        dist = self.distance_to_goal() / self.config.start_distance
        return torch.cat([self.goal_direction(self.centroid), dist[:, None]], dim=1)

    # ----- checkpointing -----------------------------------------------------------------
    _STATE = ("keys", "episode", "steps", "pos", "alive", "log_peak", "falloff",
              "obstacle_pos", "centroid", "episode_return")
    _STATE_SIZES = "env.max_cells and env.obstacles"
