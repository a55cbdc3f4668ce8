"""The frames and labels `encoders.pretrain` regresses on: Lift demos and Durotaxis rollouts.

Each task function returns a `PretrainData`: uint8 images, float targets in named column
groups, and a train / held-out split that never puts related frames on both sides (Lift:
whole demos; Durotaxis: environments with other seeds).

The encoder core sits below envs/ (encoders/ imports none of agents/, envs/, training/
at module level), so the Lift file reader and the Durotaxis engine are imported inside
the task functions, only when that task is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from envs.durotaxis.config import DurotaxisConfig

# Durotaxis held-out environments are seeded this far from the training ones: an
# environment's key is seed + index, so the two key ranges never meet below 1e6 envs.
HELD_OUT_SEED_OFFSET = 1_000_000


@dataclass
class RegressionSet:
    """Images and their regression targets."""

    images: torch.Tensor
    """N x C x H x W uint8."""
    targets: torch.Tensor
    """N x D float32."""

    def __len__(self) -> int:
        return len(self.targets)

    def to(self, device: torch.device) -> RegressionSet:
        """Both tensors on device (images stay uint8)."""
        return RegressionSet(self.images.to(device), self.targets.to(device))


@dataclass
class PretrainData:
    """A task's proxy-regression data, split into training and held-out frames."""

    train: RegressionSet
    held_out: RegressionSet
    groups: dict[str, list[int]]
    """Target group name -> its columns of `targets` (losses are reported per group)."""
    input_adapter: str
    """The EncoderConfig input_adapter these images need."""
    description: str
    """One line about the data and the split."""
    source: dict = field(default_factory=dict)
    """What the sidecar records about where the frames came from."""

    @property
    def in_channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train.images.shape[-1])


# ----- Lift: cube and end-effector positions from the camera image ----------------------

LIFT_GROUPS = {"cube_pos": [0, 1, 2], "eef_pos": [3, 4, 5]}


def _image_key(camera: str) -> str:
    return camera if camera.endswith("_image") else f"{camera}_image"


