"""bf16 against fp32 on this CPU, measured side by side in one run (issue 29's targets).

`--precision=bf16` is bf16 autocast plus channels-last conv bodies, with fp32 weights,
gradients and optimizer state (training/precision.py). Each measurement builds one fp32
arm and one bf16 arm exactly as train_bc.py / train_ppo.py do, warms both up (excluded:
oneDNN builds its bf16 kernels on first use, the optimizer its state), then times them in
interleaved rounds (fp32, bf16, fp32, bf16, ...) so that load from other processes hits
both alike, and prints the median per arm and the ratio of the medians:

1. fbc training step, encoder fine-tuned (freeze_mode=none), 76x76 crops of 84x84 frames;
2. PPO end to end (collect_rollout + update), backbones fine-tuned (freeze_mode=none);
3. the frozen-feature cache build (agent.prepare: every frame's 9 crops, both cameras);
4. PPO end to end with everything frozen and the rollout's features reused (the default);
5. the frozen + cached fbc step against its bound, the same loss's forward + backward +
   optimizer step on one fixed batch of cached features (no sampling, no EMA), per precision.

The frames and the weights are random: speed depends on neither (no dataset, no download).

    python benchmarks/bench_precision.py                         # the targets; long on 2 cores
    python benchmarks/bench_precision.py --parts cache_build fbc_cached --rounds=7
    python benchmarks/bench_precision.py --quick                 # a smoke run: ratios mean nothing
"""

from __future__ import annotations

import math
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Literal
from unittest import mock

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import agents.fbc  # noqa: E402
import train_ppo  # noqa: E402
from agents.fbc import FBCAgent, FBCConfig  # noqa: E402
from agents.hybrid_actor_critic import HybridActorCritic  # noqa: E402
from agents.ppo import PPOConfig, ppo_loss  # noqa: E402
from agents.rollout_buffer import RolloutBuffer  # noqa: E402
from benchmarks.bench_gpu_paths import SyntheticLiftData  # noqa: E402
from benchmarks.bench_prefix_cache import timed  # noqa: E402
from encoders import EncoderConfig  # noqa: E402
from envs.durotaxis import DurotaxisConfig  # noqa: E402
from envs.durotaxis.engine import make_engine  # noqa: E402
from training.cli import parse_config, run_main  # noqa: E402
from training.device import resolve_device  # noqa: E402
from training.distributed import LossForward, World  # noqa: E402
from training.machine import describe_machine  # noqa: E402
from training.optim import build_optimizer  # noqa: E402
from training.precision import (  # noqa: E402
    autocast,
    native_bf16,
    to_channels_last,
    unit_map_hazard,
    with_autocast,
)
from training.ranges import ConfigError  # noqa: E402

Part = Literal["fbc_finetuned", "ppo_finetuned", "cache_build", "ppo_frozen", "fbc_cached"]
PARTS: tuple[Part, ...] = ("fbc_finetuned", "ppo_finetuned", "cache_build", "ppo_frozen",
                           "fbc_cached")
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class BenchConfig:
    """bf16 vs fp32, side by side."""

    parts: tuple[Part, ...] = PARTS
    """Which measurements to run (in this order)."""
    rounds: int = 5
    """Timed rounds per arm, interleaved (the median is reported)."""
    threads: int = 0
    """torch CPU threads (0: torch's default)."""
    quick: bool = False
    """Tiny sizes and 2 rounds, over the size flags: a smoke run whose ratios mean nothing
    (`--quick` alone works)."""
    device: str = "cpu"
    """cpu (the targets are this CPU's) | cuda | auto."""
    fbc_batch: int = 64
    """fbc batch size of parts 1 and 5."""
    fbc_frames: int = 256
    """Synthetic Lift frames (2 cameras, 84x84); part 3 embeds all of them, in one batch of
    fbc's cache_batch_size (256) at the default."""
    cache_crops: int = 9
    """Crops per frame in the feature cache (fbc's default: a 3 x 3 grid of 76x76)."""
    fbc_steps: int = 5
    """Timed fbc steps per round (parts 1 and 5)."""
    ppo_iterations: int = 1
    """Timed rollout + update iterations per round (parts 2 and 4)."""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    """PPO sizes (train_ppo.py's defaults: 16 envs x 32 steps, 8 minibatches, 10 epochs)."""
    image_size: int = 64
    """Durotaxis observation side (the standard preset's, 64: its last ResNet stage sees
    4x4 maps, clear of the oneDNN bf16 NaN on 1x1 maps)."""

    def __post_init__(self) -> None:
        for name in ("rounds", "fbc_batch", "fbc_frames", "fbc_steps", "ppo_iterations"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name}={getattr(self, name)} is out of range; allowed: >= 1")
        hazard = unit_map_hazard(self.image_size, trains_last_stage=True)
        if hazard is not None and "ppo_finetuned" in self.parts:
            raise ConfigError(f"--image_size={self.image_size}: {hazard}; use >= 32")


