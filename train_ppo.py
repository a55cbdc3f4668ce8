"""PPO on Durotaxis with ResNet actor and critic backbones, frozen or fine-tuned.

    python train_ppo.py --backbone.freeze_mode=all
    torchrun --standalone --nproc_per_node=8 train_ppo.py --ppo.num_envs=256   # 8 GPUs

Rollouts and updates run on `--device` (the environments are tensors there too). As in
SB3, `train` calls `collect_rollout` and `update` once per iteration, and `evaluate` at
the end. What the frozen part of the backbones computes in the rollout is exactly what
the update would compute again, so the rollout buffer stores it and the update runs only
what trains: with freeze_mode=all (avg pooling) the features, and no backbone runs in the
update; with until_layer3 / last_block the maps entering the trainable blocks. Actor and
critic backbones start from the same weights and their frozen parts never move, so one
frozen prefix serves both. The network stays in eval mode throughout, so
that BatchNorm computes the same function in the rollout (old log-probs) and the update
(new log-probs); with a trainable backbone, the trainable BatchNorm layers' statistics are
re-estimated from each rollout after its update (HybridActorCritic.refresh_batch_norm).
Episodes the time limit cut bootstrap from V(final observation) (collect_rollout).
Training and evaluation environments are seeded from disjoint ranges (training_env_seed,
envs.durotaxis.evaluation.evaluation_seed).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Annotated

import torch
import tyro
from tqdm import tqdm

from agents.hybrid_actor_critic import (
    HybridActionSpec,
    HybridActorCritic,
    HybridActorCriticConfig,
)
from agents.ppo import PPOConfig, ppo_loss, ppo_update
from agents.rollout_buffer import RolloutBuffer
from encoders import EncoderConfig
from encoders.config import Arch, FreezeMode, InputAdapter, Pooling
from envs.durotaxis.config import PARAMS_USED, SPAWN, DurotaxisConfig
from envs.durotaxis.engine import DurotaxisEngine, make_engine
from envs.durotaxis.evaluation import (
    baselines_on_evaluation_seeds,
    evaluation_seed,
    greedy_policy,
    run_episodes,
)
from envs.durotaxis.rendering import plot_learning_curve, render_episode
from training.cli import parse_config, rename_flags, run_main
from training.distributed import (
    LossForward,
    World,
    data_parallel,
    mean_over_ranks,
    sum_over_ranks,
)
from training.logger import WandbConfig
from training.optim import build_optimizer, scale_learning_rates
from training.precision import autocast, to_channels_last, unit_map_hazard, with_autocast
from training.ranges import ConfigError, positive
from training.run import Run
from training.saved_config import config_from_saved, read_saved_config, resumed_run_dir
from training.seeding import seed_everything
from training.settings import RunSettings


@dataclass(frozen=True)
class BackboneConfig:
    """The actor's and critic's ResNet backbones (encoders/ EncoderConfig) and their lrs."""

    arch: Arch = "resnet18"
    """resnet18 | resnet34 | resnet50."""
    weights: str = "auto"
    """auto (ImageNet if cached, else random init with a warning) | imagenet | random | PATH."""
    input_adapter: InputAdapter = "repeat3"
    """1-channel image: repeat3 | 1ch_conv; 3-channel image (env.channels=3): none."""
    freeze_mode: FreezeMode = "all"
    """none | all | until_layer3 | last_block."""
    pooling: Pooling = "avg"
    """avg | spatial_softmax (its keypoint layer trains, so features are not reused)."""
    backbone_lr: float = 1e-4
    """Learning rate of trainable backbone parameters."""
    head_lr: float = 3e-4
    """Learning rate of the heads (policy, value, log std)."""

    def __post_init__(self) -> None:
        positive("backbone.backbone_lr", self.backbone_lr)
        positive("backbone.head_lr", self.head_lr)

    def encoder_config(self) -> EncoderConfig:
        """The encoder core's config for both backbones."""
        return EncoderConfig(arch=self.arch, weights=self.weights,
                             input_adapter=self.input_adapter, freeze_mode=self.freeze_mode,
                             pooling=self.pooling)


