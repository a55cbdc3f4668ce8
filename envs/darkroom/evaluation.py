"""The evaluation of train_bc.py's Dark Room tasks: in-context rollouts on held-out tasks.

The held-out tasks are the validation split (`goals="valid"`, `train_bc.py
--eval_goals=valid`: for every budget, learning-rate or architecture choice), the test
split (`goals="test"`, the default: final numbers only), or both in turn
(`--eval_goals=valid+test`, metrics under valid/ and test/: a study chooses on the first
and reports the second from the same runs); envs/darkroom/grids.py fixes both. Every
held-out task x `eval_seeds` streams as one batch on the device. The agent starts with an
empty context and plays `num_episodes` episodes in sequence on each task,
keeping its context across them; the return of every in-context episode is recorded on
the device and read back once at the end. Reported against the exact optimal return
and the exact expected return of the uniformly random policy.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from tqdm import tqdm

from envs.darkroom.dataset import DarkroomSpec
from envs.darkroom.env import DarkroomBatch
from envs.darkroom.grids import get_grid, optimal_returns, random_returns, task_split
from training.contracts import EvalResult

GOAL_SPLITS = ("test", "valid")
BOTH_SPLITS = "valid+test"
"""--eval_goals=valid+test: both splits at every evaluation, the numbers under `valid/` and
`test/` (choose on valid/, report test/ for the choice: one training run serves both)."""


@runtime_checkable
class InContextPolicy(Protocol):
    """What in-context rollouts need of an agent (AD and compressed AD are ones)."""

    def reset_context(self, num_envs: int, *, generator: torch.Generator | None = None) -> None:
        """Start `num_envs` empty contexts."""
        ...

    def act(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """{obs, prev_action, prev_reward} of every env -> the next actions (B)."""
        ...


class InContextEvaluator:
    """All held-out tasks x seeds in one batch, episodes in sequence, context kept throughout."""

    def __init__(self, spec: DarkroomSpec, *, device: torch.device, seed: int, eval_seeds: int,
                 plot_dir: Path | None, goals: str = "test", prefix: str = "eval") -> None:
        if goals not in GOAL_SPLITS:
            raise ValueError(f"--eval_goals={goals!r}: Dark Room evaluates on "
                             f"{' or '.join(map(repr, GOAL_SPLITS))} goals")
        self.grid = get_grid(spec.env)
        self.goals = goals
        self.prefix = prefix
        self.device = device
        self.seed = seed
        self.eval_seeds = eval_seeds
        self.plot_dir = plot_dir
        self.tasks = task_split(self.grid, goals)
        self.optimal = float(optimal_returns(self.grid, self.tasks).mean())
        self.random = float(random_returns(self.grid, self.tasks).mean())
        self.calls = 0

    @torch.no_grad()
    def rollout(self, agent: InContextPolicy, num_episodes: int) -> torch.Tensor:
        """Returns of every in-context episode: episodes x held-out tasks x seeds (host)."""
        n_tasks = len(self.tasks)
        tasks = self.tasks.repeat_interleave(self.eval_seeds, 0)
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

    def run(self, agent: object, num_episodes: int) -> EvalResult:
        """Roll out, then summarise: metrics, the return curve (PNG) and its numbers (JSON)."""
        if not isinstance(agent, InContextPolicy):
            # Stage-1 compressed-AD pretraining has no policy to roll out.
            tqdm.write(f"{type(agent).__name__} does not act in context: no evaluation")
            return EvalResult({})
        returns = self.rollout(agent, num_episodes)
        per_task = returns.mean(2)  # episodes x tasks
        curve = per_task.mean(1)
        last = curve[-1].item()
        tail = max(1, num_episodes // 10)
        metrics = {
            "return": last,
            "return_first_episode": curve[0].item(),
            f"return_last_{tail}_episodes": curve[-tail:].mean().item(),
            "return_mean_over_episodes": curve.mean().item(),
            "return_std_over_tasks": per_task[-1].std().item(),
            "optimal_return": self.optimal,
            "random_return": self.random,
            "normalized_return": (last - self.random) / (self.optimal - self.random),
            "in_context_episodes": float(num_episodes),
        }
        metrics = {f"{self.prefix}/{key}": value for key, value in metrics.items()}
        plots = self._write_curve(curve.numpy(), per_task.numpy())
        self.calls += 1
        return EvalResult(metrics, plots=tuple(plots))

    def _write_curve(self, curve: np.ndarray, per_task: np.ndarray) -> list[Path]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        plot_dir = self.plot_dir or Path(tempfile.mkdtemp(prefix="darkroom_eval_"))
        plot_dir.mkdir(parents=True, exist_ok=True)
        episodes = np.arange(1, len(curve) + 1)
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(episodes, curve, label=f"agent (mean over {self.goals} tasks)")
        ax.axhline(self.optimal, color="k", ls="--", label=f"optimal {self.optimal:.2f}")
        ax.axhline(self.random, color="r", ls=":", label=f"random {self.random:.2f}")
        ax.set_xlabel("in-context episode")
        ax.set_ylabel("return")
        ax.set_title(f"{self.grid.name}: {per_task.shape[1]} {self.goals} tasks x "
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
            "goals": self.goals,
            "tasks": self.tasks.tolist(),
            "optimal_return": self.optimal,
            "random_return": self.random,
        }))
        return [png]

    def close(self) -> None:
        """Nothing to release (no worker processes)."""


class BothSplitsEvaluator:
    """--eval_goals=valid+test: the validation and the test goals, one after the other."""

    def __init__(self, splits: list[InContextEvaluator]) -> None:
        self.splits = splits

    def run(self, agent: object, num_episodes: int) -> EvalResult:
        """Each split's metrics under its own name (valid/..., test/...), plots of both."""
        metrics, plots = {}, []
        for evaluator in self.splits:
            result = evaluator.run(agent, num_episodes)
            metrics.update(result.metrics)
            plots.extend(result.plots)
        return EvalResult(metrics, plots=tuple(plots))

    def close(self) -> None:
        """Nothing to release (no worker processes)."""


def make_evaluator(spec: DarkroomSpec, *, device: torch.device, seed: int, num_workers: int,
                   video_dir: Path | None, env: str = "darkroom", eval_seeds: int = 16,
                   goals: str = "test") -> InContextEvaluator | BothSplitsEvaluator:
    """In-context evaluation on the held-out `goals` ("test", "valid" or "valid+test";
    num_workers is unused: one batch per split)."""
    if spec.env != env:
        raise ValueError(f"data is {spec.env} but the task is {env}")
    plot_dir = None if video_dir is None else Path(video_dir)
    if goals != BOTH_SPLITS:
        return InContextEvaluator(spec, device=device, seed=seed, eval_seeds=eval_seeds,
                                  plot_dir=plot_dir, goals=goals)
    return BothSplitsEvaluator([
        InContextEvaluator(spec, device=device, seed=seed, eval_seeds=eval_seeds,
                           plot_dir=None if plot_dir is None else plot_dir / split,
                           goals=split, prefix=split)
        for split in ("valid", "test")
    ])