# A smoke run's sizes: seconds on 2 busy cores. The PPO images stay >= 32 (see image_size).
QUICK = {"rounds": 2, "fbc_batch": 2, "fbc_frames": 2, "cache_crops": 1, "fbc_steps": 1,
         "ppo_iterations": 1,
         "ppo": PPOConfig(num_envs=2, num_steps=4, num_minibatches=2, update_epochs=1),
         "image_size": 32}


# ---- timing: warm-up, then interleaved rounds -------------------------------------------

@dataclass
class Measured:
    """Seconds per call of each arm, one entry per round, in the order the rounds ran."""

    rounds: dict[str, list[float]]

    def median(self, arm: str) -> float:
        return statistics.median(self.rounds[arm])


def interleaved(arms: dict[str, Callable[[], object]], rounds: int, calls: int,
                device: torch.device, warmup: int = 1) -> Measured:
    """Each arm called `warmup` times (not timed), then `rounds` rounds in which every arm
    in turn runs `calls` timed calls: a, b, a, b, ... so that other load hits all alike."""
    for fn in arms.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(rounds):
        for name, fn in arms.items():
            times[name].append(timed(fn, calls, device))
    return Measured(times)


def milliseconds(seconds: float) -> str:
    """Milliseconds with 3 significant digits or more (4120, 412, 41.2, 4.12, 0.412)."""
    value = 1000 * seconds
    decimals = max(0, 2 - math.floor(math.log10(value))) if value > 0 else 0
    return f"{value:.{decimals}f}"


def ms(seconds: float) -> str:
    return f"{milliseconds(seconds)} ms"


def ratio_line(label: str, measured: Measured, target: float) -> str:
    """'label: fp32 X ms, bf16 Y ms -> r (target >= t: met)', the ratio of the medians."""
    fp32, bf16 = measured.median("fp32"), measured.median("bf16")
    ratio = fp32 / bf16
    verdict = "met" if ratio >= target else "NOT met"
    return (f"{label}: fp32 {ms(fp32)}, bf16 {ms(bf16)} -> {ratio:.2f}x "
            f"(target >= {target}x: {verdict})")


def rounds_line(measured: Measured) -> str:
    """Every round's time per arm: how noisy the medians are."""
    cells = [f"{arm} " + " ".join(milliseconds(s) for s in values)
             for arm, values in measured.rounds.items()]
    return "    rounds (ms): " + "; ".join(cells)


# ---- fbc (parts 1, 3, 5) ----------------------------------------------------------------

def fbc_agent(cfg: BenchConfig, freeze_mode: str, bf16: bool, data: SyntheticLiftData,
              device: torch.device) -> FBCAgent:
    """The default Lift agent (crops of 76, EMA) with this freeze mode and crop cache, set
    up as train_bc.py sets it up for the precision; same initial weights in every arm."""
    torch.manual_seed(0)
    agent_cfg = FBCConfig(encoder=EncoderConfig(weights="random", freeze_mode=freeze_mode),
                          cache_crops=cfg.cache_crops)
    return to_channels_last(FBCAgent(agent_cfg, data.spec, device), bf16)


def fbc_loss(agent: FBCAgent, bf16: bool, device: torch.device) -> Callable:
    """train_bc.py's loss_fn (one process: no DDP)."""
    return with_autocast(LossForward(agent, agent.loss), device, bf16)


def fbc_step(agent: FBCAgent, data, batch_size: int, bf16: bool,
             device: torch.device) -> Callable[[], object]:
    """One training step as train_bc.py takes it: sample, gather, update (EMA included)."""
    loss_fn = fbc_loss(agent, bf16, device)
    gen = torch.Generator(device=device).manual_seed(0)
    return lambda: agent.update(data.batch(data.sample_indices(batch_size, gen)), loss_fn)


def build_cache(agent: FBCAgent, data, bf16: bool, device: torch.device):
    """The frozen-feature cache, in the precision training reads it (as train_bc.py)."""
    with autocast(device, bf16):
        return agent.prepare(data)


