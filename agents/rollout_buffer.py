"""PPO's rollout storage on the device: transitions, episode statistics, GAE, the flat batch.

As SB3's `RolloutBuffer`: the training loop `add`s one step of every environment at a
time, `compute_returns_and_advantage` runs GAE once the rollout is complete, and `batch`
hands the update a flat dict. When the encoders have a frozen part, the buffer stores what
that part computed in the rollout (the features with freeze_mode=all, the maps entering
the trainable blocks with until_layer3 / last_block) instead of the observations, so the
update runs only what trains. With stacked frames that is one prefix per frame
(prefix_shape frames x ...: HybridActorCritic.encode_prefix), K times the memory.
"""

from __future__ import annotations

import torch

from agents.ppo import compute_gae


class RolloutBuffer:
    """T steps x B environments of transitions, all on one device."""

    def __init__(
        self,
        num_steps: int,
        num_envs: int,
        *,
        obs_shape: tuple[int, ...],
        param_dim: int,
        prefix_shape: tuple[int, ...] | None,
        device: torch.device,
    ) -> None:
        T, B = num_steps, num_envs
        self.num_steps, self.num_envs, self.obs_shape = T, B, obs_shape
        self.reuse_prefix = prefix_shape is not None
        zeros = lambda *shape, dtype=torch.float32: torch.zeros(  # noqa: E731
            *shape, dtype=dtype, device=device
        )
        if self.reuse_prefix:
            self.prefix = zeros(T, B, *prefix_shape)
        else:
            self.observations = zeros(T, B, *obs_shape, dtype=torch.uint8)
        self.kinds = zeros(T, B, dtype=torch.long)
        self.us = zeros(T, B, param_dim)
        self.log_probs = zeros(T, B)
        self.values = zeros(T, B)
        self.rewards = zeros(T, B)
        self.dones = zeros(T, B, dtype=torch.bool)
        # Finished-episode sums, kept on the device until the iteration ends (no host sync).
        self.episode_stats = zeros(4)  # count, return, length, successes
        self.advantages: torch.Tensor | None = None
        self.returns: torch.Tensor | None = None

    def start(self) -> None:
        """A new rollout: the episode statistics start from zero."""
        self.episode_stats = torch.zeros_like(self.episode_stats)
        self.advantages = self.returns = None

    def add(
        self,
        t: int,
        obs: torch.Tensor,
        act: dict[str, torch.Tensor],
        reward: torch.Tensor,
        done: torch.Tensor,
        info: dict[str, torch.Tensor],
    ) -> None:
        """Step t of every environment: what the policy saw and did, and what came back.

        `act` is the policy's output (kind, u, log_prob, value, prefix); `info`
        carries the finished episodes' episode_return, episode_length and is_success.
        """
        if self.reuse_prefix:
            self.prefix[t] = act["prefix"]
        else:
            self.observations[t] = obs
        self.kinds[t], self.us[t], self.log_probs[t] = act["kind"], act["u"], act["log_prob"]
        self.values[t], self.rewards[t], self.dones[t] = act["value"], reward, done
        finished = torch.stack([
            done.sum().float(),
            (info["episode_return"] * done).sum().float(),
            (info["episode_length"] * done).sum().float(),
            (info["is_success"] & done).sum().float(),
        ])
        self.episode_stats += finished

    def compute_returns_and_advantage(
        self, next_value: torch.Tensor, gamma: float, gae_lambda: float
    ) -> None:
        """GAE over the complete rollout; next_value is V of the observation after it."""
        self.advantages, self.returns = compute_gae(
            self.rewards, self.values, self.dones, next_value, gamma, gae_lambda
        )

    def batch(self) -> dict[str, torch.Tensor]:
        """The rollout flattened to T*B transitions, what `ppo_update` takes."""
        assert self.advantages is not None, "compute_returns_and_advantage() first"
        n = self.num_steps * self.num_envs
        batch = {
            "kind": self.kinds.reshape(n),
            "u": self.us.reshape(n, -1),
            "log_prob": self.log_probs.reshape(n),
            "values": self.values.reshape(n),
            "advantages": self.advantages.reshape(n),
            "returns": self.returns.reshape(n),
        }
        if self.reuse_prefix:
            batch["prefix"] = self.prefix.reshape(n, *self.prefix.shape[2:])
        else:
            batch["obs"] = self.observations.reshape(n, *self.obs_shape)
        return batch
