"""The run harness (training/run.py) as users meet it: through both entry scripts.

--overwrite never deletes what is not a run of ours, resume refuses changed settings, one
process per run directory, ranges checked before anything is written, and every failure
one line with nothing lost.
"""

import errno
import json
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import train_bc
import train_ppo
import training.checkpoint
import training.machine
import training.run
from tests.test_ppo_reliability import TINY, assert_one_line_error, files_of, run_cli
from training.checkpoint import load_checkpoint
from training.cli import run_main
from training.verify_frozen import main as verify_frozen_main


@pytest.fixture(autouse=True)
def _tiny(monkeypatch):
    monkeypatch.setattr(train_ppo, "plot_learning_curve", lambda *args: None)
    monkeypatch.delenv("RLENC_TRACEBACK", raising=False)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A one-iteration PPO run of ours (copied by each test that changes it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    threads = torch.get_num_threads()
    train_ppo.main([*TINY, "--ppo.total_timesteps=8", f"--output_dir={out}"])
    torch.set_num_threads(threads)
    return out


def copy_of(run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out


def bc_cli(args: list[str], capsys) -> tuple[int, str]:
    """train_bc as its command line runs it: exit status and the last stderr line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: train_bc.train(train_bc.parse_args(args)))
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return exit_info.value.code, err.strip().split("\n")[-1]


AD_TINY = ["--env_name=darkroom", "--agent=ad", "--device=cpu", "--wandb.mode=disabled",
           "--offline_steps=2", "--batch_size=4", "--eval_episodes=0", "--log_interval=1",
           "--agent.n_layer=1", "--agent.d_model=16", "--agent.n_head=2"]


# ----- --overwrite never destroys user data ------------------------------------------------------


def test_overwrite_refuses_a_directory_holding_a_users_file(tmp_path, capsys):
    out = tmp_path / "mydata"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    code, message = run_cli([*TINY, f"--output_dir={out}", "--overwrite=True"], capsys)
    assert_one_line_error(code, message, "not a run this project made")
    assert (out / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]


def test_overwrite_refuses_a_run_with_a_users_file_in_it(tmp_path, capsys, finished_run):
    out = copy_of(finished_run, tmp_path)
    (out / "notes.md").write_text("mine")
    before = files_of(out)
    code, message = run_cli([*TINY, f"--output_dir={out}", "--overwrite=True"], capsys)
    assert_one_line_error(code, message, "holds files this project did not write (notes.md)")
    assert files_of(out) == before


def test_overwrite_refuses_a_directory_holding_the_dataset_in_use(tmp_path, capsys, histories):
    out = tmp_path / "run"
    train_bc.train(train_bc.parse_args([*AD_TINY, f"--dataset={histories}", f"--output_dir={out}"]))
    dataset = out / "histories.npz"
    shutil.copy(histories, dataset)
    before = files_of(out)
    code, message = bc_cli([*AD_TINY, f"--dataset={dataset}", f"--output_dir={out}",
                            "--overwrite=True"], capsys)
    assert_one_line_error(code, message, f"it holds {dataset.resolve()}, an input of this run")
    assert files_of(out) == before


def test_overwrite_refuses_the_run_whose_checkpoint_is_the_input(tmp_path, capsys, finished_run):
    out = copy_of(finished_run, tmp_path)
    weights = f"{out}/checkpoints/last.pt::actor_encoder.backbone."
    before = files_of(out)
    code, message = run_cli([*TINY, f"--backbone.weights={weights}", f"--output_dir={out}",
                             "--overwrite=True"], capsys)
    assert_one_line_error(code, message, "an input of this run")
    assert files_of(out) == before


def test_overwrite_refuses_the_current_directory(tmp_path, capsys, monkeypatch, finished_run):
    out = copy_of(finished_run, tmp_path)
    monkeypatch.chdir(out)
    code, message = run_cli([*TINY, "--output_dir=.", "--overwrite=True"], capsys)
    assert_one_line_error(code, message, "it is or holds the current directory")


def test_overwrite_replaces_a_run_of_ours(tmp_path, finished_run):
    out = copy_of(finished_run, tmp_path)
    old_id = (out / "wandb_id.txt").read_text() if (out / "wandb_id.txt").exists() else None
    train_ppo.main([*TINY, "--ppo.total_timesteps=16", f"--output_dir={out}", "--overwrite=True"])
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 16
    assert (out / "run.json").is_file()
    assert not list(tmp_path.glob(".run.replaced-*")), "the set-aside old run must be gone"
    if old_id is not None:
        assert (out / "wandb_id.txt").read_text() != old_id


def test_a_bad_input_found_late_leaves_the_old_run_intact(tmp_path, capsys, finished_run):
    out = copy_of(finished_run, tmp_path)
    before = files_of(out)
    # No ImageNet file offline: found when the model is built, after the directory was chosen.
    code, message = run_cli([*TINY, "--backbone.weights=imagenet", f"--output_dir={out}",
                             "--overwrite=True"], capsys)
    assert_one_line_error(code, message, "ImageNet weights for resnet18 are unavailable")
    assert files_of(out) == before
    assert not list(tmp_path.glob(".run.replaced-*"))


def test_bad_histories_found_late_leave_the_old_run_intact(tmp_path, capsys, histories):
    out = tmp_path / "run"
    train_bc.train(train_bc.parse_args([*AD_TINY, f"--dataset={histories}", f"--output_dir={out}"]))
    before = files_of(out)
    with __import__("numpy").load(histories) as f:
        arrays = dict(f)
    arrays["actions"] = arrays["actions"].copy()
    arrays["actions"].flat[7] = 9  # Dark Room has 5 actions
    bad = tmp_path / "bad.npz"
    __import__("numpy").savez(bad, **arrays)
    code, message = bc_cli([*AD_TINY, f"--dataset={bad}", f"--output_dir={out}",
                            "--overwrite=True"], capsys)
    assert code == 2 and message.startswith("error: ") and "actions" in message, message
    assert files_of(out) == before


# ----- resume continues the same run ------------------------------------------------------------


@pytest.mark.parametrize(
    "flag",
    ["--backbone.head_lr=0.5", "--seed=7", "--ppo.num_steps=8", "--env.max_steps=9"],
)
def test_resume_with_changed_settings_is_refused(tmp_path, capsys, finished_run, flag):
    out = copy_of(finished_run, tmp_path)
    before = files_of(out)
    code, message = run_cli([*TINY, flag, f"--output_dir={out}", "--resume=True"], capsys)
    assert_one_line_error(code, message, "these settings differ from its config.json")
    name, value = flag[2:].split("=")
    assert f"--{name} saved" in message and value in message
    assert files_of(out) == before, "config.json and everything else must stay byte-identical"


def test_resume_with_a_larger_budget_is_accepted_and_recorded(tmp_path, finished_run):
    out = copy_of(finished_run, tmp_path)
    original = json.loads((out / "config.json").read_text())
    train_ppo.main([*TINY, "--ppo.total_timesteps=16", f"--output_dir={out}", "--resume=True"])
    config = json.loads((out / "config.json").read_text())
    assert config["ppo"]["total_timesteps"] == original["ppo"]["total_timesteps"] == 8
    (resume,) = config["resumes"]
    assert resume["step"] == 8 and resume["changed"] == {"ppo.total_timesteps": [8, 16]}
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 16


def test_the_machine_is_recorded_and_a_resume_elsewhere_says_it_will_not_repeat(
        tmp_path, capsys, monkeypatch, finished_run):
    """Runs repeat bit for bit only on one CPU type (docs/reliability.md): config.json says
    where a run began and where each resume went on; a resume on another kind says so."""
    out = copy_of(finished_run, tmp_path)
    began = json.loads((out / "config.json").read_text())["machine"]
    assert began["cpu"] == training.machine.cpu_model() and began["gpu"] is None
    assert began["torch"] == torch.__version__ and began["cpu_cores"] >= 1
    assert began["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert began["cpu_id"] == training.machine.cpu_id()
    other = {**began, "cpu": "Another CPU"}
    monkeypatch.setattr(training.run, "describe_machine", lambda device: other)
    capsys.readouterr()
    train_ppo.main([*TINY, "--ppo.total_timesteps=16", f"--output_dir={out}", "--resume=True"])
    said = capsys.readouterr()
    assert (f"note: this run began on {began['cpu']}, torch {torch.__version__} and goes on "
            f"on Another CPU, torch {torch.__version__}; it will not repeat bit for bit"
            ) in said.out + said.err
    config = json.loads((out / "config.json").read_text())
    assert config["machine"] == began and config["resumes"][0]["machine"] == other


def test_cpu_model_reads_proc_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
                    "model name\t: AMD EPYC\nstepping\t: 1\n\n"
                    "processor\t: 1\ncpu family\t: 23\nmodel\t\t: 49\nmodel name\t: Other\n")
    assert training.machine.cpu_model(info) == "AMD EPYC"
    assert training.machine.cpu_id(info) == "cpu family 25, model 17, stepping 1"
    assert training.machine.cpu_id(tmp_path / "absent") is None
    assert training.machine.cpu_model(tmp_path / "absent")  # platform's answer, never empty


# ----- one process per run directory ------------------------------------------------------------


def test_a_second_process_is_refused_and_a_killed_holder_leaves_no_lock(
    tmp_path, capsys, finished_run
):
    out = copy_of(finished_run, tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from pathlib import Path
            from training.run_dir import RunDirLock
            RunDirLock(Path({str(out)!r}))
            print("locked", flush=True)
            time.sleep(120)
        """)],
        stdout=subprocess.PIPE, text=True, cwd=Path(train_ppo.__file__).parent,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, message = run_cli([*TINY, "--ppo.total_timesteps=16", f"--output_dir={out}",
                                 "--resume=True"], capsys)
        assert_one_line_error(code, message, f"in use by another process (PID {holder.pid})")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    train_ppo.main([*TINY, "--ppo.total_timesteps=16", f"--output_dir={out}", "--resume=True"])
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 16