def fbc_bound(agent: FBCAgent, batch: dict[str, torch.Tensor], bf16: bool,
              device: torch.device) -> Callable[[], None]:
    """What a cached step cannot do without: the loss's forward, backward and the
    optimizer's step, on one fixed batch (no sampling, no gather, no EMA, no grad norms)."""
    loss_fn = fbc_loss(agent, bf16, device)
    agent.train()

    def step() -> None:
        loss, _ = loss_fn(batch)
        agent.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        agent.optimizer.step()

    return step


def measure_fbc_finetuned(cfg: BenchConfig, device: torch.device) -> Measured:
    data = SyntheticLiftData(cfg.fbc_frames, device)
    arms = {p: fbc_step(fbc_agent(cfg, "none", p == "bf16", data, device), data, cfg.fbc_batch,
                        p == "bf16", device) for p in PRECISIONS}
    return interleaved(arms, cfg.rounds, cfg.fbc_steps, device, warmup=2)


def measure_cache_build(cfg: BenchConfig, device: torch.device) -> Measured:
    data = SyntheticLiftData(cfg.fbc_frames, device)
    arms = {p: partial(build_cache, fbc_agent(cfg, "all", p == "bf16", data, device), data,
                       p == "bf16", device) for p in PRECISIONS}
    return interleaved(arms, cfg.rounds, 1, device)


def measure_fbc_cached(cfg: BenchConfig, device: torch.device) -> Measured:
    """Arms '<precision> step' and '<precision> bound' on one agent and cache each."""
    data = SyntheticLiftData(cfg.fbc_frames, device)
    arms = {}
    for p in PRECISIONS:
        bf16 = p == "bf16"
        agent = fbc_agent(cfg, "all", bf16, data, device)
        cached = build_cache(agent, data, bf16, device)
        gen = torch.Generator(device=device).manual_seed(1)
        fixed = cached.batch(cached.sample_indices(cfg.fbc_batch, gen))
        arms[f"{p} step"] = fbc_step(agent, cached, cfg.fbc_batch, bf16, device)
        arms[f"{p} bound"] = fbc_bound(agent, fixed, bf16, device)
    return interleaved(arms, cfg.rounds, cfg.fbc_steps, device, warmup=2)


# ---- PPO (parts 2, 4) -------------------------------------------------------------------

def ppo_iteration(cfg: BenchConfig, freeze_mode: str, bf16: bool,
                  device: torch.device) -> Callable[[], None]:
    """One train_ppo.py iteration (collect_rollout + update) on the standard preset, built
    as train_ppo.train builds it for the precision; no evaluation, checkpoint or logging."""
    run_cfg = train_ppo.TrainPPOConfig(
        backbone=train_ppo.BackboneConfig(weights="random", freeze_mode=freeze_mode),
        ppo=cfg.ppo, env=DurotaxisConfig(preset="standard", image_size=cfg.image_size),
        eval_episodes=0, video=False,
    )
    env, ppo = run_cfg.env, run_cfg.ppo
    envs = make_engine(env, ppo.num_envs, device)
    obs_shape = (env.frame_stack * env.channels, env.image_size, env.image_size)
    torch.manual_seed(0)
    model = HybridActorCritic(run_cfg.backbone.encoder_config(), obs_shape, run_cfg.agent,
                              action=train_ppo.durotaxis_action(env), frames=env.frame_stack)
    model = to_channels_last(model.to(device).eval(), bf16)
    optimizer = build_optimizer(model, backbone_lr=run_cfg.backbone.backbone_lr,
                                head_lr=run_cfg.backbone.head_lr, kind="adam", eps=1e-5)
    reuse = run_cfg.reuse_features and model.caches_prefix
    prefix = train_ppo.prefix_shape(model, obs_shape, device) if reuse else None
    buffer = RolloutBuffer(ppo.num_steps, ppo.num_envs, obs_shape=obs_shape,
                           param_dim=len(model.param_low), device=device, prefix_shape=prefix)
    loss_fn = with_autocast(LossForward(model, partial(ppo_loss, model, cfg=ppo)), device, bf16)
    shuffle_gen = torch.Generator().manual_seed(1)
    run = SimpleNamespace(world=World())  # all that update() reads of the Run: one process
    state = {"obs": envs.reset(seed=0)}

    def iteration() -> None:
        state["obs"] = train_ppo.collect_rollout(model, envs, buffer, state["obs"], run_cfg,
                                                 device, bf16)
        train_ppo.update(model, optimizer, buffer, shuffle_gen, loss_fn, run, run_cfg)

    return iteration


def measure_ppo(cfg: BenchConfig, device: torch.device, freeze_mode: str) -> Measured:
    arms = {p: ppo_iteration(cfg, freeze_mode, p == "bf16", device) for p in PRECISIONS}
    return interleaved(arms, cfg.rounds, cfg.ppo_iterations, device)


