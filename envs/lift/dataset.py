"""The data of train_bc.py's Lift tasks: robomimic image demos as action-chunk batches.

Data goes through robomimic's own `SequenceDataset` (sequence indexing, end-of-demo
padding of the action chunk by repetition, train/valid filter keys) and its `ObsUtils`
observation processing, so real robomimic lift ph/mh image files load unchanged. The
frames are read once into tensors on the device (images stay uint8) and each batch is
processed there: `sample` costs a gather, not a Python loop over items. The rollout
evaluation of these tasks is in envs/lift/evaluation.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from envs.lift.env import CAMERAS, HORIZON_PH, IMAGE_SIZE, LOWDIM_KEYS
from envs.lift.env_args import normalize_env_args, read_arm_controller

IMAGE_KEYS = tuple(f"{cam}_image" for cam in CAMERAS)
# Action size of a one-arm robosuite robot per controller, gripper included (robomimic's
# lift files: Panda + OSC_POSE, 6 pose deltas + gripper = 7).
CONTROLLER_ACTION_DIMS = {"OSC_POSE": 7, "OSC_POSITION": 4, "IK_POSE": 7}


@dataclass(frozen=True)
class LiftSpec:
    """What the agent and the evaluator learn about a Lift dataset."""

    image_keys: tuple[str, ...]
    """Camera observation keys, e.g. agentview_image."""
    image_shape: tuple[int, int, int]
    """C x H x W of every camera's images."""
    lowdim_keys: tuple[str, ...]
    """Proprioceptive keys, e.g. robot0_eef_pos."""
    lowdim_dims: dict[str, int]
    lowdim_mean: dict[str, list[float]]
    """Per-key statistics over the training frames (the agent normalises with them)."""
    lowdim_std: dict[str, list[float]]
    action_dim: int
    chunk_length: int
    """Actions per training sample."""
    env_args: dict
    """robomimic's env_args of the file: the rollout env is built from them."""
    horizon: int
    """Rollout steps before an episode counts as failed."""
    dataset: str


def env_action_dim(env_args: dict) -> int | None:
    """Actions the rollout env built from these env_args takes; None when not known here.

    Reads the arm controller of either robosuite generation (flat 1.4 or composite 1.5)."""
    kwargs = env_args.get("env_kwargs", {})
    robots = kwargs.get("robots", [])
    robots = [robots] if isinstance(robots, str) else list(robots)
    try:
        controller = read_arm_controller(kwargs.get("controller_configs")).type
    except ValueError:
        return None
    if len(robots) != 1 or controller not in CONTROLLER_ACTION_DIMS:
        return None
    return CONTROLLER_ACTION_DIMS[controller]


def _robomimic_url(variant: str) -> str:
    """Where robomimic's own registry says the lift low-dim file of this variant lives."""
    import robomimic

    try:
        return robomimic.DATASET_REGISTRY["lift"][variant]["low_dim"]["url"]
    except KeyError:
        return "https://robomimic.github.io/docs/datasets/robomimic_v0.1.html"


def _render_hint(path: str) -> str:
    return (
        f"make an image file with `python -m envs.lift.demos render --input {path} "
        f"--output IMAGE.hdf5`"
    )