# ----- ranges, checked before anything is written ------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--ppo.gamma=2"], "--ppo.gamma=2.0 is out of range; allowed: (0, 1]"),
        (["--ppo.gae_lambda=0"], "--ppo.gae_lambda=0.0 is out of range"),
        (["--backbone.head_lr=-1"], "--backbone.head_lr=-1.0 is out of range; allowed: > 0"),
        (["--ppo.clip_coef=-0.1"], "--ppo.clip_coef=-0.1 is out of range"),
        (["--ppo.num_envs=0"], "--ppo.num_envs=0 is out of range; allowed: >= 1"),
        (["--save_interval=0"], "--save_interval=0 is out of range"),
        (["--env.initial_cells=0"], "--env.initial_cells=0 is out of range"),
    ],
)
def test_ppo_values_out_of_range_are_one_line_and_write_nothing(tmp_path, capsys, flags, needle):
    out = tmp_path / "run"
    code, message = run_cli([*TINY, *flags, f"--output_dir={out}"], capsys)
    assert_one_line_error(code, message, needle)
    assert not out.exists()


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--agent.d_model=0"], "--agent.d_model=0 is out of range"),
        (["--agent.lr=0"], "--agent.lr=0.0 is out of range; allowed: > 0"),
        (["--batch_size=0"], "--batch_size=0 is out of range"),
    ],
)
def test_bc_values_out_of_range_are_one_line_and_write_nothing(
    tmp_path, capsys, histories, flags, needle
):
    out = tmp_path / "run"
    code, message = bc_cli([*AD_TINY, f"--dataset={histories}", *flags, f"--output_dir={out}"],
                           capsys)
    assert_one_line_error(code, message, needle)
    assert not out.exists()