@dataclass(frozen=True)
class TrainPPOConfig:
    """PPO on Durotaxis."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    agent: HybridActorCriticConfig = field(default_factory=HybridActorCriticConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    env: DurotaxisConfig = field(default_factory=DurotaxisConfig)
    reuse_features: bool = True
    """Keep what the frozen part of the backbones computed in the rollout for the update
    (all: the features; until_layer3 / last_block: the prefix maps); False: re-run it."""
    eval_episodes: int = 256
    """Episodes of the final deterministic evaluation (0: skip it and the baselines)."""
    video: bool = True
    """Render one deterministic episode to a GIF at the end."""
    run: Annotated[RunSettings, tyro.conf.OmitArgPrefixes] = field(
        default_factory=lambda: RunSettings(seed=1, save_interval=10, log_interval=10)
    )
    """Run directory, resume, seed, device, intervals (in iterations)."""
    wandb: WandbConfig = field(default_factory=WandbConfig)
    """Weights & Biases logging."""

    def __post_init__(self) -> None:
        training_env_seed(self.run.seed, rank=0)  # refuses a seed that would mix key ranges
        if self.ppo.batch_size % self.ppo.num_minibatches:
            raise ConfigError(
                f"ppo.num_envs * ppo.num_steps ({self.ppo.batch_size}) must be divisible by "
                f"ppo.num_minibatches ({self.ppo.num_minibatches})"
            )
        if self.backbone.pooling == "spatial_softmax" and self.env.image_size <= 32:
            # ResNets downsample 32x: on a 1 x 1 map every image gives the same keypoints.
            raise ConfigError(
                f"env.image_size={self.env.image_size} leaves a 1 x 1 ResNet feature map, on "
                f"which spatial_softmax sees nothing; use env.image_size >= 33 or "
                f"backbone.pooling=avg"
            )


# Kept for scripts written against the first version.
TrainConfig = TrainPPOConfig
def durotaxis_action(env: DurotaxisConfig) -> HybridActionSpec:
    """Durotaxis's hybrid action with this config's bounds, as the actor-critic takes it."""
    return HybridActionSpec(env.param_low, env.param_high, PARAMS_USED, favoured_kind=SPAWN)


# The easy preset's action (the first version's bounds), for scripts written against it.
DUROTAXIS_ACTION = durotaxis_action(DurotaxisConfig(preset="easy"))


TRAINING_SEEDS, TRAINING_RANKS = 1 << 16, 1 << 4  # keys below 2**40: see training_env_seed


def training_env_seed(seed: int, rank: int) -> int:
    """Key of a rank's first training environment (env i gets this + i).

    Training keys are seed * 2**24 + rank * 2**20 + i, below 2**40 for seeds < 2**16,
    ranks < 16 and fewer than 2**20 environments per rank; evaluation keys start at 2**40
    (envs.durotaxis.evaluation.evaluation_seed), so the two never meet, and no two ranks or
    seeds share a key. Outside those ranges the guarantee would fail silently: refused.
    """
    if not 0 <= seed < TRAINING_SEEDS:
        raise ConfigError(f"--seed={seed} is out of range; allowed: 0..{TRAINING_SEEDS - 1}")
    if not 0 <= rank < TRAINING_RANKS:
        raise ConfigError(f"rank {rank} is out of range: training seeds keep at most "
                          f"{TRAINING_RANKS} processes apart (torchrun --nproc_per_node)")
    return (seed << 24) + (rank << 20)


def prefix_shape(model: HybridActorCritic, obs_shape: tuple[int, ...],
                 device: torch.device) -> tuple[int, ...]:
    """The shape of one observation's frozen-prefix output (one dummy forward)."""
    with torch.no_grad():
        dummy = torch.zeros(1, *obs_shape, dtype=torch.uint8, device=device)
        return tuple(model.encode_prefix(dummy).shape[1:])


