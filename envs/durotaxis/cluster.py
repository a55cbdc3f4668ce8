"""What both Durotaxis engines share: a batch of cell clusters and their episode bookkeeping.

`CellClusters` holds the per-environment keys, episode and step counters, cell positions
and the centroid; it seeds, resets, steps with same-step autoreset, reads actions and
saves / restores state. An engine (`DurotaxisCore` for easy, `MigrationCore` for standard
and hard) subclasses it once and adds its substrate: `_reset_state`, `step`, `observe`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from envs.durotaxis.config import PARAM_NAMES, DurotaxisConfig


class CellClusters:
    """B clusters of at most max_cells cells as tensors on one device."""

    # Names of the tensors that change between steps (each engine lists its own); with
    # the counter-based RNG they are the random state too.
    _STATE: tuple[str, ...] = ()
    # The settings the state's shapes depend on, besides the number of environments.
    _STATE_SIZES = "env.max_cells"

    def __init__(self, config: DurotaxisConfig, num_envs: int,
                 device: torch.device | str) -> None:
        self.config = config
        self.num_envs = num_envs
        self.device = torch.device(device)
        b, n, dev = num_envs, config.max_cells, self.device
        self.param_low = torch.tensor(config.param_low, device=dev)
        self.param_high = torch.tensor(config.param_high, device=dev)
        self._x_axis = torch.tensor([1.0, 0.0], device=dev)
        self.keys = torch.zeros(b, dtype=torch.int64, device=dev)
        self.episode = torch.zeros(b, dtype=torch.int64, device=dev)
        self.steps = torch.zeros(b, dtype=torch.int64, device=dev)
        self.pos = torch.zeros(b, n, 2, device=dev)
        self.alive = torch.zeros(b, n, dtype=torch.bool, device=dev)
        self.centroid = torch.zeros(b, 2, device=dev)
        self.episode_return = torch.zeros(b, device=dev)
        self._seeded = False

    # ----- what the subclass provides --------------------------------------------------
    def _reset_state(self, mask: torch.Tensor) -> None:
        """Draw the masked envs' new episodes: substrate, cells (the counters and the
        centroid are `_start_episodes`' part)."""
        raise NotImplementedError

    def step(self, kind: torch.Tensor, params: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def observe(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    # ----- seeding and episodes ----------------------------------------------------------
    def seed(self, seed: int) -> None:
        """Give env i the key seed + i and restart its episode count."""
        self.keys = seed + torch.arange(self.num_envs, dtype=torch.int64, device=self.device)
        self.episode.zero_()
        self._seeded = True

    def reset(self, seed: int | None = None) -> torch.Tensor:
        """Reset every environment (seeding first when seed is given) and observe."""
        if seed is not None:
            self.seed(seed)
        elif not self._seeded:
            self.seed(int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> 2))
        else:
            self.episode += 1
        self._start_episodes(torch.ones(self.num_envs, dtype=torch.bool, device=self.device))
        return self.observe()

    def reset_where(self, mask: torch.Tensor) -> None:
        """Start the next episode in the masked environments (no host sync)."""
        self.episode += mask.long()
        self._start_episodes(mask)

    def _start_episodes(self, mask: torch.Tensor) -> None:
        """The engine draws the masked envs' episodes; their step count and return restart."""
        self._reset_state(mask)
        self.steps = torch.where(mask, torch.zeros_like(self.steps), self.steps)
        self.episode_return = torch.where(
            mask, torch.zeros_like(self.episode_return), self.episode_return
        )
        self._update_centroid()

    def autoreset_step(
        self, kind: torch.Tensor, params: torch.Tensor, final_obs: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Step, reset finished envs in the same step, observe (the training loop's form).

        With final_obs, info["truncated_rows"] holds the indices of the envs whose episode
        the time limit cut and info["final_obs"] their last observation (before the
        reset), to bootstrap from V(final observation); finding those rows is one host
        read per step, so it is asked for, not default.
        """
        reward, terminated, truncated, info = self.step(kind, params)
        if final_obs:
            rows = truncated.nonzero().squeeze(-1)
            info["truncated_rows"] = rows
            info["final_obs"] = self.observe(rows)
        self.reset_where(terminated | truncated)
        return self.observe(), reward, terminated, truncated, info

    # ----- cells ---------------------------------------------------------------------------
    def num_cells(self) -> torch.Tensor:
        """Alive cells per environment."""
        return self.alive.sum(dim=1)

    def _update_centroid(self) -> None:
        count = self.num_cells()
        mean = (self.pos * self.alive[..., None]).sum(1) / count.clamp(min=1)[:, None]
        # With no cells left keep the last centroid, so the final frame stays in place.
        self.centroid = torch.where((count > 0)[:, None], mean, self.centroid)

    def _read_action(self, kind: torch.Tensor, params: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(kind, params, unit direction) on the device, bad values made harmless.

        A wrong type, shape or dtype raises ValueError. Values are never read back to the
        host (no device sync per step): a kind outside 0..2 holds, NaN params count as 0,
        params are clamped to the config's bounds (-inf and +inf to the nearest bound), a
        zero direction means +x.
        """
        _check_core_action(kind, params, self.num_envs)
        kind = kind.to(self.device).long()
        params = torch.nan_to_num(params.to(self.device).float(), nan=0.0)
        params = torch.maximum(torch.minimum(params, self.param_high), self.param_low)
        raw_dir = params[:, :2]
        norm = raw_dir.norm(dim=-1, keepdim=True)
        fallback = self._x_axis.expand_as(raw_dir)
        direction = torch.where(norm > 1e-6, raw_dir / norm.clamp(min=1e-6), fallback)
        return kind, params, direction

    def leading_cell(self, direction: torch.Tensor) -> torch.Tensor:
        """B x 2 position of the alive cell that leads in `direction`: a spawn's parent."""
        return self._lead_and_trail(direction)[0]

    def _lead_and_trail(self, direction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(position of the cell leading in `direction`, index of the one trailing)."""
        proj = (self.pos * direction[:, None, :]).sum(-1)
        parent = proj.masked_fill(~self.alive, -math.inf).argmax(dim=1)
        victim = proj.masked_fill(~self.alive, math.inf).argmin(dim=1)
        parent_pos = self.pos.gather(1, parent[:, None, None].expand(-1, 1, 2)).squeeze(1)
        return parent_pos, victim

    def _place_and_remove(self, new_pos: torch.Tensor, placed: torch.Tensor,
                          victim: torch.Tensor, removed: torch.Tensor) -> None:
        """Put a new cell at new_pos in the first free slot where placed; kill the victim
        where removed."""
        n = self.config.max_cells
        free_slot = (~self.alive).long().argmax(dim=1)
        slot_hot = torch.nn.functional.one_hot(free_slot, n).bool() & placed[:, None]
        self.pos = torch.where(slot_hot[..., None], new_pos[:, None, :], self.pos)
        victim_hot = torch.nn.functional.one_hot(victim, n).bool() & removed[:, None]
        self.alive = (self.alive | slot_hot) & ~victim_hot

    # ----- checkpointing -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """A copy of the environments' state: tensors and a bool (weights_only-loadable)."""
        state: dict[str, Any] = {name: getattr(self, name).clone() for name in self._STATE}
        state["seeded"] = self._seeded
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where `state_dict()` left off (same num_envs and sizes)."""
        for name in (*self._STATE, "seeded"):
            if name not in state:
                raise ValueError(f"environment state has no {name!r} entry")
        for name in self._STATE:
            own, saved = getattr(self, name), state[name]
            if saved.shape != own.shape or saved.dtype != own.dtype:
                raise ValueError(
                    f"environment state does not fit: {name} is {tuple(saved.shape)} "
                    f"{saved.dtype} there, {tuple(own.shape)} {own.dtype} here; use the same "
                    f"number of environments and {self._STATE_SIZES}"
                )
        for name in self._STATE:
            setattr(self, name, state[name].to(self.device).clone())
        self._seeded = bool(state["seeded"])


def hill_length(gamma: torch.Tensor | float, alpha: torch.Tensor,
                stiffness: torch.Tensor) -> torch.Tensor:
    """Protrusion length by the Hill equation, gamma / (1 + (alpha / I)^2) (both engines and
    the privileged baselines; gamma = 1 gives the Hill factor)."""
    return gamma / (1.0 + (alpha / stiffness) ** 2)


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