# ----- every failure one line, nothing lost -------------------------------------------------------


def test_an_output_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    out = tmp_path / "file"
    out.write_text("not a directory")
    code, message = run_cli([*TINY, f"--output_dir={out}"], capsys)
    assert_one_line_error(code, message, "is a file, not a directory")
    assert out.read_text() == "not a directory"


def test_an_unwritable_output_dir_is_one_line(tmp_path, capsys, monkeypatch):
    # The tests run as root, which chmod cannot stop: the refusal is simulated.
    def refuse(path, entry):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(training.run, "write_marker", refuse)
    code, message = run_cli([*TINY, f"--output_dir={tmp_path / 'run'}"], capsys)
    assert_one_line_error(code, message, "cannot write the run directory")
    assert "Permission denied" in message


def test_no_space_at_a_checkpoint_is_one_line_and_keeps_the_previous_one(tmp_path, capsys,
                                                                          monkeypatch):
    real, calls = torch.save, {"n": 0}

    def save_until_the_disk_is_full(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(training.checkpoint.torch, "save", save_until_the_disk_is_full)
    out = tmp_path / "run"
    code, message = run_cli([*TINY, "--save_interval=2", f"--output_dir={out}"], capsys)
    assert_one_line_error(code, message, "no space left on device")
    assert "the previous one (step 16) is intact" in message
    monkeypatch.setattr(training.checkpoint.torch, "save", real)
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 16
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["last.pt"]


def test_a_checkpoint_without_a_model_is_one_line(tmp_path, capsys, finished_run):
    out = copy_of(finished_run, tmp_path)
    torch.save({"step": 8, "weights": {}}, out / "checkpoints" / "last.pt")
    code, message = run_cli([*TINY, f"--output_dir={out}", "--resume=True"], capsys)
    assert_one_line_error(code, message, "is not one of our checkpoints")


def test_wandb_auto_with_a_key_and_no_server_trains_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.undo()  # the real learning curve: wandb uploads the file
    monkeypatch.setenv("WANDB_API_KEY", "a" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("WANDB_MODE", raising=False)
    out = tmp_path / "run"
    args = [a for a in TINY if not a.startswith("--wandb.mode")]
    train_ppo.main([*args, "--ppo.total_timesteps=8", "--wandb.mode=auto",
                    "--wandb.init_timeout=3", f"--output_dir={out}"])
    said = capsys.readouterr()
    assert "logging offline instead" in said.out + said.err
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 8
    assert list((out / "wandb").glob("offline-run-*"))


# ----- a failing evaluation costs no trained weights ----------------------------------------------


def test_a_crashing_evaluation_is_one_line_and_the_weights_are_saved(tmp_path, capsys, monkeypatch):
    def crash(*args, **kwargs):  # the final evaluation's rollouts (the baselines run apart)
        raise ConnectionResetError("[Errno 104] Connection reset by peer")

    monkeypatch.setattr(train_ppo, "run_episodes", crash)
    out = tmp_path / "run2"
    code, message = run_cli([*TINY, "--ppo.total_timesteps=8", f"--output_dir={out}"], capsys)
    assert_one_line_error(code, message, "evaluation at step 8 failed (ConnectionResetError")
    assert f"the trained weights are saved in {out / 'checkpoints' / 'last.pt'} (step 8)" in message
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 8


# ----- verify_frozen fails when it checked nothing ------------------------------------------------


def test_verify_frozen_fails_on_a_run_with_nothing_frozen(tmp_path, capsys):
    out = tmp_path / "run"
    train_ppo.main([*TINY, "--ppo.total_timesteps=8", "--backbone.freeze_mode=none",
                    "--eval_episodes=0", f"--output_dir={out}"])
    ckpt = str(out / "checkpoints" / "last.pt")
    assert verify_frozen_main([ckpt, "--source", ckpt]) == 1
    assert "nothing verified" in capsys.readouterr().out


def test_verify_frozen_fails_on_a_prefix_with_no_frozen_tensors(capsys, finished_run):
    ckpt = str(finished_run / "checkpoints" / "last.pt")
    assert verify_frozen_main([ckpt, "--source", ckpt, "--prefix", "no.such.prefix."]) == 1
    assert "start with --prefix 'no.such.prefix.'" in capsys.readouterr().out
    assert verify_frozen_main([ckpt, "--source", ckpt]) == 0


# ----- checkpoints from before the harness ------------------------------------------------------


def test_a_checkpoint_in_the_old_bc_layout_resumes(tmp_path, histories):
    out = tmp_path / "run"
    args = [*AD_TINY, f"--dataset={histories}", f"--output_dir={out}"]
    train_bc.train(train_bc.parse_args(args))
    path = out / "checkpoints" / "last.pt"
    ckpt = torch.load(path, weights_only=True)
    extra = ckpt["extra"]
    # The first version: one RNG at the top, the count under another name, no ranks.
    ckpt["extra"] = {"sampler": extra["sampler"], "skipped_nonfinite": 0}
    torch.save(ckpt, path)
    config = json.loads((out / "config.json").read_text())
    config.update(config.pop("run"))  # its settings were top-level then
    (out / "config.json").write_text(json.dumps(config))
    train_bc.train(train_bc.parse_args([*args, "--offline_steps=4", "--resume=True"]))
    assert load_checkpoint(path)["step"] == 4
    assert len(load_checkpoint(path)["extra"]["ranks"]) == 1


def test_a_checkpoint_in_an_unknown_layout_is_one_line(tmp_path, capsys, finished_run):
    out = copy_of(finished_run, tmp_path)
    path = out / "checkpoints" / "last.pt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["extra"] = {"ranks": "not a list"}
    torch.save(ckpt, path)
    code, message = run_cli([*TINY, f"--output_dir={out}", "--resume=True"], capsys)
    assert_one_line_error(code, message, "is not in a known layout")


def test_overwrite_refuses_home_and_a_filesystem_root(tmp_path, capsys, monkeypatch, finished_run):
    home = copy_of(finished_run, tmp_path)  # a run of ours, but it is the user's home
    monkeypatch.setenv("HOME", str(home))
    before = files_of(home)
    code, message = run_cli([*TINY, f"--output_dir={home}", "--overwrite=True"], capsys)
    assert_one_line_error(code, message, "it is or holds home")
    assert files_of(home) == before
    code, message = run_cli([*TINY, "--output_dir=/", "--overwrite=True"], capsys)
    assert_one_line_error(code, message, "--overwrite refuses to replace /")


def test_wandb_online_without_a_server_is_one_line_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_API_KEY", "a" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("WANDB_MODE", raising=False)
    out = tmp_path / "run"
    args = [a for a in TINY if not a.startswith("--wandb.mode")]
    code, message = run_cli([*args, "--wandb.mode=online", "--wandb.init_timeout=3",
                             f"--output_dir={out}"], capsys)
    assert_one_line_error(code, message, "--wandb.mode=online: wandb could not start")
    assert not (out / "checkpoints").exists()
