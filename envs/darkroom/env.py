"""Dark Room simulators: the batched torch `DarkroomBatch` and the Gymnasium environments.

The rules, variants and task splits are in envs/darkroom/grids.py. `DarkroomBatch` is
the batched torch simulator that everything on the device uses (histories, in-context
evaluation); the Gymnasium classes wrap the same rules: the single-environment classes
in plain Python (so that tests can check one against the other) and the vector classes
around `DarkroomBatch` (torch tensors in and out). Registered as Darkroom-v0,
DarkroomHard-v0 and DarkKeyToDoor-v0 (envs/__init__.py).
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv

from envs.darkroom.grids import (
    DARK_KEY_TO_DOOR,
    DARKROOM,
    DARKROOM_HARD,
    MOVES,
    NUM_ACTIONS,
    GridSpec,
    task_split,
)


class DarkroomBatch:
    """N independent copies of one variant, stepped together on a torch device.

    Nothing here reads a value back to the host: the step counter is a Python int (the
    horizon is fixed), so a rollout loop costs no device synchronisation.
    """

    def __init__(
        self,
        grid: GridSpec,
        tasks: torch.Tensor,
        *,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> None:
        if tasks.ndim != 2 or tasks.shape[1] != grid.task_dim:
            raise ValueError(
                f"{grid.name} tasks must be N x {grid.task_dim} integers, got {tuple(tasks.shape)}"
            )
        if int(tasks.min()) < 0 or int(tasks.max()) >= grid.size:
            raise ValueError(f"{grid.name} task cells must lie in [0, {grid.size})")
        self.grid = grid
        self.device = torch.device(device)
        self.tasks = tasks.to(self.device, torch.long)
        self.num_envs = len(tasks)
        self.generator = generator
        self._moves_or_stay = torch.tensor((*MOVES, (0, 0)), dtype=torch.long, device=self.device)
        # Made once: building it from a Python tuple at every reset is a host copy.
        self._centre = torch.tensor(grid.centre, dtype=torch.long, device=self.device)
        self.t = 0
        self.pos = torch.zeros(self.num_envs, 2, dtype=torch.long, device=self.device)
        self.has_key = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        self.done_goal = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)

    def set_tasks(self, tasks: torch.Tensor) -> None:
        """Swap the tasks (same count); takes effect from the next reset."""
        if tasks.shape != self.tasks.shape:
            raise ValueError(f"expected tasks of shape {tuple(self.tasks.shape)}")
        self.tasks = tasks.to(self.device, torch.long)

    def reset(self) -> torch.Tensor:
        """Start a new episode in every copy; returns obs N x 2 (long)."""
        self.t = 0
        if self.grid.random_start:
            self.pos = torch.randint(
                0, self.grid.size, (self.num_envs, 2), device=self.device,
                generator=self.generator,
            )
        else:
            self.pos = self._centre.expand(self.num_envs, 2).clone()
        self.has_key.zero_()
        self.done_goal.zero_()
        return self.pos.clone()

    def step(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Move every copy; returns (obs N x 2, reward N float, episode over).

        action: N integer tensor. A wrong type, shape or dtype raises ValueError. Values
        are not read back to the host (no device sync), so an action outside 0..4 is
        made harmless on the device instead: it is a no-op.
        """
        if not isinstance(action, torch.Tensor):
            raise ValueError(
                f"{self.grid.name} actions must be a torch tensor, got {type(action).__name__}"
            )
        if action.shape != (self.num_envs,):
            raise ValueError(
                f"{self.grid.name} actions have shape {tuple(action.shape)}, "
                f"expected ({self.num_envs},)"
            )
        if action.dtype.is_floating_point or action.dtype.is_complex or action.dtype == torch.bool:
            raise ValueError(
                f"{self.grid.name} actions have dtype {action.dtype}, expected an integer dtype"
            )
        # long: a uint8 index tensor would be taken as a mask.
        action = action.to(self.device, torch.long)
        # Indexing with a bad action would raise on the CPU, wrap around when negative, and
        # trip a device-side assert on a GPU. Clamped to -1..NUM_ACTIONS instead, it picks
        # the extra stay row (-1 wraps to it): a no-op for one kernel.
        move = self._moves_or_stay[action.clamp(-1, NUM_ACTIONS)]
        self.pos = (self.pos + move).clamp_(0, self.grid.size - 1)
        self.t += 1
        if self.grid.key_to_door:
            on_key = (self.pos == self.tasks[:, :2]).all(-1)
            on_door = (self.pos == self.tasks[:, 2:]).all(-1)
            # The door pays only for a key held before this step (key == door needs 2 steps).
            door_reward = on_door & self.has_key & ~self.done_goal
            key_reward = on_key & ~self.has_key
            self.done_goal |= door_reward
            self.has_key |= key_reward
            reward = key_reward.float() + door_reward.float()
        else:
            on_goal = (self.pos == self.tasks).all(-1)
            if self.grid.reward_once:
                on_goal = on_goal & ~self.done_goal
                self.done_goal |= on_goal
            reward = on_goal.float()
        return self.pos.clone(), reward, self.t >= self.grid.horizon

    def markov_state(self) -> torch.Tensor:
        """Cell index plus size^2 x reward phase: what a tabular learner needs.

        The phase (key held, goal or door already paid) is hidden from the observation
        but decides future rewards, so a tabular learner must see it to stay Markov.
        """
        cell = self.pos[:, 0] * self.grid.size + self.pos[:, 1]
        phase = self.has_key.long() + self.done_goal.long()
        return cell + phase * self.grid.size**2

    @property
    def num_markov_states(self) -> int:
        """How many values markov_state() can take."""
        phases = 3 if self.grid.key_to_door else (2 if self.grid.reward_once else 1)
        return phases * self.grid.size**2



