"""train_ppo.py under stress: exact resume, signals, NaN gradients, bad input, determinism."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import agents.ppo
import train_ppo
from envs.durotaxis import DurotaxisConfig, DurotaxisCore, random_policy
from training.checkpoint import load_checkpoint
from training.cli import run_main
from training.run import RunStopped
from training.run_outcome import EXIT_STOPPED, RunOutcome, read_outcome

# 2 envs x 4 steps = 8 steps an iteration, 4 iterations; episodes (6 steps) straddle
# iterations, so a resume that loses the environments' state shows.
TINY = [
    "--backbone.weights=random",
    "--ppo.num_envs=2",
    "--ppo.num_steps=4",
    "--ppo.total_timesteps=32",
    "--ppo.num_minibatches=2",
    "--ppo.update_epochs=2",
    "--env.image_size=16",
    "--env.max_steps=6",
    "--eval_episodes=2",
    "--video=False",
    "--wandb.mode=disabled",
    "--threads=1",
]
TIMING = ("time", "perf/sps")
LOSS_CALLS_PER_ITERATION = 4  # update_epochs x num_minibatches


@pytest.fixture(autouse=True)
def _tiny_runs(monkeypatch):
    """No learning-curve PNG (test_ppo.py checks it; it costs more than a tiny run's
    training), errors as users see them, and the thread count --threads=1 sets given back."""
    monkeypatch.setattr(train_ppo, "plot_learning_curve", lambda *args: None)
    monkeypatch.delenv("RLENC_TRACEBACK", raising=False)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def metrics_of(run: Path) -> list[dict]:
    """The run's logged records without the wall-clock ones."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def checkpoint_of(run: Path) -> dict:
    return load_checkpoint(run / "checkpoints" / "last.pt")


def assert_same(a, b, where="checkpoint"):
    """Bit-exact equality of nested checkpoint data (tensors, dicts, lists, numbers)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (where, set(a) ^ set(b))
        for key in a:
            assert_same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def assert_same_run(a: Path, b: Path) -> None:
    ckpt_a, ckpt_b = checkpoint_of(a), checkpoint_of(b)
    for key in ("model", "optimizer", "step", "rng", "extra", "frozen"):
        assert_same(ckpt_a[key], ckpt_b[key], key)
    assert metrics_of(a) == metrics_of(b)


def stop_after_iterations(monkeypatch, iterations: int) -> None:
    """Send this process SIGTERM during the given iteration's update, as a scheduler would."""
    real, calls = train_ppo.ppo_update, {"n": 0}

    def update_then_signal(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == iterations:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_ppo, "ppo_update", update_then_signal)


