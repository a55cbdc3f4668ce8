"""Flow-matching behaviour cloning on action chunks, with a multi-camera ResNet encoder.

The policy predicts a chunk of `chunk_length` actions. Training regresses a velocity
field on the straight path between noise and the expert chunk: x_t = (1 - t) x0 + t x1,
x0 ~ N(0, I), target x1 - x0; sampling integrates it with `flow_steps` Euler steps from
noise. The observation encoder runs one ResNet body per camera (or one shared body),
concatenates the image features with the normalised low-dim observations and projects
them to `emb_dim` with a 2-layer MLP.

Three things a public port of this agent got wrong and this file does not: the
projection is in the optimizer (with the body, when it trains, at `backbone_lr`), the
rollout policy runs in eval mode, and the pretrained BatchNorm layers stay BatchNorm.

The bodies are configured by `--agent.encoder.*` (an `EncoderConfig`: arch, weights,
freeze_mode none | all | until_layer3 | last_block, pooling); `--agent.freeze_encoder`,
`--agent.pretrained_encoder`, `--agent.rgb_model_name` and `--agent.encoder_weights` are
shorthands for its fields. What a frozen part computes from a given crop of a frame never
changes, so `prepare` computes it once for the whole dataset (batched, on the device) and
training reads it from that cache: with freeze_mode=all (the default) the image features,
and no ResNet runs in training; with until_layer3 / last_block the maps entering the
trainable blocks, and only those blocks run. When the data is a file, the cache is also
kept on disk beside it and later runs load it instead of embedding every frame again
(agents/fbc_feature_cache.py says where, keyed by what, and how to clear it).

Random crops are on by default where the images are larger than `crop_size` (Lift's
84x84 -> 76x76, robomimic's crop). Without a cache (freeze_mode=none) each training
sample is cropped at an offset drawn uniformly from all of them (9 x 9 on Lift) with the
global RNG. With a cache, the cache holds, per frame, the frozen part's output on
`cache_crops` = K = n x n crops at the offsets floor(i * (side - crop_size) / (n - 1)),
i < n, on each axis (n odd, so the centre crop is one of them; K=81 on Lift is every
offset), and training reads for each sample one of the K, drawn uniformly with the
sampling generator: a random crop restricted to those K offsets, each computed exactly as
the live network computes it (with until_layer3 / last_block too: the cached map is the
frozen blocks' output on the cropped image, not a crop of the whole image's map). Outside
training (rollouts, the held-out loss) the centre crop is used, live or cached.

The policy that acts (and whose held-out loss is `valid/flow_loss`) is an exponential
moving average of the trained one: torch's AveragedModel with use_buffers=True, so that
BatchNorm's running statistics are averaged with the weights they belong to (EMAPolicy
says why, and where it departs from AveragedModel's defaults). It sits beside the trained
network, not inside the agent's module tree, so that DDP, which broadcasts the buffers of
what it wraps before every forward, does not send its copies of the weights each step;
it is in the agent's state dict all the same (FBCAgent.state_dict).

In a bf16 run (training/precision.py) the networks run under bf16 autocast and the
weights, gradients and EMA stay fp32, as do the parts whose rounding would add up: the
flow-matching loss (an fp32 MSE), the Euler integration of sampling (an fp32 state x, the
velocity net's bf16 output cast up before each step) and the EMA update. The frozen-part
cache is stored in the dtype the frozen part computes in, bf16 in a bf16 run: what the live
path hands the trainable part, at half the memory (FBCAgent.frozen_features says why).
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from agents import fbc_feature_cache as disk_cache
from encoders import Arch, EncoderConfig, ResNetEncoder
from training.diagnostics import frozen_parameter_names, grad_norms
from training.guards import StopRequested
from training.optim import build_optimizer
from training.precision import fp32_region
from training.ranges import ConfigError, at_least, at_least_finite, positive, unit_interval

FBC_ENCODER = EncoderConfig(freeze_mode="all")
"""fbc's default body: ResNet-18, weights=auto, frozen."""