# ---- the report -------------------------------------------------------------------------

def ppo_label(cfg: BenchConfig, freeze_mode: str) -> str:
    p = cfg.ppo
    return (f"PPO end to end, freeze_mode={freeze_mode}"
            f"{', features reused' if freeze_mode == 'all' else ''}, standard preset "
            f"{cfg.image_size}x{cfg.image_size}, {p.num_envs} envs x {p.num_steps} steps, "
            f"{p.update_epochs} epochs x {p.num_minibatches} minibatches, per iteration")


def report_ratio(cfg: BenchConfig, part: Part, measured: Measured) -> list[str]:
    """Parts 1-4: fp32 vs bf16 against the issue's target."""
    b = cfg.fbc_batch
    label, target = {
        "fbc_finetuned": (f"fine-tuned fbc step, batch {b}, 76x76 crops of 84x84, 2 cameras",
                          1.6),
        "ppo_finetuned": (ppo_label(cfg, "none"), 1.6),
        "cache_build": (f"frozen feature cache build, {cfg.fbc_frames} frames x 2 cameras x "
                        f"{cfg.cache_crops} crops 76x76", 1.8),
        "ppo_frozen": (ppo_label(cfg, "all"), 1.3),
    }[part]
    return [ratio_line(label, measured, target), rounds_line(measured)]


def report_bound(cfg: BenchConfig, measured: Measured, target: float = 1.3) -> list[str]:
    """Part 5: each precision's cached step against its own bound."""
    lines = []
    for p in PRECISIONS:
        step, bound = measured.median(f"{p} step"), measured.median(f"{p} bound")
        verdict = "met" if step / bound <= target else "NOT met"
        lines.append(f"frozen+cached fbc step vs bound, batch {cfg.fbc_batch}, {p}: step "
                     f"{ms(step)}, bound {ms(bound)} -> step / bound {step / bound:.2f}x "
                     f"(target <= {target}x: {verdict})")
    return lines + [rounds_line(measured)]


MEASURE: dict[Part, Callable[[BenchConfig, torch.device], Measured]] = {
    "fbc_finetuned": measure_fbc_finetuned,
    "ppo_finetuned": partial(measure_ppo, freeze_mode="none"),
    "cache_build": measure_cache_build,
    "ppo_frozen": partial(measure_ppo, freeze_mode="all"),
    "fbc_cached": measure_fbc_cached,
}


def header(cfg: BenchConfig, device: torch.device, argv: list[str]) -> list[str]:
    """Machine, torch, threads, date and the exact command: what the numbers belong to."""
    m = describe_machine(device)
    where = m["gpu"] or f"{m['cpu']} ({m['cpu_id']}, {m['cpu_capability']})"
    omp = os.environ.get("OMP_NUM_THREADS")
    command = " ".join(filter(None, [omp and f"OMP_NUM_THREADS={omp}",
                                     "python benchmarks/bench_precision.py", shlex.join(argv)]))
    bf16 = "native" if native_bf16(device) else "EMULATED (expect bf16 slower)"
    return [
        f"machine: {where}, {m['cpu_cores']} usable cores; device {device}, bf16 {bf16}; "
        f"torch {m['torch']}, torch threads {torch.get_num_threads()}; "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}",
        f"command: {command}",
        f"medians of {cfg.rounds} interleaved rounds per arm (fp32, bf16, fp32, ...), "
        f"warm-up excluded" + ("; --quick: tiny sizes, the ratios mean nothing" if cfg.quick
                               else ""),
    ]


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Print the header and each part's lines; returns each part's median seconds per arm."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # The house parser wants --quick=True; the bare flag reads better for a smoke run.
    cfg = parse_config(BenchConfig, ["--quick=True" if a == "--quick" else a for a in argv],
                       description=__doc__)
    if cfg.quick:
        cfg = replace(cfg, **QUICK)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    print("\n".join(header(cfg, device, argv)), flush=True)
    results = {}
    for part in cfg.parts:
        # The cache build's progress bar would print once per round.
        with mock.patch.object(agents.fbc, "tqdm", partial(tqdm, disable=True)):
            measured = MEASURE[part](cfg, device)
        lines = (report_bound(cfg, measured) if part == "fbc_cached"
                 else report_ratio(cfg, part, measured))
        print("\n".join(lines), flush=True)
        results[part] = {arm: measured.median(arm) for arm in measured.rounds}
    return results


if __name__ == "__main__":
    run_main(main)  # a bad flag: one line and exit status 2
