"""The scripted Lift operators: who demonstrates, and how (envs/lift/demos.py writes their demos).

A pick-and-lift controller (approach, descend to just below the cube's centre, close the
gripper, lift; proportional control on the position error, the wrist turned to the cube's
yaw) run by "operators" that differ in speed, action noise, approach path (from above, in
from the side, diagonally), gripper timing (early, late or slow closing), wrist wobble and
how often they miss a grasp; a miss is noticed (fingers closed on nothing, or the cube not
rising) and the grasp retried, so successful demos hold recoveries, as human ones do.
Presets: `ph`, one proficient operator; `mh`, six operators, two each "better", "okay",
"worse", 50 demos apiece (robomimic's mh layout); `small`, the default task's 100 demos by
make_operators(3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

APPROACHES = ("above", "offset", "diagonal")
LEVELS = ("better", "okay", "worse")  # robomimic's mh skill levels, best first


@dataclass(frozen=True)
class Operator:
    """How one simulated demonstrator moves."""

    gain: float
    """Proportional gain from position error (m) to OSC action (1 = 5 cm setpoint shift)."""
    max_action: float
    """Cap on the translation action's magnitude: the operator's top speed."""
    noise_std: float
    """Std of temporally correlated noise added to the translation action."""
    pause_prob: float
    """Per-step chance of stopping for a few steps (hesitation)."""
    name: str = "operator_0"
    """The operator's mask in the file (mask/<name>), e.g. robomimic's better_operator_1."""
    level: str | None = None
    """Skill level (better / okay / worse): also a mask, as in robomimic's mh files."""
    approach: str = "above"
    """Path to the cube: above (down from straight above), offset (in from the side, round
    to above it) or diagonal (straight at a point just above it)."""
    rot_gain: float = 0.5
    """Fraction of the orientation error (cube yaw, mod 90 degrees) corrected per step."""
    yaw_sloppiness: float = 0.0
    """Std (rad) of a per-attempt error in the yaw the operator aims for."""
    rot_noise_std: float = 0.02
    """Std of temporally correlated wobble added to the rotation action."""
    close_speed: float = 1.0
    """Gripper action while closing; below 1 the fingers close slowly."""
    close_early: float = 0.0
    """Height (m) above the grasp point at which closing starts on the way down."""
    close_delay: int = 0
    """Steps spent at the grasp point before closing (late close)."""
    miss_prob: float = 0.0
    """Chance that a grasp attempt misses (closes too high or beside the cube); the miss is
    noticed (fingers closed on nothing, or the cube not coming up) and the grasp retried."""

    def __post_init__(self) -> None:
        if self.approach not in APPROACHES:
            raise ValueError(f"approach must be one of {APPROACHES}, got {self.approach!r}")
        if self.level is not None and self.level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS} or None, got {self.level!r}")
        if not 0.0 < self.close_speed <= 1.0:
            raise ValueError(f"close_speed must be in (0, 1], got {self.close_speed}")


def make_operators(count: int) -> list[Operator]:
    """count operators from proficient (fast, clean) to worst (slow, noisy, hesitant, often
    missing the grasp), named operator_0.. ; approach paths and gripper habits alternate."""
    if count < 1:
        raise ValueError(f"--operators must be >= 1, got {count}")
    ops = []
    for k in range(count):
        f = k / (count - 1) if count > 1 else 0.0
        ops.append(
            Operator(
                gain=10.0 * (1.0 - 0.4 * f),
                max_action=1.0 - 0.3 * f,
                noise_std=0.05 + 0.15 * f,
                pause_prob=0.03 * f,
                name=f"operator_{k}",
                approach=APPROACHES[k % len(APPROACHES)],
                rot_gain=0.5 - 0.2 * f,
                yaw_sloppiness=0.15 * f,
                rot_noise_std=0.02 + 0.08 * f,
                close_speed=1.0 - 0.5 * f,
                close_early=0.01 if k % 3 == 1 else 0.0,
                close_delay=4 if k % 3 == 2 else 0,
                miss_prob=0.3 * f,
            )
        )
    return ops