def _stored_image_size(path: Path, key: str) -> int | None:
    """Side of the file's first `key` images, or None (then the reader names the problem)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            demos = sorted(k for k in f.get("data", {}) if k.startswith("demo_"))
            shape = f[f"data/{demos[0]}/obs/{key}"].shape
            return int(shape[1]) if len(shape) == 4 else None
    except Exception:  # missing, not HDF5, no demos, no such key: the reader says which
        return None


def lift_data(
    dataset: str, cameras: tuple[str, ...], val_fraction: float, seed: int
) -> PretrainData:
    """Frames of a robomimic Lift file, targets cube position (obs/object[:3]) and eef position.

    One body serves every camera listed: each camera's frame is a sample of its own with
    the frame's targets. Demos are split at random (seeded) into training and held-out.
    """
    # Lazy: encoders/ must not import envs/ at module level (see the module docstring).
    from envs.lift.dataset import make_data
    from envs.lift.env import IMAGE_SIZE

    if not cameras:
        raise ValueError("--cameras needs at least one camera, e.g. agentview")
    path = Path(dataset).expanduser()
    image_keys = tuple(_image_key(c) for c in cameras)
    size = _stored_image_size(path, image_keys[0]) or IMAGE_SIZE
    data = make_data(
        str(path),
        device=torch.device("cpu"),
        seed=seed,
        cache_dir=Path("."),  # unused: the file is given
        chunk_length=1,
        image_keys=image_keys,
        lowdim_keys=("robot0_eef_pos", "object"),
        image_size=size,
    )
    obj = data.frames["object"]
    if obj.shape[1] < 3:
        raise ValueError(
            f"dataset {path}: obs/object has {obj.shape[1]} values per frame; the cube "
            f"position needs its first 3 (robosuite's object-state)"
        )
    targets = torch.cat([obj[:, :3], data.frames["robot0_eef_pos"]], dim=1).float()
    held_demos = _held_out_demos(data.num_demos, val_fraction, seed, path)
    held = torch.isin(data.demo_index, torch.as_tensor(held_demos))

    def frames(mask: torch.Tensor) -> RegressionSet:
        images = [data.frames[k][mask].permute(0, 3, 1, 2).contiguous() for k in image_keys]
        return RegressionSet(torch.cat(images), targets[mask].repeat(len(image_keys), 1))

    train, held_out = frames(~held), frames(held)
    cams = ", ".join(image_keys)
    return PretrainData(
        train=train,
        held_out=held_out,
        groups=LIFT_GROUPS,
        input_adapter="none",
        description=(
            f"lift {path}: {data.num_demos} demos, cameras [{cams}] at {size}x{size}; "
            f"{_count(data.num_demos - len(held_demos), 'demo')} ({len(train)} images) train, "
            f"{_count(len(held_demos), 'demo')} ({len(held_out)} images) held out"
        ),
        source={
            "dataset": str(path.resolve()),
            "cameras": list(image_keys),
            "num_demos": data.num_demos,
            "held_out_demos": [int(d) for d in held_demos],
            "held_out_demos_are": "positions in the file's demos sorted by number",
            "targets": "cube_pos = obs/object[:3], eef_pos = obs/robot0_eef_pos",
        },
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _held_out_demos(count: int, val_fraction: float, seed: int, path: Path) -> list[int]:
    """A seeded random choice of round(val_fraction * count) demos, at least one each side."""
    if count < 2:
        raise ValueError(
            f"dataset {path} holds {count} demo(s); holding some out by demo needs at least 2"
        )
    num_held = min(max(1, round(val_fraction * count)), count - 1)
    order = np.random.default_rng(seed).permutation(count)
    return sorted(int(i) for i in order[:num_held])


# ----- Durotaxis: which way the goal is, and how far ----------------------------------

DUROTAXIS_GROUPS = {"goal_direction": [0, 1], "goal_distance": [2]}


def durotaxis_data(
    frames: int,
    image_size: int,
    channels: int,
    input_adapter: str,
    val_fraction: float,
    seed: int,
    num_envs: int,
    device: torch.device,
) -> PretrainData:
    """Observations of seeded Durotaxis rollouts (standard preset); targets the direction
    from the cluster's centroid (the image centre) to the goal (cos, sin) and its distance
    (the engine's `probe_targets`).

    Held-out frames come from environments seeded apart from the training ones.
    """
    # Lazy: encoders/ must not import envs/ at module level (see the module docstring).
    from envs.durotaxis.config import DurotaxisConfig

    num_held = max(1, round(val_fraction * frames))
    if frames - num_held < 1:
        raise ValueError(f"--frames={frames} leaves no training frames after the held-out share")
    config = DurotaxisConfig(image_size=image_size, channels=channels)
    train = _durotaxis_frames(config, frames - num_held, seed, num_envs, device)
    held_out = _durotaxis_frames(
        config, num_held, seed + HELD_OUT_SEED_OFFSET, min(num_envs, num_held), device
    )
    return PretrainData(
        train=train,
        held_out=held_out,
        groups=DUROTAXIS_GROUPS,
        input_adapter=input_adapter,
        description=(
            f"durotaxis {image_size}x{image_size}x{channels}: {len(train)} training frames "
            f"(env seeds {seed}..), {len(held_out)} held-out frames "
            f"(env seeds {seed + HELD_OUT_SEED_OFFSET}..)"
        ),
        source={
            "env": {"image_size": image_size, "channels": channels, "other": "defaults"},
            "train_env_seed": seed,
            "held_out_env_seed": seed + HELD_OUT_SEED_OFFSET,
            "num_envs": num_envs,
            "policy": "per step and env: privileged (to the goal) or uniform random, 50/50",
            "targets": "goal_direction = (cos, sin) from the centroid to the goal; "
            "goal_distance = centroid's distance to the goal / start_distance",
        },
    )


def _durotaxis_frames(
    config: DurotaxisConfig, count: int, seed: int, num_envs: int, device: torch.device
) -> RegressionSet:
    """`count` observations and labels from `num_envs` environments seeded `seed`.

    The actions mix the privileged policy (which migrates to the goal) with uniform
    random actions (which wander and end episodes early), so that frames cover the whole
    way, not only the start region where random episodes stay.
    """
    from envs.durotaxis.baselines import privileged_policy, random_policy
    from envs.durotaxis.engine import make_engine

    env = make_engine(config, num_envs, device)
    gen = torch.Generator(device=device).manual_seed(seed)
    obs = env.reset(seed=seed)
    images, targets, have = [], [], 0
    while have < count:
        images.append(obs)
        targets.append(env.probe_targets())
        have += num_envs
        kind_r, params_r = random_policy(env, gen)
        kind_h, params_h = privileged_policy(env)
        greedy = torch.rand(num_envs, device=device, generator=gen) < 0.5
        kind = torch.where(greedy, kind_h, kind_r)
        params = torch.where(greedy[:, None], params_h, params_r)
        obs, *_ = env.autoreset_step(kind, params)
    return RegressionSet(torch.cat(images)[:count], torch.cat(targets)[:count].float())