def poison_loss(monkeypatch, at_call: int) -> dict:
    """Make PPO's loss NaN on one minibatch; returns {"model": the model it trained}."""
    real, calls, seen = agents.ppo.ppo_loss, {"n": 0}, {}

    def poisoned(model, *args, **kwargs):
        loss, info = real(model, *args, **kwargs)
        calls["n"] += 1
        seen["model"] = model
        return (loss * float("nan") if calls["n"] == at_call else loss), info

    monkeypatch.setattr(agents.ppo, "ppo_loss", poisoned)
    monkeypatch.setattr(train_ppo, "ppo_loss", poisoned, raising=False)  # if it wraps the loss
    return seen


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    """train_ppo as its command line runs it (run_main): exit status and stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: train_ppo.main(args))
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    # The last line: tqdm's progress bar, drawn with carriage returns, may precede it.
    return exit_info.value.code, err.strip().split("\n")[-1]


def assert_one_line_error(code: int, message: str, needle: str) -> None:
    assert code == 2, message
    assert message.startswith("error: ") and "\n" not in message, message
    assert needle in message, message


def files_of(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


# ----- the environments' state ------------------------------------------------------------------


def play(env: DurotaxisCore, gen: torch.Generator, steps: int) -> list[torch.Tensor]:
    out = []
    for _ in range(steps):
        obs, reward, terminated, truncated, info = env.autoreset_step(*random_policy(env, gen))
        out += [obs, reward, terminated, truncated, *info.values()]
    return out


def test_env_state_round_trip_continues_exactly(tmp_path):
    cfg = DurotaxisConfig(preset="easy", image_size=16, max_steps=5)
    env = DurotaxisCore(cfg, 3)
    env.reset(seed=7)
    gen = torch.Generator().manual_seed(0)
    play(env, gen, 4)
    torch.save(env.state_dict(), tmp_path / "env.pt")
    gen_state, obs = gen.get_state(), env.observe()
    expected = play(env, gen, 12)

    other = DurotaxisCore(cfg, 3)
    other.load_state_dict(torch.load(tmp_path / "env.pt", weights_only=True))
    assert torch.equal(other.observe(), obs)
    gen.set_state(gen_state)
    got = play(other, gen, 12)
    assert all(torch.equal(x, y) for x, y in zip(expected, got, strict=True))


def test_env_state_holds_everything_that_changes_while_stepping():
    env = DurotaxisCore(DurotaxisConfig(preset="easy", image_size=16, max_steps=3), 4)

    def tensors():
        return {k: v.clone() for k, v in vars(env).items() if isinstance(v, torch.Tensor)}

    before = tensors()
    env.reset(seed=3)
    play(env, torch.Generator().manual_seed(1), 10)
    after = tensors()
    changed = {k for k in after if k not in before or not torch.equal(before[k], after[k])}
    assert changed and changed <= set(env.state_dict()), changed - set(env.state_dict())


def test_env_state_of_another_batch_size_is_refused():
    cfg = DurotaxisConfig(preset="easy", image_size=16)
    state = DurotaxisCore(cfg, 2).state_dict()
    with pytest.raises(ValueError, match="environment state does not fit: keys"):
        DurotaxisCore(cfg, 3).load_state_dict(state)


# ----- resume and determinism -------------------------------------------------------------------


@pytest.mark.parametrize("freeze_mode", ["all", "last_block"])
def test_resume_is_exact(tmp_path, monkeypatch, freeze_mode):
    args = [*TINY, f"--backbone.freeze_mode={freeze_mode}"]
    once, twice = tmp_path / "once", tmp_path / "twice"
    final_once = train_ppo.main([*args, f"--output_dir={once}"])
    with monkeypatch.context() as patch, pytest.raises(RunStopped):
        stop_after_iterations(patch, 2)
        train_ppo.main([*args, f"--output_dir={twice}"])
    assert checkpoint_of(twice)["extra"]["iteration"] == 2
    final_twice = train_ppo.main([*args, f"--output_dir={twice}", "--resume=True"])
    assert_same_run(once, twice)
    for final in (final_once, final_twice):
        final.pop("perf/sps")
    assert final_once == final_twice


def test_same_seed_same_run_other_seed_other_run(tmp_path):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        train_ppo.main([*TINY, f"--seed={seed}", f"--output_dir={tmp_path / name}"])
    assert_same_run(tmp_path / "a", tmp_path / "b")
    a, c = checkpoint_of(tmp_path / "a")["model"], checkpoint_of(tmp_path / "c")["model"]
    assert not torch.equal(a["mean_head.weight"], c["mean_head.weight"])
    assert not torch.equal(
        a["actor_encoder.backbone.layer4.1.conv2.weight"],
        c["actor_encoder.backbone.layer4.1.conv2.weight"],
    )
    assert metrics_of(tmp_path / "a") != metrics_of(tmp_path / "c")


# ----- signals ------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_signal_writes_a_checkpoint_exits_cleanly_and_resumes(tmp_path, sig):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "train_ppo.py",
            *TINY,
            "--ppo.total_timesteps=8000000",
            f"--output_dir={out}",
        ],
        cwd=Path(train_ppo.__file__).parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    metrics, deadline = out / "metrics.jsonl", time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and "train/policy_loss" in metrics.read_text():
            break  # inside the training loop
        time.sleep(0.1)
    proc.send_signal(getattr(signal, sig))
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_STOPPED, output
    assert f"{sig} at step" in output and "--resume=True" in output, output
    assert read_outcome(out) == RunOutcome("stopped", ckpt_step := checkpoint_of(out)["step"],
                                           sig, read_outcome(out).time)
    assert ckpt_step > 0
    ckpt = checkpoint_of(out)
    step, iteration = ckpt["step"], ckpt["extra"]["iteration"]
    assert 0 < step < 8_000_000 and step == 8 * iteration

    train_ppo.main(
        [*TINY, f"--ppo.total_timesteps={step + 16}", f"--output_dir={out}", "--resume=True"]
    )
    steps = [row["step"] for row in metrics_of(out) if "train/policy_loss" in row]
    assert steps == list(range(8, step + 17, 8))
    assert checkpoint_of(out)["step"] == step + 16


# ----- non-finite gradients -------------------------------------------------------------------


def test_nan_gradient_stops_naming_iteration_and_group_keeping_the_checkpoint(
    tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run"
    seen = poison_loss(monkeypatch, at_call=2 * LOSS_CALLS_PER_ITERATION + 1)  # iteration 3
    code, message = run_cli([*TINY, "--checkpoint_every=2", f"--output_dir={out}"], capsys)
    assert_one_line_error(
        code, message, "iteration 3 (step 24): non-finite gradient in parameter group(s) heads"
    )
    assert "--skip_nonfinite=True" in message and str(out / "checkpoints" / "last.pt") in message
    ckpt = checkpoint_of(out)
    assert ckpt["extra"]["iteration"] == 2 and ckpt["step"] == 16
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())
    # The weights in memory are still the checkpoint's: no step was taken on the NaN.
    assert_same(ckpt["model"], seen["model"].state_dict(), "model")


def test_nan_gradient_can_be_skipped(tmp_path, monkeypatch):
    out = tmp_path / "run"
    poison_loss(monkeypatch, at_call=2 * LOSS_CALLS_PER_ITERATION + 1)
    train_ppo.main([*TINY, "--skip_nonfinite=True", f"--output_dir={out}"])
    rows = [row for row in metrics_of(out) if "train/policy_loss" in row]
    assert [row["train/skipped_nonfinite_steps"] for row in rows] == [0, 0, 1, 1]
    ckpt = checkpoint_of(out)
    assert ckpt["step"] == 32 and all(torch.isfinite(t).all() for t in ckpt["model"].values())


# ----- bad input: one line, exit status 2, nothing touched ---------------------------------------


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--backbone.arch=resnet99"], "unknown arch 'resnet99'"),
        (["--backbone.input_adapter=rgb"], "unknown input_adapter 'rgb'"),
        (["--backbone.pooling=max"], "unknown pooling 'max'"),
        (["--env.channels=3"], "input_adapter=repeat3 expects 1-channel images"),
        (["--env.channels=1", "--backbone.input_adapter=none"], "expects 3-channel images"),
        (["--backbone.pooling=spatial_softmax"], "env.image_size=16 leaves a 1 x 1"),
        (["--ppo.num_minibatches=3"], "must be divisible by ppo.num_minibatches"),
        (["--backbone.weights=imagenet"], "ImageNet"),
    ],
)
def test_bad_settings_are_one_line_errors_before_the_run_dir(tmp_path, capsys, flags, needle):
    out = tmp_path / "run"
    code, message = run_cli([*TINY, *flags, f"--output_dir={out}"], capsys)
    assert_one_line_error(code, message, needle)
    assert not out.exists()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A one-iteration resnet18 run to resume in the wrong ways (copied by each test)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    threads = torch.get_num_threads()
    train_ppo.main([*TINY, "--ppo.total_timesteps=8", f"--output_dir={out}"])
    torch.set_num_threads(threads)
    return out


def _pickled_checkpoint(path: Path) -> None:
    marker = path.parent / "executed"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model": Payload(), "step": 1}, path)


def _truncated_checkpoint(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _config_says(section: str, key: str, value):
    """Damage: the run's config.json claims another setting than its checkpoint was made
    with (a resume takes its settings from config.json, so flags cannot make the mismatch)."""
    def damage(path: Path) -> None:
        config_path = path.parent.parent / "config.json"
        config = json.loads(config_path.read_text())
        config[section][key] = value
        config_path.write_text(json.dumps(config, indent=2))
    return damage


@pytest.mark.parametrize(
    ("flags", "damage", "needle"),
    [
        (["--backbone.arch=resnet34"], None, "--backbone.arch saved 'resnet18', now 'resnet34'"),
        ([], _config_says("backbone", "arch", "resnet34"), "does not fit this model"),
        ([], _config_says("backbone", "freeze_mode", "last_block"),
         "optimizer state does not fit"),
        ([], _config_says("ppo", "num_envs", 4), "environment state does not fit"),
        ([], _truncated_checkpoint, "refusing to load"),
        ([], _pickled_checkpoint, "refusing to load"),
    ],
)
def test_a_checkpoint_that_does_not_fit_is_refused_touching_nothing(
    tmp_path, capsys, finished_run, flags, damage, needle
):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    if damage is not None:
        damage(out / "checkpoints" / "last.pt")
    before = files_of(out)
    # The run's own settings come from its config.json: the resume command needs no others.
    code, message = run_cli([*flags, f"--output_dir={out}", "--resume=True"], capsys)
    assert_one_line_error(code, message, needle)
    assert files_of(out) == before, "a refused resume must leave the run as it was"
    assert not (out / "checkpoints" / "executed").exists()


def test_an_existing_run_is_neither_overwritten_nor_appended_to(tmp_path, capsys, finished_run):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    before = files_of(out)
    code, message = run_cli([*TINY, f"--output_dir={out}"], capsys)
    assert_one_line_error(code, message, "--resume=True to continue it, --overwrite=True")
    assert files_of(out) == before
