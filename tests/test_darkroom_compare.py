"""The Darkroom comparison plot reads each run's newest evaluation."""

import json

import pytest

from envs.darkroom import compare as darkroom_compare


def write_eval(run, index, curve):
    folder = run / "videos" / f"eval_{index:03d}"
    folder.mkdir(parents=True)
    data = {"return_per_episode": curve, "optimal_return": 17.0, "random_return": 0.32}
    (folder / "in_context_return.json").write_text(json.dumps(data))


def test_compare_plots_the_latest_evaluation(tmp_path):
    write_eval(tmp_path / "a", 0, [1.0, 2.0])
    write_eval(tmp_path / "a", 1, [1.0, 9.0])
    write_eval(tmp_path / "b", 0, [0.5, 3.0])
    assert darkroom_compare.latest_curve(tmp_path / "a")["return_per_episode"][-1] == 9.0
    out = tmp_path / "cmp.png"
    darkroom_compare.main([f"AD={tmp_path / 'a'}", f"CAD={tmp_path / 'b'}", "--out", str(out)])
    assert out.stat().st_size > 1000


def test_compare_names_a_run_without_evaluations(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no videos/eval_"):
        darkroom_compare.latest_curve(tmp_path)
