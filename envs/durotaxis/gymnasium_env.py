"""Durotaxis with the Gymnasium API: one environment (numpy) and a same-step-autoreset vector.

Both wrap the preset's engine (`make_engine`: envs/durotaxis/engine.py) and check actions
in full: the action space is {"kind": Discrete(3), "params": Box(config.param_low,
config.param_high)}, finite parameters outside the bounds are clipped, anything else
outside the space raises ValueError before any environment moves. Registered as
Durotaxis-v0 (envs/__init__.py); `gymnasium.make("Durotaxis-v0")` is the standard preset,
`gymnasium.make("Durotaxis-v0", preset="easy")` the first version's task. With
`frame_stack=K` an observation is the last K frames on the channel axis (K*C x H x W).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from envs.durotaxis.config import KIND_NAMES, PARAM_NAMES, DurotaxisConfig
from envs.durotaxis.engine import make_engine


def _action_space(config: DurotaxisConfig) -> spaces.Dict:
    low = np.array(config.param_low, np.float32)
    high = np.array(config.param_high, np.float32)
    return spaces.Dict({"kind": spaces.Discrete(3),
                        "params": spaces.Box(low, high, dtype=np.float32)})


def _gym_action(action: Any, batch: int | None,
                config: DurotaxisConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Check a Gymnasium action (one env when batch is None) and make it core tensors.

    A missing key, wrong shape or dtype, a kind outside 0..2 or a non-finite parameter
    raises ValueError; finite parameters outside the bounds are clipped to them.
    """
    if not isinstance(action, Mapping) or set(action) != {"kind", "params"}:
        got = sorted(action) if isinstance(action, Mapping) else type(action).__name__
        raise ValueError(f"Durotaxis action must be a dict of 'kind' and 'params', got {got}")
    lead = () if batch is None else (batch,)
    last = len(KIND_NAMES) - 1
    raw_kind = action["kind"]
    if isinstance(raw_kind, int) and not isinstance(raw_kind, bool) and not 0 <= raw_kind <= last:
        # Checked before numpy: an int beyond int64 would become an object array.
        raise ValueError(f"Durotaxis action 'kind' {raw_kind} is out of range 0..{last}")
    kind = np.asarray(raw_kind)
    if kind.shape != lead:
        raise ValueError(f"Durotaxis action 'kind' has shape {kind.shape}, expected {lead}")
    if kind.dtype.kind not in "iu":
        raise ValueError(f"Durotaxis action 'kind' has dtype {kind.dtype}, expected an integer")
    bad = (kind < 0) | (kind > last)
    if bad.any():
        value = np.atleast_1d(kind)[np.atleast_1d(bad)][0]
        raise ValueError(f"Durotaxis action 'kind' {value} is out of range 0..{last}")
    params = np.asarray(action["params"])
    want = (*lead, len(PARAM_NAMES))
    if params.shape != want:
        raise ValueError(f"Durotaxis action 'params' has shape {params.shape}, expected {want}")
    if params.dtype.kind not in "iuf":
        raise ValueError(
            f"Durotaxis action 'params' has dtype {params.dtype}, expected real numbers"
        )
    # float64 first: a finite float64 such as 1e300 must clip, not overflow to inf.
    params = params.astype(np.float64)
    finite = np.isfinite(params)
    if not finite.all():
        where = tuple(np.argwhere(~finite)[0])
        raise ValueError(
            f"Durotaxis action 'params' must be finite, got "
            f"{PARAM_NAMES[where[-1]]}={params[where]}"
        )
    params = np.clip(params, config.param_low, config.param_high).astype(np.float32)
    kind_t = torch.as_tensor(kind.astype(np.int64)).reshape(-1)
    return kind_t, torch.from_numpy(params).reshape(-1, len(PARAM_NAMES))


def _observation_space(config: DurotaxisConfig) -> spaces.Box:
    # With frame_stack > 1 the frames lie on the channel axis, oldest first (FrameStack).
    shape = (config.frame_stack * config.channels, config.image_size, config.image_size)
    return spaces.Box(0, 255, shape, dtype=np.uint8)


def _make_config(config: DurotaxisConfig | None, overrides: dict[str, Any]) -> DurotaxisConfig:
    # Without a config the overrides build one, so that preset="easy" fills the unset
    # settings from its own preset (replace() would keep the default preset's values).
    return DurotaxisConfig(**overrides) if config is None else replace(config, **overrides)


