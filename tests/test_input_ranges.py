"""Settings out of range and data a learner cannot use, refused with one line.

Through the real command lines (`train_ppo.main`, `train_bc.train(train_bc.parse_args())`
under `run_main`): each refusal is exit status 2 and one `error: ...` line naming the flag
(or the data: file, key, first bad index), and nothing is written. Also the Gymnasium
constructor path of the Durotaxis config, and what the loaders say of a file that is not
a torch checkpoint at all (random bytes) as against one that carries pickled code.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import gymnasium
import h5py
import numpy as np
import pytest
import torch
from torch import nn

import train_bc
from encoders.weights import load_state_from_path
from envs.darkroom.histories import load_histories
from envs.durotaxis import DurotaxisConfig
from envs.durotaxis.gymnasium_env import DurotaxisEnv
from envs.lift.dataset import make_data
from tests.test_lift_data import write_synthetic
from tests.test_ppo_reliability import TINY, assert_one_line_error, run_cli
from training.checkpoint import load_checkpoint, save_checkpoint
from training.cli import run_main
from training.ranges import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BC = ["--device=cpu", "--wandb.mode=disabled", "--eval_episodes=0", "--log_interval=1",
      "--offline_steps=2", "--batch_size=4"]
AD = ["--env_name=darkroom", "--agent=ad", *BC, "--agent.n_layer=1", "--agent.d_model=16",
      "--agent.n_head=2"]


@pytest.fixture(autouse=True)
def _no_traceback(monkeypatch):
    monkeypatch.delenv("RLENC_TRACEBACK", raising=False)


def bc_cli(args: list[str], capsys) -> tuple[int, str]:
    """train_bc as its command line runs it: exit status and the last stderr line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: train_bc.train(train_bc.parse_args(args)))
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return exit_info.value.code, err.strip().split("\n")[-1].rsplit("\r", 1)[-1]


def nothing_in(out: Path) -> bool:
    return not out.exists() or not any(out.rglob("*"))


# ----- train_ppo: the Durotaxis environment and the hybrid actor-critic -----------------------


EASY = "--env.preset=easy"  # the first version's settings are checked under its preset


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--env.channels=2"], "--env.channels=2 is out of range; allowed: 1 or 3"),
        (["--env.image_size=4"], "--env.image_size=4 is out of range; allowed: >= 8"),
        (["--env.max_cells=0"], "--env.max_cells=0 is out of range; allowed: >= 1"),
        ([EASY, "--env.initial_cells=0"], "--env.initial_cells=0 is out of range; allowed: "
                                    "1..env.max_cells (10)"),
        (["--env.initial_cells=4", "--env.max_cells=3"],
         "--env.initial_cells=4 is out of range; allowed: 1..env.max_cells (3)"),
        (["--env.max_steps=0"], "--env.max_steps=0 is out of range; allowed: >= 1"),
        (["--env.view_size=0"], "--env.view_size=0.0 is out of range; allowed: > 0"),
        ([EASY, "--env.half_width=-1"], "--env.half_width=-1.0 is out of range; allowed: > 0"),
        ([EASY, "--env.slope=0"], "--env.slope=0.0 is out of range; allowed: > 0"),
        ([EASY, "--env.intercept=0"], "--env.intercept=0.0 is out of range; allowed: > 0"),
        ([EASY, "--env.exp_rate=nan"], "--env.exp_rate=nan is out of range; allowed: > 0"),
        ([EASY, "--env.success_fraction=0"], "--env.success_fraction=0.0 is out of range; allowed: "
                                       "(0, 1]"),
        ([EASY, "--env.success_fraction=1.5"], "--env.success_fraction=1.5 is out of range"),
        (["--env.progress_reward=inf"], "--env.progress_reward=inf is out of range; allowed: "
                                        ">= 0.0 and finite"),
        (["--env.success_bonus=-1"], "--env.success_bonus=-1.0 is out of range"),
        (["--env.failure_penalty=-0.5"], "--env.failure_penalty=-0.5 is out of range"),
        (["--env.start_spread=-1"], "--env.start_spread=-1.0 is out of range"),
        # Geometry: starting cells must lie on the substrate.
        ([EASY, "--env.start_spread=25"], "--env.start_spread=25.0 is out of range; allowed: 0..20 "
                                    "(0.4 x env.half_width): starting cells must lie on the "
                                    "substrate"),
        ([EASY, "--env.half_width=5"], "--env.start_spread=3.0 is out of range; allowed: 0..2"),
        # The stiffness at the stiff edge must stay a float32 number.
        ([EASY, "--env.exp_rate=1"], "--env.exp_rate=1.0 is out of range; allowed: <= 0.6908"),
        ([EASY, "--env.slope=1e31"], "--env.slope=1e+31 is out of range with env.intercept=1.0"),
        # The migration presets' own settings.
        (["--env.preset=medium"], "--env.preset"),
        (["--env.goal_radius=500"], "--env.goal_radius=500.0 is out of range; allowed: below "
                                    "env.start_distance (120.0)"),
        (["--env.obs_noise=30"], "--env.obs_noise=30 is out of range; allowed: 0..27"),
        (["--env.max_link=0"], "--env.max_link=0.0 is out of range; allowed: > 0"),
        (["--env.gamma_range", "5", "1"], "--env.gamma_range=5.0 1.0 is out of range; allowed: "
                                          "two finite numbers LOW HIGH with LOW <= HIGH"),
        (["--env.start_stiffness", "0.5", "2"], "--env.start_stiffness=2.0 is out of range; "
                                                "allowed: below the lowest peak stiffness"),
        (["--agent.hidden_dim=0"], "--agent.hidden_dim=0 is out of range; allowed: >= 1"),
        (["--agent.log_std_init=nan"], "--agent.log_std_init=nan is out of range; allowed: a "
                                       "finite number"),
        (["--agent.spawn_bias_init=inf"], "--agent.spawn_bias_init=inf is out of range"),
    ],
)
def test_ppo_settings_out_of_range_are_one_line_and_write_nothing(tmp_path, capsys, flags,
                                                                   needle):
    out = tmp_path / "run"
    code, message = run_cli([*TINY, *flags, f"--output_dir={out}"], capsys)
    assert_one_line_error(code, message, needle)
    assert not out.exists()


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"channels": 2}, "--env.channels=2 is out of range"),
        ({"image_size": 4}, "--env.image_size=4 is out of range"),
        ({"initial_cells": 0}, "--env.initial_cells=0 is out of range"),
        ({"preset": "easy", "start_spread": 30.0}, "--env.start_spread=30.0 is out of range"),
        ({"obs_noise": 99}, "--env.obs_noise=99 is out of range"),
    ],
)
def test_the_gymnasium_constructors_refuse_the_same_settings(overrides, needle):
    for make in (lambda: DurotaxisEnv(**overrides),
                 lambda: gymnasium.make("Durotaxis-v0", **overrides),
                 lambda: DurotaxisConfig(**overrides)):
        with pytest.raises(ConfigError) as info:
            make()
        assert needle in str(info.value) and "\n" not in str(info.value)


