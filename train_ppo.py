"""PPO on Durotaxis with ResNet actor and critic backbones, frozen or fine-tuned.

    python train_ppo.py --backbone.freeze_mode=all
    torchrun --standalone --nproc_per_node=8 train_ppo.py --ppo.num_envs=256   # 8 GPUs

Rollouts and updates run on `--device` (the environments are tensors there too). With
every backbone frozen (freeze_mode=all, avg pooling) the features computed in the
rollout are exactly what the update needs, so they are stored and reused and the
update never runs a backbone; frozen actor and critic backbones hold the same weights,
so one of them is run for both. The network stays in eval mode throughout, so that
BatchNorm computes the same function in the rollout (old log-probs) and the update (new
log-probs); with a trainable backbone, BN's affine parameters train, its statistics do
not. Truncated episodes are treated as ended (CleanRL's convention), which matters
little here: successful episodes end long before max_steps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

import imageio.v2 as imageio
import numpy as np
import torch
from tqdm import tqdm

from agents.hybrid_actor_critic import HybridActorCritic, HybridActorCriticConfig
from agents.ppo import PPOConfig, compute_gae, ppo_loss, ppo_update
from encoders import EncoderConfig
from envs.durotaxis import (
    DurotaxisConfig,
    DurotaxisCore,
    heuristic_policy,
    random_policy,
    run_episodes,
)
from training.checkpoint import (
    load_checkpoint,
    load_model_state,
    load_optimizer_state,
    restore_rng,
    rng_state,
    save_checkpoint,
)
from training.cli import parse_config, run_main
from training.device import resolve_device
from training.distributed import (
    LossForward,
    broadcast_object,
    close_world,
    data_parallel,
    gather_objects,
    init_world,
    stop_agreed,
    sum_over_ranks,
)
from training.guards import NonFiniteGradient, NonFiniteGuard, StopOnSignal
from training.logger import RunLogger, WandbConfig
from training.optim import build_optimizer, scale_learning_rates
from training.precision import autocast, to_channels_last, with_autocast
from training.report import parameter_report
from training.run_dir import choose_run_dir, open_run_dir
from training.seeding import seed_everything


@dataclass(frozen=True)
class BackboneConfig:
    """The actor's and critic's ResNet backbones."""

    # Plain strings, checked when the run starts, so that a wrong value fails with one
    # line (tyro renders its own choice errors as a multi-line box).
    arch: str = "resnet18"
    """resnet18 | resnet34 | resnet50."""
    weights: str = "auto"
    """auto (ImageNet if cached, else random init with a warning) | imagenet | random | PATH."""
    input_adapter: str = "repeat3"
    """1-channel image: repeat3 | 1ch_conv; 3-channel image (env.channels=3): none."""
    freeze_mode: str = "all"
    """none | all | until_layer3 | last_block."""
    pooling: str = "avg"
    """avg | spatial_softmax (its keypoint layer trains, so features are not reused)."""
    backbone_lr: float = 1e-4
    """Learning rate of trainable backbone parameters."""
    head_lr: float = 3e-4
    """Learning rate of the heads (policy, value, log std)."""

    def encoder_config(self) -> EncoderConfig:
        """The EncoderConfig (raises one-line ValueError on an unknown choice)."""
        return EncoderConfig(
            arch=self.arch,  # type: ignore[arg-type]
            weights=self.weights,
            input_adapter=self.input_adapter,  # type: ignore[arg-type]
            freeze_mode=self.freeze_mode,  # type: ignore[arg-type]
            pooling=self.pooling,  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class TrainConfig:
    """PPO on Durotaxis."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    agent: HybridActorCriticConfig = field(default_factory=HybridActorCriticConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    env: DurotaxisConfig = field(default_factory=DurotaxisConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto | cpu | cuda: environments, rollouts and updates all run there (torchrun:
    cuda:LOCAL_RANK)."""
    amp: bool = False
    """bf16 autocast for the network's forward passes (rollouts and updates)."""
    channels_last: bool = False
    """Keep convolution weights channels-last (NHWC): faster convolutions on GPUs."""
    seed: int = 1
    """Seed of torch, numpy, python and the environments."""
    output_dir: str | None = None
    """Run directory (metrics, config, checkpoints, curve PNG, episode GIF); None = runs/ppo_*."""
    resume: bool = False
    """Continue the run in --output_dir from checkpoints/last.pt, exactly as if never stopped."""
    overwrite: bool = False
    """Replace an existing --output_dir instead of refusing to touch it."""
    skip_nonfinite: bool = False
    """On a NaN/Inf gradient skip the minibatch step instead of stopping the run."""
    reuse_features: bool = True
    """Reuse frozen backbones' rollout features in the update (False: re-run them; benchmarks)."""
    checkpoint_every: int = 10
    """Save a checkpoint every this many iterations (and at the end)."""
    eval_episodes: int = 256
    """Episodes of the final deterministic evaluation (0: skip it and the baselines)."""
    video: bool = True
    """Render one deterministic episode to a GIF at the end."""
    threads: int = 0
    """torch CPU threads (0: torch's default)."""