def collect_rollout(model: HybridActorCritic, envs: DurotaxisEngine, buffer: RolloutBuffer,
                    next_obs: torch.Tensor, cfg: TrainPPOConfig, device: torch.device,
                    bf16: bool = False) -> torch.Tensor:
    """Fill the buffer with num_steps steps of every environment.

    An episode the time limit cut did not end: its last reward gets gamma V(final
    observation) added (as SB3 does), while its done flag still stops GAE at the reset.
    Finding the cut episodes is the one host read per step (envs.autoreset_step's
    final_obs). Returns the observation after the last step (what GAE bootstraps from).
    """
    buffer.start()
    for t in range(cfg.ppo.num_steps):
        with autocast(device, bf16):
            out = model.act(next_obs)
        obs = next_obs
        next_obs, reward, terminated, truncated, info = envs.autoreset_step(
            out["kind"], out["params"], final_obs=True
        )
        rows = info["truncated_rows"]
        if rows.numel():
            with torch.no_grad(), autocast(device, bf16):
                final_value = model.value(model.encode(info["final_obs"])[1]).float()
            reward = reward.index_add(0, rows, cfg.ppo.gamma * final_value)
        buffer.add(t, obs, out, reward, terminated | truncated, info)
    with torch.no_grad(), autocast(device, bf16):
        _, next_critic = model.encode(next_obs)
        next_value = model.value(next_critic)
    buffer.compute_returns_and_advantage(next_value, cfg.ppo.gamma, cfg.ppo.gae_lambda)
    return next_obs


def pool_batch_norm_over_ranks(layers: list[torch.nn.modules.batchnorm._BatchNorm],
                               world: World) -> None:
    """Give every rank the statistics of all ranks' rollouts together, in one all-reduce.

    Each rank refreshed its layers on its own rollout (equal sizes): the union's mean is
    the mean of the ranks' means, and its variance the mean of their variances plus the
    spread of their means (averaging the variances alone would miss that).
    """
    if not world.enabled or not layers:
        return
    means = torch.cat([m.running_mean for m in layers])
    variances = torch.cat([m.running_var for m in layers])
    pooled = mean_over_ranks(torch.cat([means, variances, means * means]), world)
    mean, variance, mean_sq = pooled.split(means.numel())
    variance = variance + (mean_sq - mean * mean).clamp(min=0)
    sizes = [m.running_mean.numel() for m in layers]
    for layer, m, v in zip(layers, mean.split(sizes), variance.split(sizes), strict=True):
        layer.running_mean.copy_(m)
        layer.running_var.copy_(v)


def update(model: HybridActorCritic, optimizer: torch.optim.Optimizer, buffer: RolloutBuffer,
           shuffle_gen: torch.Generator, loss_fn, run: Run, cfg: TrainPPOConfig
           ) -> dict[str, float]:
    """PPO's epochs over the rollout, plus the rollout's episode statistics (all ranks)."""
    batch = buffer.batch()
    metrics = ppo_update(model, optimizer, batch, cfg.ppo, shuffle_gen,
                         loss_fn=loss_fn, world=run.world)
    # Trainable BatchNorm: statistics of this rollout under the new weights, pooled over
    # ranks so that every replica stays the same (see refresh_batch_norm).
    pool_batch_norm_over_ranks(model.refresh_batch_norm(batch), run.world)
    count, ret, length, succ = sum_over_ranks(buffer.episode_stats, run.world).tolist()
    if count > 0:
        metrics["charts/episodic_return"] = ret / count
        metrics["charts/episodic_length"] = length / count
        metrics["charts/success_rate"] = succ / count
    metrics["charts/episodes"] = count
    metrics["charts/learning_rate"] = optimizer.param_groups[-1]["lr"]
    return metrics


