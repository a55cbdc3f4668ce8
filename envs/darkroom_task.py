"""The Dark Room tasks of train_bc.py: learning-history data and in-context evaluation.

Data: episode-aligned windows of the source learners' histories. A window is the
`context_episodes + 1` episodes an AD transformer sees, preceded by up to
`compressed_episodes` older ones for compressed-context AD (zero-padded where the
history has not started yet; "prefix_episodes" says how many are real).

Evaluation: every held-out task x `eval_seeds` streams as one batch on the device. The
agent starts with an empty context and plays `num_episodes` episodes in sequence on each
task, keeping its context across them; the return of every in-context episode is
recorded on the device and read back once at the end. Reported against the exact
optimal return and the exact expected return of the uniformly random policy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from envs.darkroom import (
    NUM_ACTIONS,
    DarkroomBatch,
    get_grid,
    optimal_returns,
    random_returns,
    task_split,
)
from envs.darkroom_histories import (
    Histories,
    default_config,
    generate_histories,
    load_histories,
    plot_history_returns,
    save_histories,
)


class DarkroomHistoryData:
    """Learning histories on the device, sampled as episode-aligned windows."""

    def __init__(self, hist: Histories, *, context_episodes: int, prefix_episodes: int,
                 device: torch.device, source: str) -> None:
        grid = hist.grid
        self.grid = grid
        self.source = source
        self.meta = hist.meta
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
        self.spec = {
            "env": grid.name,
            "grid_size": grid.size,
            "horizon": grid.horizon,
            "num_actions": NUM_ACTIONS,
            "context_episodes": context_episodes,
            "prefix_episodes": prefix_episodes,
            "history_episodes": self.episodes,
        }

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
            f"({self.meta['source']}); source return {s['first_episode_return']:.2f} in the "
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


def make_data(dataset: str | None, agent_cfg, *, device: torch.device, seed: int,
              cache_dir: Path, env: str = "darkroom", **options) -> DarkroomHistoryData:
    """Histories for `env` as windows sized by the agent's context (see module docstring)."""
    if not hasattr(agent_cfg, "context_episodes"):
        raise ValueError(
            f"{type(agent_cfg).__name__} has no context_episodes: Dark Room tasks train "
            f"in-context agents (ad, compressed_ad, compressed_ad_pretrain)"
        )
    hist, source = _histories_for(env, dataset, cache_dir, device)
    test = {tuple(t) for t in task_split(get_grid(env), "test").tolist()}
    leaked = sum(tuple(t) in test for t in hist.tasks.tolist())
    if leaked:
        raise ValueError(f"{source} has {leaked} histories on held-out test tasks")
    return DarkroomHistoryData(
        hist,
        context_episodes=agent_cfg.context_episodes,
        prefix_episodes=getattr(agent_cfg, "compressed_episodes", 0),
        device=device,
        source=source,
    )