def greedy_policy(model: HybridActorCritic):
    """The deterministic policy as an env -> (kind, params) function."""

    def policy(env: DurotaxisCore) -> tuple[torch.Tensor, torch.Tensor]:
        out = model.act(env.observe(), deterministic=True)
        return out["kind"], out["params"]

    return policy


def _frame(env: DurotaxisCore, size: int = 256) -> np.ndarray:
    """Whole substrate (left) beside the agent's observation, upscaled (right)."""
    obs = env.observe()[0, 0].cpu().numpy()
    scale = max(1, size // obs.shape[0])
    view = np.zeros((size, size), np.uint8)
    big = np.kron(obs, np.ones((scale, scale), np.uint8))[:size, :size]
    view[: big.shape[0], : big.shape[1]] = big
    return np.concatenate([env.render_rgb(0, size=size), np.stack([view] * 3, axis=-1)], axis=1)


def render_episode(
    model: HybridActorCritic, cfg: TrainConfig, device: torch.device, path: Path
) -> dict[str, float]:
    """One deterministic episode saved as a GIF; returns its return and outcome."""
    env = DurotaxisCore(cfg.env, 1, device)
    env.reset(seed=cfg.seed + 999)
    frames, total, success = [], 0.0, False
    for _ in range(cfg.env.max_steps):
        frames.append(_frame(env))
        out = model.act(env.observe(), deterministic=True)
        reward, terminated, truncated, info = env.step(out["kind"], out["params"])
        total += float(reward[0])
        success = bool(info["is_success"][0])
        if bool(terminated[0] | truncated[0]):
            break
    frames.append(_frame(env))
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
        for name, style in (("random", ":"), ("heuristic", "--")):
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


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train, evaluate, render; returns the last logged metrics."""
    return train(parse_config(TrainConfig, args=argv, description=__doc__))


def train(cfg: TrainConfig) -> dict[str, float]:
    """The whole run, top to bottom."""
    # ----- setup: everything that can reject the config does so before any work ------
    encoder_cfg = cfg.backbone.encoder_config()
    if cfg.ppo.batch_size % cfg.ppo.num_minibatches:
        raise ValueError(
            f"ppo.num_envs * ppo.num_steps ({cfg.ppo.batch_size}) must be divisible by "
            f"ppo.num_minibatches ({cfg.ppo.num_minibatches})"
        )
    if cfg.backbone.pooling == "spatial_softmax" and cfg.env.image_size <= 32:
        # ResNets downsample 32x: on a 1 x 1 map every image gives the same keypoints.
        raise ValueError(
            f"env.image_size={cfg.env.image_size} leaves a 1 x 1 ResNet feature map, on which "
            f"spatial_softmax sees nothing; use env.image_size >= 33 or backbone.pooling=avg"
        )
    world, device = init_world(resolve_device(cfg.device))
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)  # the same initial weights on every rank
    ppo = cfg.ppo
    # Each rank steps its own ppo.num_envs environments; total_timesteps counts them all.
    num_iterations = max(1, ppo.total_timesteps // (ppo.batch_size * world.world_size))

    envs = DurotaxisCore(cfg.env, ppo.num_envs, device)
    obs_shape = (cfg.env.channels, cfg.env.image_size, cfg.env.image_size)
    model = HybridActorCritic(encoder_cfg, obs_shape, cfg.agent).to(device).eval()
    to_channels_last(model, cfg.channels_last)
    optimizer = build_optimizer(
        model,
        backbone_lr=cfg.backbone.backbone_lr,
        head_lr=cfg.backbone.head_lr,
        kind="adam",
        eps=1e-5,
    )
    guard = NonFiniteGuard(optimizer, skip=cfg.skip_nonfinite)
    reuse = cfg.reuse_features and model.features_are_fixed

    name = f"ppo_durotaxis_{cfg.backbone.freeze_mode}_s{cfg.seed}"
    out_dir = broadcast_object(  # rank 0 checks and picks it (a default name has a time in it)
        choose_run_dir(cfg.output_dir, name, resume=cfg.resume, overwrite=cfg.overwrite)
        if world.is_main
        else None,
        world,
    )
    ckpt_path = out_dir / "checkpoints" / "last.pt"

    # ----- what one iteration hands the next: fresh, or as a checkpoint left it ----------
    # A resumed run restores all of it, so it continues bit-exactly as if never stopped.
    start_iteration, global_step = 1, 0
    next_obs = envs.reset(seed=cfg.seed * 100_003 + ppo.num_envs + world.rank * 1_000_003)
    shuffle_gen = torch.Generator().manual_seed(cfg.seed + 1)
    if world.enabled:
        seed_everything(cfg.seed + world.rank)  # per-rank action sampling
    baselines: dict[str, float] = {}
    history: list[dict] = []
    if cfg.resume:
        # Loaded on the CPU (RNG states must be CPU tensors); load_state_dicts move the rest.
        ckpt = load_checkpoint(ckpt_path)
        carried = ckpt["extra"]
        if "ranks" not in carried:
            raise ValueError(
                f"{ckpt_path} holds no environment state (an older train_ppo.py wrote it), so "
                f"the run cannot continue exactly; start a new run"
            )
        load_model_state(model, ckpt["model"], str(ckpt_path))
        load_optimizer_state(optimizer, ckpt["optimizer"], str(ckpt_path))
        ranks = carried["ranks"]
        if len(ranks) != world.world_size:
            raise ValueError(
                f"{ckpt_path} was written by {len(ranks)} process(es); resume it with as many "
                f"(torchrun --nproc_per_node={len(ranks)}) so each rank gets its environments back"
            )
        envs.load_state_dict(ranks[world.rank]["env"])
        next_obs = envs.observe()
        shuffle_gen.set_state(ranks[world.rank]["shuffle_gen"])
        guard.skipped += int(carried["skipped_nonfinite_steps"])
        baselines, history = carried["baselines"], carried["history"]
        restore_rng(ranks[world.rank]["rng"])
        global_step = ckpt["step"]
        start_iteration = int(carried["iteration"]) + 1

    # Only now, with the config and any checkpoint accepted, is the run directory written.
    if world.is_main:
        open_run_dir(out_dir, overwrite=cfg.overwrite)
    logger = RunLogger(
        out_dir,
        cfg,
        wandb=cfg.wandb,
        active=world.is_main,
        resume_step=global_step if cfg.resume else None,
    )
    logger.add_config(
        {
            "weights_source": model.actor_encoder.weights_source,
            "features_reused": reuse,
            "encoders_run_per_step": 1 if model.runs_one_encoder else 2,
        }
    )
    if model.actor_encoder.weights_source.startswith("random") and world.is_main:
        tqdm.write(
            f"NOTE: backbones are randomly initialised ({model.actor_encoder.weights_source}); "
            "a frozen random ResNet still gives usable features for this task."
        )
    if world.is_main:
        if cfg.resume:  # the first part of the run logged the parameter report
            tqdm.write(f"resumed from {ckpt_path} at step {global_step}")
        else:
            logger.log(parameter_report(model, optimizer, model.components()), step=0)
    # The loss's forward, data-parallel over processes and in bf16 when asked for.
    loss_fn = data_parallel(LossForward(model, partial(ppo_loss, model, cfg=ppo)), world, device)
    loss_fn = with_autocast(loss_fn, device, cfg.amp)

    # ----- floor and ceiling on the evaluation seeds (once per run) ----------------------
    eval_seed = 1_000_000 + cfg.seed
    if cfg.eval_episodes > 0 and not baselines and world.is_main:
        gen = torch.Generator(device=device).manual_seed(cfg.seed)
        floor_and_ceiling = {
            "random": lambda e: random_policy(e, gen),
            "heuristic": heuristic_policy,
        }
        for name, policy in floor_and_ceiling.items():
            eval_envs = DurotaxisCore(cfg.env, cfg.eval_episodes, device)
            stats = run_episodes(eval_envs, policy, seed=eval_seed)
            baselines[f"eval/{name}_success_rate"] = stats["success_rate"]
            baselines[f"eval/{name}_episodic_return"] = stats["mean_return"]
        logger.log(baselines, step=global_step)

    # ----- rollout storage, on the device ------------------------------------------------
    T, B = ppo.num_steps, ppo.num_envs
    feat_dim = model.actor_encoder.out_dim
    if reuse:
        features = torch.zeros(T, B, feat_dim, device=device)
    else:
        observations = torch.zeros(T, B, *obs_shape, dtype=torch.uint8, device=device)
    kinds = torch.zeros(T, B, dtype=torch.long, device=device)
    us = torch.zeros(T, B, len(model.param_low), device=device)
    log_probs = torch.zeros(T, B, device=device)
    values = torch.zeros(T, B, device=device)
    rewards = torch.zeros(T, B, device=device)
    dones = torch.zeros(T, B, dtype=torch.bool, device=device)

    metrics: dict[str, float] = {}
    stopping = False
    start_time, start_step = time.time(), global_step
    with StopOnSignal() as stop:  # a signal ends the loop after a checkpoint
        iterations = range(start_iteration, num_iterations + 1)
        progress = tqdm(
            iterations,
            desc="ppo",
            initial=start_iteration - 1,
            total=num_iterations,
            disable=not world.is_main,
        )
        for iteration in progress:
            if ppo.anneal_lr:
                scale_learning_rates(optimizer, 1.0 - (iteration - 1.0) / num_iterations)

            # ----- rollout: no host round-trips inside -------------------------------------
            ep_return_sum = torch.zeros((), device=device)
            ep_length_sum = torch.zeros((), device=device)
            ep_success = torch.zeros((), device=device)
            ep_count = torch.zeros((), device=device)
            for t in range(T):
                with autocast(device, cfg.amp):
                    out = model.act(next_obs)
                if reuse:
                    features[t] = out["actor_features"]
                else:
                    observations[t] = next_obs
                kinds[t], us[t], log_probs[t] = out["kind"], out["u"], out["log_prob"]
                values[t] = out["value"]
                next_obs, reward, terminated, truncated, info = envs.autoreset_step(
                    out["kind"], out["params"]
                )
                done = terminated | truncated
                rewards[t], dones[t] = reward, done
                ep_return_sum += (info["episode_return"] * done).sum()
                ep_length_sum += (info["episode_length"] * done).sum()
                ep_success += (info["is_success"] & done).sum()
                ep_count += done.sum()
            global_step += T * B * world.world_size

            # ----- advantages ---------------------------------------------------------------
            with torch.no_grad(), autocast(device, cfg.amp):
                _, next_critic = model.encode(next_obs)
                advantages, returns = compute_gae(
                    rewards, values, dones, model.value(next_critic), ppo.gamma, ppo.gae_lambda
                )
            batch = {
                "kind": kinds.reshape(-1),
                "u": us.reshape(T * B, -1),
                "log_prob": log_probs.reshape(-1),
                "values": values.reshape(-1),
                "advantages": advantages.reshape(-1),
                "returns": returns.reshape(-1),
            }
            if reuse:
                # Frozen twins: the critic's features are the actor's.
                batch["actor_features"] = batch["critic_features"] = features.reshape(T * B, -1)
            else:
                batch["obs"] = observations.reshape(T * B, *obs_shape)

            # ----- update ---------------------------------------------------------------------
            metrics = ppo_update(
                model, optimizer, batch, ppo, shuffle_gen, loss_fn=loss_fn, world=world
            )
            try:
                metrics["train/skipped_nonfinite_steps"] = guard.check()
            except NonFiniteGradient as err:
                raise NonFiniteGradient(
                    f"iteration {iteration} (step {global_step}): {err}; weights held from that "
                    f"minibatch on, last good checkpoint: {ckpt_path}; rerun with "
                    f"--skip_nonfinite=True to skip such steps"
                ) from None
            episode_sums = torch.stack([ep_count, ep_return_sum, ep_length_sum, ep_success])
            count, ret, length, succ = sum_over_ranks(episode_sums, world).tolist()
            if count > 0:
                metrics["charts/episodic_return"] = ret / count
                metrics["charts/episodic_length"] = length / count
                metrics["charts/success_rate"] = succ / count
            metrics["charts/episodes"] = count
            metrics["charts/learning_rate"] = optimizer.param_groups[-1]["lr"]
            metrics["perf/sps"] = (global_step - start_step) / (time.time() - start_time)
            logger.log(metrics, step=global_step)
            charts = {k: v for k, v in metrics.items() if k.startswith("charts/")}
            history.append({"step": global_step, **charts})  # the learning curve's points

            last = iteration == num_iterations
            stopping = stop_agreed(stop.requested is not None, world, device, sync_point=True)
            if last or iteration % cfg.checkpoint_every == 0 or stopping:
                # Every rank's environments and generators, so each continues exactly.
                own = {
                    "env": envs.state_dict(),
                    "shuffle_gen": shuffle_gen.get_state(),
                    "rng": rng_state(),
                }
                ranks = gather_objects(own, world)
                if world.is_main:
                    save_checkpoint(
                        ckpt_path,
                        model=model,
                        optimizer=optimizer,
                        step=global_step,
                        config=cfg,
                        extra={
                            "iteration": iteration,
                            "ranks": ranks,
                            "skipped_nonfinite_steps": metrics["train/skipped_nonfinite_steps"],
                            "baselines": baselines,
                            "history": history,
                        },
                    )
            if stopping:
                if world.is_main:
                    tqdm.write(
                        f"{stop.requested or 'stop signal'} at step {global_step}: wrote "
                        f"{ckpt_path}; continue with --output_dir={out_dir} --resume=True"
                    )
                break
    if stopping or not world.is_main:
        logger.close()
        close_world(world)
        return dict(metrics)

    # ----- final deterministic evaluation, episode video, learning curve ------------------
    final = dict(metrics)
    if cfg.eval_episodes > 0:
        eval_envs = DurotaxisCore(cfg.env, cfg.eval_episodes, device)
        stats = run_episodes(eval_envs, greedy_policy(model), seed=eval_seed)
        evaluation = {
            "eval/success_rate": stats["success_rate"],
            "eval/mean_return": stats["mean_return"],
            "eval/mean_length": stats["mean_length"],
            **baselines,
        }
        logger.log(evaluation, step=global_step)
        final.update(evaluation)
    if cfg.video:
        video_path = out_dir / "episode.gif"
        final.update(render_episode(model, cfg, device, video_path))
        logger.log_video("eval/episode", video_path, step=global_step)
    if history:
        curve_path = out_dir / "learning_curve.png"
        plot_learning_curve(history, baselines, curve_path)
        logger.log_image("charts/learning_curve", curve_path, step=global_step)
    logger.close()
    close_world(world)
    return final


if __name__ == "__main__":
    run_main(main)