@dataclass(frozen=True)
class FBCConfig:
    """Flow-matching BC with action chunks on camera + proprio observations."""

    encoder: EncoderConfig = FBC_ENCODER
    """The ResNet body of every camera (default: resnet18, weights=auto, freeze_mode=all)."""
    freeze_encoder: bool | None = None
    """Shorthand: True = encoder.freeze_mode=all, False = encoder.freeze_mode=none."""
    pretrained_encoder: bool | None = None
    """Shorthand: True = encoder.weights=auto (ImageNet if cached), False = weights=random."""
    rgb_model_name: Arch | None = None
    """Shorthand for encoder.arch."""
    encoder_weights: str | None = None
    """Shorthand for encoder.weights (imagenet | random | PATH); beats pretrained_encoder."""
    share_encoder: bool = False
    """One body for all cameras instead of one per camera."""
    emb_dim: int = 256
    """Output of the 2-layer projection of image features + low-dim observations."""
    random_crop: bool | None = None
    """Random crops in training, the centre crop otherwise; default (None): on when the
    images are larger than crop_size (Lift's 84x84 are), True: on (or an error), False: off."""
    crop_size: int = 76
    """Side of the crops (76 of 84: robomimic's)."""
    cache_crops: int = 9
    """With crops and a frozen part: crops cached per frame, an n x n grid of offsets with
    n odd (1, 9, 25, 49, 81, ...), centre included; training draws one of them per sample."""
    chunk_length: int = 16
    """Actions predicted per policy query."""
    action_horizon: int = 8
    """Actions of each predicted chunk executed before the policy is queried again."""
    flow_steps: int = 10
    """Euler steps from noise to an action chunk."""
    hidden_dim: int = 512
    """Width of the velocity MLP."""
    num_layers: int = 4
    """Hidden layers of the velocity MLP."""
    lr: float = 1e-4
    """AdamW learning rate of the heads (projection + velocity MLP)."""
    backbone_lr: float = 1e-4
    """AdamW learning rate of the ResNet bodies when they train."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    ema: bool = True
    """Act with an exponential moving average of the trained weights and BatchNorm statistics."""
    ema_decay: float = 0.999
    """EMA decay (warmed up as min(decay, (1 + n) / (10 + n)) over updates n)."""
    cache_batch_size: int = 256
    """Frames per batch when prepare() embeds the dataset with a frozen body, and when
    valid_metrics() computes the held-out loss."""

    def __post_init__(self) -> None:
        for name in ("chunk_length", "hidden_dim", "num_layers", "emb_dim", "crop_size",
                     "cache_batch_size"):
            at_least(f"agent.{name}", getattr(self, name), 1)
        if self.action_horizon < 1 or self.action_horizon > self.chunk_length:
            raise ConfigError(
                f"action_horizon must be in 1..chunk_length ({self.chunk_length}), "
                f"got {self.action_horizon}"
            )
        if self.flow_steps < 1:
            raise ConfigError(f"flow_steps must be >= 1, got {self.flow_steps}")
        side = math.isqrt(max(self.cache_crops, 0))
        if self.cache_crops < 1 or side * side != self.cache_crops or side % 2 == 0:
            raise ConfigError(
                f"--agent.cache_crops={self.cache_crops} is out of range; allowed: an odd "
                f"number squared (1, 9, 25, 49, 81, ...), an n x n grid of crops around the centre"
            )
        positive("agent.lr", self.lr)
        positive("agent.backbone_lr", self.backbone_lr)
        at_least_finite("agent.weight_decay", self.weight_decay, 0.0)
        unit_interval("agent.ema_decay", self.ema_decay, open_low=False)
        for field, (flag, given, value) in self._shorthands().items():
            explicit = getattr(self.encoder, field)
            # An encoder field left at fbc's default counts as not given.
            if explicit != getattr(FBC_ENCODER, field) and explicit != value:
                raise ValueError(
                    f"--agent.{flag}={given} contradicts --agent.encoder.{field}={explicit}; "
                    f"give only one of them"
                )

    def _shorthands(self) -> dict[str, tuple[str, object, str]]:
        """Encoder field -> (shorthand flag, its value, the field value it means), if given."""
        out: dict[str, tuple[str, object, str]] = {}
        if self.freeze_encoder is not None:
            mode = "all" if self.freeze_encoder else "none"
            out["freeze_mode"] = ("freeze_encoder", self.freeze_encoder, mode)
        if self.pretrained_encoder is not None:
            weights = "auto" if self.pretrained_encoder else "random"
            out["weights"] = ("pretrained_encoder", self.pretrained_encoder, weights)
        if self.encoder_weights:  # overrides pretrained_encoder, as it always has
            out["weights"] = ("encoder_weights", self.encoder_weights, self.encoder_weights)
        if self.rgb_model_name is not None:
            out["arch"] = ("rgb_model_name", self.rgb_model_name, self.rgb_model_name)
        return out

    @property
    def encoder_config(self) -> EncoderConfig:
        """The effective body config: `encoder` with the shorthands that were given."""
        given = {field: value for field, (_, _, value) in self._shorthands().items()}
        return dataclasses.replace(self.encoder, **given)

    @property
    def weights(self) -> str:
        """Weights spec handed to the encoder core."""
        return self.encoder_config.weights

    @property
    def uses_feature_cache(self) -> bool:
        """A frozen part: what it computes from a frame (each of the frame's cache_crops
        crops, with crops on) is a constant, computed once (the pooled features with
        freeze_mode=all, the maps entering the trainable blocks with until_layer3 /
        last_block)."""
        return self.encoder_config.freeze_mode != "none"

    def crop_for(self, height: int, width: int) -> int | None:
        """The crop side for images of height x width, or None for no crop."""
        if self.random_crop is False:
            return None
        if self.random_crop is None and self.crop_size >= min(height, width):
            return None  # the default, on images it cannot crop: off
        return self.crop_size


def crop_images(x: torch.Tensor, size: int, random: bool) -> torch.Tensor:
    """B x C x H x W -> B x C x size x size: per-sample random crops, or the centre."""
    b, _, h, w = x.shape
    if size >= h and size >= w:
        return x
    if not random:
        top, left = (h - size) // 2, (w - size) // 2
        return x[:, :, top : top + size, left : left + size]
    top = torch.randint(0, h - size + 1, (b, 1), device=x.device)
    left = torch.randint(0, w - size + 1, (b, 1), device=x.device)
    offsets = torch.arange(size, device=x.device)
    rows = (top + offsets)[:, None, :, None]  # B x 1 x size x 1
    cols = (left + offsets)[:, None, None, :]  # B x 1 x 1 x size
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return x[batch, chans, rows, cols]


@dataclass(frozen=True)
class CropGrid:
    """The crops a feature cache holds per frame: size x size windows whose top-left
    corners are every (row, col) of rows x cols, in row-major order."""

    size: int
    rows: tuple[int, ...]
    cols: tuple[int, ...]

    @property
    def corners(self) -> list[tuple[int, int]]:
        """(top, left) of each crop, in cache order."""
        return [(top, left) for top in self.rows for left in self.cols]

    @property
    def count(self) -> int:
        """K, the crops per frame."""
        return len(self.rows) * len(self.cols)

    @property
    def centre(self) -> int:
        """Index of crop_images' centre crop (the middle offset of each axis, n odd)."""
        return (len(self.rows) // 2) * len(self.cols) + len(self.cols) // 2

    def crop(self, images: torch.Tensor, k: int) -> torch.Tensor:
        """Crop k of every image in B x C x H x W."""
        top, left = self.corners[k]
        return images[:, :, top : top + self.size, left : left + self.size]


def frozen_dtype(device: torch.device) -> torch.dtype:
    """The dtype the frozen part computes in here and now: autocast's (bf16) inside an
    autocast region on `device`, else that of the weights, fp32 in every run."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return torch.float32


def is_channels_last(x: torch.Tensor) -> bool:
    """A B x C x H x W tensor laid out channels-last (and not also plainly contiguous)."""
    return (
        x.dim() == 4
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
    )


def crop_grid(height: int, width: int, size: int, count: int) -> CropGrid:
    """`count` = n x n crops of `size` spread evenly over the offsets of height x width images:
    floor(i * (H - size) / (n - 1)) for i < n on each axis; with n odd the middle one is
    (H - size) // 2, crop_images' centre. A one-line error when an axis has < n offsets."""
    n = math.isqrt(count)
    span = min(height, width) - size
    if n > span + 1:
        most = span + 1 if span % 2 == 0 else span  # the largest odd n that fits
        raise ValueError(
            f"--agent.cache_crops={count} needs {n} crop offsets per axis but {height}x{width} "
            f"images cropped to {size} have {span + 1}; pick --agent.cache_crops <= {most * most}"
        )

    def offsets(side: int) -> tuple[int, ...]:
        span = side - size
        return tuple(i * span // (n - 1) for i in range(n)) if n > 1 else (span // 2,)

    return CropGrid(size, offsets(height), offsets(width))


class ImageChunkSpec(Protocol):
    """What fbc reads of a task's data spec (envs/lift/dataset.py's LiftSpec is one)."""

    image_keys: Sequence[str]
    image_shape: Sequence[int]
    lowdim_keys: Sequence[str]
    lowdim_mean: Mapping[str, Sequence[float]]
    lowdim_std: Mapping[str, Sequence[float]]
    action_dim: int
    chunk_length: int


class ImageFrames(Protocol):
    """Data whose batches can leave the images out (what the feature cache wraps)."""

    spec: ImageChunkSpec
    num_samples: int
    device: torch.device

    def describe(self) -> str: ...

    def sample_indices(self, batch_size: int, generator: torch.Generator) -> torch.Tensor: ...

    def batch(self, indices: torch.Tensor, images: bool = True) -> dict[str, torch.Tensor]: ...


@runtime_checkable
class FramesOnDisk(ImageFrames, Protocol):
    """Frames read from a file (envs.lift.dataset.LiftData): their frozen-feature cache is
    kept on disk beside it, keyed by the file and which of its frames these are."""

    path: str
    filter_key: str | None
    demos: list[str]


class ObsEncoder(nn.Module):
    """Cameras through ResNet bodies + normalised low-dim, projected to emb_dim."""

    def __init__(self, cfg: FBCConfig, spec: ImageChunkSpec) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_keys = list(spec.image_keys)
        self.lowdim_keys = list(spec.lowdim_keys)
        enc_cfg = cfg.encoder_config
        channels = int(spec.image_shape[0])
        if not self.image_keys:  # a low-dim policy (train_bc.py --cameras): no ResNet at all
            self.bodies = nn.ModuleDict()
        elif cfg.share_encoder:
            shared = ResNetEncoder(enc_cfg, channels)
            self.bodies = nn.ModuleDict({"shared": shared})
        else:
            self.bodies = nn.ModuleDict(
                {k: ResNetEncoder(enc_cfg, channels) for k in self.image_keys}
            )
        mean = torch.cat([torch.tensor(spec.lowdim_mean[k]) for k in self.lowdim_keys])
        std = torch.cat([torch.tensor(spec.lowdim_std[k]) for k in self.lowdim_keys])
        shape = spec.image_shape
        self.crop_size = cfg.crop_for(int(shape[1]), int(shape[2])) if self.image_keys else None
        """Side of the crops (random in training, the centre otherwise), None for none."""
        self.register_buffer("lowdim_mean", mean.float())
        # A constant dimension (std 0) must not blow up: floor the scale.
        self.register_buffer("lowdim_std", std.float().clamp_min(1e-3))
        feat_dim = sum(self.body(k).out_dim for k in self.image_keys) + len(mean)
        self.projection = nn.Sequential(
            nn.Linear(feat_dim, cfg.emb_dim), nn.ReLU(), nn.Linear(cfg.emb_dim, cfg.emb_dim)
        )

    def body(self, key: str) -> ResNetEncoder:
        """The body that encodes camera key."""
        return self.bodies["shared"] if self.cfg.share_encoder else self.bodies[key]

    def crop(self, images: torch.Tensor) -> torch.Tensor:
        """Random crops in training, the centre crop otherwise (or the images, with no crop)."""
        if self.crop_size is None:
            return images
        return crop_images(images, self.crop_size, random=self.training)

    def frozen_part(self, key: str, images: torch.Tensor) -> torch.Tensor:
        """What the frozen part of camera key's body computes from its images (crops first):
        what the feature cache stores (see ResNetEncoder.frozen_prefix)."""
        return self.body(key).frozen_prefix(self.crop(images))

    def image_features(self, key: str, frozen: torch.Tensor) -> torch.Tensor:
        """Features of one camera from frozen_part's output (runs the trainable suffix)."""
        return self.body(key).from_prefix(frozen)

    def forward(
        self, obs: dict[str, torch.Tensor], cached: dict[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Batch of processed obs/<key> (and optionally cached frozen parts) -> B x emb_dim."""
        feats = []
        for key in self.image_keys:
            frozen = cached[key] if cached is not None else self.frozen_part(key, obs[f"obs/{key}"])
            feats.append(self.image_features(key, frozen))
        lowdim = torch.cat([obs[f"obs/{k}"] for k in self.lowdim_keys], dim=-1)
        feats.append((lowdim - self.lowdim_mean) / self.lowdim_std)
        return self.projection(torch.cat(feats, dim=-1))


class VelocityMLP(nn.Module):
    """v(x_t, t, obs embedding) for a flattened action chunk."""

    def __init__(self, action_size: int, emb_dim: int, hidden_dim: int, num_layers: int) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(0.0, math.log(1000.0), 32)))
        layers: list[nn.Module] = []
        width = action_size + 2 * len(self.freqs) + emb_dim
        for _ in range(num_layers):
            layers += [nn.Linear(width, hidden_dim), nn.GELU()]
            width = hidden_dim
        layers.append(nn.Linear(width, action_size))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x: B x D, t: B x 1 in [0, 1], emb: B x E -> B x D."""
        angles = t * self.freqs
        return self.net(torch.cat([x, angles.sin(), angles.cos(), emb], dim=-1))


class FlowPolicy(nn.Module):
    """Encoder + velocity field; forward samples action chunks (for EMA functional calls)."""

    def __init__(self, cfg: FBCConfig, spec: ImageChunkSpec) -> None:
        super().__init__()
        self.chunk_length = cfg.chunk_length
        self.action_dim = int(spec.action_dim)
        self.flow_steps = cfg.flow_steps
        self.encoder = ObsEncoder(cfg, spec)
        self.velocity = VelocityMLP(
            cfg.chunk_length * self.action_dim, cfg.emb_dim, cfg.hidden_dim, cfg.num_layers
        )

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sample action chunks B x chunk x A, clipped to the action range [-1, 1]."""
        emb = self.encoder(obs)
        return self.sample(emb)

    def sample(self, emb: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Euler-integrate the velocity field from noise, conditioned on emb.

        The state x and its step sums are fp32 whatever the velocity net runs in: under bf16
        autocast the net's output is cast up before each step, so that flow_steps roundings
        of x to bf16's 8-bit mantissa do not add up along the path.
        """
        b = emb.shape[0]
        x = (
            noise.float()
            if noise is not None
            else torch.randn(b, self.chunk_length * self.action_dim, device=emb.device)
        )
        dt = 1.0 / self.flow_steps
        for i in range(self.flow_steps):
            t = torch.full((b, 1), i * dt, device=emb.device)
            x = x + dt * self.velocity(x, t, emb).float()
        return x.view(b, self.chunk_length, self.action_dim).clamp(-1.0, 1.0)

    def flow_loss(
        self,
        emb: torch.Tensor,
        actions: torch.Tensor,
        x0: torch.Tensor | None = None,
        t: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean squared error of the velocity against x1 - x0 on the straight path; noise
        x0 (B x D) and times t (B x 1) are drawn unless given.

        The path, the target and the MSE are fp32; only the velocity net follows autocast.
        Inputs that come in bf16 are cast up, and the mean of the squared errors is taken
        with autocast off, whatever an autocast policy would choose for mse_loss.
        """
        x1 = actions.flatten(1).float()
        x0 = torch.randn_like(x1) if x0 is None else x0.float()
        t = torch.rand(x1.shape[0], 1, device=x1.device) if t is None else t.float()
        xt = (1.0 - t) * x0 + t * x1
        velocity = self.velocity(xt, t, emb).float()
        with fp32_region(x1.device):
            return F.mse_loss(velocity, x1 - x0)


def warmed_up_ema(decay: float):
    """An AveragedModel `multi_avg_fn`: EMA with the decay warmed up as min(decay, n / (n + 9)).

    `n` is AveragedModel's `n_averaged`, the models averaged so far. EMAPolicy counts its
    initial copy as the first, so update k (k = 0, 1, ...) sees n = k + 1 and uses
    min(decay, (1 + k) / (10 + k)): the schedule of the hand-written EMA this replaced.
    torch's `get_ema_multi_avg_fn` has a fixed decay, hence this function. EMAPolicy hands
    it `n` as a Python int (a tensor would be read on the host, a device sync). The step is
    torch's lerp, which leaves a tensor equal to its live twin (a statistic that does not
    move) bit-identical. Integer tensors (num_batches_tracked) are copied, not averaged.
    """

    @torch.no_grad()
    def update(ema: list[torch.Tensor], live: list[torch.Tensor], n_averaged: int) -> None:
        if not ema:
            return
        if not torch.is_floating_point(ema[0]):
            torch._foreach_copy_(ema, live)
            return
        n = float(n_averaged)
        torch._foreach_lerp_(ema, live, 1.0 - min(decay, n / (n + 9.0)))

    return update


class EMAPolicy(AveragedModel):
    """The policy that acts: torch's AveragedModel with use_buffers=True, so BatchNorm's
    running statistics are averaged along with the weights.

    Why buffers too: the running statistics of a trained BatchNorm layer follow the live
    weights, and an averaged network that reads them normalises its activations with
    statistics of other weights (Diffusion Policy's notes: EMA + BatchNorm destroys
    performance). Averaging them as the weights are gives each averaged layer the matching
    average of its statistics, with no extra pass over the data (AveragedModel's
    alternative, update_bn, would need one at every evaluation). A frozen body's
    statistics never move, so their average is bit-identical to them anyway.

    Where it departs from AveragedModel's defaults, and why:
    - the copy made at construction counts as the first average (n_averaged = 1), and
      `update_parameters` keeps the count on the host too: AveragedModel's own reads the
      device tensor (`bool(n_averaged == 0)`), a device sync at every training step;
    - the copies of trainable parameters are held as buffers, so they are in the state
      dict (checkpointed) but no optimizer, DDP reducer, parameter report or checkpoint
      `frozen` list takes them for weights;
    - frozen parameters are not copied: their average is themselves, so this model holds
      the live tensors (one copy in memory and in checkpoints); they, and the frozen
      parts' BatchNorm statistics, are skipped by the update.
    It always runs in eval mode: a forward never updates its averaged statistics.
    """

    def __init__(self, policy: nn.Module, decay: float) -> None:
        super().__init__(policy, multi_avg_fn=warmed_up_ema(decay), use_buffers=True)
        super().update_parameters(policy)  # the copy, as AveragedModel makes it: n_averaged 1
        frozen = set(frozen_parameter_names(policy))
        live_modules = dict(policy.named_modules())
        for name, module in self.module.named_modules():
            live = live_modules[name]
            for key, param in list(module._parameters.items()):
                if param is None:
                    continue
                del module._parameters[key]
                if live._parameters[key].requires_grad:
                    module.register_buffer(key, param.detach())
                else:
                    module.register_parameter(key, live._parameters[key])
        self.averaged = [n for n in policy.state_dict() if n not in frozen]
        """State-dict names of what moves: the trainable parameters and the buffers."""
        self._count = 1  # n_averaged on the host
        # id(live model) -> the tensor pairs update_parameters averages (see _pair_up).
        self._pairs: dict[int, list[tuple[list[torch.Tensor], list[torch.Tensor]]]] = {}
        self.register_load_state_dict_post_hook(EMAPolicy._read_count)
        self.eval()

    @staticmethod
    def _read_count(module: EMAPolicy, incompatible: Any) -> None:
        module._count = int(module.n_averaged)  # a host read, at load time only
        module._pairs.clear()  # a load with assign=True replaces tensors

    def train(self, mode: bool = True) -> EMAPolicy:
        """Stays in eval mode whatever is asked (set once: the agent's train() at every
        update does not walk this copy of the policy again)."""
        if self.training:
            super().train(False)
        return self

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        """One EMA step towards `model`: its trainable parameters and its buffers.

        Both are fp32 in a bf16 run too (autocast casts activations, never weights), and the
        step runs with autocast off, so an update called inside an autocast region (a loop
        that wraps its whole step) averages in fp32 all the same.
        """
        pairs = self._pairs.get(id(model))
        if pairs is None:
            pairs = self._pairs[id(model)] = self._pair_up(model)
        with fp32_region(self.n_averaged.device):
            for mine, live in pairs:
                self.multi_avg_fn(mine, live, self._count)
        self.n_averaged += 1
        self._count += 1

    def _pair_up(self, model: nn.Module) -> list[tuple[list[torch.Tensor], list[torch.Tensor]]]:
        """The averaged tensors and their live twins in `model`, floating ones first.

        Found by name once and kept: the walk over both models' modules cost 0.55 ms of a
        0.8 ms update. `_apply` (.to(), channels-last) and loading, which may replace
        tensors, forget them (the agent's .to() and load_state_dict reach this model).
        """
        mine = dict(self.module.named_buffers())
        live = dict(model.named_parameters())
        live.update(model.named_buffers())
        pairs = []
        for floating in (True, False):
            names = [n for n in self.averaged if mine[n].is_floating_point() == floating]
            pairs.append(([mine[n] for n in names], [live[n].detach() for n in names]))
        return pairs

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> EMAPolicy:
        self._pairs.clear()
        return super()._apply(fn, recurse)


def substate(state: Mapping[str, Any], head: str) -> dict[str, Any]:
    """The entries of `state` under `head` (e.g. "ema."), with `head` taken off, and the
    matching version metadata (BatchNorm reads it when loading)."""
    out: dict[str, Any] = OrderedDict(
        (k[len(head) :], v) for k, v in state.items() if k.startswith(head)
    )
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:
        out._metadata = OrderedDict(  # type: ignore[attr-defined]
            (k[len(head) :], v) for k, v in metadata.items()
            if k == head[:-1] or k.startswith(head)
        )
    return out


def upgrade_ema_state(
    state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """An FBCAgent state dict of the hand-written EMA (keys `ema.<name with __>` for the
    trainable parameters, `ema.updates`) in today's layout (`own`'s keys).

    The old EMA acted with its averaged parameters and the live network's buffers, so the
    upgraded model gets exactly those: what it acts with does not change.
    """
    if "ema.updates" not in state:
        return dict(state)
    out = {k: v for k, v in state.items() if not k.startswith("ema.")}
    for key in own:
        if not key.startswith("ema.module."):
            continue
        name = key[len("ema.module.") :]
        old = f"ema.{name.replace('.', '__')}"
        out[key] = state[old] if old in state else state[f"policy.{name}"]
    out["ema.n_averaged"] = state["ema.updates"] + 1
    return out


class CachedFeatureData:
    """Wraps task data: batches carry the frozen parts' outputs instead of images.

    `features[camera]` is N x ... (one per frame), or N x K x ... with a crop grid (one per
    frame and crop). With a grid, sample_indices returns B x 2 (sample, crop) rows, the crop
    drawn uniformly with the same generator after the samples, so the sample indices are
    those of the wrapped data; batch() takes those rows, or sample indices alone for the
    centre crop (what evaluation and the held-out loss read).
    """

    def __init__(
        self, data: ImageFrames, features: dict[str, torch.Tensor], grid: CropGrid | None = None
    ) -> None:
        self.data = data
        self.features = features
        self.grid = grid
        self.spec = data.spec
        self.num_samples = data.num_samples
        self.device = data.device

    def describe(self) -> str:
        """The wrapped data's description plus the cache's size."""
        mb = sum(f.numel() * f.element_size() for f in self.features.values()) / 2**20
        what = "frozen features cached"
        if self.grid is not None:
            g = self.grid
            what = (
                f"frozen features of {g.count} {g.size}x{g.size} crops per frame (offsets "
                f"{list(g.rows)} x {list(g.cols)}) cached"
            )
        first, newline, rest = self.data.describe().partition("\n")
        return f"{first}; {what} ({mb:.0f} MiB){newline}{rest}"

    def sample_indices(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Uniform sample indices, as the wrapped data draws them, and with a crop grid a
        uniform crop per sample: B x 2 (sample, crop) rows."""
        idx = self.data.sample_indices(batch_size, generator)
        if self.grid is None:
            return idx
        crop = torch.randint(
            self.grid.count, (batch_size,), generator=generator, device=generator.device
        )
        return torch.stack([idx, crop.to(idx.device)], dim=1)

    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """A batch of `batch_size` random samples (random crops with a grid)."""
        return self.batch(self.sample_indices(batch_size, generator))

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Samples by index (or by sample_indices' (sample, crop) rows), without images,
        with features/<camera> from the cache: the centre crop's unless rows say which."""
        crop: torch.Tensor | int | None = None
        if idx.ndim == 2:
            idx, crop = idx.unbind(1)
        elif self.grid is not None:
            crop = self.grid.centre
        batch = self.data.batch(idx, images=False)
        for key, feats in self.features.items():
            batch[f"features/{key}"] = feats[idx] if crop is None else feats[idx, crop]
        return batch


class FBCAgent(nn.Module):
    """Flow-matching BC agent: update(batch), act(obs) -> actions to execute."""

    def __init__(self, cfg: FBCConfig, spec: ImageChunkSpec, device: torch.device) -> None:
        super().__init__()
        if int(spec.chunk_length) != cfg.chunk_length:
            raise ValueError(
                f"data chunks have {spec.chunk_length} actions but chunk_length is "
                f"{cfg.chunk_length}"
            )
        side = min(spec.image_shape[1:]) if spec.image_keys else None
        if cfg.random_crop and side is not None and not 0 < cfg.crop_size < side:
            # crop_images returns a crop_size >= the image unchanged: no augmentation at all.
            raise ValueError(
                f"--agent.random_crop=True with --agent.crop_size={cfg.crop_size} cannot crop "
                f"the {side}x{side} images; pick a crop_size in 1..{side - 1} or "
                f"--agent.random_crop=False"
            )
        self.cfg = cfg
        self.device = torch.device(device)
        self.policy = FlowPolicy(cfg, spec)
        crop = self.policy.encoder.crop_size
        self.crop_grid: CropGrid | None = None
        """The crops a feature cache holds per frame (frozen part and crops), else None."""
        if cfg.uses_feature_cache and crop is not None:
            height, width = (int(d) for d in spec.image_shape[1:])
            self.crop_grid = crop_grid(height, width, crop, cfg.cache_crops)
        # Not a submodule (object.__setattr__): DDP wraps the agent and broadcasts every buffer
        # of what it wraps before each forward, and the EMA's copies of the weights are
        # buffers, so a full copy of the trainable weights would go out at every step. The
        # EMA travels with the agent through state_dict (keys ema.*), load_state_dict,
        # .to() and modules() (see there); DDP, parameters() and buffers() do not see it.
        object.__setattr__(
            self, "ema", EMAPolicy(self.policy, cfg.ema_decay) if cfg.ema else None
        )
        self.to(self.device)
        self.optimizer = build_optimizer(
            self,
            backbone_lr=cfg.backbone_lr,
            head_lr=cfg.lr,
            kind="adamw",
            weight_decay=cfg.weight_decay,
        )

    def components(self) -> dict[str, nn.Module]:
        """Parts for the parameter report."""
        enc = self.policy.encoder
        return {
            "encoder/bodies": enc.bodies,
            "encoder/projection": enc.projection,
            "velocity_mlp": self.policy.velocity,
        }

    def _cached(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """The batch's cached frozen parts, in the dtype the live frozen part would give now."""
        keys = self.policy.encoder.image_keys
        if not all(f"features/{k}" in batch for k in keys):
            return None
        cached = {k: batch[f"features/{k}"] for k in keys}
        # A cache read in the precision it was built in (what train_bc does) is passed as it
        # is. One read in another (a bf16 cache in an fp32 forward: a conv would refuse its
        # bf16 input) is cast to what the live path would hand the trainable part.
        return {k: v.to(frozen_dtype(v.device)) for k, v in cached.items()}

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Flow-matching loss of a batch of observation / action-chunk pairs."""
        emb = self.policy.encoder(batch, cached=self._cached(batch))
        loss = self.policy.flow_loss(emb, batch["actions"])
        return loss, {"train/flow_loss": loss.detach()}

    def update(self, batch: dict[str, torch.Tensor], loss_fn=None) -> dict:
        """One gradient step; metrics stay on the device until logged (no host sync).

        `loss_fn` is `self.loss` or the training loop's DDP / autocast wrapper of it.
        """
        if not self.training:  # every mode switch here restores it (eval -> train(was)):
            self.train()       # walking the ~250 modules each step cost 0.7 ms of ~14
        loss, info = (loss_fn or self.loss)(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        info.update(grad_norms(self.optimizer))
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update_parameters(self.policy)
        return info

    @torch.no_grad()
    def sample_chunks(self, obs: dict[str, torch.Tensor], use_ema: bool = True) -> torch.Tensor:
        """Full predicted chunks B x chunk x A, in eval mode (from the EMA model if use_ema)."""
        was_training = self.training
        self.eval()
        try:
            return self._acting(use_ema)(obs)
        finally:
            self.train(was_training)

    def _acting(self, use_ema: bool = True) -> nn.Module:
        """The EMA model (weights and BatchNorm statistics averaged), or the live policy."""
        return self.ema if use_ema and self.ema is not None else self.policy

    @torch.no_grad()
    def valid_metrics(self, data: ImageFrames | CachedFeatureData, seed: int = 0) -> dict:
        """Flow-matching loss over every sample of held-out data, in eval mode.

        The noise and times come from a generator seeded with `seed`, in sample order, so
        the same weights give the same number at every call. `valid/flow_loss` is the
        acting model's (the EMA when it is on); with EMA, `valid/flow_loss_live` is the
        live policy's on the same noise.
        """
        models = {"valid/flow_loss": self._acting()}
        if self.ema is not None:
            models["valid/flow_loss_live"] = self.policy
        was_training = self.training
        self.eval()
        generator = torch.Generator(device=self.device).manual_seed(seed)
        totals = {key: torch.zeros((), device=self.device) for key in models}
        try:
            for start in range(0, data.num_samples, self.cfg.cache_batch_size):
                stop = min(start + self.cfg.cache_batch_size, data.num_samples)
                batch = data.batch(torch.arange(start, stop, device=data.device))
                actions = batch["actions"].to(self.device)
                size = (stop - start, actions[0].numel())
                x0 = torch.randn(size, generator=generator, device=self.device)
                t = torch.rand((size[0], 1), generator=generator, device=self.device)
                for key, model in models.items():
                    policy = model.module if isinstance(model, EMAPolicy) else model
                    emb = policy.encoder(batch, cached=self._cached(batch))
                    loss = policy.flow_loss(emb, actions, x0, t)
                    totals[key] += loss.float() * size[0]
        finally:
            self.train(was_training)
        return {key: float(total) / data.num_samples for key, total in totals.items()}

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ):
        """nn.Module's, also taking the state of the hand-written EMA this file used to have
        (upgrade_ema_state)."""
        state = upgrade_ema_state(state_dict, self.state_dict(keep_vars=True))
        return super().load_state_dict(state, strict=strict, assign=assign)

    # ----- the EMA model, kept outside the module tree, travels with the agent -------------
    def state_dict(
        self, *, destination: Any = None, prefix: str = "", keep_vars: bool = False
    ) -> dict[str, Any]:
        """nn.Module's, plus the EMA model's state under `ema.` (the layout it had as a
        submodule, so checkpoints of either kind load in both)."""
        state = super().state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)
        if self.ema is not None:
            self.ema.state_dict(destination=state, prefix=f"{prefix}ema.", keep_vars=keep_vars)
        return state

    def _load_from_state_dict(
        self,
        state_dict: Mapping[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """nn.Module's, then the EMA model's keys (`ema.*`), which nn.Module, not seeing a
        submodule `ema`, counts as unexpected."""
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
            error_msgs,
        )
        if self.ema is None:
            return
        head = f"{prefix}ema."
        unexpected_keys[:] = [k for k in unexpected_keys if not k.startswith(head)]
        assign = bool(local_metadata.get("assign_to_params_buffers", False))
        result = self.ema.load_state_dict(
            substate(state_dict, head), strict=False, assign=assign
        )
        missing_keys.extend(head + k for k in result.missing_keys)
        unexpected_keys.extend(head + k for k in result.unexpected_keys)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> FBCAgent:
        """Device, dtype and memory-format changes (.to, to_channels_last) reach the EMA."""
        super()._apply(fn, recurse)
        if recurse and self.ema is not None:
            self.ema._apply(fn, recurse)
        return self

    def modules(self, remove_duplicate: bool = True) -> Iterator[nn.Module]:
        """The agent's modules, then the EMA model's: every module that computes for the
        agent, the one that acts included (hooks, mode checks). named_modules(), which
        parameters(), buffers() and DDP walk, stays the trained network's."""
        yield from super().modules(remove_duplicate)
        if self.ema is not None:
            yield from self.ema.modules(remove_duplicate)

    def act(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The next action_horizon actions for each observation: B x action_horizon x A."""
        return self.sample_chunks(obs)[:, : self.cfg.action_horizon]

    @torch.no_grad()
    def frozen_features(
        self, data: ImageFrames, grid: CropGrid | None = None, frames: str = "training"
    ) -> dict[str, torch.Tensor]:
        """Every frame's frozen-part output per camera, batched on the device, in data order:
        N x ... (eval mode: the centre crop, with crops on), or N x K x ... for the crops of
        `grid`. `frames` names them on the progress bar (training or held-out).

        Stored in the dtype the frozen part computes in: bf16 when built under bf16 autocast
        (train_bc builds it in the run's precision). That is exactly what the live frozen
        part hands the trainable part in a bf16 run (its last op already rounds to bf16),
        so fp32 storage would hold the same values in twice the memory. bf16 halves a cache
        that is the run's largest tensor with maps and crops (Lift, until_layer3, 9 crops of
        two cameras: 450 KiB a frame in fp32, 225 KiB in bf16).
        """
        enc = self.policy.encoder
        was_training = self.training
        self.eval()
        out: dict[str, list[torch.Tensor]] = {k: [] for k in enc.image_keys}
        channels_last = dict.fromkeys(enc.image_keys, False)
        bs = self.cfg.cache_batch_size
        starts = range(0, data.num_samples, bs)
        # Named by what it embeds: the training frames and the held-out ones are two bars.
        what = f"{frames} frames" + (f" x {grid.count} crops" if grid is not None else "")
        bar = tqdm(starts, desc=f"caching frozen features: {what}", unit="batch")
        try:
            for start in bar:
                idx = torch.arange(start, min(start + bs, data.num_samples), device=data.device)
                batch = data.batch(idx)
                for key in enc.image_keys:
                    images = batch[f"obs/{key}"]
                    if grid is None:
                        out[key].append(enc.frozen_part(key, images))
                        continue
                    body = enc.body(key)
                    crops = [body.frozen_prefix(grid.crop(images, k)) for k in range(grid.count)]
                    # Maps that some kernels (CPU) give channels-last are stored B x K x h x w x C,
                    # so that a row read back has their layout: the trainable blocks then pick
                    # the kernels, and the rounding, that they pick on the live maps.
                    channels_last[key] = is_channels_last(crops[0])
                    if channels_last[key]:
                        crops = [c.permute(0, 2, 3, 1) for c in crops]
                    out[key].append(torch.stack(crops, dim=1))
        except (StopRequested, KeyboardInterrupt) as stop:
            done = min(bar.n * bs, data.num_samples)
            kept = (f"the frozen-feature cache ({done} of {data.num_samples} frames embedded) "
                    "is held in memory only; the next run builds it again")
            raise StopRequested.keeping(stop, kept) from None
        finally:
            bar.close()  # ends the bar's line, so that what is printed next starts a new one
            self.train(was_training)
        # torch.cat keeps a 4-d map's layout (channels-last or not).
        cache = {k: torch.cat(v) for k, v in out.items()}
        return {k: v.permute(0, 1, 4, 2, 3) if channels_last[k] else v for k, v in cache.items()}

    def prepare(
        self, data: ImageFrames, held_out: bool = False
    ) -> ImageFrames | CachedFeatureData:
        """Cache what the frozen part computes when there is one; otherwise return data as is.

        With crops, the cache holds the crop grid's K crops per frame; `held_out` data is
        only ever read at the centre crop, so its cache holds that one alone.
        """
        if not self.cfg.uses_feature_cache or not self.policy.encoder.image_keys:
            return data  # nothing frozen to run, or no camera to run it on
        grid = None if held_out else self.crop_grid
        frames = "held-out" if held_out else "training"
        key = self._feature_cache_key(data, grid)
        if key is None:  # data that is no file: kept in memory only
            return CachedFeatureData(data, self.frozen_features(data, grid, frames), grid)
        path = disk_cache.cache_path(Path(data.path), key)
        cameras = self.policy.encoder.image_keys
        features = disk_cache.load(path, key, self.device, cameras, data.num_samples)
        if features is None:
            features = self.frozen_features(data, grid, frames)
            disk_cache.save(path, key, features)
        return CachedFeatureData(data, features, grid)

    def _feature_cache_key(self, data: ImageFrames, grid: CropGrid | None) -> dict | None:
        """Everything the cached values depend on (agents/fbc_feature_cache.py), or None for
        data that is not read from a file (FramesOnDisk) to key it by."""
        if not isinstance(data, FramesOnDisk):
            return None
        path = data.path
        enc = self.policy.encoder
        bodies = {}
        for camera in enc.image_keys:
            body = enc.body(camera)
            state = body.state_dict()
            frozen = [(n, state[n]) for n in body.frozen_state_names()]
            # The config minus `weights`: the tensors say which weights, whatever named them.
            config = {k: v for k, v in dataclasses.asdict(body.cfg).items() if k != "weights"}
            bodies[camera] = {
                "config": config,
                "in_channels": body.in_channels,
                "tensors": disk_cache.tensors_sha256(
                    [*frozen, ("mean", body.mean), ("std", body.std)]
                ),
            }
        spec = data.spec
        return {
            "dataset_sha256": disk_cache.file_sha256(Path(path)),
            "filter_key": data.filter_key,
            "demos": list(data.demos),
            "num_samples": data.num_samples,
            "image_shape": [int(d) for d in spec.image_shape],
            "bodies": bodies,
            "grid": None if grid is None else dataclasses.asdict(grid),
            "dtype": str(frozen_dtype(self.device)),
            "device": self.device.type,
            "torch": torch.__version__,
        }