def _single_action(name: str, action: Any) -> int:
    """One env's action as an int, or a one-line ValueError saying what is wrong with it."""
    if isinstance(action, int) and not isinstance(action, bool):
        value = action  # checked as a Python int: numpy would make a huge one an object
    else:
        array = np.asarray(action)
        if array.shape != ():
            raise ValueError(f"{name} action must be a single integer, got shape {array.shape}")
        if array.dtype.kind not in "iu":
            raise ValueError(
                f"{name} action must be an integer, got {action!r} (dtype {array.dtype})"
            )
        value = int(array)
    if not 0 <= value < NUM_ACTIONS:
        raise ValueError(f"{name} action must be an integer in 0..{NUM_ACTIONS - 1}, got {value}")
    return value


def _batch_actions(name: str, actions: Any, num_envs: int) -> torch.Tensor:
    """N actions checked in full (type, shape, dtype and range), or a one-line ValueError."""
    if isinstance(actions, torch.Tensor):
        dtype = actions.dtype
        integer = not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)
    else:
        actions = np.asarray(actions)
        dtype, integer = actions.dtype, actions.dtype.kind in "iu"
    if tuple(actions.shape) != (num_envs,):
        raise ValueError(
            f"{name} actions have shape {tuple(actions.shape)}, expected ({num_envs},)"
        )
    if not integer:
        raise ValueError(f"{name} actions have dtype {dtype}, expected an integer dtype")
    bad = (actions < 0) | (actions >= NUM_ACTIONS)
    if bool(bad.any()):  # a host read: the price of a clear error in the Gymnasium form
        value = int(actions[bad][0])
        raise ValueError(f"{name} action must be an integer in 0..{NUM_ACTIONS - 1}, got {value}")
    return torch.as_tensor(actions)


