"""robosuite Lift built from a robomimic dataset's `env_args`, rendering offscreen fast.

robomimic 0.3.0's own robosuite wrapper imports `mujoco_py` at module level and fails
with mujoco 3.x, so the environment is made here directly through robosuite from the
`env_args` JSON that every robomimic HDF5 file stores under `data.attrs`. Observations
follow robomimic's conventions (what its wrapper produces), so that data written by
`envs.lift.demos`, real robomimic files and rollouts all look alike: images are uint8
HWC flipped upright, `object` holds robosuite's `object-state`, and every `robot0_*`
proprio observable (joint positions, eef velocities included) is present.

Rendering: Mesa multisampling and the floor's reflection pass cost most of an offscreen
frame on a CPU; `offsamples = 0` must be set before the render context is made (the
context allocates its multisample buffer then), so it is set inside `_initialize_sim`,
which robosuite calls before creating the context, including on every hard reset.
`python -m envs.lift.env benchmark` measures what the settings save. Which settings a
file's frames were rendered with is stored in its env_args (`render_settings`, see
RenderSettings), and an env built from those env_args renders the same way.

Both robosuite generations' files: the env_args go through `envs.lift.env_args`
(`normalize_env_args`), which converts a robosuite 1.4 (flat OSC_POSE) or 1.5 (composite
BASIC) controller config to the installed robosuite's form; a demo's `model_file` from the
other generation does not compile (other mesh files), and `reset_to` then sets its state in
the env's own model.

Episodes: robosuite draws the cube's size from `np.random` when it builds the model and
its placement when it resets; with `hard_reset=False` the size is drawn once, when the
env is made, from whatever state `np.random` is in. `reset(seed=s)` therefore seeds
`np.random` with s and does what robosuite's hard reset does (new model, new cube size,
new placement), so an episode is a function of its seed alone, in any process (robosuite
1.5 draws from the env's own `rng`, which is reseeded too). The
render context survives that reset (a redrawn cube changes no texture or mesh): measured
on CPU (2 cores, shared, two 84x84 cameras), 0.33-0.35 s per seeded reset against 1.8-2.0 s
for robosuite's own hard reset, with bitwise the same observations.
"""

from __future__ import annotations

import argparse
import copy
import ctypes.util
import json
import os
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass

import numpy as np

from envs.lift.env_args import (
    ARM_DEFAULTS,
    installed_robosuite_version,
    normalize_env_args,
    robosuite_generation,
)

# Lift camera observations and the proprio keys the policies read.
CAMERAS = ("agentview", "robot0_eye_in_hand")
IMAGE_SIZE = 84
LOWDIM_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")
# robomimic's rollout horizons for lift: proficient-human 400, multi-human 500.
HORIZON_PH = 400
HORIZON_MH = 500

# Episode seeds: demos and evaluation draw from disjoint ranges. Evaluation episode i has
# seed 100000 + i (Diffusion Policy's convention for robomimic test episodes), whatever
# the training seed; demos take seeds from 1,000,000 up, so no demo starts where an
# evaluation episode does.
EVAL_SEED_START = 100_000
DEMO_SEED_START = 1_000_000
MAX_EVAL_EPISODES = DEMO_SEED_START - EVAL_SEED_START


def evaluation_seeds(num_episodes: int) -> list[int]:
    """The env seeds of evaluation episodes 0..num_episodes-1 (fixed, as in Diffusion Policy)."""
    if not 0 <= num_episodes <= MAX_EVAL_EPISODES:
        raise ValueError(f"evaluation takes 0 to {MAX_EVAL_EPISODES} episodes, got {num_episodes}")
    return [EVAL_SEED_START + i for i in range(num_episodes)]


def demo_seed(rng: np.random.Generator) -> int:
    """A demo's env seed, drawn from the generator's rng, outside the evaluation seeds."""
    return int(rng.integers(DEMO_SEED_START, 2**31 - 1))


