"""In-context return curves of a sweep's configurations, set against the source's own curve.

    python -m envs.darkroom.curves runs/ad_context --split=test \
        --source=runs/darkroom_source_test.npz --out=docs/figures/darkroom_context_test.png

For every configuration of the sweep (training/sweep.py), each finished run's latest
in-context evaluation on `--split` (`videos[/<split>]/eval_*/in_context_return.json`,
written by envs/darkroom/evaluation.py) is one curve over in-context episodes. The figure
has the mean over runs per episode with its 95% bootstrap CI (rliable, as
training/report.py draws its curves); the table has, per configuration, the mean and IQM
over runs of the headline (the mean return of the last `--tail` in-context episodes) with
95% stratified-bootstrap CIs, and the mean at a few episodes. `--source` adds the
learning histories of the source algorithm on the same goals (`python -m
envs.darkroom.histories --split=test --episodes=200 ...`), one learner per "run", so AD is
compared with what it distils, on the same goals and episode count.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import tyro

from training.cli import parse_config, run_main
from training.report import interval_estimates, load_runs, plot_curves, with_ci


@dataclass(frozen=True)
class CurvesConfig:
    """What to read and where to write."""

    sweep_dir: tyro.conf.Positional[str]
    """A sweep directory of train_bc.py runs on a Dark Room task."""
    split: Literal["valid", "test"] = "test"
    """Held-out goals whose evaluations are read."""
    source: str | None = None
    """Learning histories of the source on the same goals (an .npz), drawn as one more curve."""
    tail: int = 10
    """The headline is the mean return of the last `tail` in-context episodes."""
    out: str | None = None
    """Figure path (default SWEEP_DIR/report/in_context_<split>.png); the table goes next
    to it as .md and .json."""
    reps: int = 2000
    """Bootstrap resamples."""
    seed: int = 0
    """Bootstrap seed."""
    label: str | None = None
    """Curve label of a sweep without a grid (default: the sweep directory's name)."""


def latest_evaluation(run_dir: Path, split: str) -> dict | None:
    """A run's newest in-context evaluation on `split`, or None."""
    files = sorted(run_dir.glob(f"videos/{split}/eval_*/in_context_return.json"))
    files += sorted(p for p in run_dir.glob("videos/eval_*/in_context_return.json")
                    if json.loads(p.read_text()).get("goals") == split)
    return json.loads(files[-1].read_text()) if files else None


def sweep_curves(sweep_dir: Path, split: str, label: str | None = None
                 ) -> tuple[dict[str, np.ndarray], dict, list[str]]:
    """label -> runs x episodes; the references of the split; runs left out (and why).
    A sweep without a grid has one configuration, named `label` (default: the directory's
    name, as the report names it)."""
    manifest, runs = load_runs(sweep_dir)
    curves: dict[str, list[list[float]]] = {}
    references: dict = {}
    left_out = []
    for run in runs:
        data = latest_evaluation(run.dir, split) if run.status == "finished" else None
        if data is None:
            left_out.append(f"{run.name} ({run.status}, no {split} evaluation)"
                            if run.status == "finished" else f"{run.name} ({run.status})")
            continue
        name = label if label and not manifest["grid"] else run.label
        curves.setdefault(name, []).append(data["return_per_episode"])
        references = {"optimal": data["optimal_return"], "random": data["random_return"]}
    out = {}
    for label, rows in curves.items():
        length = min(map(len, rows))
        out[label] = np.array([r[:length] for r in rows], dtype=np.float64)
    return out, references, left_out


def source_curve(path: Path, episodes: int) -> np.ndarray:
    """The source's return per episode, learners x episodes (the first `episodes`)."""
    from envs.darkroom.histories import load_histories

    returns = load_histories(path).episode_returns.astype(np.float64)
    if returns.shape[1] < episodes:
        raise ValueError(f"{path} has {returns.shape[1]} episodes per learner, fewer than the "
                         f"{episodes} in-context episodes it is compared with")
    return returns[:, :episodes]


def curves_report(cfg: CurvesConfig) -> dict:
    """Figure, markdown table and JSON; returns the JSON."""
    sweep_dir = Path(cfg.sweep_dir)
    curves, references, left_out = sweep_curves(sweep_dir, cfg.split, cfg.label)
    if not curves:
        raise ValueError(f"{sweep_dir}: no finished run has a {cfg.split} evaluation")
    episodes = min(c.shape[1] for c in curves.values())
    curves = {label: c[:, :episodes] for label, c in curves.items()}
    if cfg.source is not None:
        curves["source"] = source_curve(Path(cfg.source), episodes)
    tail = min(cfg.tail, episodes)
    headline = {label: c[:, -tail:].mean(1, keepdims=True) for label, c in curves.items()}
    estimates = interval_estimates(headline, cfg.reps, cfg.seed)
    marks = [e for e in (1, 10, 20, 50, 100, 200, 500) if e <= episodes]
    out = Path(cfg.out) if cfg.out else sweep_dir / "report" / f"in_context_{cfg.split}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_curves({label: (np.arange(1, episodes + 1), c[:, None, :]) for label, c in
                 curves.items()}, f"return ({cfg.split} goals)", cfg.reps, cfg.seed, out,
                xlabel="in-context episode", references=references)
    lines = [
        f"In-context return on the {cfg.split} goals, {sweep_dir}: headline = mean return of "
        f"episodes {episodes - tail + 1}-{episodes}, mean and IQM over runs with 95% "
        f"stratified-bootstrap CIs ({cfg.reps} resamples); optimal "
        f"{references['optimal']:.2f}, random {references['random']:.2f}.",
        "",
        "| configuration | runs | last-" + str(tail) + " mean | last-" + str(tail) + " IQM | "
        + " | ".join(f"ep {e}" for e in marks) + " |",
        "|---|---|---|---|" + "---|" * len(marks),
    ]
    for label, c in curves.items():
        at = " | ".join(f"{c[:, e - 1].mean():.2f}" for e in marks)
        lines.append(f"| {label} | {len(c)} | {with_ci(estimates[label]['mean'])} | "
                     f"{with_ci(estimates[label]['iqm'])} | {at} |")
    if left_out:
        lines += ["", "Left out: " + "; ".join(left_out)]
    table = "\n".join(lines) + "\n"
    out.with_suffix(".md").write_text(table)
    result = {"split": cfg.split, "episodes": episodes, "tail": tail, "references": references,
              "estimates": estimates, "runs": {k: len(v) for k, v in curves.items()},
              "mean_curve": {k: v.mean(0).tolist() for k, v in curves.items()},
              "left_out": left_out}
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    print(table + f"wrote {out} and its .md / .json")
    return result


def main(argv: list[str] | None = None) -> dict:
    return curves_report(parse_config(CurvesConfig, argv, description=__doc__))


if __name__ == "__main__":
    run_main(main)
