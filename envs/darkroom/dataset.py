"""The data of train_bc.py's Dark Room tasks: learning histories as training windows.

Episode-aligned windows of the source learners' histories. A window is the
`context_episodes + 1` episodes an AD transformer sees, preceded by up to
`compressed_episodes x compression_depth` older ones for compressed-context AD
(zero-padded where the history has not started yet; "prefix_episodes" says how many are
real). Without --dataset, the variant's default histories are generated once into the
cache folder. Histories on validation tasks are dropped (they are for model selection
only) and histories on test tasks refused. The evaluation of these tasks is in
envs/darkroom/evaluation.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from envs.darkroom.grids import NUM_ACTIONS, get_grid, held_out_mask
from envs.darkroom.histories import (
    Histories,
    default_config,
    generate_histories,
    load_histories,
    plot_history_returns,
    save_histories,
)


@dataclass(frozen=True)
class DarkroomSpec:
    """What the agent and the evaluator learn about a learning-history dataset."""

    env: str
    """darkroom | darkroom-hard | dark-key-to-door."""
    grid_size: int
    horizon: int
    """Steps per episode."""
    num_actions: int
    context_episodes: int
    """Complete episodes before the current one in a window."""
    prefix_episodes: int
    """Older episodes before those (compressed-context AD); 0 for AD."""
    history_episodes: int
    """Episodes per learning history in the file."""


class DarkroomHistoryData:
    """Learning histories on the device, sampled as episode-aligned windows."""

    def __init__(self, hist: Histories, *, context_episodes: int, prefix_episodes: int,
                 device: torch.device, source: str, dropped_valid: int = 0) -> None:
        grid = hist.grid
        self.grid = grid
        self.source = source
        self.dropped_valid = dropped_valid
        self.meta = hist.meta
        self.tasks = torch.from_numpy(hist.tasks.astype("int64"))
        self.device = device
        self.horizon = grid.horizon
        self.episodes = hist.meta["episodes"]
        self.context_episodes = context_episodes
        self.prefix_episodes = prefix_episodes
        if context_episodes + 1 > self.episodes:
            raise ValueError(
                f"context of {context_episodes + 1} episodes is longer than the "
                f"{self.episodes}-episode histories in {source}"
            )
        self.obs = torch.from_numpy(hist.obs).to(device)
        self.actions = torch.from_numpy(hist.actions).to(device)
        self.rewards = torch.from_numpy(hist.rewards).to(device)
        self.num_histories = len(self.obs)
        self.starts_per_history = self.episodes - context_episodes
        self.window_episodes = prefix_episodes + context_episodes + 1
        self.window = self.window_episodes * self.horizon
        self.spec = DarkroomSpec(
            env=grid.name,
            grid_size=grid.size,
            horizon=grid.horizon,
            num_actions=NUM_ACTIONS,
            context_episodes=context_episodes,
            prefix_episodes=prefix_episodes,
            history_episodes=self.episodes,
        )

    @property
    def num_samples(self) -> int:
        """Distinct windows: histories x raw-window start episodes."""
        return self.num_histories * self.starts_per_history

    def describe(self) -> str:
        """One paragraph for the console."""
        s = self.meta["summary"]
        return (
            f"{self.grid.name} learning histories from {self.source}: {self.num_histories} "
            f"histories x {self.episodes} episodes x {self.horizon} steps "
            f"({self.meta['source']}; {self.dropped_valid} histories on validation tasks "
            f"left out); source return {s['first_episode_return']:.2f} in the "
            f"first episode -> {list(s.values())[1]:.2f} at the end (optimal "
            f"{s['optimal_return']:.2f}, random {s['random_return']:.2f}); windows of "
            f"{self.window_episodes} episodes ({self.prefix_episodes} compressible + "
            f"{self.context_episodes} + current), {self.num_samples} distinct"
        )

    def sample_indices(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Uniform window indices (drawn with the generator, on its device), on the data's."""
        return torch.randint(self.num_samples, (batch_size,), generator=generator,
                             device=generator.device).to(self.device)

    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """A batch of `batch_size` random windows."""
        return self.batch(self.sample_indices(batch_size, generator))

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Windows by index: obs B x W x 2, actions B x W, rewards B x W, prefix_episodes B."""
        history = idx // self.starts_per_history
        first_raw = idx % self.starts_per_history  # episode where the decoder's window starts
        start = (first_raw - self.prefix_episodes) * self.horizon
        steps = start[:, None] + torch.arange(self.window, device=self.device)
        real = steps >= 0
        steps = steps.clamp_min(0)
        rows = history[:, None]
        return {
            "obs": self.obs[rows, steps].long() * real[..., None],
            "actions": self.actions[rows, steps].long() * real,
            "rewards": self.rewards[rows, steps].float() * real,
            "prefix_episodes": first_raw.clamp(max=self.prefix_episodes),
        }


def _histories_for(env: str, dataset: str | None, cache_dir: Path,
                   device: torch.device) -> tuple[Histories, str]:
    """Load the named file, or generate (once) and cache the default histories."""
    if dataset is not None:
        hist = load_histories(dataset)
        if hist.meta["env"] != env:
            raise ValueError(f"{dataset} holds {hist.meta['env']} histories, not {env}")
        return hist, str(dataset)
    cfg = default_config(env)
    key = hashlib.sha1(json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode()).hexdigest()
    path = Path(cache_dir) / f"{env}_histories_{key[:10]}.npz"
    if not path.is_file():
        tqdm.write(f"generating the default {env} learning histories into {path}")
        hist = generate_histories(cfg, device)
        save_histories(path, hist)
        plot_history_returns(hist, path.with_suffix(".png"))
    return load_histories(path), str(path)


def without_validation_tasks(hist: Histories) -> tuple[Histories, int]:
    """The histories less those on validation tasks, and how many were left out."""
    keep = ~held_out_mask(hist.grid, hist.tasks, "valid").numpy()
    if keep.all():
        return hist, 0
    kept = dataclasses.replace(
        hist, obs=hist.obs[keep], actions=hist.actions[keep], rewards=hist.rewards[keep],
        tasks=hist.tasks[keep], episode_returns=hist.episode_returns[keep],
    )
    return kept, int((~keep).sum())


def make_data(dataset: str | None, *, device: torch.device, seed: int, cache_dir: Path,
              context_episodes: int, prefix_episodes: int,
              env: str = "darkroom") -> DarkroomHistoryData:
    """Histories for `env` as windows of the agent's context: `prefix_episodes` older
    episodes (compressed AD's: compressed_episodes x compression_depth), `context_episodes`
    complete ones and the current one (see the module docstring). Histories on validation
    tasks are left out and ones on test tasks refused. `seed` (the training seed) does not
    change the data."""
    hist, source = _histories_for(env, dataset, cache_dir, device)
    leaked = int(held_out_mask(get_grid(env), hist.tasks, "test").sum())
    if leaked:
        raise ValueError(f"{source} has {leaked} histories on held-out test tasks")
    hist, dropped = without_validation_tasks(hist)
    if len(hist.obs) == 0:
        raise ValueError(f"{source} holds only histories on validation tasks: nothing to "
                         f"train on (make training histories with --split=fit)")
    return DarkroomHistoryData(
        hist,
        context_episodes=context_episodes,
        prefix_episodes=prefix_episodes,
        device=device,
        source=source,
        dropped_valid=dropped,
    )
