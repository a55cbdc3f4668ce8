"""robomimic env_args of either robosuite generation, as the installed robosuite takes them.

Every robomimic file stores the kwargs its demos were recorded with
(`data.attrs["env_args"]`). Two generations of them exist:

- robosuite 1.4 (robomimic's original files, and the files made here): `controller_configs`
  is one flat arm controller, `{"type": "OSC_POSE", "input_max": 1, ..., "control_delta":
  true}`.
- robosuite 1.5 (robomimic's v1.5 files): a composite controller, `{"type": "BASIC",
  "body_parts": {"right": {"type": "OSC_POSE", ..., "input_type": "delta",
  "input_ref_frame": "base", "gripper": {"type": "GRIP"}}}}`, next to env kwargs that 1.4
  lacks (`lite_physics`, `seed`, ...).

Neither robosuite runs the other's controller config as it stands: 1.4 reads a composite
as a flat one and fails with KeyError 'interpolation' (in an evaluation worker, after
training), and 1.5 ignores `control_delta`, so an absolute 1.4 config would run as deltas.
`normalize_env_args` reads either form into one `ArmController` and writes it back in the
form of the installed generation; a file that no robosuite here can run (unknown env, a
robot with other than one arm, a controller we cannot map) fails with one line saying
what is wrong and what to do.
"""

from __future__ import annotations

import copy
import importlib.metadata
import inspect
from dataclasses import dataclass

# robosuite's default arm-controller settings (its osc_pose.json / osc_position.json): the
# same numbers in 1.4 and 1.5, which differ only in how they say delta vs absolute.
# They fill what a file leaves out: 1.4 fails on a missing `interpolation` key.
ARM_DEFAULTS = {
    "OSC_POSE": {
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
        "interpolation": None,
        "ramp_ratio": 0.2,
    },
    "OSC_POSITION": {
        "input_max": 1,
        "input_min": -1,
        "output_max": [0.05, 0.05, 0.05],
        "output_min": [-0.05, -0.05, -0.05],
        "kp": 150,
        "damping_ratio": 1,
        "impedance_mode": "fixed",
        "kp_limits": [0, 300],
        "damping_ratio_limits": [0, 10],
        "position_limits": None,
        "interpolation": None,
        "ramp_ratio": 0.2,
    },
}
SUPPORTED_CONTROLLERS = tuple(ARM_DEFAULTS)
# Keys that say which controller and how its actions read, in one generation's words;
# ArmController holds them as fields, never as settings passed to the other generation.
_FORM_KEYS = ("type", "control_delta", "input_type", "input_ref_frame", "gripper")
# Single-arm, fixed-base robots of both generations (1.4's SingleArm class; 1.5's
# FixedBaseRobots with one arm), so the controller has exactly one arm to drive.
ONE_ARM_ROBOTS = ("IIWA", "Jaco", "Kinova3", "Panda", "Sawyer", "UR5e")
GENERATIONS = ("1.4", "1.5")


@dataclass(frozen=True)
class ArmController:
    """One arm's controller in terms both robosuite generations share."""

    type: str
    """OSC_POSE or OSC_POSITION."""
    settings: dict
    """Gains, limits, input/output ranges, interpolation (robosuite's defaults filled in)."""
    absolute: bool
    """Actions are goal poses, not deltas (1.4 control_delta False, 1.5 input_type absolute)."""
    ref_frame: str
    """Frame of the actions: "world" (all of 1.4) or "base" (1.5's default)."""
    gripper: dict
    """1.5's gripper part config ({"type": "GRIP"}); 1.4 has no such setting."""
    generation: str
    """The robosuite generation the config was written for, "1.4" or "1.5"."""

    def describe(self) -> str:
        """e.g. 'OSC_POSE, delta actions in the world frame'."""
        kind = "absolute" if self.absolute else "delta"
        return f"{self.type}, {kind} actions in the {self.ref_frame} frame"