def test_the_default_durotaxis_settings_are_in_range():
    config = DurotaxisConfig(preset="easy")
    assert DurotaxisConfig(preset="easy", start_spread=0.4 * config.half_width).start_spread == 20.0
    DurotaxisConfig(preset="easy", initial_cells=config.max_cells, success_fraction=1.0,
                    progress_reward=0.0)
    for preset in ("standard", "hard"):
        config = DurotaxisConfig(preset=preset)
        DurotaxisConfig(preset=preset, initial_cells=config.max_cells, obs_noise=27)


# ----- train_bc: fbc, ad, compressed_ad_pretrain, compressed_ad (all refused at parse time) ---


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        # fbc on its default task (lift-scripted-image): no dataset is read or generated.
        (["--agent.lr=0"], "--agent.lr=0.0 is out of range; allowed: > 0"),
        (["--agent.backbone_lr=-1"], "--agent.backbone_lr=-1.0 is out of range; allowed: > 0"),
        (["--agent.weight_decay=-0.1"], "--agent.weight_decay=-0.1 is out of range"),
        (["--agent.ema_decay=1.5"], "--agent.ema_decay=1.5 is out of range; allowed: [0, 1]"),
        (["--agent.ema_decay=-0.1"], "--agent.ema_decay=-0.1 is out of range"),
        (["--agent.chunk_length=0"], "--agent.chunk_length=0 is out of range; allowed: >= 1"),
        (["--agent.action_horizon=0"], "action_horizon must be in 1..chunk_length (16), got 0"),
        (["--agent.action_horizon=17"], "action_horizon must be in 1..chunk_length (16)"),
        (["--agent.flow_steps=0"], "flow_steps must be >= 1, got 0"),
        (["--agent.hidden_dim=0"], "--agent.hidden_dim=0 is out of range; allowed: >= 1"),
        (["--agent.num_layers=0"], "--agent.num_layers=0 is out of range"),
        (["--agent.emb_dim=0"], "--agent.emb_dim=0 is out of range"),
        (["--agent.crop_size=0"], "--agent.crop_size=0 is out of range"),
        (["--agent.cache_batch_size=0"], "--agent.cache_batch_size=0 is out of range"),
        # compressed-AD pretraining (stage 1)
        (["--env_name=darkroom", "--agent=compressed_ad_pretrain",
          "--agent.compressed_episodes=0"],
         "--agent.compressed_episodes=0 is out of range; allowed: >= 1"),
        (["--env_name=darkroom", "--agent=compressed_ad_pretrain", "--agent.n_latent=0"],
         "--agent.n_latent=0 is out of range"),
        (["--env_name=darkroom", "--agent=compressed_ad_pretrain", "--agent.recon_layers=0"],
         "--agent.recon_layers=0 is out of range"),
        (["--env_name=darkroom", "--agent=compressed_ad_pretrain", "--agent.encoder_layers=0"],
         "--agent.encoder_layers=0 is out of range"),
        (["--env_name=darkroom", "--agent=compressed_ad_pretrain", "--agent.lr=-1"],
         "--agent.lr=-1.0 is out of range; allowed: > 0"),
        (["--env_name=darkroom", "--agent=compressed_ad_pretrain", "--agent.dropout=1"],
         "--agent.dropout=1.0 is out of range; allowed: < 1.0"),
        (["--env_name=darkroom", "--agent=compressed_ad_pretrain", "--agent.d_model=6"],
         "--agent.d_model=6 must be a multiple of --agent.n_head=4"),
        (["--env_name=darkroom", "--agent=compressed_ad_pretrain", "--agent.grad_clip=-1"],
         "--agent.grad_clip=-1.0 is out of range"),
        # compressed AD (stage 2)
        (["--env_name=darkroom", "--agent=compressed_ad", "--agent.encoder_lr=0"],
         "--agent.encoder_lr=0.0 is out of range; allowed: > 0"),
        (["--env_name=darkroom", "--agent=compressed_ad", "--agent.n_latent=0"],
         "--agent.n_latent=0 is out of range"),
        (["--env_name=darkroom", "--agent=compressed_ad", "--agent.compressed_episodes=-1"],
         "--agent.compressed_episodes=-1 is out of range; allowed: >= 0"),
        (["--env_name=darkroom", "--agent=compressed_ad", "--agent.n_layer=0"],
         "--agent.n_layer=0 is out of range"),
        (["--env_name=darkroom", "--agent=compressed_ad", "--agent.temperature=-1"],
         "--agent.temperature=-1.0 is out of range"),
        (["--env_name=darkroom", "--agent=compressed_ad", "--agent.context_episodes=-1"],
         "--agent.context_episodes=-1 is out of range"),
        (["--env_name=darkroom", "--agent=compressed_ad", "--agent.attention_dropout=-0.1"],
         "--agent.attention_dropout=-0.1 is out of range"),
        # the run's schedule and evaluations
        (["--interim_eval_episodes=0"], "--interim_eval_episodes=0 is out of range"),
        (["--env_name=darkroom", "--offline_steps=2000"],
         "--agent.lr_decay_steps=1000 ends the cosine schedule before --offline_steps=2000"),
    ],
)
def test_bc_agent_settings_out_of_range_are_one_line_and_write_nothing(tmp_path, capsys, flags,
                                                                       needle):
    out, cache = tmp_path / "run", tmp_path / "cache"
    code, message = bc_cli([*BC, *flags, f"--output_dir={out}", f"--cache_dir={cache}"], capsys)
    assert_one_line_error(code, message, needle)
    assert not out.exists() and not cache.exists()


