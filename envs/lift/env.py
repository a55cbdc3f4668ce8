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
`python -m envs.lift.env benchmark` measures what the settings save.
"""

from __future__ import annotations

import argparse
import copy
import ctypes.util
import inspect
import json
import os
import subprocess
import sys
import time

import numpy as np

# Lift camera observations and the proprio keys the policies read.
CAMERAS = ("agentview", "robot0_eye_in_hand")
IMAGE_SIZE = 84
LOWDIM_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")
# robomimic's rollout horizons for lift: proficient-human 400, multi-human 500.
HORIZON_PH = 400
HORIZON_MH = 500

_OSC_POSE = {
    "type": "OSC_POSE",
    "input_max": 1,
    "input_min": -1,
    "output_max": [0.05, 0.05, 0.05, 0.5, 0.5, 0.5],
    "output_min": [-0.05, -0.05, -0.05, -0.5, -0.5, -0.5],
    "kp": 150,
    "damping_ratio": 1,
    "impedance_mode": "fixed",
    "kp_limits": [0, 300],
    "damping_ratio_limits": [0, 10],
    "position_limits": None,
    "orientation_limits": None,
    "uncouple_pos_ori": True,
    "control_delta": True,
    "interpolation": None,
    "ramp_ratio": 0.2,
}


def default_env_args(cameras: tuple[str, ...] = CAMERAS, image_size: int = IMAGE_SIZE) -> dict:
    """The env_args robomimic's lift image datasets carry (robosuite 1.4, Panda, OSC_POSE)."""
    return {
        "env_name": "Lift",
        "type": 1,  # robomimic's EnvType.ROBOSUITE_TYPE
        "env_version": "1.4.1",
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


_FAST_CLASSES: dict[tuple[str, bool, bool], type] = {}


def _env_class(env_name: str, zero_offsamples: bool, no_reflections: bool) -> type:
    """robosuite's class for env_name, subclassed to apply the render-speed settings."""
    from robosuite.environments.base import REGISTERED_ENVS

    if env_name not in REGISTERED_ENVS:
        raise ValueError(f"env_args names env {env_name!r}, which robosuite does not know")
    base = REGISTERED_ENVS[env_name]
    if not (zero_offsamples or no_reflections):
        return base
    key = (env_name, zero_offsamples, no_reflections)
    if key not in _FAST_CLASSES:

        def _initialize_sim(self, xml_string=None):
            base._initialize_sim(self, xml_string)
            # The render context is created after this (in _reset_internal), so the
            # multisample buffer it allocates is the single-sample one.
            if zero_offsamples:
                self.sim.model.vis.quality.offsamples = 0
            if no_reflections:
                self.sim.model.mat_reflectance[:] = 0.0

        # robosuite's env metaclass registers every subclass by name; the prefix keeps
        # these from shadowing the original.
        name = f"FastRender{int(zero_offsamples)}{int(no_reflections)}{env_name}"
        _FAST_CLASSES[key] = type(name, (base,), {"_initialize_sim": _initialize_sim})
    return _FAST_CLASSES[key]


class LiftEnv:
    """A robosuite env made from robomimic env_args, with robomimic-style observations."""

    def __init__(
        self,
        env_args: dict | str,
        *,
        use_images: bool = True,
        fast_render: bool = True,
        hard_reset: bool = False,
        render_settings: tuple[bool, bool] | None = None,
    ) -> None:
        if isinstance(env_args, str):
            env_args = json.loads(env_args)
        if env_args.get("type", 1) != 1:
            raise ValueError(
                f"env_args type {env_args.get('type')} is not a robosuite env (type 1)"
            )
        kwargs = copy.deepcopy(env_args["env_kwargs"])
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
            # One sim and one render context for the env's life; robosuite's default
            # rebuilds both on every reset. Cube size then stays fixed per env.
            hard_reset=hard_reset,
        )
        if self.cameras:
            kwargs["camera_names"] = list(self.cameras)
        kwargs.pop("env_name", None)
        select_gl_backend()
        _load_triton_first()
        self.env_name = env_args["env_name"]
        settings = render_settings or (fast_render, fast_render)
        env_class = _env_class(self.env_name, *settings)
        # Files written by other robosuite versions may carry kwargs this one lacks.
        accepted = inspect.signature(env_class.__init__).parameters
        dropped = sorted(k for k in kwargs if k not in accepted)
        if dropped:
            print(f"[envs.lift] ignoring env kwargs robosuite 1.4 does not take: {dropped}")
        self.env = env_class(**{k: v for k, v in kwargs.items() if k in accepted})
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
        """Reset to a random initial state; robosuite 1.4 samples placements from np.random."""
        if seed is not None:
            np.random.seed(seed)
        return self._observation(self.env.reset())

    def reset_to(self, state: np.ndarray, model_xml: str | None = None) -> dict[str, np.ndarray]:
        """Set a flattened sim state (robomimic's `states`), optionally loading its xml first."""
        if model_xml is not None:
            self.env.reset()
            self.env.reset_from_xml_string(self.env.edit_model_xml(model_xml))
            self.env.sim.reset()
        self.env.sim.set_state_from_flattened(np.asarray(state, dtype=np.float64))
        self.env.sim.forward()
        return self._observation()

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
        """The sim's xml, robomimic's per-demo `model_file` attribute."""
        return self.env.sim.model.get_xml()

    def cube_pos(self) -> np.ndarray:
        """World position of the cube."""
        return np.array(self.env.sim.data.body_xpos[self.env.cube_body_id])

    def render_frame(self, camera: str = "agentview", size: int = 256) -> np.ndarray:
        """An upright RGB frame for videos."""
        frame = self.env.sim.render(camera_name=camera, width=size, height=size)
        return np.ascontiguousarray(frame[::-1])

    def close(self) -> None:
        """Release the sim and the render context."""
        self.env.close()


def benchmark(frames: int = 200) -> dict[str, float]:
    """Milliseconds per 84x84 camera frame for each combination of the two settings.

    Also times full env steps (physics + both cameras) with the settings off and on.
    """
    out = {}
    variants = {
        "default": (False, False),
        "offsamples0": (True, False),
        "no_reflections": (False, True),
        "both": (True, True),
    }
    for name, settings in variants.items():
        env = LiftEnv(default_env_args(), render_settings=settings)
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