def evaluate(model: HybridActorCritic, cfg: TrainPPOConfig, run: Run, history: list[dict],
             baselines: dict[str, float], step: int) -> dict[str, float]:
    """Deterministic evaluation on the evaluation seeds, the episode GIF, the learning curve."""
    out: dict[str, float] = {}
    if cfg.eval_episodes > 0:
        envs = make_engine(cfg.env, cfg.eval_episodes, run.device)
        with autocast(run.device, run.bf16):
            stats = run_episodes(envs, greedy_policy(model), seed=evaluation_seed(cfg.run.seed))
        out = {"eval/success_rate": stats["success_rate"], "eval/mean_return": stats["mean_return"],
               "eval/mean_length": stats["mean_length"], **baselines}
        run.logger.log(out, step=step)
    if cfg.video:
        path = run.dir / "episode.gif"
        act = partial(model.act, deterministic=True)
        video_seed = evaluation_seed(cfg.run.seed) + cfg.eval_episodes  # after the eval episodes
        out.update(render_episode(act, cfg.env, video_seed, run.device, path))
        run.logger.log_video("eval/episode", path, step=step)
    if history:
        path = run.dir / "learning_curve.png"
        plot_learning_curve(history, baselines, path)
        run.logger.log_image("charts/learning_curve", path, step=step)
    return out