def test_the_compressed_ad_configs_accept_their_defaults_and_boundaries():
    from agents.compressed_ad import CompressedADConfig, CompressedADPretrainConfig

    CompressedADPretrainConfig(compressed_episodes=1, n_latent=1, dropout=0.0)
    CompressedADConfig(compressed_episodes=0, context_episodes=0, temperature=0.0)


# ----- Lift demos: empty, non-finite, out of range ----------------------------------------------


def _edit(source: Path, path: Path, edit) -> Path:
    shutil.copy(source, path)
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


def _empty_demo(f, demo: str = "demo_1") -> None:
    group = f[f"data/{demo}"]
    names: list[str] = []
    group.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset)
                     else None)
    for name in names:
        values = group[name][()]
        del group[name]
        group.create_dataset(name, data=values[:0])
    group.attrs["num_samples"] = 0


def _no_demos(f) -> None:
    for demo in list(f["data"]):
        del f[f"data/{demo}"]


def _set(key: str, index: tuple[int, int], value: float):
    def edit(f) -> None:
        values = f[key][()]
        values[index] = value
        f[key][...] = values

    return edit


LIFT_DATA = {
    "empty_demo": (_empty_demo, "data/demo_1 has 0 samples (its actions are empty)"),
    "no_demos": (_no_demos, "holds no demos under data/"),
    "nan_action": (_set("data/demo_1/actions", (3, 2), np.nan),
                   "data/demo_1/actions[3] is not finite (nan at column 2)"),
    "inf_obs": (_set("data/demo_0/obs/robot0_eef_pos", (4, 1), -np.inf),
                "data/demo_0/obs/robot0_eef_pos[4] is not finite (-inf at column 1)"),
    "big_action": (_set("data/demo_1/actions", (2, 0), 1.5),
                   "data/demo_1/actions[2] leaves [-1, 1] (1.5 at column 0; max |a| 1.5)"),
}