@dataclass(frozen=True)
class RenderSettings:
    """How frames are rendered: stored in a file's env_args, used by every env made from it.

    robosuite's (and so robomimic's) renders have both on; ours are off by default,
    because on a CPU they cost most of a frame (`python -m envs.lift.env benchmark`).
    """

    reflections: bool = False
    """The floor's reflection pass (robosuite's materials keep their reflectance)."""
    multisampling: bool = False
    """Offscreen multisample anti-aliasing (MuJoCo's `vis.quality.offsamples`, 4 by default)."""

    @classmethod
    def robomimic(cls) -> RenderSettings:
        """robosuite's own renderer settings, which robomimic's image files were made with."""
        return cls(reflections=True, multisampling=True)

    @classmethod
    def from_env_args(cls, env_args: dict) -> RenderSettings:
        """The settings a file's frames were rendered with; robomimic's when it does not say."""
        stored = env_args.get("render_settings")
        if stored is None:
            return cls.robomimic()
        return cls(bool(stored["reflections"]), bool(stored["multisampling"]))

    def to_dict(self) -> dict:
        """The env_args["render_settings"] entry (provenance keys are added by LiftEnv)."""
        return asdict(self)


# robomimic's lift files (robosuite 1.4): OSC_POSE deltas with robosuite's default settings.
_OSC_POSE = {"type": "OSC_POSE", **ARM_DEFAULTS["OSC_POSE"], "control_delta": True}


def default_env_args(
    cameras: tuple[str, ...] = CAMERAS,
    image_size: int = IMAGE_SIZE,
    render: RenderSettings | None = None,
) -> dict:
    """The env_args robomimic's lift image datasets carry (robosuite 1.4, Panda, OSC_POSE),
    plus our `render_settings` (robomimic reads only env_name, type and env_kwargs)."""
    return {
        "env_name": "Lift",
        "type": 1,  # robomimic's EnvType.ROBOSUITE_TYPE
        # The robosuite that records the demos (their model_file is that version's xml).
        "env_version": installed_robosuite_version(),
        "env_kwargs": {
            "has_renderer": False,
            "has_offscreen_renderer": True,
            "ignore_done": True,
            "use_object_obs": True,
            "use_camera_obs": bool(cameras),
            "control_freq": 20,
            "controller_configs": copy.deepcopy(_OSC_POSE),
            "robots": ["Panda"],
            "camera_depths": False,
            "camera_heights": image_size,
            "camera_widths": image_size,
            "reward_shaping": False,
            "camera_names": list(cameras),
        },
        "render_settings": (render or RenderSettings()).to_dict(),
    }


def select_gl_backend() -> str:
    """Pick MUJOCO_GL once per process tree: EGL when it works, osmesa otherwise.

    The choice has to be made before robosuite or PyOpenGL is imported (both bind the
    platform at import), so EGL is probed in a subprocess; worker processes inherit the
    environment variables and skip the probe.
    """
    if os.environ.get("MUJOCO_GL"):
        return os.environ["MUJOCO_GL"]
    probe = (
        "import mujoco, mujoco.egl; c = mujoco.egl.GLContext(64, 64); c.make_current(); c.free()"
    )
    env = dict(os.environ, MUJOCO_GL="egl", PYOPENGL_PLATFORM="egl")
    ok = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True).returncode == 0
    backend = "egl" if ok else "osmesa"
    if not ok:
        if ctypes.util.find_library("OSMesa") is None:
            raise RuntimeError(
                "offscreen rendering needs EGL (Mesa libegl1) or OSMesa (Debian libosmesa6); "
                "EGL failed to make a context and libOSMesa is not installed"
            )
        print("[envs.lift] EGL rendering unavailable; falling back to MUJOCO_GL=osmesa", flush=True)
    os.environ["MUJOCO_GL"] = backend
    os.environ.setdefault("PYOPENGL_PLATFORM", backend)
    return backend


def _load_triton_first() -> None:
    """Import triton (if installed) before any GL context exists.

    Measured here: with Mesa EGL and the CUDA build of torch, importing triton after a
    robosuite render context was made segfaults the process; torch._dynamo imports it
    lazily, e.g. when torchvision.ops is first imported. Loading it first is harmless.
    """
    try:
        from torch.utils._triton import has_triton_package
    except ImportError:
        return
    has_triton_package()  # cached after the first call


_ENV_CLASSES: dict[tuple[str, RenderSettings], type] = {}
# What a render context (MjrContext) holds of its model: uploaded textures, meshes, height
# fields, skins and its offscreen buffers. A model equal in these can use it as it is.
_RENDER_ASSET_SIZES = (
    "ntex",
    "ntexdata",
    "nmesh",
    "nmeshvert",
    "nmeshface",
    "nhfield",
    "nhfielddata",
    "nskin",
)


