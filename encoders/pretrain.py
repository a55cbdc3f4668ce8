"""Pretrain a ResNet body on a task's own frames, offline: `weights=PATH` bodies without ImageNet.

No ImageNet file can be fetched on these machines, so the pretrained bodies the studies
compare against are made here: a body (random init, or `--weights` to continue from
another) and a linear head regress quantities the data already holds from its images.

    python -m encoders.pretrain lift --dataset lift.hdf5 --out bodies/lift_r18.pt
    python -m encoders.pretrain durotaxis --out bodies/durotaxis_r18.pt --steps 2000

- lift: the cube position (obs/object[:3]) and the end-effector position
  (obs/robot0_eef_pos) from the camera images of a robomimic file; held out by demo.
- durotaxis: the direction (cos, sin) and distance from the image centre (the cluster's
  centroid) to the goal, from seeded rollouts of the standard preset; held out by
  environment seed.

Targets are standardised with the training frames' statistics and the head starts at
zero, so the held-out MSE reported before training is that of predicting the training
mean (about 1). The body trains with BatchNorm in train mode (Adam); the held-out MSE is
measured in eval mode, as a frozen body will run. The file is a torchvision-format state
dict of the body (conv1.weight ... layer4.1.bn2.num_batches_tracked, no fc); PATH.json
beside it records the task, the data, the settings and the held-out losses.

The generic part (body + head, split, loss report, save) is `pretrain` and
`save_body`; the task data come from `encoders.pretrain_data`, which imports the envs
it reads only when its task runs (encoders/ sits below envs/ and training/).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from tqdm import tqdm

from encoders.config import Arch, EncoderConfig, InputAdapter
from encoders.pretrain_data import PretrainData, RegressionSet, durotaxis_data, lift_data
from encoders.resnet import _IMAGENET_MEAN, _IMAGENET_STD, ResNetEncoder
from encoders.torch_files import save_tensors


@dataclass(frozen=True, kw_only=True)
class PretrainConfig:
    """What every task shares: the body, the optimisation and the output file."""

    out: str
    """Where to write the body (a torchvision-format state dict); PATH.json goes beside it."""
    arch: Arch = "resnet18"
    """resnet18 | resnet34 | resnet50."""
    weights: str = "random"
    """Initial body: random | imagenet | auto | PATH (e.g. a body to continue training)."""
    steps: int = 2000
    """Gradient steps."""
    batch_size: int = 64
    """Images per gradient step."""
    lr: float = 1e-3
    """Adam learning rate of body and head."""
    val_fraction: float = 0.1
    """Share held out (lift: of the demos; durotaxis: of the frames, from other env seeds)."""
    device: str = "auto"
    """auto | cpu | cuda."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """bf16 autocast with a channels-last body where the device computes bf16 natively
    (auto), as the training entries do; the loss and Adam's state stay fp32."""
    seed: int = 0
    """Seed of the init, the batches, the demo split and the Durotaxis rollouts."""
    threads: int = 0
    """torch CPU threads (0: torch's default); 1 on a shared CPU."""
    eval_batch_size: int = 256
    """Images per forward pass when measuring the held-out loss."""
    overwrite: bool = False
    """Replace an existing --out file (and its sidecar)."""
    progress: bool = True
    """Show the progress bar."""

    def __post_init__(self) -> None:
        # Lazy: encoders/ imports no training/ at module level. ConfigError, not
        # ValueError, so that tyro lets it through to run_main's one-line error.
        from training.ranges import ConfigError, at_least, positive

        if not self.out:
            raise ConfigError("--out must name the body file to write")
        at_least("steps", self.steps, 1)
        at_least("batch_size", self.batch_size, 2)  # BatchNorm in train mode needs 2
        at_least("eval_batch_size", self.eval_batch_size, 1)
        at_least("threads", self.threads, 0)
        positive("lr", self.lr)
        if not 0 < self.val_fraction < 1:
            raise ConfigError(
                f"--val_fraction={self.val_fraction} is out of range; allowed: (0, 1)"
            )

    def load_data(self, device: torch.device) -> PretrainData:
        """The task's frames and targets, split into training and held-out."""
        raise NotImplementedError

    @property
    def task(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class LiftPretrainConfig(PretrainConfig):
    """Pretrain on a robomimic Lift image file: cube and eef positions from the camera."""

    dataset: str
    """robomimic Lift HDF5 with <camera>_image, object and robot0_eef_pos observations."""
    cameras: tuple[str, ...] = ("agentview",)
    """Cameras whose frames train the one body (each frame a sample with the same targets)."""

    @property
    def task(self) -> str:
        return "lift"

    def load_data(self, device: torch.device) -> PretrainData:
        return lift_data(self.dataset, self.cameras, self.val_fraction, self.seed)


@dataclass(frozen=True, kw_only=True)
class DurotaxisPretrainConfig(PretrainConfig):
    """Pretrain on Durotaxis observations: gradient direction and stiff-edge distance."""

    frames: int = 20_000
    """Observations generated in all (the held-out share from other env seeds)."""
    image_size: int = 64
    """Observation side in pixels (train_ppo's default env.image_size is 64)."""
    channels: int = 1
    """Observation channels, as the PPO run will use (env.channels)."""
    input_adapter: InputAdapter = "repeat3"
    """1 channel: repeat3 | 1ch_conv; 3 channels: none. The file is 3-channel either way."""
    num_envs: int = 256
    """Environments stepped together while generating frames."""

    def __post_init__(self) -> None:
        super().__post_init__()
        from training.ranges import ConfigError, at_least

        at_least("frames", self.frames, 2)
        at_least("image_size", self.image_size, 8)
        at_least("num_envs", self.num_envs, 1)
        # Checked here, before minutes of rollouts, not when the encoder is built.
        fits = {1: ("repeat3", "1ch_conv"), 3: ("none",)}
        if self.channels not in fits:
            raise ConfigError(f"--channels={self.channels} is out of range; allowed: 1, 3")
        if self.input_adapter not in fits[self.channels]:
            raise ConfigError(
                f"--input_adapter={self.input_adapter} does not fit {self.channels}-channel "
                f"images; use {' or '.join(fits[self.channels])}"
            )

    @property
    def task(self) -> str:
        return "durotaxis"

    def load_data(self, device: torch.device) -> PretrainData:
        return durotaxis_data(
            frames=self.frames,
            image_size=self.image_size,
            channels=self.channels,
            input_adapter=self.input_adapter,
            val_fraction=self.val_fraction,
            seed=self.seed,
            num_envs=self.num_envs,
            device=device,
        )


TASKS: dict[str, type[PretrainConfig]] = {
    "lift": LiftPretrainConfig,
    "durotaxis": DurotaxisPretrainConfig,
}


# ----- the generic part: body + head on standardised targets ------------------------------


def match_downstream_normalisation(encoder: ResNetEncoder) -> None:
    """Normalise input as a `weights=PATH` encoder will: with the ImageNet statistics.

    ResNetEncoder treats every loaded body as pretrained and normalises its input with
    ImageNet's mean and std (their mean over RGB for 1 channel); a randomly initialised
    one uses 0.5 / 0.5. The body is trained on the input it will be given later.
    """
    if encoder.pretrained:
        return
    mean, std = torch.tensor(_IMAGENET_MEAN), torch.tensor(_IMAGENET_STD)
    if encoder.in_channels == 1:
        mean, std = mean.mean().reshape(1), std.mean().reshape(1)
    encoder.mean.copy_(mean.view(1, -1, 1, 1))
    encoder.std.copy_(std.view(1, -1, 1, 1))


def group_mse(
    pred: torch.Tensor, target: torch.Tensor, groups: dict[str, list[int]]
) -> dict[str, torch.Tensor]:
    """Mean squared error per target group (the loss is their mean)."""
    return {name: ((pred[:, cols] - target[:, cols]) ** 2).mean() for name, cols in groups.items()}


@torch.no_grad()
def evaluate(
    encoder: ResNetEncoder,
    head: nn.Linear,
    data: RegressionSet,
    mean: torch.Tensor,
    std: torch.Tensor,
    groups: dict[str, list[int]],
    batch_size: int,
    bf16: bool = False,
) -> dict[str, float]:
    """Held-out MSE per group (standardised units) and their mean, in eval mode."""
    encoder.eval()
    squared = torch.zeros(data.targets.shape[1], device=data.targets.device)
    for start in range(0, len(data), batch_size):
        images = data.images[start : start + batch_size].float() / 255.0
        target = (data.targets[start : start + batch_size] - mean) / std
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
            pred = head(encoder(images)).float()
        squared += ((pred - target) ** 2).sum(0)
    per_column = squared / len(data)
    out = {name: float(per_column[cols].mean()) for name, cols in groups.items()}
    out["mean"] = sum(out.values()) / len(groups)
    return out


def pretrain(
    cfg: PretrainConfig, data: PretrainData, device: torch.device, bf16: bool = False
) -> tuple[ResNetEncoder, dict]:
    """Train a body + linear head on data.train; held-out losses before and after.

    bf16: the body and head compute under bf16 autocast (channels-last); the loss is
    taken in fp32 from their outputs, and the weights and Adam's state stay fp32."""
    torch.manual_seed(cfg.seed)
    enc_cfg = EncoderConfig(arch=cfg.arch, weights=cfg.weights, input_adapter=data.input_adapter)
    encoder = ResNetEncoder(enc_cfg, data.in_channels)
    match_downstream_normalisation(encoder)
    head = nn.Linear(encoder.out_dim, data.train.targets.shape[1])
    nn.init.zeros_(head.weight)  # starts at the training mean: "before" is that baseline
    nn.init.zeros_(head.bias)
    encoder, head = encoder.to(device), head.to(device)
    if bf16:
        encoder.to(memory_format=torch.channels_last)
    train, held_out = data.train.to(device), data.held_out.to(device)
    mean = train.targets.mean(0)
    std = train.targets.std(0).clamp(min=1e-6)

    def held_out_mse() -> dict[str, float]:
        return evaluate(encoder, head, held_out, mean, std, data.groups, cfg.eval_batch_size,
                        bf16)

    before = held_out_mse()
    optimizer = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=cfg.lr)
    generator = torch.Generator().manual_seed(cfg.seed)
    encoder.train()
    bar = tqdm(range(cfg.steps), desc=f"pretrain {cfg.task}", disable=not cfg.progress)
    start = time.perf_counter()
    for step in bar:
        idx = torch.randint(len(train), (cfg.batch_size,), generator=generator).to(device)
        images = train.images[idx].float() / 255.0
        target = (train.targets[idx] - mean) / std
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            pred = head(encoder(images)).float()
        losses = group_mse(pred, target, data.groups)
        loss = torch.stack(list(losses.values())).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 10 == 0 or step == cfg.steps - 1:  # .item() syncs: not every step
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    seconds = time.perf_counter() - start
    after = held_out_mse()
    result = {
        "held_out_mse": {"before": before, "after": after},
        "train_frames": len(train),
        "held_out_frames": len(held_out),
        "train_seconds": round(seconds, 1),
        "weights_init": encoder.weights_source,
    }
    return encoder, result


