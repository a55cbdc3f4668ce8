"""Learning histories for Algorithm Distillation: many tabular Q-learners at once.

Each history is one independent learner on one training task, recorded from its first
episode (no knowledge, near-random return) to its last (near-optimal return). All
learners run as one batch on the device: a Q-table per learner (learners x states x
actions), epsilon-greedy actions with random tie-breaking, one-step Q-learning after
every step plus a backward sweep over the episode at its end (so a reward found once
reaches the start of the path in one episode instead of one cell per episode), and
optimistic initial values that make early exploration systematic rather than a random
walk. The learner sees the hidden reward phase (key held, goal paid) so that its table is
Markov; the transformer trained on the histories sees only (x, y), actions and rewards.

Saved as a compressed .npz (no pickle): obs (L x T x 2, uint8), actions (L x T, uint8),
rewards (L x T, uint8), tasks (L x D, int16), episode_returns (L x E, float32) and
meta_json (a JSON string with the environment, learner settings, seed and summary), where
L histories, E episodes each, T = E x horizon steps.

    python -m envs.darkroom.histories --env=darkroom --out=runs/darkroom_histories.npz
"""

from __future__ import annotations

import dataclasses
import json
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from envs.darkroom.env import DarkroomBatch
from envs.darkroom.grids import (
    NUM_ACTIONS,
    GridSpec,
    get_grid,
    optimal_returns,
    random_returns,
    task_split,
)

FORMAT = "darkroom-histories-v1"


@dataclass(frozen=True)
class QLearningConfig:
    """The source learner's settings."""

    alpha: float = 0.5
    """Q-learning step size."""
    gamma: float = 0.9
    """Discount."""
    q_init: float = 5.0
    """Initial Q-value of every state-action (optimism drives early exploration)."""
    epsilon_start: float = 0.3
    """Random-action probability in the first episode."""
    epsilon_decay: float = 0.9
    """Factor applied to epsilon after every episode."""
    epsilon_final: float = 0.0
    """Floor of epsilon."""
    episode_replay: bool = True
    """Replay each finished episode backwards once (propagates a found reward at once)."""


@dataclass(frozen=True)
class HistoriesConfig:
    """`python -m envs.darkroom.histories`: generate learning histories for one variant."""

    env: str = "darkroom"
    """Variant: darkroom, darkroom-hard or dark-key-to-door."""
    out: str = "runs/darkroom_histories.npz"
    """Where to write the dataset (.npz)."""
    plot: str | None = None
    """Where to write the return-curve PNG (default: next to --out, .png)."""
    split: str = "fit"
    """Tasks to learn: "fit" (the training tasks less the validation ones) for AD data;
    "valid" or "test" only to measure the source algorithm on held-out tasks (training
    drops validation histories and refuses test ones; "train" = fit + valid)."""
    histories_per_task: int = 28
    """Independent learners (histories) per task."""
    max_tasks: int = 0
    """Use a seeded subset of this many training tasks (0: all of them)."""
    episodes: int = 80
    """Episodes per history."""
    learner: QLearningConfig = field(default_factory=QLearningConfig)
    """Source learner settings."""
    seed: int = 0
    """Seed of the learners' randomness and of the task subset."""
    device: str = "auto"
    """auto, cpu or cuda."""
    progress: bool = True
    """Show a progress bar."""

    @property
    def plot_path(self) -> Path:
        """The PNG path actually used."""
        return Path(self.plot) if self.plot else Path(self.out).with_suffix(".png")


# Settings that reach near-optimal return within each history (measured, see docs/darkroom.md).
DEFAULT_CONFIGS: dict[str, HistoriesConfig] = {
    "darkroom": HistoriesConfig(),
    "darkroom-hard": HistoriesConfig(
        env="darkroom-hard",
        out="runs/darkroom-hard_histories.npz",
        histories_per_task=8,
        episodes=240,
        learner=QLearningConfig(alpha=1.0, gamma=0.98, q_init=1.0),
    ),
    "dark-key-to-door": HistoriesConfig(
        env="dark-key-to-door",
        out="runs/dark-key-to-door_histories.npz",
        histories_per_task=1,
        max_tasks=2048,
        episodes=160,
        learner=QLearningConfig(gamma=0.9, q_init=0.5),
    ),
}


def default_config(env: str) -> HistoriesConfig:
    """The tuned defaults of a variant."""
    get_grid(env)
    return DEFAULT_CONFIGS[env]


@dataclass
class Histories:
    """A set of learning histories in host memory (numpy), with their metadata."""

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    tasks: np.ndarray
    episode_returns: np.ndarray
    meta: dict

    @property
    def grid(self) -> GridSpec:
        """The variant the histories were recorded on."""
        return get_grid(self.meta["env"])


