"""Update speed with the frozen-prefix cache vs re-running the body, side by side in one run.

For until_layer3 and last_block, in PPO (an update epoch over one rollout) and in fbc (a
gradient step on Lift-shaped batches): the same model and batches, once with the rollout's
or the dataset's frozen-prefix output (only the trainable blocks run) and once from the
images (the whole body runs). Interleaved in rounds so that other load hits both alike;
the medians and their ratio are printed.

    python benchmarks/bench_prefix_cache.py --threads 2
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.fbc import FBCAgent, FBCConfig  # noqa: E402
from agents.hybrid_actor_critic import HybridActorCritic, HybridActorCriticConfig  # noqa: E402
from agents.ppo import PPOConfig, ppo_update  # noqa: E402
from benchmarks.bench_gpu_paths import SyntheticLiftData  # noqa: E402
from encoders import EncoderConfig  # noqa: E402
from train_ppo import DUROTAXIS_ACTION  # noqa: E402
from training.cli import parse_config  # noqa: E402
from training.device import resolve_device  # noqa: E402


@dataclass(frozen=True)
class BenchConfig:
    """Prefix cache vs full body, per freeze mode and workload."""

    modes: tuple[str, ...] = ("until_layer3", "last_block")
    """Freeze modes to measure."""
    ppo_transitions: int = 256
    """Transitions in the PPO rollout (64 x 64 observations, ResNet-18)."""
    ppo_minibatches: int = 4
    """Minibatches per PPO epoch."""
    fbc_batch: int = 32
    """fbc batch size (two 84 x 84 cameras)."""
    fbc_frames: int = 256
    """Frames in the synthetic Lift data (all cached once for the cached run)."""
    steps: int = 3
    """Timed PPO epochs / fbc steps per round."""
    rounds: int = 3
    """Rounds (the median is reported)."""
    threads: int = 0
    """torch CPU threads (0: torch's default)."""
    device: str = "auto"
    """auto | cpu | cuda."""


def timed(fn, steps: int, device: torch.device) -> float:
    """Seconds per call of fn, synchronised on CUDA."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / steps


def ppo_pair(cfg: BenchConfig, mode: str, device: torch.device) -> dict[str, callable]:
    """One PPO epoch over a rollout, from the images and from the cached prefix."""
    enc = EncoderConfig(weights="random", input_adapter="repeat3", freeze_mode=mode)
    torch.manual_seed(0)
    model = HybridActorCritic(enc, (1, 64, 64), HybridActorCriticConfig(),
                              action=DUROTAXIS_ACTION).to(device).eval()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    n = cfg.ppo_transitions
    obs = torch.randint(0, 256, (n, 1, 64, 64), dtype=torch.uint8, device=device)
    out = model.act(obs)
    batch = {"kind": out["kind"], "u": out["u"], "log_prob": out["log_prob"],
             "values": out["value"], "advantages": torch.randn(n, device=device),
             "returns": torch.randn(n, device=device)}
    ppo = PPOConfig(num_envs=n, num_steps=1, num_minibatches=cfg.ppo_minibatches,
                    update_epochs=1)
    gen = torch.Generator().manual_seed(0)
    return {
        "full body": lambda: ppo_update(model, optimizer, {**batch, "obs": obs}, ppo, gen),
        "prefix cache": lambda: ppo_update(model, optimizer, {**batch, "prefix": out["prefix"]},
                                           ppo, gen),
    }


def fbc_pair(cfg: BenchConfig, mode: str, device: torch.device) -> dict[str, callable]:
    """One fbc gradient step, from the images and from the cached prefix."""
    data = SyntheticLiftData(cfg.fbc_frames, device)
    agent_cfg = FBCConfig(encoder=EncoderConfig(weights="random", freeze_mode=mode), ema=False)
    torch.manual_seed(0)
    agent = FBCAgent(agent_cfg, data.spec, device)
    cached = agent.prepare(data)
    g1 = torch.Generator(device=device).manual_seed(0)
    g2 = torch.Generator(device=device).manual_seed(0)
    return {
        "full body": lambda: agent.update(data.batch(data.sample_indices(cfg.fbc_batch, g1))),
        "prefix cache": lambda: agent.update(
            cached.batch(cached.sample_indices(cfg.fbc_batch, g2))),
    }


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(BenchConfig, argv, description=__doc__)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    print(f"device {device}, {torch.get_num_threads()} threads; medians of {cfg.rounds} rounds")
    print("| workload | freeze_mode | full body, updates/s | prefix cache, updates/s | ratio |")
    print("|---|---|---|---|---|")
    for workload, make in (("PPO epoch", ppo_pair), ("fbc step", fbc_pair)):
        for mode in cfg.modes:
            fns = make(cfg, mode, device)
            for fn in fns.values():  # warm-up
                fn()
            times: dict[str, list[float]] = {k: [] for k in fns}
            for _ in range(cfg.rounds):
                for name, fn in fns.items():
                    times[name].append(timed(fn, cfg.steps, device))
            full, cache = (1 / statistics.median(times[k]) for k in ("full body", "prefix cache"))
            print(f"| {workload} | {mode} | {full:.2f} | {cache:.2f} | {cache / full:.1f}x |",
                  flush=True)


if __name__ == "__main__":
    main()
