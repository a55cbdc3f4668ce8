"""Dark Room speed, measured side by side in one run (a benchmark, not a test).

1. Batched environment steps/s (DarkroomBatch, random actions drawn beforehand) for a
   range of batch sizes, as a ratio to one environment.
2. In-context evaluation agent-steps/s of AD (and compressed AD) stepped with the KV
   cache vs recomputing the whole window every step, same weights, same rollouts (the
   logits agree to float precision, see tests/test_ad.py), as a ratio.

    python benchmarks/bench_darkroom.py                    # about a minute on CPU
    python benchmarks/bench_darkroom.py --device=cuda --eval_envs=1024 --episodes=10
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.ad import ADAgent, ADConfig  # noqa: E402
from agents.compressed_ad import CompressedADAgent, CompressedADConfig  # noqa: E402
from envs.darkroom import DARKROOM, NUM_ACTIONS, DarkroomBatch, task_split  # noqa: E402
from envs.darkroom.dataset import DarkroomSpec  # noqa: E402
from training.cli import parse_config  # noqa: E402
from training.device import resolve_device  # noqa: E402


@dataclass(frozen=True)
class BenchConfig:
    """Sizes of the Dark Room benchmark."""

    env_sizes: tuple[int, ...] = (1, 64, 1024, 16384)
    """Batch sizes of the environment benchmark."""
    env_steps: int = 200
    """Timed environment steps per batch size (10 episodes)."""
    eval_envs: int = 128
    """Rollouts evaluated together (8 test goals x 16 seeds by default)."""
    episodes: int = 6
    """In-context episodes per timed evaluation (the window of 5 slides after 5)."""
    compressed: bool = True
    """Also time compressed AD."""
    device: str = "auto"
    """auto, cpu or cuda."""
    threads: int = 1
    """torch CPU threads."""


def sync(device: torch.device) -> None:
    """Wait for queued device work (timing only)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def env_steps_per_sec(n: int, steps: int, device: torch.device) -> float:
    """Steps/s of n batched environments (env steps, i.e. n per batch step)."""
    tasks = task_split(DARKROOM, "train")[torch.arange(n) % 73]
    env = DarkroomBatch(DARKROOM, tasks, device=device)
    actions = torch.randint(NUM_ACTIONS, (steps, n), device=device)
    env.reset()
    for t in range(DARKROOM.horizon):  # warm-up
        env.step(actions[t])
    sync(device)
    start = time.perf_counter()
    env.reset()
    for t in range(steps):
        _, _, done = env.step(actions[t])
        if done:
            env.reset()
    sync(device)
    return n * steps / (time.perf_counter() - start)


@torch.no_grad()
def agent_steps_per_sec(agent, n: int, episodes: int, kv_cache: bool,
                        device: torch.device) -> float:
    """Agent-steps/s of an in-context rollout: n envs x episodes x horizon steps."""
    env = DarkroomBatch(DARKROOM, task_split(DARKROOM, "test").repeat(n // 8 + 1, 1)[:n],
                        device=device)
    gen = torch.Generator(device).manual_seed(0)
    agent.reset_context(n, generator=gen, kv_cache=kv_cache)
    prev_a = torch.zeros(n, dtype=torch.long, device=device)
    prev_r = torch.zeros(n, device=device)
    sync(device)
    start = time.perf_counter()
    for _ in range(episodes):
        obs, done = env.reset(), False
        while not done:
            prev_a = agent.act({"obs": obs, "prev_action": prev_a, "prev_reward": prev_r})
            obs, prev_r, done = env.step(prev_a)
    sync(device)
    return n * episodes * DARKROOM.horizon / (time.perf_counter() - start)


def main() -> None:
    """Print both tables."""
    cfg = parse_config(BenchConfig, description=__doc__)
    torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    torch.manual_seed(0)
    print(f"device {device}, torch threads {cfg.threads}")

    print("\nbatched Dark Room env (random actions)")
    print(f"{'envs':>8}{'env steps/s':>16}{'vs 1 env':>12}")
    base = None
    for n in cfg.env_sizes:
        rate = env_steps_per_sec(n, cfg.env_steps, device)
        base = base or rate
        print(f"{n:>8}{rate:>16,.0f}{rate / base:>11.1f}x")

    spec = DarkroomSpec(env="darkroom", grid_size=9, horizon=20, num_actions=NUM_ACTIONS,
                        context_episodes=ADConfig().context_episodes, prefix_episodes=0,
                        history_episodes=80)
    agents = {"ad": ADAgent(ADConfig(), spec, device)}
    if cfg.compressed:
        agents["compressed_ad"] = CompressedADAgent(CompressedADConfig(), spec, device)
    print(f"\nin-context evaluation, {cfg.eval_envs} envs x {cfg.episodes} episodes x 20 steps "
          "(paper-size transformer, 4 previous episodes in view)")
    print(f"{'agent':>15}{'KV cache /s':>14}{'recompute /s':>15}{'speed-up':>10}")
    for name, agent in agents.items():
        agent_steps_per_sec(agent, cfg.eval_envs, 1, True, device)  # warm-up
        cached = agent_steps_per_sec(agent, cfg.eval_envs, cfg.episodes, True, device)
        full = agent_steps_per_sec(agent, cfg.eval_envs, cfg.episodes, False, device)
        print(f"{name:>15}{cached:>14,.0f}{full:>15,.0f}{cached / full:>9.1f}x")


if __name__ == "__main__":
    main()