def robosuite_generation(version: str) -> str:
    """"1.4" or "1.5" for a robosuite version string; one-line ValueError for any other."""
    generation = ".".join(version.split(".")[:2])
    if generation not in GENERATIONS:
        raise ValueError(
            f"robosuite {version} is not supported (the Lift env runs robosuite 1.4.x or "
            f"1.5.x); install one of them, e.g. `pip install robosuite==1.4.1`"
        )
    return generation


def installed_robosuite_version() -> str:
    """The installed robosuite's version, read without importing it (importing binds GL)."""
    return importlib.metadata.version("robosuite")


def read_arm_controller(controller_configs: dict | None) -> ArmController:
    """The arm controller of a 1.4 (flat) or 1.5 (composite) config; one-line ValueError."""
    if not isinstance(controller_configs, dict) or "type" not in controller_configs:
        raise ValueError(
            f"env_args' controller_configs is {controller_configs!r}, not a robosuite "
            f"controller config; use a robomimic file that records its controller"
        )
    if "body_parts" in controller_configs:
        return _read_composite(controller_configs)
    part = controller_configs
    _check_arm_type(part["type"])
    return ArmController(
        type=part["type"],
        settings=_settings(part),
        absolute=not part.get("control_delta", True),
        # robosuite 1.4's OSC works in world coordinates, deltas and goals alike.
        ref_frame="world",
        gripper={"type": "GRIP"},
        generation="1.4",
    )


def _read_composite(config: dict) -> ArmController:
    if config["type"] != "BASIC":
        raise ValueError(
            f"env_args' composite controller {config['type']!r} cannot run here: only "
            f"BASIC composites driving one arm ('right') are supported"
        )
    parts = dict(config["body_parts"])
    # robosuite's own json files nest arms under "arms"; robomimic's files flatten them.
    parts.update(parts.pop("arms", {}))
    if set(parts) != {"right"}:
        raise ValueError(
            f"env_args' controller drives body parts {sorted(parts)}; the Lift env runs "
            f"one arm, 'right' only: use demos of a single-arm robot"
        )
    part = parts["right"]
    _check_arm_type(part.get("type"))
    input_type = part.get("input_type", "delta")
    ref_frame = part.get("input_ref_frame", "base")
    if input_type not in ("delta", "absolute") or ref_frame not in ("world", "base"):
        raise ValueError(
            f"env_args' arm controller has input_type {input_type!r} and input_ref_frame "
            f"{ref_frame!r}; robosuite takes delta/absolute and world/base"
        )
    return ArmController(
        type=part["type"],
        settings=_settings(part),
        absolute=input_type == "absolute",
        ref_frame=ref_frame,
        gripper=copy.deepcopy(part.get("gripper", {"type": "GRIP"})),
        generation="1.5",
    )


def _check_arm_type(controller: str | None) -> None:
    if controller not in ARM_DEFAULTS:
        raise ValueError(
            f"env_args' arm controller {controller!r} is not supported here (supported: "
            f"{', '.join(SUPPORTED_CONTROLLERS)}); use demos recorded with one of them"
        )


def _settings(part: dict) -> dict:
    settings = copy.deepcopy(ARM_DEFAULTS[part["type"]])
    settings.update({k: copy.deepcopy(v) for k, v in part.items() if k not in _FORM_KEYS})
    if settings["impedance_mode"] != "fixed":
        # Variable impedance adds gains to every action: another action size.
        raise ValueError(
            f"env_args' {part['type']} controller has impedance_mode "
            f"{settings['impedance_mode']!r}; only 'fixed' is supported here"
        )
    return settings