class InContextEvaluator:
    """All test tasks x seeds in one batch, episodes in sequence, context kept throughout."""

    def __init__(self, spec: dict, *, device: torch.device, seed: int, eval_seeds: int,
                 plot_dir: Path | None) -> None:
        self.grid = get_grid(spec["env"])
        self.device = device
        self.seed = seed
        self.eval_seeds = eval_seeds
        self.plot_dir = plot_dir
        self.test_tasks = task_split(self.grid, "test")
        self.optimal = float(optimal_returns(self.grid, self.test_tasks).mean())
        self.random = float(random_returns(self.grid, self.test_tasks).mean())
        self.calls = 0

    @torch.no_grad()
    def rollout(self, agent, num_episodes: int) -> torch.Tensor:
        """Returns of every in-context episode: episodes x test tasks x seeds (on the host)."""
        n_tasks = len(self.test_tasks)
        tasks = self.test_tasks.repeat_interleave(self.eval_seeds, 0)
        n = len(tasks)
        env_gen = torch.Generator(self.device).manual_seed(self.seed)
        act_gen = torch.Generator(self.device).manual_seed(self.seed + 1)
        env = DarkroomBatch(self.grid, tasks, device=self.device, generator=env_gen)
        agent.reset_context(n, generator=act_gen)
        returns = torch.zeros(num_episodes, n, device=self.device)
        prev_action = torch.zeros(n, dtype=torch.long, device=self.device)
        prev_reward = torch.zeros(n, device=self.device)
        for episode in range(num_episodes):
            obs = env.reset()
            done = False
            while not done:
                prev_action = agent.act(
                    {"obs": obs, "prev_action": prev_action, "prev_reward": prev_reward}
                )
                obs, prev_reward, done = env.step(prev_action)
                returns[episode] += prev_reward
        return returns.cpu().view(num_episodes, n_tasks, self.eval_seeds)

    def run(self, agent, num_episodes: int) -> dict:
        """Roll out, then summarise: metrics, the return curve (PNG) and its numbers (JSON)."""
        if not hasattr(agent, "reset_context"):
            # Stage-1 compressed-AD pretraining has no policy to roll out.
            tqdm.write(f"{type(agent).__name__} does not act in context: no evaluation")
            return {"metrics": {}, "video": None, "plots": []}
        returns = self.rollout(agent, num_episodes)
        per_task = returns.mean(2)  # episodes x tasks
        curve = per_task.mean(1)
        last = curve[-1].item()
        tail = max(1, num_episodes // 10)
        metrics = {
            "eval/return": last,
            "eval/return_first_episode": curve[0].item(),
            f"eval/return_last_{tail}_episodes": curve[-tail:].mean().item(),
            "eval/return_mean_over_episodes": curve.mean().item(),
            "eval/return_std_over_tasks": per_task[-1].std().item(),
            "eval/optimal_return": self.optimal,
            "eval/random_return": self.random,
            "eval/normalized_return": (last - self.random) / (self.optimal - self.random),
            "eval/in_context_episodes": float(num_episodes),
        }
        plots = self._write_curve(curve.numpy(), per_task.numpy())
        self.calls += 1
        return {"metrics": metrics, "video": None, "plots": plots}

    def _write_curve(self, curve: np.ndarray, per_task: np.ndarray) -> list[Path]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        plot_dir = self.plot_dir or Path(tempfile.mkdtemp(prefix="darkroom_eval_"))
        plot_dir.mkdir(parents=True, exist_ok=True)
        episodes = np.arange(1, len(curve) + 1)
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(episodes, curve, label="agent (mean over test tasks)")
        ax.axhline(self.optimal, color="k", ls="--", label=f"optimal {self.optimal:.2f}")
        ax.axhline(self.random, color="r", ls=":", label=f"random {self.random:.2f}")
        ax.set_xlabel("in-context episode")
        ax.set_ylabel("return")
        ax.set_title(f"{self.grid.name}: {per_task.shape[1]} held-out tasks x "
                     f"{self.eval_seeds} seeds")
        ax.legend()
        fig.tight_layout()
        # One folder per evaluation (never reusing one, e.g. after --resume), one file name
        # throughout: the logger keys images by file stem.
        while (plot_dir / f"eval_{self.calls:03d}").exists():
            self.calls += 1
        out = plot_dir / f"eval_{self.calls:03d}"
        out.mkdir(parents=True)
        png = out / "in_context_return.png"
        fig.savefig(png, dpi=100)
        plt.close(fig)
        (out / "in_context_return.json").write_text(json.dumps({
            "return_per_episode": curve.tolist(),
            "return_per_episode_per_task": per_task.T.tolist(),
            "test_tasks": self.test_tasks.tolist(),
            "optimal_return": self.optimal,
            "random_return": self.random,
        }))
        return [png]

    def close(self) -> None:
        """Nothing to release (no worker processes)."""


def make_evaluator(spec: dict, *, device: torch.device, seed: int, num_workers: int,
                   video_dir: Path | None, env: str = "darkroom", eval_seeds: int = 16,
                   **options) -> InContextEvaluator:
    """In-context evaluation on the held-out tasks (num_workers is unused: one batch)."""
    if spec["env"] != env:
        raise ValueError(f"data is {spec['env']} but the task is {env}")
    return InContextEvaluator(spec, device=device, seed=seed, eval_seeds=eval_seeds,
                              plot_dir=None if video_dir is None else Path(video_dir))
