"""envs/darkroom/curves.py: a sweep's in-context curves, with intervals, against the source."""

import json

import numpy as np
import pytest
import torch

from envs.darkroom.curves import CurvesConfig, curves_report, latest_evaluation
from envs.darkroom.histories import HistoriesConfig, generate_histories, save_histories
from training.run_outcome import write_outcome


def fake_sweep(root, curves_per_label, split="test"):
    """A sweep.json and, per run, one finished evaluation with the given curve."""
    runs = {}
    for label, curves in curves_per_label.items():
        for seed, curve in enumerate(curves):
            rel = f"c={label}/seed={seed}"
            ev = root / rel / "videos" / split / "eval_000"
            ev.mkdir(parents=True)
            (ev / "in_context_return.json").write_text(json.dumps({
                "return_per_episode": curve, "goals": split, "optimal_return": 17.0,
                "random_return": 0.3}))
            write_outcome(root / rel, "finished")
            runs[rel] = {"dir": rel, "config": {"c": label}, "status": "finished"}
    (root / "sweep.json").write_text(json.dumps({"entry": "train_bc.py", "grid": ["c"],
                                                 "runs": runs}))


def test_headline_is_the_tail_mean_per_run_with_intervals(tmp_path):
    fake_sweep(tmp_path, {"a": [[0, 1, 2, 4], [0, 1, 2, 6], [0, 1, 2, 8]],
                          "b": [[1, 1, 1, 1]] * 3})
    out = curves_report(CurvesConfig(str(tmp_path), tail=2, reps=200))
    mean_a = np.mean([(2 + 4) / 2, (2 + 6) / 2, (2 + 8) / 2])
    assert out["estimates"]["c=a"]["mean"][0] == pytest.approx(mean_a)
    low, high = out["estimates"]["c=a"]["mean"][1:]
    assert low <= mean_a <= high and low < high
    assert out["estimates"]["c=b"]["mean"] == pytest.approx([1.0, 1.0, 1.0])
    assert out["mean_curve"]["c=a"] == pytest.approx([0, 1, 2, 6])
    table = (tmp_path / "report" / "in_context_test.md").read_text()
    assert "| c=a | 3 |" in table and "episodes 3-4" in table
    assert (tmp_path / "report" / "in_context_test.png").is_file()


def test_the_source_curve_is_cut_to_the_evaluated_episodes_and_too_short_is_refused(tmp_path):
    hist = generate_histories(HistoriesConfig(split="test", histories_per_task=2, episodes=5,
                                              progress=False), torch.device("cpu"))
    source = tmp_path / "source.npz"
    save_histories(source, hist)
    sweep = tmp_path / "sweep"
    fake_sweep(sweep, {"a": [[0, 1, 2, 3]] * 3})
    out = curves_report(CurvesConfig(str(sweep), source=str(source), tail=2, reps=100))
    expected = hist.episode_returns[:, 2:4].astype(np.float64).mean()
    assert out["runs"]["source"] == len(hist.episode_returns)
    assert out["estimates"]["source"]["mean"][0] == pytest.approx(expected)
    long = tmp_path / "long"
    fake_sweep(long, {"a": [list(range(8))] * 3})
    with pytest.raises(ValueError, match="fewer than the 8 in-context episodes"):
        curves_report(CurvesConfig(str(long), source=str(source), reps=100))


def test_other_splits_and_unfinished_runs_are_not_read(tmp_path):
    fake_sweep(tmp_path, {"a": [[1, 2]] * 3}, split="valid")
    assert latest_evaluation(tmp_path / "c=a" / "seed=0", "test") is None
    with pytest.raises(ValueError, match="no finished run has a test evaluation"):
        curves_report(CurvesConfig(str(tmp_path), reps=100))
    out = curves_report(CurvesConfig(str(tmp_path), split="valid", reps=100))
    assert out["runs"] == {"c=a": 3} and out["left_out"] == []


def test_bad_split_is_a_one_line_error(tmp_path, capsys):
    from envs.darkroom.curves import main
    from training.cli import run_main

    with pytest.raises(SystemExit) as exit_:
        run_main(lambda: main([str(tmp_path), "--split=train"]))
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "split" in err and "train" in err


def test_a_sweep_without_grid_is_named_by_its_directory_or_label(tmp_path):
    root = tmp_path / "ad_hard"
    root.mkdir()
    runs = {}
    for seed, curve in enumerate([[0, 1], [0, 3], [0, 5]]):
        ev = root / f"seed={seed}" / "videos" / "eval_000"
        ev.mkdir(parents=True)
        (ev / "in_context_return.json").write_text(json.dumps({
            "return_per_episode": curve, "goals": "test", "optimal_return": 1.0,
            "random_return": 0.0}))
        write_outcome(root / f"seed={seed}", "finished")
        runs[f"seed={seed}"] = {"dir": f"seed={seed}", "config": {}, "status": "finished"}
    (root / "sweep.json").write_text(json.dumps({"entry": "train_bc.py", "grid": {},
                                                 "runs": runs}))
    out = curves_report(CurvesConfig(str(root), tail=1, reps=100))
    assert list(out["estimates"]) == ["ad_hard"]
    assert out["estimates"]["ad_hard"]["mean"][0] == pytest.approx(3.0)
    out = curves_report(CurvesConfig(str(root), tail=1, reps=100, label="AD, context 8"))
    assert list(out["estimates"]) == ["AD, context 8"]
    assert "| AD, context 8 | 3 |" in (root / "report" / "in_context_test.md").read_text()
