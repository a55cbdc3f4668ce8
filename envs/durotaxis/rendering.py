"""Durotaxis pictures: an episode as a GIF and a learning curve against the baselines."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import imageio.v2 as imageio
import numpy as np
import torch

from envs.durotaxis.config import DurotaxisConfig
from envs.durotaxis.engine import DurotaxisEngine, make_engine


def episode_frame(env: DurotaxisEngine, size: int = 256) -> np.ndarray:
    """Whole substrate (left) beside the agent's newest frame, upscaled (right)."""
    obs = env.observe()[0, -1].cpu().numpy()  # newest last (frame_stack); channels are equal
    scale = max(1, size // obs.shape[0])
    view = np.zeros((size, size), np.uint8)
    big = np.kron(obs, np.ones((scale, scale), np.uint8))[:size, :size]
    view[: big.shape[0], : big.shape[1]] = big
    return np.concatenate([env.render_rgb(0, size=size), np.stack([view] * 3, axis=-1)], axis=1)


def render_episode(
    policy_act: Callable[[torch.Tensor], dict[str, Any]],
    env_cfg: DurotaxisConfig,
    seed: int,
    device: torch.device | str,
    path: Path,
) -> dict[str, float]:
    """One episode of one environment seeded `seed` saved as a GIF; its return and outcome.

    `policy_act` maps the 1 x C x H x W uint8 observation (C = frame_stack x channels)
    to a dict with "kind" (1 integer) and "params" (1 x 5), e.g.
    `partial(model.act, deterministic=True)`.
    """
    env = make_engine(env_cfg, 1, device)
    env.reset(seed=seed)
    frames, total, success = [], 0.0, False
    for _ in range(env_cfg.max_steps):
        frames.append(episode_frame(env))
        out = policy_act(env.observe())
        reward, terminated, truncated, info = env.step(out["kind"], out["params"])
        total += float(reward[0])
        success = bool(info["is_success"][0])
        if bool(terminated[0] | truncated[0]):
            break
    frames.append(episode_frame(env))
    imageio.mimsave(path, frames, duration=0.5, loop=0)
    return {"video/return": total, "video/success": float(success), "video/frames": len(frames)}


def plot_learning_curve(history: list[dict], baselines: dict[str, float], path: Path) -> None:
    """Success rate and episodic return of training episodes against environment steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, label in (
        (axes[0], "charts/success_rate", "success rate"),
        (axes[1], "charts/episodic_return", "episodic return"),
    ):
        ax.plot(steps, [h.get(key, np.nan) for h in history], label="PPO (training episodes)")
        for name, style in (("random", ":"), ("blind", "-."), ("readout", (0, (5, 1))),
                            ("privileged", "--")):
            value = baselines.get(f"eval/{name}_{key.split('/')[1]}")
            if value is not None:
                ax.axhline(value, linestyle=style, color="gray", label=f"{name} policy")
        ax.set_xlabel("environment steps")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