@pytest.fixture(scope="module")
def lift_file(tmp_path_factory) -> Path:
    """Two short demos at the registered task's 84x84 images."""
    return write_synthetic(tmp_path_factory.mktemp("lift") / "lift.hdf5", lengths=(6, 5))


@pytest.mark.parametrize("kind", list(LIFT_DATA))
def test_bad_lift_demos_are_one_line_naming_demo_and_index(lift_file, tmp_path, capsys, kind):
    edit, needle = LIFT_DATA[kind]
    path = _edit(lift_file, tmp_path / f"{kind}.hdf5", edit)
    out = tmp_path / "run"
    code, message = bc_cli(["--env_name=lift-scripted-image", *BC, f"--dataset={path}",
                            f"--output_dir={out}"], capsys)
    assert_one_line_error(code, message, f"dataset {path}")
    assert needle in message, message
    assert nothing_in(out)


def test_a_filter_key_listing_no_demos_is_one_line(lift_file, tmp_path):
    def empty_mask(f) -> None:
        del f["mask/train"]
        f.create_dataset("mask/train", data=np.array([], dtype="S8"))

    path = _edit(lift_file, tmp_path / "empty_mask.hdf5", empty_mask)
    with pytest.raises(ValueError) as info:
        make_data(str(path), device=torch.device("cpu"), seed=0, cache_dir=tmp_path,
                  chunk_length=4, filter_key="train")
    assert f"dataset {path} holds 0 samples under filter key mask/train" in str(info.value)
    assert "\n" not in str(info.value)


# ----- Dark Room histories: values a learner cannot have produced -------------------------------


