"""The evaluation of train_bc.py's Lift tasks: policy rollouts in robosuite.

Evaluation runs real rollouts in robosuite, built from the dataset's `env_args` (its
cameras, image size and render settings, so rollout frames are rendered as the training
frames were), in `num_workers` worker processes that step their episodes in parallel;
one episode is rendered to an mp4.

Episode i always has env seed 100000 + i (`envs.lift.env.evaluation_seeds`), whatever the
training seed, and its outcome does not depend on which worker runs it or on how many
there are: the env redraws the cube (size and placement) from the seed at reset, and the
policy computes each episode's chunk on its own, under an RNG seeded from the episode's
seed and the chunk's index (batched float kernels round differently with the batch's
size, and the global RNG's state would depend on the order episodes are served in).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time
from multiprocessing import resource_tracker
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm import tqdm

from envs.lift.dataset import LiftSpec, process_obs
from envs.lift.env import evaluation_seeds
from training.contracts import EvalResult
from training.guards import StopRequested


class ChunkPolicy(Protocol):
    """What the rollouts need of a policy (fbc's agent is one)."""

    def act(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Processed obs/<key> batch -> B x actions-to-execute x action_dim."""
        ...


class EpisodeRunner:
    """One robosuite env stepping whole action chunks; used in workers and in-process."""

    def __init__(self, env_args: dict, horizon: int, video_size: int = 256) -> None:
        from envs.lift.env import LiftEnv

        self.env = LiftEnv(env_args)
        self.horizon = horizon
        self.video_size = video_size
        self.record = False
        self.frames: list[np.ndarray] = []

    def reset(self, seed: int, record: bool) -> dict[str, np.ndarray]:
        """Start an episode from the seed's initial state."""
        self.length, self.success, self.record = 0, False, record
        obs = self.env.reset(seed=seed)
        self.frames = [self.env.render_frame(size=self.video_size)] if record else []
        return obs

    def step(self, actions: np.ndarray) -> tuple[dict, bool, dict]:
        """Execute a chunk open-loop until success or the horizon; (obs, done, info)."""
        obs = None
        for action in actions:
            obs, _, success, _ = self.env.step(action)
            self.length += 1
            if self.record:
                self.frames.append(self.env.render_frame(size=self.video_size))
            if success or self.length >= self.horizon:
                self.success = success
                break
        done = self.success or self.length >= self.horizon
        info = {"success": self.success, "length": self.length}
        if done:
            info["cube_half_size"] = self.env.cube_half_size().tolist()
        if done and self.record:
            info["frames"] = self.frames
            self.frames = []
        return obs, done, info

    def close(self) -> None:
        """Release the env."""
        self.env.close()


def _worker(conn, env_args: dict, horizon: int) -> None:
    """Worker process loop: ("reset", seed, record) | ("step", actions) | ("close",)."""
    import torch as _torch

    _leave_process_group()
    _torch.set_num_threads(1)
    runner = EpisodeRunner(env_args, horizon)
    try:
        while True:
            msg = conn.recv()
            if msg[0] == "reset":
                conn.send(runner.reset(msg[1], msg[2]))
            elif msg[0] == "step":
                conn.send(runner.step(msg[1]))
            else:
                break
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        runner.close()
        conn.close()


def _leave_process_group() -> None:
    """Put this worker in a process group of its own, out of reach of the signals sent to
    its parent's: Ctrl-C (the terminal's SIGINT to the foreground group) and a scheduler's
    or `timeout`'s SIGTERM to the group. The parent decides: it finishes the evaluation
    (a stop the training loop polls for) or ends the worker (silently: SIGKILL, or SIGTERM
    from close()), instead of a worker dying under a parent that is waiting on its reply,
    or printing a KeyboardInterrupt traceback."""
    os.setpgid(0, 0)
    # _start_quietly started this process with both blocked; a signal that reached the old
    # group meanwhile is pending: ignoring it discards it, before both are unblocked.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class _LocalRunner:
    """The in-process stand-in for a worker's pipe (num_workers=0)."""

    def __init__(self, env_args: dict, horizon: int) -> None:
        self.runner = EpisodeRunner(env_args, horizon)
        self.reply = None

    def send(self, msg: tuple) -> None:
        if msg[0] == "reset":
            self.reply = self.runner.reset(msg[1], msg[2])
        elif msg[0] == "step":
            self.reply = self.runner.step(msg[1])
        else:
            self.runner.close()

    def recv(self):
        return self.reply


class LiftEvaluator:
    """Success rate and episode length of a policy over seeded rollouts.

    After `run`, `last_episodes` holds one record per episode, in episode order: its seed,
    success, length and cube half-size.
    """

    def __init__(
        self,
        spec: LiftSpec,
        *,
        device: torch.device,
        seed: int,
        num_workers: int,
        video_dir: Path | None,
        horizon: int | None = None,
        progress: bool = True,
    ) -> None:
        self.device = device
        self.progress = progress  # a bar over each evaluation's episodes
        # The training seed; evaluation episodes do not depend on it (fixed seeds).
        self.seed = seed
        self.last_episodes: list[dict] = []
        # The RNG state a chunk's sampling may touch, restored after each chunk.
        self._rng_devices = (
            [device.index if device.index is not None else torch.cuda.current_device()]
            if device.type == "cuda"
            else []
        )
        self.image_keys = tuple(spec.image_keys)
        self.lowdim_keys = tuple(spec.lowdim_keys)
        self.horizon = int(horizon or spec.horizon)
        self.video_dir = Path(video_dir) if video_dir is not None else None
        env_args = json.loads(json.dumps(spec.env_args))
        kwargs = env_args["env_kwargs"]
        size = spec.image_shape[-1]
        # Rollout cameras are the data's, whatever the file's env_args said.
        kwargs.update(
            camera_names=[k[: -len("_image")] for k in self.image_keys],
            camera_heights=size,
            camera_widths=size,
        )
        if "render_settings" not in env_args:
            print(
                "[envs.lift] the dataset's env_args has no render_settings: rollouts render "
                "as robosuite does by default (reflections and multisampling on), as "
                "robomimic's own image files were"
            )
        self.env_args = env_args
        self.num_workers = num_workers
        self.conns: list = []
        self.procs: list = []
        self.runs = 0
        self.episodes_ended = 0  # in the run in progress (what a stop reports)

    def _start(self) -> None:
        if self.conns:
            return
        if self.num_workers <= 0:
            self.conns = [_LocalRunner(self.env_args, self.horizon)]
            return
        from envs.lift.env import select_gl_backend

        select_gl_backend()  # decided once here; workers inherit MUJOCO_GL
        ctx = mp.get_context("spawn")  # no GL or torch thread state inherited by fork
        for _ in range(self.num_workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_worker, args=(child, self.env_args, self.horizon), daemon=True
            )
            _start_quietly(proc)
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)

    def _obs_batch(self, obs_list: list[dict]) -> dict[str, torch.Tensor]:
        keys = (*self.image_keys, *self.lowdim_keys)
        raw = {
            k: torch.from_numpy(np.stack([o[k] for o in obs_list])).to(self.device) for k in keys
        }
        raw = {k: v if k in self.image_keys else v.float() for k, v in raw.items()}
        return process_obs(raw, keys)

    def _act(self, agent: ChunkPolicy, obs: dict, keys: list[tuple[int, int]]) -> np.ndarray:
        """Each episode's next chunk, computed alone under an RNG seeded from its key
        (episode seed, chunk index); the caller's RNG state is left as it was."""
        chunks = []
        for row, key in enumerate(keys):
            row_obs = {k: v[row : row + 1] for k, v in obs.items()}
            with torch.random.fork_rng(devices=self._rng_devices):
                torch.manual_seed(int(np.random.SeedSequence(key).generate_state(1)[0]))
                chunks.append(agent.act(row_obs).detach().to("cpu", torch.float64))
        return torch.cat(chunks).numpy()

    def run(self, agent: ChunkPolicy, num_episodes: int) -> EvalResult:
        """Roll the agent out for num_episodes seeded episodes; metrics, video path, plots.

        A stop (StopRequested, KeyboardInterrupt) ends the workers at once and raises
        StopRequested: the evaluation in progress is dropped.
        """
        self.episodes_ended = 0
        # Below the training bar, gone when done: the metrics are logged, not the bar.
        bar = tqdm(total=num_episodes, desc="evaluating: robosuite rollouts", unit="episode",
                   leave=False, disable=not self.progress)
        try:
            self._start()
            return self._rollouts(agent, num_episodes, bar)
        except (StopRequested, KeyboardInterrupt) as stop:
            self._end_workers()
            kept = (f"the evaluation in progress is dropped ({self.episodes_ended} of "
                    f"{num_episodes} episodes had ended)")
            raise StopRequested.keeping(stop, kept) from None
        finally:
            bar.close()

    def _rollouts(self, agent: ChunkPolicy, num_episodes: int, bar: tqdm) -> EvalResult:
        t0 = time.perf_counter()
        seeds = evaluation_seeds(num_episodes)
        record_first = self.video_dir is not None
        pending = list(range(num_episodes))
        active: dict[int, list] = {}  # worker -> [episode, obs, chunks so far]
        successes, lengths = np.zeros(num_episodes), np.zeros(num_episodes)
        episodes: list[dict] = [{} for _ in range(num_episodes)]
        video = None
        for w, conn in enumerate(self.conns):
            if pending:
                ep = pending.pop(0)
                conn.send(("reset", seeds[ep], record_first and ep == 0))
                active[w] = [ep, None, 0]
        for w in list(active):
            active[w][1] = self.conns[w].recv()
        steps = 0
        while active:
            workers = sorted(active)
            obs = self._obs_batch([active[w][1] for w in workers])
            keys = [(seeds[active[w][0]], active[w][2]) for w in workers]
            actions = self._act(agent, obs, keys)
            for i, w in enumerate(workers):
                self.conns[w].send(("step", actions[i]))
                active[w][2] += 1
            for w in workers:
                next_obs, done, info = self.conns[w].recv()
                ep = active[w][0]
                if not done:
                    active[w][1] = next_obs
                    continue
                successes[ep], lengths[ep] = info["success"], info["length"]
                episodes[ep] = {
                    "episode": ep,
                    "seed": seeds[ep],
                    "success": bool(info["success"]),
                    "length": int(info["length"]),
                    "cube_half_size": info["cube_half_size"],
                }
                steps += info["length"]
                self.episodes_ended += 1
                bar.update(1)
                if "frames" in info:
                    video = self._write_video(info["frames"])
                del active[w]
                if pending:
                    ep = pending.pop(0)
                    self.conns[w].send(("reset", seeds[ep], False))
                    active[w] = [ep, self.conns[w].recv(), 0]
        seconds = time.perf_counter() - t0
        self.runs += 1
        self.last_episodes = episodes
        metrics = {
            "eval/success_rate": float(successes.mean()),
            "eval/episode_length": float(lengths.mean()),
            "eval/num_episodes": float(num_episodes),
            "perf/eval_seconds": seconds,
            "perf/eval_env_steps_per_sec": steps / max(seconds, 1e-9),
        }
        if successes.any():
            metrics["eval/episode_length_success"] = float(lengths[successes > 0].mean())
        return EvalResult(metrics, video=video)

    def _write_video(self, frames: list[np.ndarray]) -> Path:
        import imageio

        self.video_dir.mkdir(parents=True, exist_ok=True)
        path = self.video_dir / f"rollout_{self.runs:04d}.mp4"
        imageio.mimsave(path, frames, fps=20, macro_block_size=1)
        return path

    def _end_workers(self) -> None:
        """End the workers now, mid-episode: they hold nothing worth keeping, one that is
        sending a reply would not read a close message, and SIGKILL ends one that is still
        starting (signals blocked) as well; the kernel frees what it held."""
        for proc in self.procs:
            proc.kill()
        for proc in self.procs:
            proc.join()
        for conn in self.conns:
            if self.procs:
                conn.close()
            else:  # the in-process runner: close its env and render context
                conn.send(("close",))
        self.conns, self.procs = [], []

    def close(self) -> None:
        """Stop the workers."""
        for conn in self.conns:
            try:
                conn.send(("close",))
            except (BrokenPipeError, OSError):
                pass
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
        self.conns, self.procs = [], []


def _start_quietly(proc: mp.process.BaseProcess) -> None:
    """Start a worker with SIGINT and SIGTERM blocked, here and in the worker (a spawned
    process inherits the mask): a signal that arrives meanwhile is taken by the parent once
    the worker has started, instead of cutting the start short (a traceback from the
    half-started child), and none reaches the worker before _leave_process_group."""
    # Started first: a spawn starts multiprocessing's resource tracker on first use, and
    # starting it unblocks SIGINT and SIGTERM (SIG_UNBLOCK, not the mask it found).
    resource_tracker.ensure_running()
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        proc.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


# What the task table names: the evaluator is built from the data's spec and the run.
make_evaluator = LiftEvaluator