def _same_render_assets(old, new) -> bool:
    """Whether a render context made for model `old` draws model `new` as a fresh one would."""
    if any(getattr(old, k) != getattr(new, k) for k in _RENDER_ASSET_SIZES):
        return False
    return (
        old.vis.quality.offsamples == new.vis.quality.offsamples
        and old.vis.quality.shadowsize == new.vis.quality.shadowsize
        and np.array_equal(old.tex_data, new.tex_data)
        and np.array_equal(old.mesh_vert, new.mesh_vert)
        and np.array_equal(old.mesh_face, new.mesh_face)
    )


def _env_class(env_name: str, render: RenderSettings) -> type:
    """robosuite's class for env_name, subclassed to render with `render`, to keep the
    compiled xml (robomimic's `model_file`) and to reuse the render context across hard
    resets."""
    import mujoco
    from robosuite.environments.base import REGISTERED_ENVS

    if env_name not in REGISTERED_ENVS:
        raise ValueError(f"env_args names env {env_name!r}, which robosuite does not know")
    base = REGISTERED_ENVS[env_name]
    key = (env_name, render)
    if key in _ENV_CLASSES:
        return _ENV_CLASSES[key]

    def _initialize_sim(self, xml_string=None):
        # The xml as compiled, before the settings below touch the model: the model's own
        # get_xml() (mj_saveLastXML) would write them into every demo's model_file.
        self.compiled_xml = xml_string if xml_string else self.model.get_xml()
        base._initialize_sim(self, self.compiled_xml)
        # The render context is created after this (in _reset_internal), so the
        # multisample buffer it allocates is the single-sample one.
        if not render.multisampling:
            self.sim.model.vis.quality.offsamples = 0
        if not render.reflections:
            self.sim.model.mat_reflectance[:] = 0.0
        context = self.__dict__.pop("_spare_render_context", None)
        if context is not None and _same_render_assets(context.model._model, self.sim.model._model):
            # Rebind the old context to the new sim; only the scene is per model.
            context.sim, context.model, context.data = self.sim, self.sim.model, self.sim.data
            context.scn = mujoco.MjvScene(self.sim.model._model, maxgeom=1000)
            context.gl_ctx.make_current()
            self.sim.add_render_context(context)
        # Otherwise the old context is dropped here and _reset_internal makes a new one.

    def _destroy_sim(self):
        # Keep the render context for the next sim: making one costs ~1 s on a CPU.
        if self.sim is None or not getattr(self, "keep_render_context", True):
            return base._destroy_sim(self)
        self._spare_render_context = self.sim._render_context_offscreen
        self.sim._render_context_offscreen = None
        # Without its context the old sim is freed by reference counting (checked with a
        # weakref); MjSim.free's gc.collect() would add ~0.3 s to every episode.
        self.sim = None

    # robosuite's env metaclass registers every subclass by name; the prefix keeps these
    # from shadowing the original.
    name = f"Rlenc{int(render.reflections)}{int(render.multisampling)}{env_name}"
    methods = {"_initialize_sim": _initialize_sim, "_destroy_sim": _destroy_sim}
    _ENV_CLASSES[key] = type(name, (base,), methods)
    return _ENV_CLASSES[key]


_NOTED: set[str] = set()


def _note_once(note: str) -> None:
    """Print an env_args note once per process (evaluation makes envs over and over)."""
    if note not in _NOTED:
        _NOTED.add(note)
        print(f"[envs.lift] {note}", flush=True)