def check_dataset(
    path: Path, image_keys: tuple[str, ...], lowdim_keys: tuple[str, ...], image_size: int
) -> dict:
    """Validate a robomimic file for these keys; returns its env_args. One-line errors."""
    if not path.is_file():
        raise FileNotFoundError(
            f"dataset {path} does not exist (--dataset takes a robomimic lift image HDF5)"
        )
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"dataset {path} is not an HDF5 file ({err})") from None
    with f:
        if "data" not in f or "env_args" not in f["data"].attrs:
            raise ValueError(f"dataset {path} is not a robomimic file (no data.attrs['env_args'])")
        demos = [k for k in f["data"] if k.startswith("demo_")]
        if not demos:
            raise ValueError(f"dataset {path} holds no demos under data/")
        env_args = json.loads(f["data"].attrs["env_args"])
        try:
            # A file the installed robosuite cannot run fails here, not in an evaluation
            # worker after training (robomimic v1.5 files and the original ones both pass).
            normalize_env_args(env_args)
        except ValueError as err:
            raise ValueError(f"dataset {path}: {err}") from None
        action_dim = env_action_dim(env_args)
        for demo in demos:
            g = f[f"data/{demo}"]
            if "actions" not in g:
                raise ValueError(f"dataset {path}: data/{demo} has no 'actions'")
            dim = g["actions"].shape[-1] if g["actions"].ndim == 2 else None
            if action_dim is not None and dim != action_dim:
                kwargs = env_args["env_kwargs"]
                robots = kwargs["robots"]
                robot = robots if isinstance(robots, str) else robots[0]
                controller = read_arm_controller(kwargs["controller_configs"]).type
                raise ValueError(
                    f"dataset {path}: data/{demo}/actions are {dim}-dim but its env "
                    f"({env_args.get('env_name')}, {robot}, {controller} controller) takes "
                    f"{action_dim}-dim actions; use demos recorded with that robot and controller"
                )
            if not g["actions"].shape or g["actions"].shape[0] == 0:
                raise ValueError(
                    f"dataset {path}: data/{demo} has 0 samples (its actions are empty); "
                    f"remove the demo or record it again"
                )
            _check_values(path, f"data/{demo}/actions", g["actions"][()], bound=1.0)
            obs = g.get("obs")
            for key in (*image_keys, *lowdim_keys):
                if obs is None or key not in obs:
                    hint = f"; {_render_hint(str(path))}" if key in image_keys else ""
                    raise ValueError(f"dataset {path}: data/{demo}/obs has no {key!r}{hint}")
            for key in lowdim_keys:
                _check_values(path, f"data/{demo}/obs/{key}", obs[key][()])
            for key in image_keys:
                shape = tuple(obs[key].shape[1:])
                if shape != (image_size, image_size, 3) or obs[key].dtype != np.uint8:
                    raise ValueError(
                        f"dataset {path}: data/{demo}/obs/{key} is {obs[key].dtype} "
                        f"{'x'.join(map(str, shape))}, expected uint8 {image_size}x{image_size}x3 "
                        f"(re-render with `python -m envs.lift.demos render --image_size "
                        f"{image_size}`)"
                    )
        return env_args


def _check_values(path: Path, name: str, values: np.ndarray, bound: float | None = None) -> None:
    """Refuse NaN / inf (and, with bound, values outside [-bound, bound]) naming the first."""
    values = np.atleast_1d(np.asarray(values))
    if values.dtype.kind not in "fiub":
        raise ValueError(f"dataset {path}: {name} holds {values.dtype} values, not numbers")
    if values.dtype.kind != "f":
        return
    flat = values.reshape(len(values), -1)
    bad = ~np.isfinite(flat)
    if bad.any():
        t, j = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"dataset {path}: {name}[{t}] is not finite ({flat[t, j]} at column {j}); every "
            f"action and low-dim observation must be a finite number"
        )
    if bound is not None and np.abs(flat).max() > bound + 1e-6:
        t, j = (int(i) for i in np.argwhere(np.abs(flat) > bound + 1e-6)[0])
        raise ValueError(
            f"dataset {path}: {name}[{t}] leaves [-{bound:g}, {bound:g}] ({flat[t, j]:.3g} at "
            f"column {j}; max |a| {np.abs(flat).max():.3g}); robomimic actions are normalised "
            f"to [-1, 1]"
        )


def _init_obs_utils(image_keys: tuple[str, ...], lowdim_keys: tuple[str, ...]) -> None:
    import robomimic.utils.obs_utils as ObsUtils

    ObsUtils.initialize_obs_utils_with_obs_specs(
        {"obs": {"low_dim": list(lowdim_keys), "rgb": list(image_keys)}}
    )