class DurotaxisEnv(gymnasium.Env):
    """One Durotaxis environment with the Gymnasium API (numpy in and out)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(
        self,
        config: DurotaxisConfig | None = None,
        render_mode: str | None = None,
        device: str = "cpu",
        **overrides: Any,
    ) -> None:
        self.config = _make_config(config, overrides)
        self.core = make_engine(self.config, 1, device)
        self.observation_space = _observation_space(self.config)
        self.action_space = _action_space(self.config)
        self.render_mode = render_mode

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode; seed fixes this and every later episode until the next seed."""
        super().reset(seed=seed)
        if seed is None and not self.core._seeded:
            seed = int(self.np_random.integers(0, 2**62))
        obs = self.core.reset(seed=seed)
        return obs[0].cpu().numpy(), {}

    def step(self, action: dict[str, Any]) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Apply {"kind": int, "params": 5 floats}.

        Finite params outside the bounds are clipped to them; anything else outside the
        action space (a kind not in 0..2, NaN or inf params, wrong shapes or dtypes, other
        keys) raises ValueError and leaves the state untouched.
        """
        kind, params = _gym_action(action, None, self.config)
        reward, terminated, truncated, info = self.core.step(kind, params)
        obs = self.core.observe()[0].cpu().numpy()
        info_np = {k: v[0].item() for k, v in info.items()}
        return obs, float(reward[0]), bool(terminated[0]), bool(truncated[0]), info_np

    def render(self) -> np.ndarray | None:
        """RGB view of the whole substrate when render_mode is rgb_array."""
        if self.render_mode != "rgb_array":
            return None
        return self.core.render_rgb(0)


class DurotaxisVectorEnv(gymnasium.vector.VectorEnv):
    """B Durotaxis environments with Gymnasium's vector API: same-step autoreset.

    When an env finishes, its returned observation already starts the next episode;
    the last observation of the finished one is in info["final_obs"] (rows masked by
    info["_final_obs"]) and its info in info["final_info"]. Sub-env i seeded s + i.
    """

    metadata = {"render_modes": ["rgb_array"], "autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(
        self,
        num_envs: int = 1,
        config: DurotaxisConfig | None = None,
        render_mode: str | None = None,
        device: str = "cpu",
        **overrides: Any,
    ) -> None:
        self.config = _make_config(config, overrides)
        self.num_envs = num_envs
        self.core = make_engine(self.config, num_envs, device)
        self.single_observation_space = _observation_space(self.config)
        self.single_action_space = _action_space(self.config)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.render_mode = render_mode

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset all sub-envs (sub-env i gets seed + i)."""
        self._np_random_seed = seed
        return self.core.reset(seed=seed).cpu().numpy(), {}

    def step(
        self, actions: dict[str, Any]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step all sub-envs with {"kind": (B,), "params": (B, 5)}.

        Checked like `DurotaxisEnv.step`: out-of-bounds finite params are clipped, any
        other action outside the space raises ValueError before any sub-env moves.
        """
        kind, params = _gym_action(actions, self.num_envs, self.config)
        reward, terminated, truncated, info = self.core.step(kind, params)
        done = terminated | truncated
        final_obs = self.core.observe()
        self.core.reset_where(done)
        obs = self.core.observe().cpu().numpy()
        done_np = done.cpu().numpy()
        info_np = {k: v.cpu().numpy() for k, v in info.items()}
        infos: dict[str, Any] = {}
        if done_np.any():
            infos["final_obs"] = np.where(done_np[:, None, None, None], final_obs.cpu().numpy(), 0)
            infos["_final_obs"] = done_np
            infos["final_info"] = {
                **{k: v for k, v in info_np.items()},
                **{f"_{k}": done_np for k in info_np},
            }
            infos["_final_info"] = done_np
        return (
            obs,
            reward.cpu().numpy().astype(np.float64),
            terminated.cpu().numpy(),
            truncated.cpu().numpy(),
            infos,
        )

    def render(self) -> np.ndarray | None:
        """RGB view of sub-env 0's whole substrate when render_mode is rgb_array."""
        if self.render_mode != "rgb_array":
            return None
        return self.core.render_rgb(0)
