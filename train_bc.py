"""Behaviour cloning from a dataset: flow-matching BC on Lift, Algorithm Distillation on Dark Room.

    python train_bc.py --agent.freeze_encoder=True
    python train_bc.py --agent.encoder.freeze_mode=until_layer3
    python train_bc.py --env_name=lift-ph-image --dataset=lift_ph_image.hdf5
    python train_bc.py --env_name=darkroom --agent=ad
    torchrun --standalone --nproc_per_node=8 train_bc.py --batch_size=2048   # 8 GPUs

`--env_name` picks the task (data + evaluation runner, envs/bc_tasks.py) and `--agent`
the method (agents/, default: the task's); both are read first, because they decide
which config the remaining flags fill in. `--help` after them lists that config.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Generic, Literal, TypeVar

import torch
import tyro
from tqdm import tqdm

from agents import agent_name, get_agent
from agents.ad import CosineSchedule
from envs.bc_tasks import BCTask, get_bc_task
from training.cli import parse_config, pop_flag, rename_flags, run_main
from training.contracts import BCAgent, BCData, Evaluator, HeldOutData, HeldOutScorer
from training.distributed import LossForward, barrier, data_parallel, mean_metrics
from training.logger import WandbConfig
from training.plan import CachesFeatures, Phase, format_plan
from training.precision import autocast, to_channels_last, with_autocast
from training.ranges import at_least
from training.run import Restored, Run
from training.saved_config import config_from_saved, read_saved_config, resumed_run_dir
from training.seeding import seed_everything
from training.settings import RunSettings

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
    interim_eval_episodes: int | None = None
    """Episodes of each evaluation before the last, a cheaper look at progress (the first
    seeds of the last one's fixed set); the last always runs eval_episodes, the number to
    report. None = eval_episodes at every evaluation."""
    eval_workers: int = 1
    """Evaluation environments run in this many worker processes (where the task supports it)."""
    eval_goals: Literal["valid", "test", "valid+test"] | None = None
    """Held-out goals of the in-context evaluation (Dark Room tasks): valid for every
    budget / learning-rate choice, test for final numbers only, valid+test both (metrics
    under valid/ and test/); None: the task's (test)."""
    eval_seeds: int | None = None
    """Evaluation streams per held-out goal (Dark Room tasks), all run as one batch; None:
    the task's (16). The evaluation's cost grows with goals x seeds (Key-to-Door has 64
    test goals)."""
    filter_key: str = "auto"
    """robomimic filter key of the demos to train on (Lift tasks): auto = mask/train when
    the file has one, else every demo; all = every demo; any other name = mask/<name>. The
    demos of mask/valid, when held out, give valid/flow_loss at each evaluation."""
    cameras: tuple[str, ...] | None = None
    """Cameras the policy sees (Lift tasks), robosuite's names: None = the task's (agentview
    robot0_eye_in_hand); `--cameras` with no name = none, a low-dim policy (a study's
    blind and object-state controls)."""
    lowdim_keys: tuple[str, ...] | None = None
    """Low-dim observations the policy reads (Lift tasks): None = the task's proprioception
    (robot0_eef_pos robot0_eef_quat robot0_gripper_qpos); add `object` for the cube's state,
    which robomimic's low-dim agents read and a camera policy must infer."""
    cache_dir: str = "~/.cache/rlenc"
    """Where generated default datasets are kept."""
    run: Annotated[RunSettings, tyro.conf.OmitArgPrefixes] = RunSettings()
    """Run directory, resume, seed, device, intervals."""
    wandb: WandbConfig = WandbConfig(project="rlenc-bc")
    """Weights & Biases logging."""

    def __post_init__(self) -> None:
        at_least("batch_size", self.batch_size, 1)
        for name in ("offline_steps", "eval_interval", "eval_episodes", "eval_workers"):
            at_least(name, getattr(self, name), 0)
        if self.interim_eval_episodes is not None:
            at_least("interim_eval_episodes", self.interim_eval_episodes, 1)
        if self.eval_seeds is not None:
            at_least("eval_seeds", self.eval_seeds, 1)
        if isinstance(self.agent, CosineSchedule) and (
                0 < self.agent.lr_decay_steps < self.offline_steps):
            raise ValueError(
                f"--agent.lr_decay_steps={self.agent.lr_decay_steps} ends the cosine schedule "
                f"before --offline_steps={self.offline_steps}: the updates after it would run "
                f"at learning rate 0; set --agent.lr_decay_steps={self.offline_steps} (or 0 "
                f"for a constant rate)")
        if self.cameras == () and self.lowdim_keys == ():
            raise ValueError("--cameras and --lowdim_keys are both empty: the policy would "
                             "see nothing; keep a camera or a low-dim key")
        bad = [c for c in self.cameras or () if c.endswith("_image")]
        if bad:
            raise ValueError(f"--cameras takes camera names, not image keys: use "
                             f"{' '.join(c[: -len('_image')] for c in bad)}")


def parse_args(argv: list[str] | None = None) -> TrainBCConfig:
    """Read --env_name and --agent, then parse the rest into that agent's config.

    `--resume=True` starts from the run's saved config.json (its task, agent and every
    setting), so that `--output_dir=X --resume=True` alone continues the run as it was.
    """
    args = rename_flags(list(sys.argv[1:] if argv is None else argv),
                        {"--agent.pooling": "--agent.encoder.pooling"})
    env_flag, args = pop_flag(args, "--env_name")
    agent_flag, args = pop_flag(args, "--agent")
    resumed = resumed_run_dir(args)
    saved = None if resumed is None else read_saved_config(resumed)
    if saved is not None:
        for flag, given, key in (("--env_name", env_flag and get_bc_task(env_flag).name,
                                  "env_name"),
                                 ("--agent", agent_flag and agent_name(agent_flag),
                                  "agent_name")):
            if given and given != saved.get(key):
                raise ValueError(f"--resume continues the same run, but {flag} differs from "
                                 f"its config.json: saved {saved.get(key)!r}, now {given!r}; "
                                 f"drop it, or start a new run with another --output_dir")
        env_flag, agent_flag = saved.get("env_name"), saved.get("agent_name")
    task = get_bc_task(env_flag or DEFAULT_ENV)
    name = agent_name(agent_flag or task.default_agent)
    agent_config_class, _ = get_agent(name)
    if saved is not None:
        default = config_from_saved(TrainBCConfig, saved, {"agent": agent_config_class})
    else:
        run_fields = {f.name for f in dataclasses.fields(RunSettings)}
        defaults = {k: v for k, v in task.defaults.items() if k not in run_fields}
        run = RunSettings(**{k: v for k, v in task.defaults.items() if k in run_fields})
        known = {f.name for f in dataclasses.fields(agent_config_class)}
        agent = agent_config_class(**{k: v for k, v in task.agent_defaults.items()
                                      if k in known})
        default = TrainBCConfig(
            agent=agent, env_name=task.name, agent_name=name, run=run,
            **defaults
        )
    return parse_config(
        TrainBCConfig[agent_config_class], args, description=__doc__, default=default
    )


def agent_fields(cfg: TrainBCConfig, task: BCTask) -> dict[str, Any]:
    """The agent settings the task's data is shaped by (e.g. chunk_length), by name."""
    missing = [name for name in task.agent_fields if not hasattr(cfg.agent, name)]
    if missing:
        raise ValueError(
            f"--agent={cfg.agent_name} does not fit --env_name={task.name}: its data is shaped "
            f"by the agent's {', '.join(missing)}, which {cfg.agent_name} does not have (this "
            f"task trains {task.default_agent}-like agents)"
        )
    return {name: getattr(cfg.agent, name) for name in task.agent_fields}


def data_options(cfg: TrainBCConfig, task: BCTask) -> dict[str, Any]:
    """The task's data options, with --filter_key where the task reads filter keys and
    --cameras / --lowdim_keys where it has observation keys to choose."""
    options = dict(task.data_options)
    if "filter_key" in options:
        options["filter_key"] = None if cfg.filter_key == "all" else cfg.filter_key
    elif cfg.filter_key != "auto":
        raise ValueError(f"--filter_key: --env_name={task.name} has no robomimic filter keys; "
                         f"drop the flag")
    image_keys = None if cfg.cameras is None else tuple(f"{c}_image" for c in cfg.cameras)
    for flag, key, value in (("--cameras", "image_keys", image_keys),
                             ("--lowdim_keys", "lowdim_keys", cfg.lowdim_keys)):
        if value is None:  # the task's own
            continue
        if key not in options:
            raise ValueError(f"{flag}: --env_name={task.name} has no observation keys to "
                             f"choose; drop the flag")
        options[key] = value
    return options


def evaluator_options(cfg: TrainBCConfig, task: BCTask) -> dict[str, Any]:
    """The task's evaluator options, with --eval_goals / --eval_seeds where the task has goal
    splits."""
    options = dict(task.evaluator_options)
    if cfg.eval_goals is not None:
        if "goals" not in options:
            raise ValueError(f"--eval_goals: --env_name={task.name} has no held-out goal "
                             f"splits to choose from")
        options["goals"] = cfg.eval_goals
    if cfg.eval_seeds is not None:
        if "goals" not in options:
            raise ValueError(f"--eval_seeds: --env_name={task.name} has no held-out goals to "
                             f"seed; drop the flag")
        options["eval_seeds"] = cfg.eval_seeds
    return options


def load_data(cfg: TrainBCConfig, task: BCTask, run: Run) -> BCData:
    """The task's data on the run's device; rank 0 first (it may generate the default set)."""
    if not run.world.is_main:
        barrier(run.world)
    data = task.load_data()(
        cfg.dataset,
        device=run.device,
        seed=cfg.run.seed,
        cache_dir=Path(cfg.cache_dir).expanduser(),
        **agent_fields(cfg, task),
        **data_options(cfg, task),
    )
    if run.world.is_main:
        barrier(run.world)
        tqdm.write(data.describe())
    return data


def resume_sampler(restored: Restored | None, sampler: torch.Generator, cfg: TrainBCConfig,
                   run: Run) -> int:
    """The step to start from; puts the sampler and the per-rank noise where they were."""
    if restored is None:
        if run.world.enabled:
            seed_everything(cfg.run.seed + run.world.rank)  # per-rank noise; DDP syncs weights
        return 0
    sampler.set_state(restored.extra["sampler"].cpu())
    if restored.rank is None:  # saved by another number of processes: fresh per-rank noise
        seed_everything(cfg.run.seed + run.world.rank + restored.step)
    return restored.step


def train(cfg: TrainBCConfig) -> dict[str, float]:
    """Train, checkpoint and evaluate; returns the final evaluation metrics (rank 0's)."""
    task = get_bc_task(cfg.env_name)
    _, agent_class = get_agent(cfg.agent_name)
    # Before the run: a flag the task does not take writes nothing.
    data_options(cfg, task)
    eval_options = evaluator_options(cfg, task)
    name = f"{cfg.env_name}_{cfg.agent_name}_s{cfg.run.seed}"
    with Run(cfg.run, cfg, wandb=cfg.wandb, name=name, entry="train_bc",
             cpu_bf16_slower=task.cpu_bf16_slower) as run:
        plan = run_plan(cfg, task) if run.is_main and not cfg.run.resume else None
        if plan is not None:
            tqdm.write(plan)
        shard = run.world.shard(cfg.batch_size)  # --batch_size is the global batch
        data = load_data(cfg, task, run)
        agent: BCAgent = agent_class(cfg.agent, data.spec, run.device)
        to_channels_last(agent, run.channels_last)
        # Same sample indices on every rank, each taking its shard of the global batch.
        sampler = torch.Generator(device=run.device).manual_seed(cfg.run.seed)
        start_step = resume_sampler(run.track(agent, agent.optimizer), sampler, cfg, run)
        # The loss's forward, data-parallel over processes and in bf16 when asked for.
        loss_fn = data_parallel(LossForward(agent, agent.loss), run.world, run.device)
        loss_fn = with_autocast(loss_fn, run.device, run.bf16)
        logger = run.open({"agent_name": cfg.agent_name}, agent.components())
        with autocast(run.device, run.bf16):  # the caches in the precision training reads
            valid = held_out(agent, data, run)
            data = agent.prepare(data)  # e.g. embed every frame once when the encoder is frozen
        evaluator: Evaluator | None = None
        if cfg.eval_episodes > 0 and run.is_main:
            evaluator = task.load_evaluator()(
                data.spec,
                device=run.device,
                seed=cfg.run.seed,
                num_workers=cfg.eval_workers,
                video_dir=run.dir / "videos",
                **eval_options,
            )

        def evaluate(step: int, last: bool) -> dict[str, float]:
            if valid is not None:  # the held-out loss, logged apart from the returned metrics
                with autocast(run.device, run.bf16):
                    logger.log(agent.valid_metrics(valid), step=step)
            if evaluator is None:
                return {}
            episodes = cfg.eval_episodes
            if not last and cfg.interim_eval_episodes is not None:
                episodes = min(episodes, cfg.interim_eval_episodes)
            with autocast(run.device, run.bf16):
                result = run.evaluate(step, lambda: evaluator.run(agent, episodes))
            logger.log(result.metrics, step=step)
            if result.video is not None:
                logger.log_video("eval/video", result.video, step=step)
            for plot in result.plots:
                logger.log_image(f"eval/{plot.stem}", plot, step=step)
            return result.metrics

        try:
            metrics = fit(cfg, run, agent, data, loss_fn, sampler, shard, start_step, evaluate)
            if start_step >= cfg.offline_steps:  # resumed a run whose training had ended
                metrics = evaluate(start_step, last=True)
        finally:
            if evaluator is not None:
                evaluator.close()
        if run.is_main:
            (run.dir / "final_metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def run_plan(cfg: TrainBCConfig, task: BCTask) -> str | None:
    """The phases this run goes through, each estimated from the task's reference times
    (training/plan.py); None for a task without them."""
    ref = task.phase_times
    if ref is None:
        return None
    like_reference = all(_setting(cfg.agent, path) == value for path, value in ref.agent)
    default_data = cfg.dataset is None
    phases = []
    if default_data:
        phases.append(Phase("data", ref.data_work, ref.data,
                            f"first use only (then read from {cfg.cache_dir})"))
    caches = isinstance(cfg.agent, CachesFeatures) and cfg.agent.uses_feature_cache
    if caches and cfg.cameras != ():
        estimate = ref.cache if like_reference and default_data and ref.cache else None
        phases.append(Phase("feature cache", ref.cache_work or "frozen features of every frame",
                            estimate, "first use only (then read from beside the data)"))
    # Training and evaluation take what the agent computes: estimated for the reference's
    # agent settings only.
    measured = ", ".join(f"{path}={value}" for path, value in ref.agent)
    unmeasured = "" if like_reference else f" (measured for {measured} only)"
    steps = f"{cfg.offline_steps:,} steps x batch {cfg.batch_size}"
    seconds = ref.step * cfg.offline_steps * cfg.batch_size / ref.batch_size
    phases.append(Phase("training", steps + unmeasured, seconds if like_reference else None))
    if cfg.eval_episodes:
        # Evaluations at every multiple of eval_interval before the end, then the last.
        before = (cfg.offline_steps - 1) // cfg.eval_interval if cfg.eval_interval else 0
        interim = min(cfg.eval_episodes, cfg.interim_eval_episodes or cfg.eval_episodes)
        episodes = before * interim + cfg.eval_episodes
        work = (f"{before} x {interim} + {cfg.eval_episodes} episodes" if before
                else f"{cfg.eval_episodes} episodes")
        seconds = episodes * ref.episode * ref.eval_workers / max(cfg.eval_workers, 1)
        workers = max(cfg.eval_workers, 1)
        if max(workers, ref.eval_workers) > 1:  # a task whose rollouts run in processes
            work += f", {workers} worker(s)"
        phases.append(Phase("evaluations", work + unmeasured,
                            seconds if like_reference else None))
    return format_plan(phases, ref.machine)


def _setting(config: object, path: str) -> object:
    """A config's value at a dotted path (e.g. "encoder_config.freeze_mode")."""
    for name in path.split("."):
        config = getattr(config, name, None)
    return config


def held_out(agent: BCAgent, data: BCData | HeldOutData, run: Run) -> BCData | None:
    """The task's held-out data, prepared as the agent reads it (rank 0; None when the data
    has no valid set or the agent scores none)."""
    if not (run.is_main and isinstance(agent, HeldOutScorer)):
        return None
    valid = data.valid if isinstance(data, HeldOutData) else None
    return None if valid is None else agent.prepare(valid, held_out=True)


def fit(cfg: TrainBCConfig, run: Run, agent, data, loss_fn, sampler: torch.Generator,
        shard: slice, start_step: int, evaluate) -> dict[str, float]:
    """The training loop; the host reads the device only at log, eval and save steps.

    Returns the last evaluation's metrics; a signal ends it with RunStopped (run.stopped).
    """
    every = cfg.run
    metrics: dict[str, float] = {}
    tick, tick_step = time.perf_counter(), start_step
    progress = tqdm(range(start_step + 1, cfg.offline_steps + 1), initial=start_step,
                    total=cfg.offline_steps, desc="train", disable=not run.is_main)
    with run.stop_signal() as stop:
        for step in progress:
            # ---- the method: one gradient step on this rank's shard of a global batch
            indices = data.sample_indices(cfg.batch_size, sampler)
            info = agent.update(data.batch(indices[shard]), loss_fn)

            # ---- plumbing: sync points, logging, checkpoints, evaluation, signals
            last = step == cfg.offline_steps
            evaluating = last or (cfg.eval_interval and step % cfg.eval_interval == 0)
            # Saved before evaluating: a failing evaluation costs no trained weights.
            saving = evaluating or step % every.save_interval == 0
            logging = step % every.log_interval == 0
            sync_point = logging or evaluating or saving
            # With several processes a signal is acted on at a sync point, by all ranks.
            stopping = run.should_stop(stop, sync_point)
            if sync_point or stopping:
                skipped = run.check_finite(lambda bad: f"step {start_step + (bad or 0)}")
            if logging:
                info = mean_metrics(info, run.world)
                now = time.perf_counter()
                info["perf/steps_per_sec"] = (step - tick_step) / (now - tick)
                info["train/skipped_nonfinite_steps"] = skipped
                tick, tick_step = now, step
                shown = run.logger.log(info, step=step)
                progress.set_postfix(_postfix(shown, metrics), refresh=False)
            if saving or stopping:
                run.save(step, shared={"sampler": sampler.get_state()})
            if evaluating:
                metrics = evaluate(step, last)
                progress.set_postfix(_postfix({}, metrics), refresh=False)
            if stopping:
                run.stopped(stop, step)
    return metrics


def _postfix(train: dict[str, float], evaluation: dict[str, float]) -> dict[str, str]:
    """The progress bar's key figures: the loss, steps/s and the evaluation's headline."""
    shown = {}
    for key, value in train.items():
        if key.endswith("_loss") and "loss" not in shown:
            shown["loss"] = f"{value:.4g}"
    if "perf/steps_per_sec" in train:
        shown["steps/s"] = f"{train['perf/steps_per_sec']:.3g}"
    for key in ("eval/success_rate", "eval/return"):
        if key in evaluation:
            shown[key.split("/")[1]] = f"{evaluation[key]:.3g}"
    return shown


def main(argv: list[str] | None = None) -> None:
    train(parse_args(argv))


if __name__ == "__main__":
    run_main(main)