def process_obs(raw: dict[str, torch.Tensor], keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """robomimic's processing (uint8 HWC -> float CHW in [0, 1]); keys become obs/<key>."""
    import robomimic.utils.obs_utils as ObsUtils

    return {f"obs/{k}": ObsUtils.process_obs(raw[k], obs_key=k).float() for k in keys}


class LiftData:
    """A robomimic lift file on the device: frames, proprio and action chunks."""

    def __init__(
        self,
        path: Path,
        env_args: dict,
        *,
        chunk_length: int,
        image_keys: tuple[str, ...],
        lowdim_keys: tuple[str, ...],
        image_size: int,
        device: torch.device,
        filter_key: str | None = None,
        horizon: int = HORIZON_PH,
    ) -> None:
        """env_args: the file's, as check_dataset returned them (make_data checks the file
        once for its training and valid demos)."""
        from robomimic.utils.dataset import SequenceDataset

        if filter_key is not None:
            masks = filter_keys(path)
            if filter_key not in masks:
                known = ", ".join(sorted(masks)) or "none"
                raise ValueError(
                    f"dataset {path} has no filter key mask/{filter_key} (its filter keys: "
                    f"{known})"
                )
            with h5py.File(path, "r") as f:
                if len(f[f"mask/{filter_key}"]) == 0:
                    raise ValueError(
                        f"dataset {path} holds 0 samples under filter key mask/{filter_key} "
                        f"(it lists no demos)"
                    )
        _init_obs_utils(image_keys, lowdim_keys)
        dataset = SequenceDataset(
            hdf5_path=str(path),
            obs_keys=(*image_keys, *lowdim_keys),
            dataset_keys=("actions",),
            frame_stack=1,
            seq_length=chunk_length,
            pad_frame_stack=True,
            pad_seq_length=True,
            get_pad_mask=False,
            goal_mode=None,
            hdf5_cache_mode="low_dim",  # images are read once below, per demo
            hdf5_use_swmr=True,
            hdf5_normalize_obs=False,
            filter_by_attribute=filter_key,
            load_next_obs=False,
        )
        frames: dict[str, list[np.ndarray]] = {k: [] for k in (*image_keys, *lowdim_keys)}
        chunks, demo_of = [], []
        for d, demo in enumerate(dataset.demos):
            length = dataset._demo_id_to_demo_length[demo]
            for key in frames:
                frames[key].append(np.asarray(dataset.get_dataset_for_ep(demo, f"obs/{key}")[()]))
            # Index t's chunk is actions[t : t + chunk], padded by repeating the last one.
            chunks.extend(
                dataset.get_dataset_sequence_from_demo(
                    demo, index_in_demo=t, keys=("actions",), seq_length=chunk_length
                )["actions"]
                for t in range(length)
            )
            demo_of.extend([d] * length)
        dataset.close_and_delete_hdf5_handle()
        if len(chunks) != len(dataset):
            raise RuntimeError(f"read {len(chunks)} sequences, robomimic counts {len(dataset)}")

        self.path = path
        self.device = device
        self.image_keys, self.lowdim_keys = image_keys, lowdim_keys
        self.filter_key = filter_key
        self.demos = list(dataset.demos)
        self.num_demos = len(dataset.demos)
        self.valid: LiftData | None = None
        """Held-out demos (make_data's valid_key), read and processed the same way."""
        self.valid_note = ""
        """Why there is no valid set, when there is none."""
        self.frames = {
            k: torch.from_numpy(
                np.concatenate(v).astype(np.uint8 if k in image_keys else np.float32)
            ).to(device)
            for k, v in frames.items()
        }
        actions = np.stack(chunks).astype(np.float32)
        self.actions = torch.from_numpy(actions).to(device)
        self.demo_index = torch.tensor(demo_of, device=device)
        self.num_samples = len(chunks)
        lowdim = {k: self.frames[k] for k in lowdim_keys}
        self.spec = LiftSpec(
            image_keys=tuple(image_keys),
            image_shape=(3, image_size, image_size),
            lowdim_keys=tuple(lowdim_keys),
            lowdim_dims={k: int(v.shape[1]) for k, v in lowdim.items()},
            lowdim_mean={k: v.mean(0).tolist() for k, v in lowdim.items()},
            lowdim_std={k: v.std(0).tolist() for k, v in lowdim.items()},
            action_dim=int(actions.shape[-1]),
            chunk_length=chunk_length,
            env_args=env_args,
            horizon=horizon,
            dataset=str(path),
        )

    def describe(self) -> str:
        """One line about the data, and one about its valid set (or why it has none)."""
        cams = ", ".join(self.image_keys)
        line = (
            f"lift data {self.path}: {self._demos()}, {self.num_samples} samples, "
            f"cameras [{cams}], low-dim {list(self.lowdim_keys)}, action chunks "
            f"{tuple(self.actions.shape[1:])}, on {self.device}"
        )
        if self.valid is not None:
            return f"{line}\nvalid set: {self.valid._demos()}, {self.valid.num_samples} samples"
        return f"{line}\n{self.valid_note}" if self.valid_note else line

    def _demos(self) -> str:
        where = f"mask/{self.filter_key}" if self.filter_key is not None else "no filter key"
        return f"{self.num_demos} demos ({where})"

    def sample_indices(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Uniform sample indices (drawn with the generator, on its device), on the data's."""
        idx = torch.randint(
            self.num_samples, (batch_size,), generator=generator, device=generator.device
        )
        return idx.to(self.device)

    def batch(self, indices: torch.Tensor, images: bool = True) -> dict[str, torch.Tensor]:
        """Processed obs/<key>, actions (B, chunk, A) and index for these samples."""
        keys = (*self.image_keys, *self.lowdim_keys) if images else self.lowdim_keys
        out = process_obs({k: self.frames[k][indices] for k in keys}, keys)
        out["actions"] = self.actions[indices]
        out["index"] = indices
        return out

    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """A training batch on the device."""
        return self.batch(self.sample_indices(batch_size, generator))


def filter_keys(path: Path) -> dict[str, list[str]]:
    """The file's filter keys (mask/<key>) and the demos each lists."""
    with h5py.File(path, "r") as f:
        masks = f.get("mask", {})
        return {k: sorted(d.decode() for d in masks[k][()]) for k in masks}


def split_keys(
    path: Path, filter_key: str | None, valid_key: str | None
) -> tuple[str | None, str | None, str]:
    """(training filter key, valid filter key or None, why there is no valid set).

    filter_key "auto" is mask/train when the file has it, else every demo. The valid demos
    must be held out: a valid_key the file lacks, that lists no demos, or whose demos are
    also trained on gives no valid set and a one-line note.
    """
    masks = filter_keys(path)
    if filter_key == "auto":
        filter_key = "train" if "train" in masks else None
    if valid_key is None:
        return filter_key, None, ""
    skip = f"no validation loss: {path}"
    if valid_key not in masks:
        return filter_key, None, f"{skip} has no mask/{valid_key}"
    if not masks[valid_key]:
        return filter_key, None, f"{skip}: mask/{valid_key} lists no demos"
    trained = masks.get(filter_key, []) if filter_key is not None else None
    shared = set(masks[valid_key]) if trained is None else set(masks[valid_key]) & set(trained)
    if shared:
        on = f"mask/{filter_key}" if filter_key is not None else "every demo"
        return filter_key, None, (
            f"{skip}: {len(shared)} of the demos in mask/{valid_key} are trained on "
            f"(training uses {on})"
        )
    return filter_key, valid_key, ""


def default_dataset(
    cache_dir: Path, num_demos: int, operators: int, data_seed: int, preset: str | None = None
) -> Path:
    """The generated default file, made on first use (with a progress bar)."""
    from envs.lift.demos import GENERATOR_VERSION, generate

    who = preset if preset is not None else f"op{operators}"
    name = f"lift_scripted_image_v{GENERATOR_VERSION}_n{num_demos}_{who}_s{data_seed}"
    path = cache_dir / f"{name}.hdf5"
    if not path.exists():
        print(f"generating the default Lift dataset ({num_demos} scripted demos) at {path}")
        generate(path, num_demos, seed=data_seed, operators=operators, preset=preset)
    return path


def make_data(
    dataset: str | None,
    *,
    device: torch.device,
    seed: int,
    cache_dir: Path,
    chunk_length: int,
    variant: str = "scripted",
    num_demos: int = 100,
    operators: int = 3,
    data_seed: int = 0,
    preset: str | None = None,
    filter_key: str | None = "auto",
    valid_key: str | None = "valid",
    horizon: int = HORIZON_PH,
    image_keys: tuple[str, ...] | None = None,
    lowdim_keys: tuple[str, ...] | None = None,
    image_size: int = IMAGE_SIZE,
) -> LiftData:
    """Lift demos as training samples of `chunk_length` actions; dataset None = generated
    scripted demos. `seed` (the training seed) does not change the data.

    Training reads the demos of mask/<filter_key>: "auto" = mask/train when the file has
    it (robomimic's split; our generated files have it too), else every demo; None = every
    demo; any other key must exist. The demos of mask/<valid_key> become `data.valid`,
    processed the same way, when they are held out (split_keys; else a note in describe()).

    image_keys / lowdim_keys: the observations the policy reads; None = both cameras
    (IMAGE_KEYS) / the proprioception (LOWDIM_KEYS). () = none of that kind.

    The real robomimic files cannot be downloaded here: lift-ph/mh-image need --dataset.
    """
    image_keys = IMAGE_KEYS if image_keys is None else tuple(image_keys)
    lowdim_keys = LOWDIM_KEYS if lowdim_keys is None else tuple(lowdim_keys)
    if dataset is None:
        if variant != "scripted":
            url = _robomimic_url(variant)
            raise FileNotFoundError(
                f"lift-{variant}-image needs --dataset PATH (nothing can be downloaded here): "
                f"get robomimic's lift/{variant} low-dim file ({url}, or `python -m "
                f"robomimic.scripts.download_datasets --tasks lift --dataset_types {variant} "
                f"--hdf5_types low_dim`), then {_render_hint(Path(url).name)}"
            )
        path = default_dataset(Path(cache_dir), num_demos, operators, data_seed, preset)
    else:
        path = Path(dataset).expanduser()

    def load(key: str | None) -> LiftData:
        return LiftData(
            path,
            env_args,
            chunk_length=int(chunk_length),
            image_keys=tuple(image_keys),
            lowdim_keys=tuple(lowdim_keys),
            image_size=image_size,
            device=device,
            filter_key=key,
            horizon=horizon,
        )

    try:
        env_args = check_dataset(path, tuple(image_keys), tuple(lowdim_keys), image_size)
        train_key, valid_key, note = split_keys(path, filter_key, valid_key)
        data = load(train_key)
        data.valid, data.valid_note = (load(valid_key) if valid_key else None), note
        return data
    except (OSError, KeyError) as err:
        # h5py reports a damaged file (bad chunk, broken object header) as OSError or as
        # KeyError("Unable to ..."); anything else is not the file's fault.
        if isinstance(err, FileNotFoundError) or (
            isinstance(err, KeyError) and "Unable to" not in str(err)
        ):
            raise
        reason = str(err).strip("'\"").splitlines()[0][:200]
        raise ValueError(
            f"dataset {path} is damaged: reading it failed ({reason}); make or copy it again"
        ) from None