class _SingleGridEnv(gymnasium.Env):
    """One copy of a variant in plain Python; the task is fixed or drawn from a split."""

    grid: GridSpec
    metadata = {"render_modes": []}

    def __init__(self, task: tuple[int, ...] | None = None, split: str = "train") -> None:
        self._tasks = task_split(self.grid, split).tolist()
        if task is not None and len(task) != self.grid.task_dim:
            raise ValueError(f"{self.grid.name} task needs {self.grid.task_dim} integers")
        self._fixed_task = None if task is None else tuple(int(v) for v in task)
        self.observation_space = spaces.MultiDiscrete([self.grid.size, self.grid.size])
        self.action_space = spaces.Discrete(NUM_ACTIONS)
        self.task = self._fixed_task
        self._pos = list(self.grid.centre)
        self._t = 0
        self._has_key = False
        self._done_goal = False

    def _obs(self) -> np.ndarray:
        return np.array(self._pos, dtype=np.int64)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode; options={"task": ...} overrides the task for this episode."""
        super().reset(seed=seed)
        if options and "task" in options:
            self.task = tuple(int(v) for v in options["task"])
        elif self._fixed_task is not None:
            self.task = self._fixed_task
        else:
            self.task = tuple(self._tasks[int(self.np_random.integers(len(self._tasks)))])
        if self.grid.random_start:
            self._pos = [int(v) for v in self.np_random.integers(0, self.grid.size, 2)]
        else:
            self._pos = list(self.grid.centre)
        self._t = 0
        self._has_key = False
        self._done_goal = False
        return self._obs(), {"task": self.task}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """One move; the episode is truncated at the horizon and never terminates.

        An action that is not one integer in 0..4 raises ValueError and changes nothing.
        """
        dx, dy = MOVES[_single_action(self.grid.name, action)]
        size = self.grid.size
        self._pos = [min(max(self._pos[0] + dx, 0), size - 1),
                     min(max(self._pos[1] + dy, 0), size - 1)]
        self._t += 1
        pos = tuple(self._pos)
        reward = 0.0
        if self.grid.key_to_door:
            if pos == self.task[2:] and self._has_key and not self._done_goal:
                reward += 1.0
                self._done_goal = True
            if pos == self.task[:2] and not self._has_key:
                reward += 1.0
                self._has_key = True
        elif pos == self.task[:2] and not (self.grid.reward_once and self._done_goal):
            reward = 1.0
            self._done_goal = True
        truncated = self._t >= self.grid.horizon
        return self._obs(), reward, False, truncated, {"task": self.task}


class DarkroomEnv(_SingleGridEnv):
    """Dark Room 9x9 (see the module docstring)."""

    grid = DARKROOM


class DarkroomHardEnv(_SingleGridEnv):
    """Dark Room Hard 17x17, reward once."""

    grid = DARKROOM_HARD


class DarkKeyToDoorEnv(_SingleGridEnv):
    """Dark Key-to-Door 9x9, key then door, random start, 50 steps."""

    grid = DARK_KEY_TO_DOOR


class _GridVectorEnv(VectorEnv):
    """`num_envs` copies as one batched torch env; tensors in and out on `device`.

    Tasks stay fixed for the env's life (in-context RL keeps a task across episodes):
    given as `tasks`, or drawn from `split` with `seed`, or replaced with
    reset(options={"tasks": N x D}). Autoreset is same-step: the step that ends an
    episode returns the first observation of the next, the last one in info["final_obs"].
    """

    grid: GridSpec
    metadata = {"render_modes": [], "autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(
        self,
        num_envs: int = 1,
        *,
        tasks: torch.Tensor | None = None,
        split: str = "train",
        device: str | torch.device = "cpu",
        seed: int | None = None,
    ) -> None:
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.single_observation_space = spaces.MultiDiscrete([self.grid.size, self.grid.size])
        self.single_action_space = spaces.Discrete(NUM_ACTIONS)
        self.observation_space = spaces.MultiDiscrete(
            np.full((num_envs, 2), self.grid.size, dtype=np.int64)
        )
        self.action_space = spaces.MultiDiscrete(np.full(num_envs, NUM_ACTIONS, dtype=np.int64))
        self._split = split
        self._generator = torch.Generator(self.device)
        self._generator.manual_seed(0 if seed is None else seed)
        if tasks is None:
            tasks = self._draw_tasks()
        self.sim = DarkroomBatch(self.grid, tasks, device=self.device, generator=self._generator)

    def _draw_tasks(self) -> torch.Tensor:
        pool = task_split(self.grid, self._split)
        cpu_gen = torch.Generator().manual_seed(int(self._generator.initial_seed()))
        return pool[torch.randint(len(pool), (self.num_envs,), generator=cpu_gen)]

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Reset every copy; seed re-seeds the start draws, options may set "tasks"."""
        if seed is not None:
            self._generator.manual_seed(seed)
        if options and "tasks" in options:
            self.sim.set_tasks(torch.as_tensor(options["tasks"]))
        return self.sim.reset(), {"tasks": self.sim.tasks}

    def step(self, actions: torch.Tensor | np.ndarray) -> tuple[Any, ...]:
        """Step all copies: (obs, reward, terminated, truncated, info).

        Unlike `DarkroomBatch.step`, actions are checked in full: anything but N integers
        in 0..4 raises ValueError before any copy moves (one host read of the actions
        when they live on a GPU; `DarkroomBatch` is the sync-free path).
        """
        actions = _batch_actions(self.grid.name, actions, self.num_envs)
        actions = actions.to(self.device, torch.long)
        obs, reward, over = self.sim.step(actions)
        terminated = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        truncated = torch.full((self.num_envs,), over, dtype=torch.bool, device=self.device)
        info: dict[str, Any] = {}
        if over:
            info["final_obs"] = obs
            obs = self.sim.reset()
        return obs, reward, terminated, truncated, info


class DarkroomVectorEnv(_GridVectorEnv):
    """Batched Dark Room 9x9."""

    grid = DARKROOM


class DarkroomHardVectorEnv(_GridVectorEnv):
    """Batched Dark Room Hard 17x17."""

    grid = DARKROOM_HARD


class DarkKeyToDoorVectorEnv(_GridVectorEnv):
    """Batched Dark Key-to-Door."""

    grid = DARK_KEY_TO_DOOR