def history_tasks(cfg: HistoriesConfig) -> torch.Tensor:
    """The task of every history: each chosen task, histories_per_task times."""
    grid = get_grid(cfg.env)
    tasks = task_split(grid, cfg.split)
    if cfg.max_tasks and cfg.max_tasks < len(tasks):
        gen = torch.Generator().manual_seed(cfg.seed)
        tasks = tasks[torch.randperm(len(tasks), generator=gen)[: cfg.max_tasks]]
    return tasks.repeat(cfg.histories_per_task, 1)


@torch.no_grad()
def generate_histories(cfg: HistoriesConfig, device: torch.device) -> Histories:
    """Run every learner for cfg.episodes episodes on `device` and record everything."""
    if cfg.histories_per_task < 1 or cfg.episodes < 1:
        raise ValueError("histories_per_task and episodes must be at least 1")
    grid = get_grid(cfg.env)
    lc = cfg.learner
    tasks = history_tasks(cfg)
    n, h = len(tasks), grid.horizon
    gen = torch.Generator(device).manual_seed(cfg.seed)
    env = DarkroomBatch(grid, tasks, device=device, generator=gen)
    q = torch.full((n, env.num_markov_states, NUM_ACTIONS), lc.q_init, device=device)
    rows = torch.arange(n, device=device)
    obs = torch.zeros(n, cfg.episodes * h, 2, dtype=torch.uint8, device=device)
    actions = torch.zeros(n, cfg.episodes * h, dtype=torch.uint8, device=device)
    rewards = torch.zeros(n, cfg.episodes * h, dtype=torch.uint8, device=device)
    returns = torch.zeros(n, cfg.episodes, device=device)
    ep_states = torch.zeros(h + 1, n, dtype=torch.long, device=device)
    ep_actions = torch.zeros(h, n, dtype=torch.long, device=device)
    ep_rewards = torch.zeros(h, n, device=device)

    def learn(s: torch.Tensor, a: torch.Tensor, r: torch.Tensor, s2: torch.Tensor) -> None:
        # Fixed horizon, time not in the state: the last step bootstraps like any other.
        target = r + lc.gamma * q[rows, s2].max(1).values
        q[rows, s, a] += lc.alpha * (target - q[rows, s, a])

    epsilon = lc.epsilon_start
    for episode in tqdm(range(cfg.episodes), desc=f"{cfg.env} histories",
                        disable=not cfg.progress, unit="ep"):
        o = env.reset()
        ep_states[0] = env.markov_state()
        for t in range(h):
            step = episode * h + t
            s = ep_states[t]
            values = q[rows, s]
            # Tiny noise breaks ties at random (untouched actions all share q_init).
            noise = torch.rand(values.shape, device=device, generator=gen) * 1e-6
            greedy = (values + noise).argmax(1)
            explore = torch.rand(n, device=device, generator=gen) < epsilon
            random_a = torch.randint(NUM_ACTIONS, (n,), device=device, generator=gen)
            a = torch.where(explore, random_a, greedy)
            obs[:, step] = o.to(torch.uint8)
            actions[:, step] = a.to(torch.uint8)
            o, r, _ = env.step(a)
            rewards[:, step] = r.to(torch.uint8)
            returns[:, episode] += r
            ep_states[t + 1] = env.markov_state()
            ep_actions[t], ep_rewards[t] = a, r
            learn(s, a, r, ep_states[t + 1])
        if lc.episode_replay:
            for t in reversed(range(h)):
                learn(ep_states[t], ep_actions[t], ep_rewards[t], ep_states[t + 1])
        epsilon = max(lc.epsilon_final, epsilon * lc.epsilon_decay)

    returns_np = returns.cpu().numpy()
    optimal = optimal_returns(grid, tasks).numpy()
    random = random_returns(grid, tasks).numpy()
    tail = max(1, cfg.episodes // 10)
    meta = {
        "format": FORMAT,
        "env": grid.name,
        "size": grid.size,
        "horizon": grid.horizon,
        "num_actions": NUM_ACTIONS,
        "episodes": cfg.episodes,
        "num_histories": n,
        "source": "batched tabular Q-learning (envs/darkroom/histories.py)",
        "config": dataclasses.asdict(cfg),
        "test_tasks": task_split(grid, "test").tolist(),
        "valid_tasks": task_split(grid, "valid").tolist(),
        "summary": {
            "first_episode_return": float(returns_np[:, 0].mean()),
            f"last_{tail}_episodes_return": float(returns_np[:, -tail:].mean()),
            "optimal_return": float(optimal.mean()),
            "random_return": float(random.mean()),
        },
    }
    return Histories(
        obs=obs.cpu().numpy(),
        actions=actions.cpu().numpy(),
        rewards=rewards.cpu().numpy(),
        tasks=tasks.numpy().astype(np.int16),
        episode_returns=returns_np.astype(np.float32),
        meta=meta,
    )


def save_histories(path: str | Path, hist: Histories) -> Path:
    """Write the histories as a compressed .npz (atomically: temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez_compressed(
        tmp,
        obs=hist.obs,
        actions=hist.actions,
        rewards=hist.rewards,
        tasks=hist.tasks,
        episode_returns=hist.episode_returns,
        meta_json=np.array(json.dumps(hist.meta)),
    )
    tmp.replace(path)
    return path


def load_histories(path: str | Path) -> Histories:
    """Read histories written by save_histories (no pickle), checking their format."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"histories file {path} does not exist; make one with python -m envs.darkroom.histories"
        )
    if not zipfile.is_zipfile(path):  # np.load would take it for a pickle (and refuse it)
        raise ValueError(
            f"{path} is not a .npz (zip) file; make histories with python -m "
            f"envs.darkroom.histories"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as err:  # a damaged zip, or an object array (pickle refused)
        reason = (str(err).strip().splitlines() or [""])[0][:200]
        raise ValueError(
            f"{path} is not a readable .npz file ({type(err).__name__}: {reason}); make "
            f"histories with python -m envs.darkroom.histories"
        ) from None
    needed = ("obs", "actions", "rewards", "tasks", "episode_returns", "meta_json")
    missing = [k for k in needed if k not in arrays]
    if missing:
        raise ValueError(
            f"{path} is not a Dark Room histories file: missing {', '.join(missing)}; make "
            f"one with python -m envs.darkroom.histories"
        )
    try:
        meta = json.loads(str(arrays["meta_json"]))
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}: its meta_json is not JSON ({err}); make the file again with "
            f"python -m envs.darkroom.histories"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(
            f"{path} has format {found!r}, expected {FORMAT!r}; make it again with "
            f"python -m envs.darkroom.histories"
        )
    _check_values(path, arrays, meta)
    return Histories(
        obs=arrays["obs"],
        actions=arrays["actions"],
        rewards=arrays["rewards"],
        tasks=arrays["tasks"],
        episode_returns=arrays["episode_returns"],
        meta=meta,
    )


