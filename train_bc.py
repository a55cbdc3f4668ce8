"""Behaviour cloning from a dataset: flow-matching BC on Lift, Algorithm Distillation on Dark Room.

    python train_bc.py --agent.freeze_encoder=True
    python train_bc.py --env_name=lift-ph-image --dataset=lift_ph_image.hdf5
    python train_bc.py --env_name=darkroom --agent=ad
    torchrun --standalone --nproc_per_node=8 train_bc.py --batch_size=2048   # 8 GPUs

`--env_name` picks the task (data + evaluation runner, envs/bc_tasks.py) and `--agent`
the method (agents/, default: the task's); both are read first, because they decide
which config the remaining flags fill in. `--help` after them lists that config.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Generic, Literal, TypeVar

import torch
import tyro
from tqdm import tqdm

from agents import agent_name, get_agent
from envs.bc_tasks import get_bc_task
from training.checkpoint import (
    load_checkpoint,
    load_model_state,
    load_optimizer_state,
    restore_rng,
    rng_state,
    save_checkpoint,
)
from training.cli import parse_config, pop_flag, run_main
from training.device import resolve_device
from training.distributed import (
    LossForward,
    barrier,
    broadcast_object,
    close_world,
    data_parallel,
    gather_objects,
    init_world,
    mean_metrics,
    stop_agreed,
)
from training.guards import NonFiniteGradient, NonFiniteGuard, StopOnSignal
from training.logger import RunLogger, WandbConfig
from training.precision import autocast, to_channels_last, with_autocast
from training.report import encoder_weight_sources, parameter_report
from training.run_dir import choose_run_dir, open_run_dir
from training.seeding import seed_everything

DEFAULT_ENV = "lift-scripted-image"
AgentConfigT = TypeVar("AgentConfigT")


@dataclass(frozen=True)
class TrainBCConfig(Generic[AgentConfigT]):
    """Offline training of one agent on one task's dataset, with periodic evaluation."""

    agent: AgentConfigT
    """The agent's own settings (--agent NAME picks the agent)."""
    env_name: str = DEFAULT_ENV
    """Task by full name (lift-scripted-image, lift-ph-image, lift-mh-image, darkroom, ...)."""
    agent_name: tyro.conf.Suppress[str] = ""
    dataset: str | None = None
    """Dataset file; None = the task's embedded default (generated and cached on first use)."""
    offline_steps: int = 20_000
    """Gradient steps."""
    batch_size: int = 256
    """Samples per gradient step, over all processes (torchrun: each rank takes its share)."""
    eval_interval: int = 5_000
    """Evaluate every this many steps (and at the end); 0 = only at the end."""
    eval_episodes: int = 50
    """Evaluation episodes (rollouts; for AD: in-context episodes); 0 = no evaluation at all
    (no evaluator is built: for Lift, no robosuite)."""
    eval_workers: int = 1
    """Evaluation environments run in this many worker processes (where the task supports it)."""
    log_interval: int = 100
    """Log training metrics every this many steps."""
    save_interval: int = 5_000
    """Write checkpoints/last.pt every this many steps (and at the end)."""
    skip_nonfinite: bool = False
    """On a NaN/Inf gradient skip the step instead of stopping the run."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto = cuda when available (under torchrun: cuda:LOCAL_RANK)."""
    amp: bool = False
    """bf16 autocast for the loss's forward pass and for evaluation (weights stay fp32)."""
    channels_last: bool = False
    """Keep convolution weights channels-last (NHWC): faster convolutions on GPUs."""
    seed: int = 0
    """Seeds data sampling, initialisation and evaluation."""
    output_dir: str | None = None
    """Run directory; None = runs/<env>_<agent>_s<seed>_<time>."""
    resume: bool = False
    """Continue the run in --output_dir from checkpoints/last.pt."""
    overwrite: bool = False
    """Replace an existing --output_dir instead of refusing to touch it."""
    cache_dir: str = "~/.cache/rlenc"
    """Where generated default datasets are kept."""
    wandb: WandbConfig = WandbConfig(project="rlenc-bc")
    """Weights & Biases logging."""