def _mh_operators() -> tuple[Operator, ...]:
    """Six operators, two per robomimic skill level, each with habits of their own."""

    def op(level: str, k: int, **kw) -> Operator:
        return Operator(name=f"{level}_operator_{k}", level=level, **kw)

    # fmt: off
    return (
        op("better", 1, gain=10.0, max_action=1.0, noise_std=0.05, pause_prob=0.0,
           approach="above", rot_gain=0.5, rot_noise_std=0.02, miss_prob=0.05),
        op("better", 2, gain=9.0, max_action=0.95, noise_std=0.06, pause_prob=0.0,
           approach="offset", rot_gain=0.4, yaw_sloppiness=0.05, rot_noise_std=0.03,
           close_early=0.008, miss_prob=0.05),
        op("okay", 1, gain=8.0, max_action=0.85, noise_std=0.10, pause_prob=0.01,
           approach="diagonal", rot_gain=0.35, yaw_sloppiness=0.08, rot_noise_std=0.05,
           close_speed=0.5, miss_prob=0.15),
        op("okay", 2, gain=7.5, max_action=0.85, noise_std=0.10, pause_prob=0.01,
           approach="above", rot_gain=0.3, yaw_sloppiness=0.08, rot_noise_std=0.06,
           close_delay=4, miss_prob=0.15),
        op("worse", 1, gain=6.0, max_action=0.7, noise_std=0.18, pause_prob=0.03,
           approach="offset", rot_gain=0.25, yaw_sloppiness=0.15, rot_noise_std=0.10,
           close_early=0.012, miss_prob=0.3),
        op("worse", 2, gain=6.0, max_action=0.7, noise_std=0.20, pause_prob=0.03,
           approach="diagonal", rot_gain=0.2, yaw_sloppiness=0.15, rot_noise_std=0.12,
           close_speed=0.4, close_delay=6, miss_prob=0.3),
    )
    # fmt: on


@dataclass(frozen=True)
class Preset:
    """A named set of demos: how many, and by which operators (taking equal turns)."""

    num_demos: int
    operators: tuple[Operator, ...]
    about: str


PRESETS = {
    "ph": Preset(
        200,
        (Operator(10.0, 1.0, 0.05, 0.0, name="proficient_operator", rot_noise_std=0.02),),
        "one clean, proficient operator (robomimic ph: 200 demos)",
    ),
    "mh": Preset(
        300,
        _mh_operators(),
        "6 operators x 50, two each better / okay / worse (robomimic mh: 300 demos)",
    ),
    "small": Preset(
        100, tuple(make_operators(3)), "100 demos by make_operators(3): the default task's"
    ),
}


# ---- rotations (xyzw quaternions, as robosuite's observations hold them)


def _quat_to_mat(q: np.ndarray) -> np.ndarray:
    x, y, z, w = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _yaw(mat: np.ndarray) -> float:
    """Heading of the frame's x axis in the world's xy plane."""
    return float(np.arctan2(mat[1, 0], mat[0, 0]))


def _rot_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _axis_angle(mat: np.ndarray) -> np.ndarray:
    """Rotation vector (world frame) of a rotation matrix."""
    vee = np.array([mat[2, 1] - mat[1, 2], mat[0, 2] - mat[2, 0], mat[1, 0] - mat[0, 1]])
    angle = np.arccos(np.clip((np.trace(mat) - 1.0) / 2.0, -1.0, 1.0))
    if angle < 1e-8:
        return 0.5 * vee
    return vee * (angle / (2.0 * np.sin(angle)))


def _wrap(angle: float, period: float) -> float:
    """angle mapped into [-period/2, period/2)."""
    return float((angle + period / 2) % period - period / 2)


