"""Lift demonstrations in robomimic's HDF5 format: scripted demos and a renderer.

`generate` runs the scripted operators of envs/lift/scripted.py (a pick-and-lift
controller: approach, descend to just below the cube's centre, close the gripper, lift;
proportional control on the position error, the wrist turned to the cube's yaw) and
writes robomimic-format demos with camera images. Presets (`--preset`): `ph`, one
proficient operator; `mh`, six operators, two each "better", "okay", "worse", 50 demos
apiece, with robomimic's mh masks (better_operator_1, ..., better, okay_better, ...);
`small`, the default task's 100 demos by make_operators(3).

Each demo starts from its own env seed (drawn from `--seed`'s rng, outside the
evaluation seeds), which decides its cube size and placement, and stores the model it
ran in as `model_file`, as robomimic's demos do; replaying a demo's `states` loads that
model first.

`render` adds camera observations to an existing low-dim robomimic file from its
`states`, which is what robomimic's `dataset_states_to_obs` does; real v1.5 robomimic
files ship low-dim only, so this is how their image versions are made here.

A stop (Ctrl-C, SIGTERM) keeps what is complete: `generate` keeps its finished demos in
`<output>.partial`, and the same command, run again, continues from them to the file an
uninterrupted run writes. The command line says what it kept in one line and exits with
EXIT_STOPPED (75).

Both write the render settings they used into `data.attrs["env_args"]["render_settings"]`
(reflections and multisampling off by default, for speed; `--robomimic_render` renders as
robosuite and robomimic do), and environments made from that env_args render the same way.

    python -m envs.lift.demos generate --num_demos 100 --seed 0 --operators 3 \\
        --output data/lift_scripted.hdf5
    python -m envs.lift.demos generate --preset mh --output data/lift_mh_scripted.hdf5
    python -m envs.lift.demos measure --preset mh --episodes 20
    python -m envs.lift.demos render --input low_dim_v15.hdf5 --output image_v15.hdf5
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from envs.lift.env import (
    CAMERAS,
    IMAGE_SIZE,
    LiftEnv,
    RenderSettings,
    default_env_args,
    demo_seed,
)
from envs.lift.scripted import LEVELS, PRESETS, Operator, ScriptedLiftPolicy, make_operators
from training.guards import StopRaises, StopRequested, signal_of
from training.run_outcome import EXIT_STOPPED

GENERATOR_VERSION = 3
"""Bumped whenever generate() writes different demos for the same arguments (2: per-demo
env seeds and models, render settings in env_args; 3: operators with wrist rotation,
approach paths, gripper timing and missed-grasp recoveries), so a cached default file
made by an older version is not reused."""

PROGRESS = "generation_progress"
"""data.attrs key of a file still being written: the demos complete so far (JSON)."""


class RobomimicWriter:
    """Writes demos to a robomimic-layout HDF5 file (data/demo_i, mask/*).

    Until `close`, the file records after each demo what is complete (data.attrs[PROGRESS]:
    the demo count, the masks so far and the caller's `state`), in one attribute written in
    place, so a stop at any point leaves a file that `reopen` continues from its last
    complete demo.
    """

    def __init__(self, path: str | Path, env_args: dict) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = h5py.File(self.path, "w")
        self.data = self.file.create_group("data")
        self.data.attrs["env_args"] = json.dumps(env_args)
        self.num_demos = 0
        self.total = 0
        self.groups: dict[str, list[str]] = {}
        self.state: dict | None = None
        self._record_progress()

    @classmethod
    def reopen(cls, path: str | Path) -> RobomimicWriter:
        """The writer of an unclosed file, to add demos after its complete ones; a demo that
        was being written when the file was left (not in its progress record) is deleted.
        KeyError or OSError when the file has no progress record or cannot be read."""
        self = cls.__new__(cls)
        self.path = Path(path)
        self.file = h5py.File(self.path, "a")
        try:
            self.data = self.file["data"]
            progress = json.loads(self.data.attrs[PROGRESS])
            self.num_demos, self.total = int(progress["demos"]), int(progress["total"])
            self.groups, self.state = progress["groups"], progress["state"]
            for name in list(self.data):
                if _demo_index(name) >= self.num_demos:
                    del self.data[name]
            if "mask" in self.file:  # masks are written at close, which was cut short
                del self.file["mask"]
        except BaseException:
            self.file.close()
            raise
        return self

    def _record_progress(self) -> None:
        # attrs.modify writes an existing attribute in place, in one call: a stop leaves
        # the old record or the new one, never none (attrs[...] = deletes, then creates).
        record = {
            "demos": self.num_demos,
            "total": self.total,
            "groups": self.groups,
            "state": self.state,
        }
        self.data.attrs.modify(PROGRESS, json.dumps(record))
        self.file.flush()

    def add_demo(
        self,
        *,
        states: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        dones: np.ndarray,
        obs: dict[str, np.ndarray],
        next_obs: dict[str, np.ndarray],
        model_xml: str | None = None,
        seed: int | None = None,
        group: str | Sequence[str] | None = None,
        attrs: dict | None = None,
        state: dict | None = None,
    ) -> str:
        """Append one demo; obs values are (T, ...) arrays, images uint8 (T, H, W, 3);
        model_xml is the model it ran in, seed the env seed it started from; group names
        the mask(s) it belongs to, attrs go to the demo group's attrs (e.g. its operator).
        state (JSON-able) is what the caller needs to go on after this demo; `reopen`
        gives back the last complete demo's as `.state`."""
        name = f"demo_{self.num_demos}"
        g = self.data.create_group(name)
        n = len(actions)
        g.attrs["num_samples"] = n
        if model_xml is not None:
            g.attrs["model_file"] = model_xml
        if seed is not None:
            g.attrs["env_seed"] = seed
        for key, value in (attrs or {}).items():
            g.attrs[key] = value
        g.create_dataset("states", data=np.asarray(states, dtype=np.float64))
        g.create_dataset("actions", data=np.asarray(actions, dtype=np.float64))
        g.create_dataset("rewards", data=np.asarray(rewards, dtype=np.float64))
        g.create_dataset("dones", data=np.asarray(dones, dtype=np.int64))
        for prefix, values in (("obs", obs), ("next_obs", next_obs)):
            for key, arr in values.items():
                write_obs(g, f"{prefix}/{key}", arr)
        self.num_demos += 1
        self.total += n
        for key in [group] if isinstance(group, str) else group or ():
            self.groups.setdefault(key, []).append(name)
        self.state = state
        self._record_progress()
        return name

    def suspend(self) -> int:
        """Close the file unfinished, for `reopen`; returns the complete demos it holds (as
        recorded: a stop inside add_demo leaves the count here one ahead of the file's)."""
        try:
            return int(json.loads(self.data.attrs[PROGRESS])["demos"])
        finally:
            self.file.close()

    def close(self, valid_fraction: float = 0.1, seed: int = 0) -> None:
        """Write attrs and masks, close the file: train/valid, one mask per group and, as in
        robomimic's mh files, its train and valid parts (<group>_train, <group>_valid)."""
        self.data.attrs["total"] = self.total
        names = [f"demo_{i}" for i in range(self.num_demos)]
        order = np.random.default_rng(seed).permutation(self.num_demos)
        num_valid = int(round(valid_fraction * self.num_demos)) if self.num_demos > 1 else 0
        valid = sorted((names[i] for i in order[:num_valid]), key=_demo_index)
        train = sorted((names[i] for i in order[num_valid:]), key=_demo_index)
        masks = {"train": train, "valid": valid}
        for key, demos in self.groups.items():
            masks[key] = demos
            masks[f"{key}_train"] = [d for d in demos if d in set(train)]
            masks[f"{key}_valid"] = [d for d in demos if d in set(valid)]
        for key, demos in masks.items():
            self.file.create_dataset(f"mask/{key}", data=np.array(demos, dtype="S"))
        del self.data.attrs[PROGRESS]  # a finished file is not continued
        self.file.close()


def write_obs(group: h5py.Group, key: str, arr: np.ndarray) -> None:
    """One obs dataset; images gzip-compressed (~2.7x smaller, cheap to decode)."""
    arr = np.asarray(arr)
    if arr.dtype == np.uint8 and arr.ndim == 4:
        group.create_dataset(
            key, data=arr, compression="gzip", compression_opts=4, chunks=(1, *arr.shape[1:])
        )
    else:
        group.create_dataset(key, data=arr)


def _demo_index(name: str) -> int:
    return int(name.split("_")[-1])


def _stack(frames: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.stack([f[k] for f in frames]) for k in frames[0]}


def run_demo(env: LiftEnv, policy: ScriptedLiftPolicy, seed: int, max_steps: int) -> dict | None:
    """One scripted episode until success; None when it fails within max_steps.

    The seed decides the episode's model (cube size) and initial state; the demo keeps
    both (`model_xml`, `states`), so it can be replayed in its own model, and the number
    of missed grasps the policy recovered from (`attrs["recoveries"]`).
    """
    obs = env.reset(seed=seed)
    model_xml = env.model_xml()
    states, actions, rewards, observations = [], [], [], [obs]
    for _ in range(max_steps):
        states.append(env.get_state())
        action = policy(obs)
        obs, reward, success, _ = env.step(action)
        actions.append(action)
        rewards.append(reward)
        observations.append(obs)
        if success:
            dones = np.zeros(len(actions), dtype=np.int64)
            dones[-1] = 1
            return {
                "states": np.stack(states),
                "actions": np.stack(actions),
                "rewards": np.array(rewards),
                "dones": dones,
                "obs": _stack(observations[:-1]),
                "next_obs": _stack(observations[1:]),
                "model_xml": model_xml,
                "seed": seed,
                "attrs": {"recoveries": policy.recoveries},
            }
    return None


def resolve_operators(
    operators: int | Sequence[Operator], preset: str | None
) -> tuple[Operator, ...]:
    """The operators of a preset, of make_operators(count), or as given."""
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
        return PRESETS[preset].operators
    if isinstance(operators, int):
        return tuple(make_operators(operators))
    ops = tuple(operators)
    names = [op.name for op in ops]
    if not ops or len(set(names)) != len(names):
        raise ValueError(f"operators need distinct names, got {names}")
    return ops


def operator_masks(op: Operator, ops: Sequence[Operator]) -> list[str]:
    """The masks a demo of op belongs to: its name, its level, and robomimic's pairs of
    levels (okay_better, worse_better, worse_okay) when both levels are in the file."""
    if op.level is None:
        return [op.name]
    present = [lv for lv in LEVELS if any(o.level == lv for o in ops)]
    pairs = [
        f"{LEVELS[j]}_{LEVELS[i]}"
        for i in range(len(LEVELS))
        for j in range(i + 1, len(LEVELS))
        if op.level in (LEVELS[i], LEVELS[j]) and {LEVELS[i], LEVELS[j]} <= set(present)
    ]
    return [op.name, op.level, *pairs]


def generate(
    output: str | Path,
    num_demos: int | None,
    seed: int = 0,
    operators: int | Sequence[Operator] = 1,
    max_steps: int = 300,
    cameras: tuple[str, ...] = CAMERAS,
    image_size: int = IMAGE_SIZE,
    progress: bool = True,
    render_settings: RenderSettings | None = None,
    preset: str | None = None,
) -> dict[str, float]:
    """Write num_demos successful scripted demos; returns counts and the success rate.

    preset (ph, mh, small; see PRESETS) chooses the operators, and num_demos when that is
    None; without one, `operators` is a count for make_operators or a list of Operators.
    Operators take equal turns. The file depends on `seed` alone: every demo's env seed,
    and so its cube size and placement, is drawn from it, whatever state np.random was in.

    The demos go to `<output>.partial`, renamed to `output` once all are there. A stop
    (StopRequested, KeyboardInterrupt) keeps the complete demos there and raises
    StopRequested saying so; a later call with the same arguments continues from them and
    writes the file an uninterrupted call writes (the rng's state is recorded with each
    demo). A partial file made with other arguments, or damaged, is started over.
    """
    ops = resolve_operators(operators, preset)
    if num_demos is None:
        if preset is None:
            raise ValueError("num_demos is needed without a preset")
        num_demos = PRESETS[preset].num_demos
    if num_demos < 1:
        raise ValueError(f"--num_demos must be >= 1, got {num_demos}")
    output = Path(output)
    # Written under another name and renamed at the end: an interrupted run leaves no
    # file that looks complete (the task module generates its default on first use).
    tmp = output.with_name(output.name + ".partial")
    # What decides the demos besides env_args; a partial file is continued only if equal.
    attrs = {
        "preset": preset or "custom",
        "operators": json.dumps([asdict(op) for op in ops]),
        "generator": json.dumps(
            {"version": GENERATOR_VERSION, "seed": seed, "num_demos": num_demos,
             "max_steps": max_steps}
        ),
    }
    env = writer = None
    try:
        env_args = default_env_args(cameras, image_size, render_settings)
        env = LiftEnv(env_args, use_images=bool(cameras))
        env_args["render_settings"] = env.render_record()
        writer = _open_partial(tmp, env_args, attrs)
        if writer.num_demos:
            print(f"[envs.lift] continuing {tmp}: {writer.num_demos} of {num_demos} demos "
                  "were kept by an earlier run")
        stats = _write_demos(writer, env, ops, num_demos, seed, max_steps, progress)
        writer.close(seed=seed)
        writer = None
        tmp.replace(output)
        return stats
    except (StopRequested, KeyboardInterrupt) as stop:
        kept = _keep_partial(writer, tmp, output, num_demos)
        raise StopRequested.keeping(stop, kept) from None
    except BaseException:
        if writer is not None:
            writer.file.close()
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if env is not None:
            env.close()


def _open_partial(tmp: Path, env_args: dict, attrs: dict[str, str]) -> RobomimicWriter:
    """The writer of `tmp`: the one an earlier call with these arguments left, or a new
    file (with a note saying why an existing one is not continued)."""
    if tmp.exists():
        expected = {"env_args": json.dumps(env_args), **attrs}
        try:
            writer = RobomimicWriter.reopen(tmp)
        except (KeyError, OSError, ValueError) as err:  # e.g. killed (SIGKILL) mid-write
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            print(f"[envs.lift] starting {tmp} over: it cannot be continued ({reason})")
        else:
            if all(writer.data.attrs.get(k) == v for k, v in expected.items()):
                return writer
            writer.file.close()
            print(f"[envs.lift] starting {tmp} over: an earlier run made it with other "
                  "arguments")
    writer = RobomimicWriter(tmp, env_args)
    for key, value in attrs.items():
        writer.data.attrs[key] = value
    return writer


def _write_demos(
    writer: RobomimicWriter,
    env: LiftEnv,
    ops: Sequence[Operator],
    num_demos: int,
    seed: int,
    max_steps: int,
    progress: bool,
) -> dict[str, float]:
    """Add scripted demos until the writer holds num_demos; counts and the success rate."""
    rng = np.random.default_rng(seed)
    state = writer.state or {"rng": rng.bit_generator.state, "attempts": 0, "recoveries": 0}
    rng.bit_generator.state = state["rng"]
    attempts, recoveries = int(state["attempts"]), int(state["recoveries"])
    bar = tqdm(
        total=num_demos,
        initial=writer.num_demos,
        desc="scripted lift demos",
        unit="demo",
        disable=not progress,
    )
    try:
        while writer.num_demos < num_demos:
            # Operators take turns, as robomimic's mh operators each give an equal share.
            op = ops[writer.num_demos % len(ops)]
            policy = ScriptedLiftPolicy(op, rng)
            attempts += 1
            if attempts > 3 * num_demos + 10:
                raise RuntimeError(
                    f"scripted controller failed {attempts - writer.num_demos} of {attempts} "
                    "attempts; the environment does not behave as expected"
                )
            demo = run_demo(env, policy, demo_seed(rng), max_steps)
            if demo is None:
                continue
            demo["attrs"]["operator"] = op.name
            recoveries += int(demo["attrs"]["recoveries"])
            # Recorded with the demo: a continued file draws on from this rng state.
            state = {"rng": rng.bit_generator.state, "attempts": attempts,
                     "recoveries": recoveries}
            writer.add_demo(**demo, group=operator_masks(op, ops), state=state)
            bar.update(1)
            bar.set_postfix(success=f"{writer.num_demos / attempts:.2f}")
    finally:
        bar.close()
    return {
        "demos": float(num_demos),
        "attempts": float(attempts),
        "success_rate": num_demos / attempts,
        "mean_length": writer.total / writer.num_demos,
        "recoveries": float(recoveries),
    }


def _keep_partial(
    writer: RobomimicWriter | None, tmp: Path, output: Path, num_demos: int
) -> str:
    """Close the partial file as a stop left it; says what is kept (StopRequested.kept)."""
    if writer is None:  # stopped before the file was open, or after it was finished
        if output.exists():
            return f"all {num_demos} demos are in {output}"
        if tmp.exists():
            return f"{tmp} is left as it was; the next run continues from its complete demos"
        return "no demo had been written; the next run starts over"
    try:
        kept = writer.suspend()
    except KeyError:  # stopped inside close(), after its progress record went
        kept = 0
    if kept == 0:
        tmp.unlink(missing_ok=True)
        return f"no complete demo to keep; the next run starts the {num_demos} demos over"
    return f"{kept} of {num_demos} demos kept in {tmp}; the next run continues from them"


def measure(
    operators: Sequence[Operator], episodes: int, seed: int = 0, max_steps: int = 300
) -> dict[str, dict[str, float]]:
    """Per operator, over `episodes` camera-less episodes (demo seeds from `seed`): success
    rate, length of the successes (mean, min, max) and recoveries per success."""
    env = LiftEnv(default_env_args(cameras=()), use_images=False)
    rng = np.random.default_rng(seed)
    out = {}
    try:
        for op in operators:
            lengths, recoveries = [], []
            for _ in range(episodes):
                policy = ScriptedLiftPolicy(op, rng)
                demo = run_demo(env, policy, demo_seed(rng), max_steps)
                if demo is not None:
                    lengths.append(len(demo["actions"]))
                    recoveries.append(policy.recoveries)
            out[op.name] = {
                "success_rate": len(lengths) / episodes,
                "mean_length": float(np.mean(lengths)) if lengths else float("nan"),
                "min_length": float(min(lengths, default=0)),
                "max_length": float(max(lengths, default=0)),
                "recoveries_per_success": float(np.mean(recoveries)) if lengths else 0.0,
            }
    finally:
        env.close()
    return out


def render(
    input_path: str | Path,
    output_path: str | Path,
    cameras: tuple[str, ...] = CAMERAS,
    image_size: int = IMAGE_SIZE,
    overwrite: bool = False,
    progress: bool = True,
    render_settings: RenderSettings | None = None,
) -> None:
    """Copy a low-dim robomimic file and add `<camera>_image` obs rendered from its states,
    each demo in its own model (`model_file`); render_settings None = ours (fast)."""
    input_path, output_path = Path(input_path), Path(output_path)
    if not input_path.is_file():
        raise FileNotFoundError(f"--input {input_path} does not exist")
    if output_path.exists() and not overwrite:
        raise FileExistsError(f"--output {output_path} exists; pass --overwrite to replace it")
    if output_path.resolve() == input_path.resolve():
        raise ValueError("--output must differ from --input")
    with h5py.File(input_path, "r") as f:
        if "data" not in f or "env_args" not in f["data"].attrs:
            raise ValueError(f"{input_path} is not a robomimic file (no data.attrs['env_args'])")
        env_args = json.loads(f["data"].attrs["env_args"])
        demos = sorted(f["data"].keys(), key=_demo_index)
        for d in demos:
            if "states" not in f[f"data/{d}"]:
                raise ValueError(f"{input_path}: data/{d} has no 'states' to render from")
    kwargs = env_args["env_kwargs"]
    kwargs.update(
        camera_names=list(cameras),
        camera_heights=image_size,
        camera_widths=image_size,
        use_camera_obs=True,
        has_offscreen_renderer=True,
    )
    settings = render_settings or RenderSettings()
    output_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_path.with_name(output_path.name + ".partial")
    shutil.copyfile(input_path, tmp)
    env = LiftEnv(env_args, render=settings)
    env_args["render_settings"] = env.render_record()
    try:
        with h5py.File(tmp, "a") as f:
            f["data"].attrs["env_args"] = json.dumps(env_args)
            for d in tqdm(demos, desc="rendering demos", unit="demo", disable=not progress):
                g = f[f"data/{d}"]
                states, actions = g["states"][()], g["actions"][()]
                xml = g.attrs.get("model_file")
                frames = []
                for t, state in enumerate(states):
                    frames.append(env.reset_to(state, model_xml=xml if t == 0 else None))
                # As robomimic does: the last next_obs comes from playing the last action.
                env.reset_to(states[-1])
                last, _, _, _ = env.step(actions[-1])
                for cam in cameras:
                    key = f"{cam}_image"
                    images = np.stack([fr[key] for fr in frames])
                    for prefix, arr in (
                        ("obs", images),
                        ("next_obs", np.concatenate([images[1:], last[key][None]])),
                    ):
                        if f"{prefix}/{key}" in g:
                            del g[f"{prefix}/{key}"]
                        write_obs(g, f"{prefix}/{key}", arr)
        tmp.replace(output_path)
    except (StopRequested, KeyboardInterrupt) as stop:
        kept = f"{output_path} was not written; the next run renders every demo again"
        raise StopRequested.keeping(stop, kept) from None
    finally:
        env.close()
        tmp.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    """Command line: generate | render | measure."""
    parser = argparse.ArgumentParser(description="Lift demos in robomimic HDF5 format")
    sub = parser.add_subparsers(dest="command", required=True)
    presets = ", ".join(f"{k}: {v.about}" for k, v in PRESETS.items())
    gen = sub.add_parser("generate", help="scripted pick-and-lift demos with camera images")
    gen.add_argument(
        "--preset", choices=list(PRESETS), default=None, help=f"operators and count ({presets})"
    )
    gen.add_argument(
        "--num_demos", type=int, default=None, help="demos to keep (default: the preset's, or 100)"
    )
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument(
        "--operators", type=int, default=None, help="demonstrator styles without a preset (1)"
    )
    gen.add_argument("--max_steps", type=int, default=300, help="give up on an attempt after")
    gen.add_argument("--no_images", action="store_true", help="low-dim only (fast)")
    gen.add_argument("--output", required=True)
    ren = sub.add_parser("render", help="add camera images to a low-dim file from its states")
    ren.add_argument("--input", required=True)
    ren.add_argument("--output", required=True)
    ren.add_argument("--cameras", nargs="+", default=list(CAMERAS))
    ren.add_argument("--image_size", type=int, default=IMAGE_SIZE)
    ren.add_argument("--overwrite", action="store_true")
    for command in (gen, ren):
        command.add_argument(
            "--robomimic_render",
            action="store_true",
            help="render as robosuite and robomimic do: reflections and multisampling on "
            "(slower on a CPU; for comparing with robomimic's own image files)",
        )
    mea = sub.add_parser("measure", help="scripted success rate and lengths per operator")
    mea.add_argument("--preset", choices=list(PRESETS), default="mh")
    mea.add_argument("--episodes", type=int, default=20, help="episodes per operator")
    mea.add_argument("--seed", type=int, default=0)
    mea.add_argument("--max_steps", type=int, default=300)
    args = parser.parse_args(argv)
    if args.command == "generate" and args.preset is not None and args.operators is not None:
        parser.error("--operators and --preset both choose the operators; pass one")
    try:
        with StopRaises():
            run_command(args)
    except (StopRequested, KeyboardInterrupt) as stop:
        # One line, not a traceback: what was kept is all a stopped user needs to know.
        said = f"stopped by {signal_of(stop)} while running {args.command}"
        kept = getattr(stop, "kept", None)
        print(said + (f": {kept}" if kept else ""), file=sys.stderr)
        raise SystemExit(EXIT_STOPPED) from None


def run_command(args: argparse.Namespace) -> None:
    """What main() parsed: generate | render | measure."""
    if args.command == "measure":
        results = measure(PRESETS[args.preset].operators, args.episodes, args.seed, args.max_steps)
        for name, r in results.items():
            print(
                f"{name}: success {r['success_rate']:.2f}, length {r['mean_length']:.1f} "
                f"(min {r['min_length']:.0f}, max {r['max_length']:.0f}), recoveries per "
                f"success {r['recoveries_per_success']:.2f}"
            )
        return
    settings = RenderSettings.robomimic() if args.robomimic_render else RenderSettings()
    if args.command == "generate":
        num_demos = args.num_demos
        if num_demos is None and args.preset is None:
            num_demos = 100
        stats = generate(
            args.output,
            num_demos,
            seed=args.seed,
            operators=1 if args.operators is None else args.operators,
            max_steps=args.max_steps,
            cameras=() if args.no_images else CAMERAS,
            render_settings=settings,
            preset=args.preset,
        )
        print(
            f"wrote {args.output}: {int(stats['demos'])} demos, scripted success "
            f"{stats['success_rate']:.3f} ({int(stats['demos'])}/{int(stats['attempts'])}), "
            f"mean length {stats['mean_length']:.1f} steps, "
            f"{int(stats['recoveries'])} recoveries"
        )
    else:
        render(
            args.input,
            args.output,
            tuple(args.cameras),
            args.image_size,
            args.overwrite,
            render_settings=settings,
        )
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
