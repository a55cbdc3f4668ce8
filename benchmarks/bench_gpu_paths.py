"""The GPU path, measured side by side in one run: precision, memory format, host syncs.

1. fbc training steps/s on Lift-shaped batches (2 cameras, 84x84, chunks of 16 x 7),
   fine-tuned and frozen + cached, in fp32, bf16 autocast and bf16 + channels-last.
   The frames are random: speed does not depend on their content, and robosuite and the
   dataset need not travel to the GPU machine.
2. AD training updates/s (paper size, batch 128) in fp32 and bf16, and in-context
   evaluation agent-steps/s with the KV cache.
3. Durotaxis batched env steps/s and PPO env steps/s with a frozen ResNet-18 at 64x64.
4. Host syncs: each inner loop (an fbc update, an AD update, a PPO rollout step) run
   under `torch.cuda.set_sync_debug_mode("error")`, which raises on any device-to-host
   wait, torch's own included.

    python benchmarks/bench_gpu_paths.py --device=cuda
    python benchmarks/bench_gpu_paths.py --device=cpu --fbc_batch=16 --steps=3   # smoke run
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.ad import ADAgent, ADConfig  # noqa: E402
from agents.fbc import CachedFeatureData, FBCAgent, FBCConfig  # noqa: E402
from agents.hybrid_actor_critic import HybridActorCritic, HybridActorCriticConfig  # noqa: E402
from benchmarks.bench_darkroom import agent_steps_per_sec  # noqa: E402
from benchmarks.bench_durotaxis import BenchConfig as DurotaxisBench  # noqa: E402
from benchmarks.bench_durotaxis import env_steps_per_second, ppo_steps_per_second  # noqa: E402
from encoders import EncoderConfig  # noqa: E402
from envs.darkroom import NUM_ACTIONS  # noqa: E402
from envs.darkroom.dataset import DarkroomSpec  # noqa: E402
from envs.durotaxis import DurotaxisConfig  # noqa: E402
from envs.durotaxis.engine import make_engine  # noqa: E402
from envs.lift.dataset import LiftSpec  # noqa: E402
from train_ppo import durotaxis_action  # noqa: E402
from training.cli import parse_config  # noqa: E402
from training.device import resolve_device  # noqa: E402
from training.distributed import LossForward  # noqa: E402
from training.guards import NonFiniteGuard  # noqa: E402
from training.precision import to_channels_last, with_autocast  # noqa: E402


@dataclass(frozen=True)
class GPUBenchConfig:
    """Sizes of the GPU-path benchmark."""

    fbc_batch: int = 256
    """fbc batch size (train_bc.py's default)."""
    fbc_frames: int = 4096
    """Synthetic frames held on the device per camera."""
    ad_batch: int = 128
    """AD batch size (the paper's)."""
    eval_envs: int = 1024
    """In-context evaluation rollouts stepped together."""
    env_batch: int = 8192
    """Durotaxis batch size."""
    ppo_envs: int = 256
    """PPO num_envs (64 x 64 observations, frozen ResNet-18)."""
    steps: int = 20
    """Timed steps per round."""
    rounds: int = 3
    """Rounds (the median is reported)."""
    parts: tuple[str, ...] = ("fbc", "ad", "durotaxis")
    """Which benchmarks to run."""
    device: str = "auto"
    """auto | cpu | cuda."""


class SyntheticLiftData:
    """Lift-shaped samples on the device: uint8 frames, proprio, action chunks."""

    cameras = ("agentview_image", "robot0_eye_in_hand_image")
    lowdim = {"robot0_eef_pos": 3, "robot0_eef_quat": 4, "robot0_gripper_qpos": 2}

    def __init__(self, frames: int, device: torch.device) -> None:
        gen = torch.Generator(device=device).manual_seed(0)
        self.device = device
        self.num_samples = frames
        self.frames = {
            k: torch.randint(0, 256, (frames, 84, 84, 3), dtype=torch.uint8, device=device,
                             generator=gen)
            for k in self.cameras
        }
        self.proprio = {k: torch.randn(frames, d, device=device, generator=gen)
                        for k, d in self.lowdim.items()}
        self.actions = torch.rand(frames, 16, 7, device=device, generator=gen) * 2 - 1
        self.spec = LiftSpec(
            image_keys=tuple(self.cameras), image_shape=(3, 84, 84),
            lowdim_keys=tuple(self.lowdim), lowdim_dims=dict(self.lowdim),
            lowdim_mean={k: [0.0] * d for k, d in self.lowdim.items()},
            lowdim_std={k: [1.0] * d for k, d in self.lowdim.items()},
            action_dim=7, chunk_length=16, env_args={}, horizon=400, dataset="synthetic",
        )

    def sample_indices(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(self.num_samples, (batch_size,), generator=generator,
                             device=generator.device).to(self.device)

    def batch(self, idx: torch.Tensor, images: bool = True) -> dict[str, torch.Tensor]:
        out = {f"obs/{k}": v[idx] for k, v in self.proprio.items()}
        if images:  # what robomimic's ObsUtils gives: float CHW in [0, 1]
            for k, v in self.frames.items():
                out[f"obs/{k}"] = v[idx].permute(0, 3, 1, 2).float().div_(255)
        out["actions"] = self.actions[idx]
        return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def sync_debug(device: torch.device):
    """Raise on any device-to-host wait inside (CUDA only)."""
    if device.type != "cuda":
        yield
        return
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def update_once(agent, data, loss_fn, batch: int, gen: torch.Generator) -> None:
    """One training step as train_bc.py takes it: sample, gather, update."""
    agent.update(data.batch(data.sample_indices(batch, gen)), loss_fn)


def updates_per_sec(agent, data, loss_fn, batch: int, cfg: GPUBenchConfig, device) -> float:
    """Median updates/s over rounds (sampling included), with the guard attached."""
    step = partial(update_once, agent, data, loss_fn, batch,
                   torch.Generator(device=device).manual_seed(0))

    for _ in range(3):
        step()  # warm-up: optimizer state, allocator, cuDNN autotune
    rates = []
    for _ in range(cfg.rounds):
        sync(device)
        start = time.perf_counter()
        for _ in range(cfg.steps):
            step()
        sync(device)
        rates.append(cfg.steps / (time.perf_counter() - start))
    return statistics.median(rates)


def check_no_sync(fn, device: torch.device) -> str:
    """'none' when fn() runs without a device-to-host wait, else the error's first line."""
    try:
        with sync_debug(device):
            fn()
        return "none" if device.type == "cuda" else "n/a (CPU)"
    except RuntimeError as err:
        return f"SYNC: {str(err).splitlines()[0][:90]}"


def bench_fbc(cfg: GPUBenchConfig, device: torch.device, syncs: dict) -> None:
    data = SyntheticLiftData(cfg.fbc_frames, device)
    base = FBCConfig(encoder_weights="random")
    modes = {
        "fine-tuned fp32": (replace(base, freeze_encoder=False), False, False),
        "fine-tuned bf16": (replace(base, freeze_encoder=False), True, False),
        "fine-tuned bf16+NHWC": (replace(base, freeze_encoder=False), True, True),
        "frozen+cached fp32": (replace(base, freeze_encoder=True), False, False),
        "frozen+cached bf16": (replace(base, freeze_encoder=True), True, False),
    }
    print(f"\nfbc training, batch {cfg.fbc_batch}, resnet18 x 2 cameras 84x84, chunk 16")
    print(f"{'mode':<24}{'steps/s':>10}{'samples/s':>12}{'vs fp32 ft':>12}")
    first = None
    for name, (agent_cfg, amp, nhwc) in modes.items():
        torch.manual_seed(0)
        agent = to_channels_last(FBCAgent(agent_cfg, data.spec, device), nhwc)
        NonFiniteGuard(agent.optimizer)
        run_data = agent.prepare(data) if agent_cfg.uses_feature_cache else data
        loss_fn = with_autocast(LossForward(agent, agent.loss), device, amp)
        rate = updates_per_sec(agent, run_data, loss_fn, cfg.fbc_batch, cfg, device)
        first = first or rate
        print(f"{name:<24}{rate:>10.1f}{rate * cfg.fbc_batch:>12,.0f}{rate / first:>11.2f}x",
              flush=True)
        if amp is False and nhwc is False:
            gen = torch.Generator(device=device).manual_seed(1)
            kind = "cached" if isinstance(run_data, CachedFeatureData) else "fine-tuned"
            syncs[f"fbc update ({kind})"] = check_no_sync(
                partial(update_once, agent, run_data, loss_fn, cfg.fbc_batch, gen), device)
        del agent, run_data


def bench_ad(cfg: GPUBenchConfig, device: torch.device, syncs: dict) -> None:
    spec = DarkroomSpec(env="darkroom", grid_size=9, horizon=20, num_actions=NUM_ACTIONS,
                        context_episodes=ADConfig().context_episodes, prefix_episodes=0,
                        history_episodes=80)
    windows = (ADConfig().context_episodes + 1) * spec.horizon

    class Windows:
        """A pool of random token windows of the AD window's length, on the device."""

        def __init__(self, n: int = 4096) -> None:
            g = torch.Generator(device=device).manual_seed(0)
            self.obs = torch.randint(9, (n, windows, 2), device=device, generator=g)
            self.actions = torch.randint(NUM_ACTIONS, (n, windows), device=device, generator=g)
            self.rewards = torch.randint(2, (n, windows), device=device, generator=g).float()

        def sample_indices(self, b: int, gen: torch.Generator) -> torch.Tensor:
            return torch.randint(self.obs.shape[0], (b,), generator=gen, device=gen.device)

        def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"obs": self.obs[idx], "actions": self.actions[idx],
                    "rewards": self.rewards[idx]}

    print(f"\nAD (paper size), training batch {cfg.ad_batch}; evaluation {cfg.eval_envs} envs")
    for amp in (False, True):
        torch.manual_seed(0)
        agent = ADAgent(ADConfig(lr_decay_steps=100_000), spec, device)
        NonFiniteGuard(agent.optimizer)
        loss_fn = with_autocast(LossForward(agent, agent.loss), device, amp)
        data = Windows()
        rate = updates_per_sec(agent, data, loss_fn, cfg.ad_batch, cfg, device)
        print(f"  training {'bf16' if amp else 'fp32'}: {rate:,.1f} updates/s", flush=True)
        if not amp:
            gen = torch.Generator(device=device).manual_seed(1)
            syncs["AD update"] = check_no_sync(
                partial(update_once, agent, data, loss_fn, cfg.ad_batch, gen), device)
    agent.eval()
    agent_steps_per_sec(agent, cfg.eval_envs, 1, True, device)  # warm-up
    rate = agent_steps_per_sec(agent, cfg.eval_envs, 6, True, device)
    print(f"  in-context evaluation (KV cache): {rate:,.0f} agent-steps/s", flush=True)


def bench_durotaxis(cfg: GPUBenchConfig, device: torch.device, syncs: dict) -> None:
    env_cfg = DurotaxisConfig(image_size=64)
    rate = env_steps_per_second(env_cfg, cfg.env_batch, 50, device)
    print(f"\nDurotaxis env, B={cfg.env_batch}, 64x64: {rate:,.0f} steps/s", flush=True)
    bench = DurotaxisBench(image_size=64, ppo_envs=cfg.ppo_envs, ppo_steps=32, ppo_iterations=3,
                           device=str(device))
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("all:reuse", "none"):
            sps = ppo_steps_per_second(bench, mode, Path(tmp))
            print(f"PPO, freeze_mode={mode.split(':')[0]}, num_envs {cfg.ppo_envs}: "
                  f"{sps:,.0f} env steps/s", flush=True)
    envs = make_engine(env_cfg, cfg.ppo_envs, device)
    enc = EncoderConfig(weights="random", input_adapter="repeat3", freeze_mode="all")
    model = HybridActorCritic(enc, (1, 64, 64), HybridActorCriticConfig(),
                              action=durotaxis_action(env_cfg)).to(device).eval()
    obs = envs.reset(seed=0)

    def rollout_steps() -> None:
        nonlocal obs
        for _ in range(4):
            out = model.act(obs)
            obs, *_ = envs.autoreset_step(out["kind"], out["params"])

    rollout_steps()
    syncs["PPO rollout step"] = check_no_sync(rollout_steps, device)


def main() -> None:
    cfg = parse_config(GPUBenchConfig, description=__doc__)
    device = resolve_device(cfg.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {device} ({name}), torch {torch.__version__}")
    syncs: dict[str, str] = {}
    benches = {"fbc": bench_fbc, "ad": bench_ad, "durotaxis": bench_durotaxis}
    for part in cfg.parts:
        benches[part](cfg, device, syncs)
    print("\nhost syncs inside the inner loops (torch.cuda.set_sync_debug_mode('error'))")
    for key, result in syncs.items():
        print(f"  {key:<26}{result}")


if __name__ == "__main__":
    main()