class ScriptedLiftPolicy:
    """Pick-and-lift from the cube pose, the end-effector pose and the finger positions.

    Phases: approach (the operator's path, turning the wrist to the cube's yaw), descend,
    close, lift. A missed grasp (fingers closed on nothing, or the cube not rising with the
    hand) opens the gripper, backs up above the cube and tries again: a recovery.
    """

    APPROACH, DESCEND, CLOSE, LIFT, RECOVER = range(5)
    # OSC_POSE scales rotation actions in [-1, 1] to [-0.5, 0.5] rad.
    ROT_SCALE = 0.5
    # Finger opening (qpos[0] - qpos[1], m) below which the gripper holds nothing:
    # about 0.002 closed on air, about 0.04 around the 4.0-4.4 cm cube.
    EMPTY_WIDTH = 0.01
    MAX_ATTEMPTS = 4

    def __init__(self, operator: Operator, rng: np.random.Generator) -> None:
        self.op = operator
        self.rng = rng
        # Per-demo variation in the approach height, grasp depth and grip time.
        self.approach_height = float(rng.uniform(0.06, 0.10))
        self.grasp_depth = float(rng.uniform(-0.010, 0.0))
        self.grip_steps = int(np.ceil(rng.integers(11, 16) / operator.close_speed))
        # The offset approach comes in from a side of its own, at a height of its own.
        side = float(rng.uniform(0.0, 2.0 * np.pi))
        self.offset_waypoint = np.array(
            [0.06 * np.cos(side), 0.06 * np.sin(side), float(rng.uniform(0.04, 0.07))]
        )
        self.phase = self.APPROACH
        self.attempt = 0
        self.recoveries = 0
        self.planned_misses: list[str] = []
        self.noise = np.zeros(3)
        self.wobble = np.zeros(3)
        self.pause_left = 0
        self.prev_eef: np.ndarray | None = None
        self.ref_rot: np.ndarray | None = None
        self.target_rot: np.ndarray | None = None
        self._start_attempt(self.op.approach)

    def _start_attempt(self, approach: str) -> None:
        """Plan one grasp attempt: its path, its aim, and whether it misses."""
        self.attempt += 1
        self.waypoints = {
            "above": [np.array([0.0, 0.0, self.approach_height])],
            "offset": [self.offset_waypoint, np.array([0.0, 0.0, 0.04])],
            "diagonal": [np.array([0.0, 0.0, 0.035])],
        }[approach]
        self.waypoint = 0
        self.yaw_bias = float(self.rng.normal(0.0, self.op.yaw_sloppiness))
        self.miss = None
        # Having missed, an operator takes more care: half the chance each retry.
        miss_prob = self.op.miss_prob / 2 ** (self.attempt - 1)
        if self.attempt < self.MAX_ATTEMPTS and self.rng.random() < miss_prob:
            self.miss = "high" if self.rng.random() < 0.5 else "beside"
            self.planned_misses.append(self.miss)
        self.closing = 0
        self.delay_left = self.op.close_delay + int(self.rng.integers(0, 3))
        self.grasp_target = np.zeros(3)
        self.grasp_cube_z = 0.0
        self.recover_steps = 0

    def _grasp_point(self, cube: np.ndarray, rot: np.ndarray) -> np.ndarray:
        point = cube + np.array([0.0, 0.0, self.grasp_depth - 0.005])
        if self.miss == "high":  # closes above the cube's top
            point[2] += 0.035
        elif self.miss == "beside":  # beside the cube, along the hand's x (not between the fingers)
            along = np.array([rot[0, 0], rot[1, 0], 0.0])
            point += 0.05 * along / max(np.linalg.norm(along), 1e-9)
        return point

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """The next 7-D OSC_POSE action in [-1, 1]."""
        eef = np.asarray(obs["robot0_eef_pos"], dtype=np.float64)
        rot = _quat_to_mat(obs["robot0_eef_quat"])
        cube = np.asarray(obs["object"][:3], dtype=np.float64)
        cube_rot = _quat_to_mat(obs["object"][3:7])
        finger_qpos = np.asarray(obs["robot0_gripper_qpos"], dtype=np.float64)
        width = float(finger_qpos[0] - finger_qpos[1])
        if self.ref_rot is None:
            self.ref_rot = rot
        # A hand that has stopped within 2 cm of its goal is as close as it will get
        # (slow operators' small actions stall against the controller's damping).
        settled = self.prev_eef is not None and np.linalg.norm(eef - self.prev_eef) < 0.0015
        self.prev_eef = eef
        gripper = -1.0

        if self.phase in (self.APPROACH, self.DESCEND) or self.target_rot is None:
            # Turn the wrist to the cube's yaw (a cube looks the same every 90 degrees),
            # taking the smallest turn from where the hand started.
            ref_yaw = _yaw(self.ref_rot)
            goal = ref_yaw + _wrap(_yaw(cube_rot) - ref_yaw, np.pi / 2) + self.yaw_bias
            self.target_rot = _rot_z(goal - ref_yaw) @ self.ref_rot
        yaw_error = abs(_wrap(_yaw(self.target_rot) - _yaw(rot), 2 * np.pi))

        if self.phase == self.APPROACH:
            target = cube + self.waypoints[self.waypoint]
            distance = np.linalg.norm(target - eef)
            if self.waypoint < len(self.waypoints) - 1:
                if distance < 0.02:
                    self.waypoint += 1
            elif (distance < 0.01 or (distance < 0.02 and settled)) and yaw_error < 0.15:
                self.phase = self.DESCEND
        if self.phase == self.DESCEND:
            target = self._grasp_point(cube, rot)
            if eef[2] - target[2] < self.op.close_early:
                gripper = self.op.close_speed
            distance = np.linalg.norm(target - eef)
            # An early closer stops going down once the fingers are closing.
            if distance < 0.01 or (distance < 0.02 and settled) or self.closing >= 3:
                self.phase = self.CLOSE
                self.grasp_target = target.copy()
                self.grasp_cube_z = float(cube[2])
        if self.phase == self.CLOSE:
            target = self.grasp_target
            if self.delay_left > 0 and self.closing == 0:
                self.delay_left -= 1
            else:
                gripper = self.op.close_speed
            if self.closing >= self.grip_steps:
                if width < self.EMPTY_WIDTH:  # closed on nothing
                    self._recover()
                else:
                    self.phase = self.LIFT
        if self.phase == self.LIFT:
            target, gripper = self.grasp_target + np.array([0.0, 0.0, 0.2]), self.op.close_speed
            hand_up = eef[2] - self.grasp_target[2]
            if width < self.EMPTY_WIDTH or (hand_up > 0.04 and cube[2] - self.grasp_cube_z < 0.01):
                self._recover()  # dropped it, or it never came up
        if self.phase == self.RECOVER:
            target, gripper = cube + np.array([0.0, 0.0, self.approach_height]), -1.0
            self.recover_steps += 1
            if self.recover_steps >= 8 and np.linalg.norm(target - eef) < 0.03:
                self._start_attempt("above")
                self.phase = self.APPROACH
        if gripper > 0:
            self.closing += 1

        action = np.zeros(7)
        action[:3] = self._translation(target - eef)
        action[3:6] = self._rotation(rot, np.linalg.norm(target - eef))
        action[6] = gripper
        return np.clip(action, -1.0, 1.0)

    def _recover(self) -> None:
        self.phase = self.RECOVER
        self.recoveries += 1
        self.recover_steps = 0

    def _translation(self, error: np.ndarray) -> np.ndarray:
        move = self.op.gain * error
        # AR(1) noise: a human's errors persist over several steps; people slow down and
        # get precise close to the target, so the noise shrinks with the distance.
        self.noise = 0.8 * self.noise + 0.6 * self.op.noise_std * self.rng.standard_normal(3)
        move = move + self.noise * np.clip(np.linalg.norm(error) / 0.04, 0.1, 1.0)
        if self.pause_left > 0:
            self.pause_left -= 1
            move = np.zeros(3)
        elif self.phase in (self.APPROACH, self.LIFT) and self.rng.random() < self.op.pause_prob:
            self.pause_left = int(self.rng.integers(2, 8))
        norm = np.linalg.norm(move)
        if norm > self.op.max_action:
            move = move * (self.op.max_action / norm)
        return move

    def _rotation(self, rot: np.ndarray, distance: float) -> np.ndarray:
        correction = self.op.rot_gain * _axis_angle(self.target_rot @ rot.T) / self.ROT_SCALE
        # Wrist wobble, mostly about the vertical; steadier near the cube, as with position.
        scale = np.array([0.5, 0.5, 1.0]) * self.op.rot_noise_std
        self.wobble = 0.8 * self.wobble + 0.6 * scale * self.rng.standard_normal(3)
        return correction + self.wobble * np.clip(distance / 0.04, 0.3, 1.0)