class LiftEnv:
    """A robosuite env made from robomimic env_args, with robomimic-style observations."""

    def __init__(
        self,
        env_args: dict | str,
        *,
        use_images: bool = True,
        hard_reset: bool = False,
        render: RenderSettings | None = None,
    ) -> None:
        """render: None = the env_args' `render_settings` (robomimic's when absent);
        hard_reset: redraw the model on every reset, not only on seeded ones."""
        if isinstance(env_args, str):
            env_args = json.loads(env_args)
        # Either robosuite generation's env_args, in the installed one's form (one-line
        # ValueError for a file that cannot run); what was changed is said once a process.
        kwargs, notes = normalize_env_args(env_args)
        for note in notes:
            _note_once(note)
        self.cameras = tuple(kwargs.get("camera_names") or ()) if use_images else ()
        if isinstance(kwargs.get("camera_names"), str):
            self.cameras = (kwargs["camera_names"],) if use_images else ()
        kwargs.update(
            has_renderer=False,
            # Offscreen context is kept even without camera obs, for video frames.
            has_offscreen_renderer=True,
            ignore_done=True,
            use_object_obs=True,
            use_camera_obs=bool(self.cameras),
            camera_depths=False,
            # False: only seeded resets rebuild the model (see reset); reset_to and
            # unseeded resets keep the current one, as robomimic's replay expects.
            hard_reset=hard_reset,
        )
        if self.cameras:
            kwargs["camera_names"] = list(self.cameras)
        select_gl_backend()
        _load_triton_first()
        self.env_name = env_args["env_name"]
        self.render_settings = render or RenderSettings.from_env_args(env_args)
        self.robosuite_generation = robosuite_generation(installed_robosuite_version())
        self._hard_reset = hard_reset
        self._warned_model_file = False
        self.env = _env_class(self.env_name, self.render_settings)(**kwargs)
        # robomimic activates these so that its datasets hold them; keep files alike.
        for name in self.env.observation_names:
            if "joint_pos" in name or "eef_vel" in name:
                self.env.modify_observable(observable_name=name, attribute="active", modifier=True)
        self.action_dim = int(self.env.action_dim)
        self.image_size = (
            int(kwargs.get("camera_heights", 84)),
            int(kwargs.get("camera_widths", 84)),
        )

    def _observation(self, raw: dict | None = None) -> dict[str, np.ndarray]:
        if raw is None:
            raw = self.env._get_observations(force_update=True)
        obs = {}
        for cam in self.cameras:
            # robosuite renders in OpenGL convention (upside down); robomimic flips.
            obs[f"{cam}_image"] = np.ascontiguousarray(raw[f"{cam}_image"][::-1])
        obs["object"] = np.asarray(raw["object-state"], dtype=np.float64)
        for robot in self.env.robots:
            prefix = robot.robot_model.naming_prefix
            for k, v in raw.items():
                if k.startswith(prefix) and k not in obs and not k.endswith("proprio-state"):
                    obs[k] = np.asarray(v)
        return obs

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        """Start an episode. With a seed: np.random seeded with it, then robosuite's hard
        reset (new cube size, new placement), so the episode depends on the seed alone.
        Without: a new placement from np.random's current state, the cube as it was."""
        if seed is None:
            return self._observation(self.env.reset())
        # robosuite 1.4 draws everything (cube size, robot init noise, placement) from
        # the global np.random; it has no rng of its own.
        np.random.seed(seed)
        if self.robosuite_generation == "1.5":
            # robosuite 1.5 draws them from the env's own Generator, which the cube and the
            # placement sampler hold as well: reseed that object in place, not replace it.
            self.env.rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state
        self.env.hard_reset = True
        try:
            raw = self.env.reset()
        finally:
            self.env.hard_reset = self._hard_reset
        return self._observation(raw)

    def reset_to(self, state: np.ndarray, model_xml: str | None = None) -> dict[str, np.ndarray]:
        """Set a flattened sim state (robomimic's `states`), loading the demo's model
        (its `model_file`, e.g. its cube size) first when given; a model_file written by
        the other robosuite generation does not load, and the env's own model is used."""
        if model_xml is not None:
            own_xml = self.env.compiled_xml
            self.env.reset()
            try:
                self.env.reset_from_xml_string(self.env.edit_model_xml(model_xml))
            except ValueError as err:
                # mujoco's compile error: robosuite 1.4 and 1.5 name different mesh files
                # ("Error opening file ..."). Their flattened states are alike (time, qpos,
                # qvel of the same joints), so the state goes into our model instead.
                self._warn_model_file(err)
                self.env.reset_from_xml_string(own_xml)
            self.env.sim.reset()
        self.env.sim.set_state_from_flattened(np.asarray(state, dtype=np.float64))
        self.env.sim.forward()
        return self._observation()

    def _warn_model_file(self, err: ValueError) -> None:
        if self._warned_model_file:
            return
        self._warned_model_file = True
        reason = str(err).strip().splitlines()[0][:200]
        warnings.warn(
            f"a demo's model_file does not load in robosuite {installed_robosuite_version()} "
            f"({reason}); its states are set in this env's own model (its cube size may differ)",
            RuntimeWarning,
            stacklevel=3,
        )

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, dict]:
        """One control step; done is task success (horizons are the caller's business)."""
        raw, reward, _, info = self.env.step(np.asarray(action, dtype=np.float64))
        success = self.is_success()
        info = dict(info, success=success)
        return self._observation(raw), float(reward), success, info

    def is_success(self) -> bool:
        """Cube lifted above the table by robosuite's margin."""
        return bool(self.env._check_success())

    def get_state(self) -> np.ndarray:
        """Flattened sim state (time, qpos, qvel), robomimic's `states` row."""
        return np.asarray(self.env.sim.get_state().flatten())

    def model_xml(self) -> str:
        """The xml the sim was compiled from, robomimic's per-demo `model_file` attribute."""
        return self.env.compiled_xml

    def cube_pos(self) -> np.ndarray:
        """World position of the cube."""
        return np.array(self.env.sim.data.body_xpos[self.env.cube_body_id])

    def cube_half_size(self) -> np.ndarray:
        """The cube's half-extents in the current model (robosuite draws them in 0.020-0.022)."""
        model = self.env.sim.model
        return np.array(model.geom_size[model.geom_name2id("cube_g0")])

    def render_record(self) -> dict:
        """env_args["render_settings"] for frames rendered here: the settings, plus what
        renderer made them (frames of another GL renderer differ slightly)."""
        import mujoco

        record = {
            **self.render_settings.to_dict(),
            "mujoco_gl": os.environ.get("MUJOCO_GL"),
            "mujoco_version": mujoco.__version__,
        }
        try:
            from OpenGL import GL

            self.env.sim._render_context_offscreen.gl_ctx.make_current()
            record["gl_renderer"] = GL.glGetString(GL.GL_RENDERER).decode()
        except Exception:  # provenance only; a renderer that will not say is no error
            pass
        return record

    def render_frame(self, camera: str = "agentview", size: int = 256) -> np.ndarray:
        """An upright RGB frame for videos."""
        frame = self.env.sim.render(camera_name=camera, width=size, height=size)
        return np.ascontiguousarray(frame[::-1])

    def close(self) -> None:
        """Release the sim and the render context."""
        contexts = [
            getattr(self.env.sim, "_render_context_offscreen", None),
            self.env.__dict__.get("_spare_render_context"),
        ]
        self.env.keep_render_context = False  # robosuite's own close() (reset_from_xml) keeps it
        self.env.close()
        # Freed now, not by the context's __del__: a context that something still holds (a
        # traceback's frames after a Ctrl-C inside a render) is otherwise freed at exit,
        # after robosuite's atexit eglTerminate, with two EGLError tracebacks. Freeing twice
        # is harmless (both calls reset what they free).
        for context in contexts:
            if context is not None:
                context.con.free()
                if hasattr(context.gl_ctx, "free"):  # osmesa's context has no free()
                    context.gl_ctx.free()