def torchvision_body_state(encoder: ResNetEncoder) -> dict[str, torch.Tensor]:
    """The body as torchvision names it (no fc), on the CPU, conv1 with 3 input channels.

    A 1ch_conv body's conv1 is stored as its filters / 3 repeated over RGB: on a grey
    image that computes the same, so both 1-channel adapters and RGB bodies load it.
    """
    state = {k: v.detach().cpu().clone() for k, v in encoder.backbone.state_dict().items()}
    conv1 = state["conv1.weight"]
    if conv1.shape[1] == 1:
        state["conv1.weight"] = conv1.repeat(1, 3, 1, 1) / 3
    return state


def sidecar_path(path: Path) -> Path:
    """PATH.json beside the body file."""
    return path.with_name(path.name + ".json")


def save_body(path: Path, state: dict[str, torch.Tensor], record: dict) -> None:
    """torch.save the state dict and PATH.json, each renamed into place when complete.

    A write that fails (a full disk) leaves no `.partial` file (45 MB for a ResNet-18) and
    raises one ValueError line; files already at PATH are untouched.
    """
    partial = path.with_name(path.name + ".partial")
    sidecar = sidecar_path(path)
    sidecar_partial = sidecar.with_name(sidecar.name + ".partial")
    try:
        with open(partial, "wb") as f:
            save_tensors(state, f)
        sidecar_partial.write_text(json.dumps(record, indent=2) + "\n")
        partial.replace(path)
        sidecar_partial.replace(sidecar)
    except OSError as err:
        raise ValueError(f"could not write {path}: {err.strerror or err}; nothing was "
                         f"written (the trained body is lost: free space and run again)"
                         ) from None
    finally:
        partial.unlink(missing_ok=True)
        sidecar_partial.unlink(missing_ok=True)


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse an --out that cannot be written, before minutes of training, not after."""
    for existing in (out, sidecar_path(out)):
        if existing.is_dir():
            raise ValueError(f"--out {existing} is a directory; name the body file to write "
                             f"(e.g. {existing / 'body.pt'})")
        if existing.exists() and not overwrite:
            raise FileExistsError(f"--out {existing} exists; pass --overwrite=True to replace it")
    ancestor = out.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"--out {out}: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: cannot write in {ancestor} (permission denied); choose "
                         f"another --out")


def _format(losses: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.4f}" for name, value in losses.items())


# ----- the command line -------------------------------------------------------------------


def run(cfg: PretrainConfig) -> dict:
    """Load the task's data, pretrain, save; returns what the sidecar records."""
    out = Path(cfg.out).expanduser()
    check_out(out, cfg.overwrite)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    from training.device import resolve_device  # lazy: encoders/ imports no training/
    from training.precision import describe_precision, resolve_precision, unit_map_hazard

    device = resolve_device(cfg.device)
    data = cfg.load_data(device)
    print(data.description)
    # Every stage trains: a body whose last stage sees a 1 x 1 map stays fp32 on the CPU.
    hazard = unit_map_hazard(data.image_size, True)
    precision = resolve_precision(cfg.precision, device, hazard)
    print(describe_precision(cfg.precision, precision, device, hazard))
    encoder, result = pretrain(cfg, data, device, bf16=precision == "bf16")
    before, after = result["held_out_mse"]["before"], result["held_out_mse"]["after"]
    print(
        f"held-out MSE (standardised; 1 = predicting the training mean) before: {_format(before)}"
    )
    print(f"held-out MSE after {cfg.steps} steps: {_format(after)}")
    record = {
        "task": cfg.task,
        "arch": cfg.arch,
        "input_adapter": data.input_adapter,
        "in_channels": data.in_channels,
        "image_size": data.image_size,
        "normalisation": {
            "mean": encoder.mean.flatten().tolist(),
            "std": encoder.std.flatten().tolist(),
            "note": "ImageNet statistics, what weights=PATH applies",
        },
        "targets": {name: cols for name, cols in data.groups.items()},
        "loss": "MSE per group on targets standardised with the training frames' statistics",
        **result,
        "data": data.source,
        "config": asdict(cfg),
        "device": str(device),
        "precision": precision,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_with": f"weights={out}",
    }
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # checked before training; changed since
        raise ValueError(f"could not create {out.parent}: {err.strerror or err}") from None
    save_body(out, torchvision_body_state(encoder), record)
    print(f"wrote {out} (torchvision-format {cfg.arch} body; load with weights={out})")
    return record


USAGE = (
    "usage: python -m encoders.pretrain {lift,durotaxis} --out PATH [flags]; "
    "`python -m encoders.pretrain lift --help` lists a task's flags"
)


def main(argv: Sequence[str] | None = None) -> dict:
    """`python -m encoders.pretrain TASK --flags`: TASK picks the config the flags fill."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(__doc__.split("\n\n")[0] + "\n\n" + USAGE)
        return {}
    if not args or args[0] not in TASKS:
        got = f"got {args[0]!r}" if args else "got nothing"
        raise ValueError(
            f"the first argument is the task, one of {', '.join(TASKS)} ({got}); {USAGE}"
        )
    from training.cli import parse_config  # lazy: encoders/ imports no training/

    task = args[0]
    cfg = parse_config(TASKS[task], args[1:], description=TASKS[task].__doc__)
    return run(cfg)


if __name__ == "__main__":
    from training.cli import run_main

    run_main(main)