def controller_config(arm: ArmController, generation: str) -> dict:
    """The arm as the controller_configs that robosuite `generation` takes."""
    if generation == "1.4":
        if arm.absolute and arm.ref_frame == "base":
            raise ValueError(
                f"env_args' {arm.type} controller takes absolute goals in the robot base "
                f"frame, which robosuite 1.4 cannot run (its goals are in the world frame); "
                f"use robosuite 1.5 (`pip install robosuite==1.5.2`)"
            )
        # A 1.5 delta in the base frame runs as a world-frame delta: the same motion for
        # the fixed-base single-arm robots, whose base is not rotated in robosuite's tasks.
        return {"type": arm.type, **copy.deepcopy(arm.settings), "control_delta": not arm.absolute}
    # What robosuite 1.5's refactor_composite_controller_config makes of a flat config,
    # with delta/absolute carried over (it would keep `control_delta`, which 1.5 ignores).
    part = {
        "type": arm.type,
        **copy.deepcopy(arm.settings),
        "input_type": "absolute" if arm.absolute else "delta",
        "input_ref_frame": arm.ref_frame,
        "gripper": copy.deepcopy(arm.gripper),
    }
    return {"type": "BASIC", "body_parts": {"right": part}}


def _robots(kwargs: dict) -> list[str]:
    robots = kwargs.get("robots")
    robots = [robots] if isinstance(robots, str) else list(robots or [])
    if len(robots) != 1 or robots[0] not in ONE_ARM_ROBOTS:
        raise ValueError(
            f"env_args asks for robots {robots}; the Lift env runs one single-arm robot "
            f"({', '.join(ONE_ARM_ROBOTS)}): use demos of one of them"
        )
    return robots


def _robosuite_env_class(env_name: str | None, version: str) -> type:
    """robosuite's class for env_name (importing robosuite after the GL backend is chosen)."""
    from envs.lift.env import select_gl_backend

    select_gl_backend()  # robosuite binds the GL platform when imported
    from robosuite.environments.base import REGISTERED_ENVS

    if env_name not in REGISTERED_ENVS:
        known = ", ".join(sorted(k for k in REGISTERED_ENVS if not k.startswith("Rlenc")))
        raise ValueError(
            f"env_args names env {env_name!r}, which robosuite {version} does not know "
            f"(known: {known}); use a robomimic robosuite file"
        )
    return REGISTERED_ENVS[env_name]


def normalize_env_args(
    env_args: dict, robosuite_version: str | None = None
) -> tuple[dict, list[str]]:
    """(env kwargs for robosuite, notes on what was changed) from a file's env_args.

    robosuite_version: the robosuite to convert for; None = the installed one. Kwargs are
    checked against the env class (and the env name against robosuite's registry) only
    when it is the installed generation. Raises a one-line ValueError for a file that
    cannot run.
    """
    installed = installed_robosuite_version()
    version = robosuite_version or installed
    generation = robosuite_generation(version)
    if env_args.get("type", 1) != 1:
        raise ValueError(
            f"env_args type {env_args.get('type')!r} is not a robosuite env (robomimic's "
            f"type 1); the Lift tasks take robomimic robosuite files"
        )
    if not isinstance(env_args.get("env_kwargs"), dict):
        raise ValueError("env_args has no env_kwargs dict; it is not a robomimic env_args")
    kwargs = copy.deepcopy(env_args["env_kwargs"])
    kwargs.pop("env_name", None)  # some files repeat it here; it is not an env kwarg
    _robots(kwargs)
    arm = read_arm_controller(kwargs.get("controller_configs"))
    kwargs["controller_configs"] = controller_config(arm, generation)
    notes = []
    if arm.generation != generation:
        notes.append(
            f"controller: robosuite {arm.generation}'s {arm.describe()} converted for "
            f"robosuite {version}"
        )
    if arm.generation == "1.4" and generation == "1.5" and "lite_physics" not in kwargs:
        # robosuite 1.5's lite physics skips forward calls that 1.4 made.
        kwargs["lite_physics"] = False
        notes.append("lite_physics=False: the physics of robosuite 1.4, which recorded the file")
    if robosuite_generation(installed) != generation:
        notes.append(f"env kwargs not checked: robosuite {installed} is installed, not {version}")
        return kwargs, notes
    accepted = inspect.signature(_robosuite_env_class(env_args.get("env_name"), version)).parameters
    dropped = sorted(k for k in kwargs if k not in accepted)
    if dropped:
        notes.append(f"ignored env kwargs robosuite {version} does not take: {dropped}")
    return {k: v for k, v in kwargs.items() if k in accepted}, notes
