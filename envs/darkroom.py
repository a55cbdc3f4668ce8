"""Dark Room gridworlds for in-context RL (Laskin et al. 2022, "Algorithm Distillation").

Three variants share one set of rules:

- Dark Room: 9x9 grid, start at the centre (4, 4), 20 steps per episode, reward 1 on
  every step that ends on the goal. Optimal return for a goal at Manhattan distance d
  from the centre is min(20, 21 - d).
- Dark Room Hard: 17x17 grid, start at the centre (8, 8), 20 steps, reward 1 only the
  first time the agent reaches the goal (every goal is reachable, so optimal = 1).
- Dark Key-to-Door: 9x9 grid, uniformly random start, 50 steps; reward 1 the first time
  the agent steps on the (invisible) key, then reward 1 the first time it steps on the
  door while already holding the key (optimal = 2 from every start).

Observation: the agent's cell (x, y), integers in [0, size). Actions: 0 left (x - 1),
1 right (x + 1), 2 up (y - 1), 3 down (y + 1), 4 no-op; a move into a wall leaves the
agent where it is. Rewards are paid on the cell the agent ends a step on, so standing on
the goal with no-op keeps earning on Dark Room. Episodes have a fixed horizon and never
terminate early, which keeps every copy of a batch in lockstep.

A "task" is the goal cell (x, y), or (key_x, key_y, door_x, door_y) for Key-to-Door.
The train/test split is fixed: the test tasks below are the last N of
`numpy.random.default_rng(0).permutation` over the tasks enumerated in row-major order
(x outer, y inner; for Key-to-Door key before door) and are written out as literals so
that they never move; every other task is a training task. Dark Room: 73 train / 8
test; Dark Room Hard: 257 / 32; Key-to-Door: 6497 / 64.

`DarkroomBatch` is the batched torch simulator that everything on the device uses
(histories, in-context evaluation); the Gymnasium classes wrap the same rules: the
single-environment classes in plain Python (so that tests can check one against the
other) and the vector classes around `DarkroomBatch` (torch tensors in and out).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv

NUM_ACTIONS = 5
ACTION_NAMES = ("left", "right", "up", "down", "noop")
# (dx, dy) per action, in the order above.
MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1), (0, 0))
NOOP = ACTION_NAMES.index("noop")


@dataclass(frozen=True)
class GridSpec:
    """The rules of one Dark Room variant."""

    name: str
    size: int
    """Grid side length."""
    horizon: int
    """Steps per episode."""
    reward_once: bool
    """Dark Room Hard: the goal pays only on the first visit."""
    key_to_door: bool
    """Tasks are (key, door) pairs, two rewards per episode at most."""
    random_start: bool
    """Start on a uniformly random cell instead of the centre."""

    @property
    def task_dim(self) -> int:
        """Integers per task: a goal cell, or a key cell and a door cell."""
        return 4 if self.key_to_door else 2

    @property
    def num_tasks(self) -> int:
        """How many tasks exist."""
        return (self.size * self.size) ** (2 if self.key_to_door else 1)

    @property
    def centre(self) -> tuple[int, int]:
        """The start cell when the start is not random."""
        return (self.size // 2, self.size // 2)


DARKROOM = GridSpec("darkroom", 9, 20, reward_once=False, key_to_door=False, random_start=False)
DARKROOM_HARD = GridSpec(
    "darkroom-hard", 17, 20, reward_once=True, key_to_door=False, random_start=False
)
DARK_KEY_TO_DOOR = GridSpec(
    "dark-key-to-door", 9, 50, reward_once=True, key_to_door=True, random_start=True
)
GRIDS = {g.name: g for g in (DARKROOM, DARKROOM_HARD, DARK_KEY_TO_DOOR)}

# Held-out tasks (see the module docstring for how they were drawn).
TEST_TASKS: dict[str, tuple[tuple[int, ...], ...]] = {
    "darkroom": ((7, 6), (6, 5), (6, 0), (3, 2), (4, 5), (6, 2), (3, 6), (8, 7)),
    "darkroom-hard": (
        (0, 7), (1, 4), (1, 12), (2, 15), (3, 5), (3, 7), (3, 8), (3, 11), (4, 1), (4, 5),
        (4, 10), (5, 1), (5, 10), (5, 16), (6, 2), (6, 13), (7, 1), (7, 6), (7, 8), (9, 16),
        (10, 6), (10, 14), (11, 0), (11, 1), (11, 4), (12, 3), (14, 2), (14, 3), (15, 8),
        (15, 13), (15, 15), (16, 7),
    ),
    "dark-key-to-door": (
        (0, 1, 8, 3), (0, 2, 8, 6), (0, 6, 0, 1), (0, 7, 4, 4), (0, 8, 5, 6), (1, 0, 3, 1),
        (1, 0, 5, 6), (1, 3, 8, 1), (1, 4, 4, 8), (1, 7, 5, 2), (2, 0, 1, 1), (2, 0, 3, 4),
        (2, 1, 5, 1), (2, 1, 6, 5), (2, 2, 0, 2), (2, 2, 4, 5), (2, 2, 6, 8), (2, 5, 0, 6),
        (2, 5, 2, 7), (2, 6, 1, 5), (2, 6, 3, 3), (2, 7, 3, 3), (3, 0, 5, 0), (3, 2, 5, 5),
        (3, 3, 5, 4), (3, 5, 3, 0), (3, 5, 8, 0), (3, 6, 6, 2), (3, 8, 1, 4), (3, 8, 4, 3),
        (4, 0, 3, 1), (4, 0, 7, 5), (4, 1, 2, 8), (4, 5, 3, 4), (4, 8, 0, 7), (4, 8, 4, 8),
        (5, 3, 1, 5), (5, 5, 8, 3), (5, 6, 8, 8), (5, 7, 6, 6), (6, 0, 2, 5), (6, 0, 3, 2),
        (6, 0, 4, 1), (6, 3, 5, 2), (6, 4, 4, 1), (6, 6, 1, 2), (6, 6, 7, 8), (6, 7, 4, 8),
        (6, 8, 6, 5), (7, 2, 5, 3), (7, 3, 6, 2), (7, 3, 6, 7), (7, 4, 1, 1), (7, 5, 5, 8),
        (7, 6, 3, 0), (7, 7, 2, 2), (8, 0, 4, 5), (8, 1, 0, 8), (8, 1, 5, 6), (8, 5, 1, 2),
        (8, 6, 1, 8), (8, 7, 5, 2), (8, 8, 4, 5), (8, 8, 7, 5),
    ),
}


def get_grid(name: str) -> GridSpec:
    """Look a variant up by name, failing with the list of known ones."""
    if name not in GRIDS:
        raise ValueError(f"unknown Dark Room variant {name!r}; known: {', '.join(GRIDS)}")
    return GRIDS[name]


def grid_cells(size: int) -> torch.Tensor:
    """Every cell (x, y) of a size x size grid in row-major order: size^2 x 2."""
    return torch.cartesian_prod(torch.arange(size), torch.arange(size))


def all_tasks(grid: GridSpec) -> torch.Tensor:
    """Every task in row-major order (x outer, y inner; key before door): num_tasks x D."""
    cells = grid_cells(grid.size)
    if not grid.key_to_door:
        return cells
    pairs = torch.cartesian_prod(torch.arange(len(cells)), torch.arange(len(cells)))
    return torch.cat([cells[pairs[:, 0]], cells[pairs[:, 1]]], dim=1)


def task_split(grid: GridSpec, split: str) -> torch.Tensor:
    """The fixed "train", "test" or "all" tasks of a variant, as a long tensor N x D."""
    tasks = all_tasks(grid)
    if split == "all":
        return tasks
    test = torch.tensor(TEST_TASKS[grid.name], dtype=torch.long)
    is_test = (tasks[:, None, :] == test[None, :, :]).all(-1).any(-1)
    if split == "test":
        return test
    if split == "train":
        return tasks[~is_test]
    raise ValueError(f"unknown split {split!r}; use 'train', 'test' or 'all'")


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


def oracle_action(grid: GridSpec, pos: torch.Tensor, tasks: torch.Tensor,
                  has_key: torch.Tensor) -> torch.Tensor:
    """A shortest-path action towards the goal (or key, then door); no-op when there."""
    target = tasks[:, :2]
    if grid.key_to_door:
        target = torch.where(has_key[:, None], tasks[:, 2:], tasks[:, :2])
    dx = target[:, 0] - pos[:, 0]
    dy = target[:, 1] - pos[:, 1]
    action = torch.full_like(dx, 4)
    action = torch.where(dy > 0, 3, action)
    action = torch.where(dy < 0, 2, action)
    action = torch.where(dx > 0, 1, action)
    action = torch.where(dx < 0, 0, action)
    return action


def optimal_returns(grid: GridSpec, tasks: torch.Tensor) -> torch.Tensor:
    """Exact optimal return per task, by rolling the shortest-path policy through the env.

    Key-to-Door starts uniformly at random, so its value is averaged over every start.
    """
    tasks = tasks.to(torch.long).cpu()
    starts = grid_cells(grid.size)
    if grid.random_start:
        rep_tasks = tasks.repeat_interleave(len(starts), 0)
        rep_starts = starts.repeat(len(tasks), 1)
    else:
        rep_tasks, rep_starts = tasks, None
    env = DarkroomBatch(grid, rep_tasks)
    env.reset()
    if rep_starts is not None:
        env.pos = rep_starts.clone()
    total = torch.zeros(len(rep_tasks))
    done = False
    while not done:
        action = oracle_action(grid, env.pos, env.tasks, env.has_key)
        _, reward, done = env.step(action)
        total += reward
    return total.view(len(tasks), -1).mean(1)


def _next_cells(grid: GridSpec) -> torch.Tensor:
    """Cell index reached from each cell by each action: size^2 x 5."""
    cells = grid_cells(grid.size)
    moved = (cells[:, None, :] + torch.tensor(MOVES)[None]).clamp(0, grid.size - 1)
    return moved[..., 0] * grid.size + moved[..., 1]


def random_returns(grid: GridSpec, tasks: torch.Tensor) -> torch.Tensor:
    """Exact expected return per task of the uniformly random policy (float64).

    Propagates the distribution over cells step by step (a Markov chain), splitting the
    mass by reward phase (not yet paid / key held / done) where rewards pay once.
    """
    tasks = tasks.to(torch.long).cpu()
    n, cells = len(tasks), grid.size * grid.size
    nxt = _next_cells(grid).reshape(-1)

    def spread(p: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(p)
        out.index_add_(1, nxt, p.repeat_interleave(NUM_ACTIONS, dim=1) / NUM_ACTIONS)
        return out

    first = tasks[:, 0] * grid.size + tasks[:, 1]
    rows = torch.arange(n)
    p = torch.zeros(n, cells, dtype=torch.float64)
    if grid.random_start:
        p[:] = 1.0 / cells
    else:
        p[:, grid.centre[0] * grid.size + grid.centre[1]] = 1.0
    expected = torch.zeros(n, dtype=torch.float64)
    if grid.key_to_door:
        door = tasks[:, 2] * grid.size + tasks[:, 3]
        holding = torch.zeros_like(p)
        for _ in range(grid.horizon):
            holding = spread(holding)
            expected += holding[rows, door]
            holding[rows, door] = 0.0
            p = spread(p)
            picked = p[rows, first].clone()
            expected += picked
            p[rows, first] = 0.0
            holding[rows, first] += picked
        return expected
    for _ in range(grid.horizon):
        p = spread(p)
        expected += p[rows, first]
        if grid.reward_once:
            p[rows, first] = 0.0
    return expected


# ---------------------------------------------------------------- Gymnasium classes


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