def _histories_with(source: Path, path: Path, **changes) -> Path:
    with np.load(source, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    for key, change in changes.items():
        arrays[key] = change(arrays[key])
    np.savez(path, **arrays)
    return path


def _bad_action(actions: np.ndarray) -> np.ndarray:
    actions = actions.copy()
    actions[1, 7] = 9  # Dark Room has 5 actions
    return actions


def _nan_reward(rewards: np.ndarray) -> np.ndarray:
    rewards = rewards.astype(np.float32)
    rewards[0, 5] = np.nan
    return rewards


BAD_HISTORIES = {
    "action": ({"actions": _bad_action}, "actions[1, 7] = 9 is out of range for darkroom "
                                         "(allowed 0..4)"),
    "nan_reward": ({"rewards": _nan_reward}, "rewards[0, 5] = nan is out of range for darkroom"),
    "no_learners": ({k: (lambda a: a[:0]) for k in ("obs", "actions", "rewards", "tasks",
                                                    "episode_returns")},
                    "holds no histories (0 learners)"),
}


@pytest.mark.parametrize("kind", list(BAD_HISTORIES))
def test_bad_histories_are_one_line_naming_key_and_index(histories, tmp_path, capsys, kind):
    changes, needle = BAD_HISTORIES[kind]
    path = _histories_with(histories, tmp_path / f"{kind}.npz", **changes)
    with pytest.raises(ValueError) as info:
        load_histories(path)
    assert str(info.value).startswith(f"{path}") and needle in str(info.value)
    assert "\n" not in str(info.value)
    out = tmp_path / "run"
    code, message = bc_cli([*AD, f"--dataset={path}", f"--output_dir={out}"], capsys)
    assert_one_line_error(code, message, needle)
    assert str(path) in message
    assert nothing_in(out)


# ----- checkpoint and weight files: random bytes are not "pickled objects" ----------------------


class _RunsCode:
    def __reduce__(self):
        return (print, ("code ran",))


def _checkpoint(path: Path) -> Path:
    return save_checkpoint(path, model=nn.Linear(3, 2), optimizer=None, step=1, config={})


def _random_bytes(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return path


def _truncated(path: Path) -> Path:
    data = _checkpoint(path).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _pickled_code(path: Path) -> Path:
    torch.save({"model": {"conv1.weight": torch.zeros(1), "x": _RunsCode()}, "step": 1}, path)
    return path


def _plain_pickle_with_code(path: Path) -> Path:
    path.write_bytes(pickle.dumps({"model": _RunsCode(), "step": 1}, protocol=4))
    return path


def _text(path: Path) -> Path:
    path.write_text("these are my notes, not a checkpoint\n")
    return path


def _empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


FILES = {
    # (file, load_checkpoint says, load_state_from_path says)
    "random_bytes": (_random_bytes, "is not a torch checkpoint (unreadable: ",
                     "is not a torch checkpoint (unreadable: "),
    "text": (_text, "is not a torch checkpoint (unreadable: ",
             "is not a torch checkpoint (unreadable: "),
    "empty": (_empty, "is not a torch checkpoint (unreadable: the file is empty)",
              "is not a torch checkpoint (unreadable: the file is empty)"),
    "truncated": (_truncated, "is damaged or truncated (", "is damaged or truncated ("),
    "pickled_code": (_pickled_code, "not a tensors-only checkpoint (it holds pickled Python "
                     "objects, which could run code when loaded)",
                     "with weights_only=True: it holds pickled Python objects"),
    "plain_pickle_with_code": (_plain_pickle_with_code, "it holds pickled Python objects",
                               "it holds pickled Python objects"),
}


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("kind", list(FILES))
def test_what_the_loaders_say_of_a_file_that_is_not_a_checkpoint(tmp_path, capsys, kind):
    make, checkpoint_says, weights_says = FILES[kind]
    path = make(tmp_path / f"{kind}.pt")
    with pytest.raises(ValueError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"refusing to load {path}: ") and checkpoint_says in message
    assert "\n" not in message
    with pytest.raises(ValueError) as info:
        load_state_from_path(str(path))
    message = str(info.value)
    assert message.startswith(f"cannot load weights from {path}") and weights_says in message
    assert "\n" not in message
    if "pickle" not in kind:  # nothing but a file of pickled objects is said to hold them
        assert "pickled" not in message and "pickled" not in str(load_checkpoint_error(path))
    assert "code ran" not in capsys.readouterr().out


def load_checkpoint_error(path: Path) -> str:
    try:
        load_checkpoint(path)
    except ValueError as err:
        return str(err)
    raise AssertionError(f"{path} loaded")


def test_random_bytes_as_backbone_weights_are_one_line(tmp_path, capsys):
    weights = _random_bytes(tmp_path / "body.pt")
    out = tmp_path / "run"
    code, message = run_cli([*TINY, f"--backbone.weights={weights}", f"--output_dir={out}"],
                            capsys)
    assert_one_line_error(code, message, f"cannot load weights from {weights}: it is not a "
                                         f"torch checkpoint (unreadable: ")
    assert "pickled" not in message
    assert nothing_in(out)


@pytest.mark.parametrize("args, nearest", [
    (["--ppo.learning_rate=1e-3"], "did you mean --backbone.backbone_lr or --backbone.head_lr"),
    (["--ppo.gama=0.9"], "--ppo.gama: did you mean --ppo.gamma?"),
    (["--backbone.freeze=all"], "did you mean --backbone.freeze_mode?"),
])
def test_an_unknown_flag_names_the_nearest_real_ones(args, nearest):
    import train_ppo
    from training.ranges import ConfigError

    with pytest.raises(ConfigError) as err:
        train_ppo.parse_args(args)
    message = str(err.value)
    assert message.startswith(f"Unrecognized options: {args[0]}") and nearest in message
    assert "\n" not in message


def test_an_unknown_bc_flag_names_the_nearest_in_the_agents_config():
    import train_bc
    from training.ranges import ConfigError

    with pytest.raises(ConfigError, match=r"--agent.lr_rate: did you mean --agent.lr\?"):
        train_bc.parse_args(["--agent.lr_rate=1"])


def test_an_unknown_precision_or_diverged_mode_is_one_line(tmp_path):
    import train_ppo
    from training import report
    from training.ranges import ConfigError

    with pytest.raises(ConfigError, match=r"^unknown precision 'fp16' \(--precision\); choose "
                                          r"one of auto, bf16, fp32$"):
        train_ppo.parse_args(["--precision=fp16"])
    with pytest.raises(ConfigError, match=r"^unknown diverged 'drop' \(--diverged\); choose one "
                                          r"of floor, exclude$"):
        report.main([str(tmp_path), "--diverged=drop"])
