"""Durotaxis speed, measured side by side in one run (a benchmark, not a test).

1. The batched environment's steps/s (step + same-step autoreset + render) for
   B = 1 .. 4096 environments, random actions drawn beforehand, for each preset side by
   side (easy is the first version's engine), with the time per environment step: it
   must not grow with B.
2. PPO end-to-end environment steps/s (rollout + update, no evaluation) of
   train_ppo.py for freeze_mode=none, freeze_mode=all re-running the frozen backbone in
   the update, and freeze_mode=all reusing the rollout's features, as ratios.

    python benchmarks/bench_durotaxis.py --threads=1           # a few minutes on CPU
    python benchmarks/bench_durotaxis.py --device=cuda --ppo_envs=64 --ppo_steps=128
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train_ppo  # noqa: E402
from envs.durotaxis import DurotaxisConfig, random_policy  # noqa: E402
from envs.durotaxis.engine import make_engine  # noqa: E402
from training.cli import parse_config  # noqa: E402
from training.device import resolve_device  # noqa: E402


@dataclass(frozen=True)
class BenchConfig:
    """Sizes of the Durotaxis benchmark."""

    env_sizes: tuple[int, ...] = (1, 4, 16, 64, 256, 1024, 4096)
    """Batch sizes B of the environment benchmark."""
    env_steps: int = 20
    """Timed steps per batch size (after 2 warm-up steps)."""
    image_size: int = 64
    """Observation side in pixels (environment and PPO)."""
    ppo_envs: int = 8
    """num_envs of the PPO runs."""
    ppo_steps: int = 32
    """num_steps of the PPO runs."""
    ppo_iterations: int = 2
    """Rollout + update rounds per PPO run."""
    ppo_modes: tuple[str, ...] = ("none", "all:rerun", "all:reuse")
    """PPO runs: freeze_mode, with :rerun / :reuse for the frozen features."""
    presets: tuple[str, ...] = ("easy", "standard", "hard")
    """Environment presets of the environment benchmark (PPO runs use the first non-easy)."""
    device: str = "auto"
    """auto | cpu | cuda."""
    threads: int = 0
    """torch CPU threads (0: torch's default)."""


def env_steps_per_second(config: DurotaxisConfig, num_envs: int, steps: int, device) -> float:
    """Steps/s of the engine's autoreset_step (all envs counted) with random actions."""
    env = make_engine(config, num_envs, device)
    env.reset(seed=0)
    gen = torch.Generator(device=device).manual_seed(0)
    actions = [random_policy(env, gen) for _ in range(steps + 2)]
    for kind, params in actions[:2]:
        env.autoreset_step(kind, params)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for kind, params in actions[2:]:
        env.autoreset_step(kind, params)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return num_envs * steps / (time.perf_counter() - start)


def ppo_steps_per_second(cfg: BenchConfig, mode: str, out_dir: Path) -> float:
    """perf/sps of a short train_ppo run (no evaluation, no video)."""
    freeze_mode, _, features = mode.partition(":")
    args = [
        f"--backbone.freeze_mode={freeze_mode}",
        "--backbone.weights=random",
        f"--reuse_features={features != 'rerun'}",
        f"--env.image_size={cfg.image_size}",
        f"--env.preset={next((p for p in cfg.presets if p != 'easy'), 'easy')}",
        f"--ppo.num_envs={cfg.ppo_envs}",
        f"--ppo.num_steps={cfg.ppo_steps}",
        f"--ppo.total_timesteps={cfg.ppo_envs * cfg.ppo_steps * cfg.ppo_iterations}",
        f"--device={cfg.device}",
        f"--threads={cfg.threads}",
        "--eval_episodes=0",
        "--video=False",
        "--wandb.mode=disabled",
        f"--output_dir={out_dir / mode.replace(':', '_')}",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return train_ppo.main(args)["perf/sps"]


def main() -> None:
    """Run both benchmarks and print the tables."""
    cfg = parse_config(BenchConfig, description=__doc__)
    device = resolve_device(cfg.device)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    print(f"device {device}, torch threads {torch.get_num_threads()}, image {cfg.image_size}px")

    print("\nbatched env: steps/s (step + autoreset + render, all envs counted) and "
          "microseconds per env step")
    print(f"{'B':>6}" + "".join(f"{p + ' steps/s':>20}{'us/step':>9}" for p in cfg.presets))
    for b in cfg.env_sizes:
        row = f"{b:>6}"
        for preset in cfg.presets:
            config = DurotaxisConfig(preset=preset, image_size=cfg.image_size)
            sps = env_steps_per_second(config, b, cfg.env_steps, device)
            row += f"{sps:>20,.0f}{1e6 / sps:>9.2f}"
        print(row, flush=True)

    print(
        f"\nPPO end to end: env steps/s (num_envs={cfg.ppo_envs}, num_steps={cfg.ppo_steps}, "
        f"{cfg.ppo_iterations} iterations, resnet18)"
    )
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in cfg.ppo_modes:
            results[mode] = ppo_steps_per_second(cfg, mode, Path(tmp))
    if not results:
        return
    first = next(iter(results.values()))
    print(f"{'mode':<14}{'steps/s':>12}{f'vs {cfg.ppo_modes[0]}':>14}")
    for mode, sps in results.items():
        print(f"{mode:<14}{sps:>12,.1f}{sps / first:>13.2f}x")
    if "all:rerun" in results and "all:reuse" in results:
        ratio = results["all:reuse"] / results["all:rerun"]
        print(f"feature reuse speed-up with freeze_mode=all: {ratio:.2f}x")


if __name__ == "__main__":
    main()