def benchmark(frames: int = 200) -> dict[str, float]:
    """Milliseconds per 84x84 camera frame for each combination of the two settings.

    Also times full env steps (physics + both cameras) with the settings off and on.
    """
    out = {}
    variants = {
        "default": RenderSettings.robomimic(),
        "offsamples0": RenderSettings(reflections=True, multisampling=False),
        "no_reflections": RenderSettings(reflections=False, multisampling=True),
        "both": RenderSettings(),
    }
    for name, settings in variants.items():
        env = LiftEnv(default_env_args(), render=settings)
        env.reset(seed=0)
        sim = env.env.sim
        for _ in range(5):  # warm-up
            sim.render(camera_name=CAMERAS[0], width=IMAGE_SIZE, height=IMAGE_SIZE)
        t0 = time.perf_counter()
        for i in range(frames):
            sim.render(camera_name=CAMERAS[i % 2], width=IMAGE_SIZE, height=IMAGE_SIZE)
        out[f"render_ms_per_frame/{name}"] = 1000 * (time.perf_counter() - t0) / frames
        if name in ("default", "both"):
            zero = np.zeros(env.action_dim)
            t0 = time.perf_counter()
            for _ in range(frames // 4):
                env.step(zero)
            out[f"step_ms_two_cameras/{name}"] = 1000 * (time.perf_counter() - t0) / (frames // 4)
        env.close()
    return out


def main(argv: list[str] | None = None) -> None:
    """`python -m envs.lift.env benchmark`: rendering cost with and without the speed settings."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("benchmark", help="ms per 84x84 frame, speed settings off vs on")
    bench.add_argument("--frames", type=int, default=200)
    args = parser.parse_args(argv)
    select_gl_backend()
    print(f"MUJOCO_GL={os.environ['MUJOCO_GL']}")
    for k, v in benchmark(args.frames).items():
        print(f"{k}: {v:.1f}")


if __name__ == "__main__":
    main()