def _check_values(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Refuse data a learner cannot have produced, naming the key and first bad index."""
    try:
        grid = get_grid(meta.get("env", ""))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    if len(arrays["obs"]) == 0:
        raise ValueError(f"{path} holds no histories (0 learners); make it again")
    ranges = {
        "obs": (0, grid.size - 1),
        "actions": (0, NUM_ACTIONS - 1),
        "rewards": (0.0, 1.0),
    }
    for key, (low, high) in ranges.items():
        values = arrays[key]
        bad = ~np.isfinite(values) if values.dtype.kind == "f" else np.zeros(values.shape, bool)
        bad |= (values < low) | (values > high)
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"{path}: {key}{list(index)} = {values[index]} is out of range for "
                f"{grid.name} (allowed {low}..{high}); the file is not a learner's history"
            )


def plot_history_returns(hist: Histories, path: str | Path) -> Path:
    """PNG of the source learners' return per episode (mean and quartiles)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    returns = hist.episode_returns
    episodes = np.arange(1, returns.shape[1] + 1)
    summary = hist.meta["summary"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(episodes, returns.mean(0), label="Q-learning (mean)")
    ax.fill_between(episodes, *np.percentile(returns, [25, 75], axis=0), alpha=0.25,
                    label="25-75%")
    ax.axhline(summary["optimal_return"], color="k", ls="--", label="optimal")
    ax.axhline(summary["random_return"], color="r", ls=":", label="random")
    ax.set_xlabel("episode of the learning history")
    ax.set_ylabel("return")
    ax.set_title(f"{hist.meta['env']}: {hist.meta['num_histories']} source learners")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(args: list[str] | None = None) -> None:
    """CLI: pick the variant's defaults from --env, then parse the rest over them."""
    from training.cli import parse_config, pop_flag
    from training.device import resolve_device

    args = list(sys.argv[1:] if args is None else args)
    env, _ = pop_flag(list(args), "--env")
    cfg = parse_config(HistoriesConfig, args, description=__doc__,
                       default=default_config(env or "darkroom"))
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    device = resolve_device(cfg.device)
    hist = generate_histories(cfg, device)
    out = save_histories(cfg.out, hist)
    plot = plot_history_returns(hist, cfg.plot_path)
    s = hist.meta["summary"]
    print(f"wrote {out} ({hist.meta['num_histories']} histories x {hist.meta['episodes']} "
          f"episodes) and {plot}")
    print("return: " + ", ".join(f"{k} {v:.3f}" for k, v in s.items()))


if __name__ == "__main__":
    main()
