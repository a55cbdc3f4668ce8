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
The splits are fixed and written out as literals so that they never move:

- "test": the last N of `numpy.random.default_rng(0).permutation` over the tasks
  enumerated in row-major order (x outer, y inner; for Key-to-Door key before door).
  Final numbers only.
- "train": every other task. Dark Room: 73 train / 8 test; Dark Room Hard: 257 / 32;
  Key-to-Door: 6497 / 64.
- "valid": as many tasks as "test", held out of "train" for model selection (every
  budget, learning-rate or architecture choice): the last N of
  `numpy.random.default_rng(1).permutation` over the "train" tasks in their row-major
  order. Dark Room: 8 of the 73.
- "fit": "train" less "valid", the tasks the transformers are trained on. Dark Room: 65.

This module holds that geometry: the variants (`GridSpec`), the task splits, the
shortest-path `oracle_action` and the exact optimal and uniformly-random returns. The
simulators are in envs/darkroom/env.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

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


# Validation tasks, held out of the training tasks (see the module docstring).
VALID_TASKS: dict[str, tuple[tuple[int, ...], ...]] = {
    "darkroom": ((0, 2), (3, 7), (4, 2), (4, 8), (5, 0), (5, 4), (6, 1), (7, 2)),
    "darkroom-hard": (
        (0, 2), (0, 11), (0, 13), (2, 5), (2, 11), (2, 16), (3, 3), (3, 4), (3, 9), (3, 15),
        (4, 12), (4, 15), (5, 3), (6, 11), (6, 16), (10, 4), (10, 11), (10, 16), (11, 6),
        (11, 7), (11, 12), (12, 9), (13, 7), (13, 10), (13, 15), (15, 9), (16, 2), (16, 3),
        (16, 4), (16, 5), (16, 11), (16, 15),
    ),
    "dark-key-to-door": (
        (0, 0, 6, 8), (0, 3, 2, 7), (0, 6, 4, 4), (0, 7, 1, 1), (0, 7, 5, 2), (0, 8, 2, 4),
        (0, 8, 7, 5), (1, 3, 2, 7), (1, 5, 3, 4), (1, 6, 7, 1), (1, 6, 8, 1), (1, 7, 8, 7),
        (2, 0, 2, 1), (2, 0, 6, 7), (2, 1, 6, 6), (2, 2, 0, 7), (2, 2, 0, 8), (2, 6, 6, 0),
        (2, 8, 0, 5), (2, 8, 7, 3), (3, 1, 0, 5), (3, 2, 6, 7), (3, 3, 7, 1), (3, 6, 3, 3),
        (4, 2, 3, 2), (4, 2, 8, 1), (4, 3, 0, 4), (4, 4, 4, 8), (4, 5, 8, 5), (4, 8, 1, 3),
        (5, 1, 2, 5), (5, 3, 6, 3), (5, 4, 7, 5), (5, 5, 4, 1), (5, 6, 0, 5), (5, 6, 1, 6),
        (5, 6, 8, 3), (5, 8, 1, 8), (5, 8, 6, 3), (6, 0, 8, 0), (6, 3, 4, 1), (6, 3, 6, 6),
        (6, 3, 7, 5), (6, 4, 0, 7), (6, 5, 4, 7), (7, 1, 8, 8), (7, 4, 0, 1), (7, 4, 1, 3),
        (7, 5, 1, 5), (7, 5, 2, 3), (8, 0, 2, 6), (8, 0, 4, 8), (8, 1, 2, 2), (8, 2, 2, 4),
        (8, 3, 1, 0), (8, 3, 2, 0), (8, 4, 0, 6), (8, 4, 1, 2), (8, 7, 1, 2), (8, 8, 3, 1),
        (8, 8, 4, 8), (8, 8, 5, 7), (8, 8, 6, 1), (8, 8, 7, 7),
    ),
}
SPLITS = ("train", "valid", "fit", "test", "all")


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


def _is_in(tasks: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """Which rows of tasks (N x D) are among members (M x D): N bools."""
    return (tasks[:, None, :] == members[None, :, :]).all(-1).any(-1)


def task_split(grid: GridSpec, split: str) -> torch.Tensor:
    """The fixed "train", "valid", "fit", "test" or "all" tasks of a variant (module
    docstring), as a long tensor N x D; "train" and "fit" in row-major order."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use {', '.join(map(repr, SPLITS))}")
    tasks = all_tasks(grid)
    if split == "all":
        return tasks
    test = torch.tensor(TEST_TASKS[grid.name], dtype=torch.long)
    valid = torch.tensor(VALID_TASKS[grid.name], dtype=torch.long)
    if split == "test":
        return test
    if split == "valid":
        return valid
    train = tasks[~_is_in(tasks, test)]
    if split == "train":
        return train
    return train[~_is_in(train, valid)]  # "fit"


def held_out_mask(grid: GridSpec, tasks: torch.Tensor, split: str) -> torch.Tensor:
    """Which of `tasks` (N x D, a tensor or an integer array) belong to the held-out split
    "valid" or "test": N bools."""
    if split not in ("valid", "test"):
        raise ValueError(f"held-out splits are 'valid' and 'test', not {split!r}")
    return _is_in(torch.as_tensor(tasks, dtype=torch.long).reshape(-1, grid.task_dim),
                  task_split(grid, split))


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
    from envs.darkroom.env import DarkroomBatch  # here: env.py builds on this module

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