def parse_args(argv: list[str] | None = None) -> TrainBCConfig:
    """Read --env_name and --agent, then parse the rest into that agent's config."""
    args = list(sys.argv[1:] if argv is None else argv)
    env_flag, args = pop_flag(args, "--env_name")
    agent_flag, args = pop_flag(args, "--agent")
    task = get_bc_task(env_flag or DEFAULT_ENV)
    name = agent_name(agent_flag or task.default_agent)
    agent_config_class, _ = get_agent(name)
    default = TrainBCConfig(
        agent=agent_config_class(), env_name=task.name, agent_name=name, **task.defaults
    )
    return parse_config(
        TrainBCConfig[agent_config_class], args, description=__doc__, default=default
    )


def check_settings(cfg: TrainBCConfig) -> None:
    """One-line errors for counts that cannot work (here, not in tyro's framed messages)."""
    positive = ("batch_size", "log_interval", "save_interval")
    at_least_zero = ("offline_steps", "eval_interval", "eval_episodes")
    for name in positive + at_least_zero:
        value, low = getattr(cfg, name), 1 if name in positive else 0
        if value < low:
            raise ValueError(f"--{name}={value} must be at least {low}")


def train(cfg: TrainBCConfig) -> dict[str, float]:
    """Train, evaluate and checkpoint; returns the final evaluation metrics (rank 0's)."""
    check_settings(cfg)
    world, device = init_world(resolve_device(cfg.device))
    shard = world.shard(cfg.batch_size)  # --batch_size is the global batch
    seed_everything(cfg.seed)
    task = get_bc_task(cfg.env_name)
    task_module = task.load()
    _, agent_class = get_agent(cfg.agent_name)
    name = f"{cfg.env_name}_{cfg.agent_name}_s{cfg.seed}"
    run_dir = broadcast_object(  # rank 0 checks and picks it (a default name has a time in it)
        choose_run_dir(cfg.output_dir, name, resume=cfg.resume, overwrite=cfg.overwrite)
        if world.is_main
        else None,
        world,
    )
    cfg = replace(cfg, output_dir=str(run_dir))

    # ---- data and agent (rank 0 first: it may generate and cache the default dataset)
    cache_dir = Path(cfg.cache_dir).expanduser()
    if not world.is_main:
        barrier(world)
    data = task_module.make_data(
        cfg.dataset, cfg.agent, device=device, seed=cfg.seed, cache_dir=cache_dir, **task.options
    )
    if world.is_main:
        barrier(world)
        tqdm.write(data.describe())
    agent = agent_class(cfg.agent, data.spec, device)
    to_channels_last(agent, cfg.channels_last)
    # Same sample indices on every rank, each taking its shard of the global batch.
    sampler = torch.Generator(device=device).manual_seed(cfg.seed)

    start_step = 0
    ckpt_path = run_dir / "checkpoints" / "last.pt"
    if cfg.resume:
        ckpt = load_checkpoint(ckpt_path, map_location=device)
        load_model_state(agent, ckpt["model"], str(ckpt_path))
        load_optimizer_state(agent.optimizer, ckpt["optimizer"], str(ckpt_path))
        sampler.set_state(ckpt["extra"]["sampler"].cpu())
        start_step = ckpt["step"]
        rank_rngs = ckpt["extra"].get("rank_rng", [ckpt["rng"]])
        if len(rank_rngs) == world.world_size:
            restore_rng(rank_rngs[world.rank])
        else:  # saved by another number of processes: same batches, fresh per-rank noise
            seed_everything(cfg.seed + world.rank + start_step)
    elif world.enabled:
        seed_everything(cfg.seed + world.rank)  # per-rank noise; DDP syncs the weights
    # The loss's forward, data-parallel over processes and in bf16 when asked for.
    loss_fn = data_parallel(LossForward(agent, agent.loss), world, device)
    loss_fn = with_autocast(loss_fn, device, cfg.amp)

    if world.is_main:  # inputs checked: only now may --overwrite delete the old run
        open_run_dir(run_dir, overwrite=cfg.overwrite)
    logger = RunLogger(
        run_dir,
        cfg,
        cfg.wandb,
        run_name=run_dir.name,
        active=world.is_main,
        resume_step=start_step if cfg.resume else None,
    )
    logger.add_config({"agent_name": cfg.agent_name, **encoder_weight_sources(agent)})
    if world.is_main:
        logger.log(parameter_report(agent, agent.optimizer, agent.components()), step=start_step)
    if hasattr(agent, "prepare"):
        data = agent.prepare(data)  # e.g. embed every frame once when the encoder is frozen
    evaluator = None
    if cfg.eval_episodes > 0 and world.is_main:
        evaluator = task_module.make_evaluator(
            data.spec,
            device=device,
            seed=cfg.seed,
            num_workers=cfg.eval_workers,
            video_dir=run_dir / "videos",
            **task.options,
        )

    last_saved = {"step": start_step if cfg.resume else None}

    def save(step: int, skipped: int) -> None:
        extra = {"sampler": sampler.get_state(), "skipped_nonfinite": skipped}
        if world.enabled:
            extra["rank_rng"] = gather_objects(rng_state(), world)
        if world.is_main:
            save_checkpoint(
                ckpt_path,
                model=agent,
                optimizer=agent.optimizer,
                step=step,
                config=cfg,
                extra=extra,
            )
        last_saved["step"] = step

    def evaluate(step: int) -> dict[str, float]:
        if evaluator is None:
            return {}
        with autocast(device, cfg.amp):
            result = evaluator.run(agent, cfg.eval_episodes)
        logger.log(result["metrics"], step=step)
        if result.get("video") is not None:
            logger.log_video("eval/video", result["video"], step=step)
        for plot in result.get("plots", []):
            logger.log_image(f"eval/{plot.stem}", plot, step=step)
        return result["metrics"]

    def check_finite(step: int) -> int:
        try:
            return guard.check()
        except NonFiniteGradient as err:
            kept = last_saved["step"]
            kept = "none yet" if kept is None else f"{ckpt_path} (step {kept})"
            raise NonFiniteGradient(
                f"step {start_step + err.step}: {err}; weights held at the step before, last "
                f"good checkpoint: {kept}; rerun with --skip_nonfinite=True to skip such steps"
            ) from None

    # ---- training loop: the host reads the device only at log, eval and save steps
    guard = NonFiniteGuard(agent.optimizer, skip=cfg.skip_nonfinite)
    if cfg.resume:  # the logged count of skipped steps goes on from the checkpoint's
        guard.skipped += int(ckpt["extra"].get("skipped_nonfinite", 0))
    metrics: dict[str, float] = {}
    tick, tick_step = time.perf_counter(), start_step
    steps = range(start_step + 1, cfg.offline_steps + 1)
    progress = tqdm(
        steps, initial=start_step, total=cfg.offline_steps, desc="train", disable=not world.is_main
    )
    stopping = False
    with StopOnSignal() as stop:
        for step in progress:
            indices = data.sample_indices(cfg.batch_size, sampler)
            info = agent.update(data.batch(indices[shard]), loss_fn)
            last = step == cfg.offline_steps
            evaluating = last or (cfg.eval_interval and step % cfg.eval_interval == 0)
            saving = last or step % cfg.save_interval == 0
            logging = step % cfg.log_interval == 0
            sync_point = logging or evaluating or saving
            # With several processes a signal is acted on at a sync point, by all ranks.
            stopping = stop_agreed(stop.requested is not None, world, device, sync_point)
            if sync_point or stopping:
                skipped = check_finite(step)
            if logging:
                info = mean_metrics(info, world)
                now = time.perf_counter()
                info["perf/steps_per_sec"] = (step - tick_step) / (now - tick)
                info["train/skipped_nonfinite_steps"] = skipped
                tick, tick_step = now, step
                logger.log(info, step=step)
            if evaluating:
                metrics = evaluate(step)
            if saving or stopping:
                save(step, skipped)
            if stopping:
                if world.is_main:
                    tqdm.write(
                        f"{stop.requested or 'stop signal'} at step {step}: wrote {ckpt_path}; "
                        f"continue with --output_dir={run_dir} --resume=True"
                    )
                break
    if evaluator is not None and start_step >= cfg.offline_steps:
        metrics = evaluate(start_step)
    if not stopping and world.is_main:
        (run_dir / "final_metrics.json").write_text(json.dumps(metrics, indent=2))
    if evaluator is not None:
        evaluator.close()
    logger.close()
    close_world(world)
    return {} if stopping else metrics


def main() -> None:
    train(parse_args())


if __name__ == "__main__":
    run_main(main)