def train(cfg: TrainPPOConfig) -> dict[str, float]:
    """Set up through the harness, then collect_rollout / update per iteration, evaluate."""
    name = f"ppo_durotaxis_{cfg.env.preset}_{cfg.backbone.freeze_mode}_s{cfg.run.seed}"
    hazard = unit_map_hazard(cfg.env.image_size,
                             trains_last_stage=cfg.backbone.freeze_mode != "all")
    with Run(cfg.run, cfg, wandb=cfg.wandb, name=name, entry="train_ppo",
             bf16_hazard=hazard) as run:
        world, device, ppo = run.world, run.device, cfg.ppo
        # Each rank steps its own ppo.num_envs environments; total_timesteps counts them all.
        num_iterations = max(1, ppo.total_timesteps // (ppo.batch_size * world.world_size))
        envs = make_engine(cfg.env, ppo.num_envs, device)
        # env.frame_stack frames on the channel axis; the model encodes each on its own.
        obs_shape = (cfg.env.frame_stack * cfg.env.channels, cfg.env.image_size,
                     cfg.env.image_size)
        model = HybridActorCritic(cfg.backbone.encoder_config(), obs_shape, cfg.agent,
                                  action=durotaxis_action(cfg.env), frames=cfg.env.frame_stack)
        model = model.to(device).eval()
        to_channels_last(model, run.channels_last)
        optimizer = build_optimizer(model, backbone_lr=cfg.backbone.backbone_lr,
                                    head_lr=cfg.backbone.head_lr, kind="adam", eps=1e-5)
        reuse = cfg.reuse_features and model.caches_prefix

        # What one iteration hands the next: fresh, or as the checkpoint left it (exactly).
        next_obs = envs.reset(seed=training_env_seed(cfg.run.seed, world.rank))
        shuffle_gen = torch.Generator().manual_seed(cfg.run.seed + 1)
        if world.enabled:
            seed_everything(cfg.run.seed + world.rank)  # per-rank action sampling
        start_iteration, global_step = 1, 0
        baselines: dict[str, float] = {}
        history: list[dict] = []
        restored = run.track(model, optimizer)
        if restored is not None:
            if restored.rank is None:
                raise ValueError(
                    f"{run.ckpt_path} was written by {restored.saved_ranks} process(es); resume "
                    f"it with as many (torchrun --nproc_per_node={restored.saved_ranks}) so each "
                    f"rank gets its environments back"
                )
            envs.load_state_dict(restored.rank["env"])
            next_obs = envs.observe()
            shuffle_gen.set_state(restored.rank["shuffle_gen"])
            baselines, history = restored.extra["baselines"], restored.extra["history"]
            global_step, start_iteration = restored.step, int(restored.extra["iteration"]) + 1

        logger = run.open({"weights_source": model.actor_encoder.weights_source,
                           "prefix_reused": reuse,
                           "encoders_run_per_step": 1 if model.runs_one_encoder else 2},
                          model.components())
        # The loss's forward, data-parallel over processes and in bf16 when asked for.
        loss_fn = data_parallel(LossForward(model, partial(ppo_loss, model, cfg=ppo)), world,
                                device)
        loss_fn = with_autocast(loss_fn, device, run.bf16)
        if cfg.eval_episodes > 0 and not baselines and run.is_main:
            baselines = baselines_on_evaluation_seeds(cfg.env, cfg.eval_episodes, cfg.run.seed,
                                                      device)
            logger.log(baselines, step=global_step)

        buffer = RolloutBuffer(ppo.num_steps, ppo.num_envs, obs_shape=obs_shape,
                               param_dim=len(model.param_low), device=device,
                               prefix_shape=prefix_shape(model, obs_shape, device) if reuse
                               else None)
        metrics: dict[str, float] = {}
        start_time, start_step = time.time(), global_step
        progress = tqdm(range(start_iteration, num_iterations + 1), desc="ppo",
                        initial=start_iteration - 1, total=num_iterations,
                        disable=not run.is_main)
        with run.stop_signal() as stop:  # a signal ends the loop after a checkpoint
            for iteration in progress:
                # ---- the method: anneal, collect a rollout, update
                if ppo.anneal_lr:
                    scale_learning_rates(optimizer, 1.0 - (iteration - 1.0) / num_iterations)
                next_obs = collect_rollout(model, envs, buffer, next_obs, cfg, device, run.bf16)
                global_step += ppo.num_steps * ppo.num_envs * world.world_size
                metrics = update(model, optimizer, buffer, shuffle_gen, loss_fn, run, cfg)

                # ---- plumbing: the guard, logging, checkpoints, signals
                metrics["train/skipped_nonfinite_steps"] = run.check_finite(
                    lambda _, i=iteration, s=global_step: f"iteration {i} (step {s})")
                metrics["perf/sps"] = (global_step - start_step) / (time.time() - start_time)
                shown = logger.log(metrics, step=global_step,
                                   console=iteration % cfg.run.log_interval == 0)
                progress.set_postfix(_postfix(shown), refresh=False)
                history.append({"step": global_step,  # the learning curve's points
                                **{k: v for k, v in shown.items() if k.startswith("charts/")}})
                stopping = run.should_stop(stop, sync_point=True)
                if (iteration == num_iterations or iteration % cfg.run.save_interval == 0
                        or stopping):
                    run.save(global_step,
                             rank_state={"env": envs.state_dict(),
                                         "shuffle_gen": shuffle_gen.get_state()},
                             shared={"iteration": iteration, "baselines": baselines,
                                     "history": history})
                if stopping:
                    run.stopped(stop, global_step)
        if not run.is_main:
            return dict(metrics)
        final = run.evaluate(global_step, lambda: evaluate(model, cfg, run, history,
                                                           baselines, global_step))
        return {**metrics, **final}


def _postfix(metrics: dict[str, float]) -> dict[str, str]:
    """The progress bar's key figures."""
    keys = {"charts/success_rate": "success", "charts/episodic_return": "return",
            "train/value_loss": "v_loss", "perf/sps": "sps"}
    return {short: f"{metrics[key]:.3g}" for key, short in keys.items() if key in metrics}


def parse_args(argv: list[str] | None = None) -> TrainPPOConfig:
    """The command line (default: sys.argv[1:]) as a config; nothing is run or written.

    `--resume=True` starts from the run's saved config.json, so that
    `--output_dir=X --resume=True` alone continues the run as it was started.
    """
    args = rename_flags(list(sys.argv[1:] if argv is None else argv),
                        {"--checkpoint_every": "--save_interval"})
    resumed = resumed_run_dir(args)
    default = (None if resumed is None
               else config_from_saved(TrainPPOConfig, read_saved_config(resumed)))
    return parse_config(TrainPPOConfig, args=args, description=__doc__, default=default)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train, evaluate, render; returns the last logged metrics."""
    return train(parse_args(argv))


if __name__ == "__main__":
    run_main(main)
