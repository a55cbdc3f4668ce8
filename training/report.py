"""A study's table: per configuration, the mean and IQM over seeds with 95% stratified-bootstrap
confidence intervals, and the probability that one configuration beats another (rliable;
Agarwal et al., "Deep RL at the Edge of the Statistical Precipice", NeurIPS 2021).

    python -m training.report runs/study1
    python -m training.report runs/study1 --metric=eval/return --curve_metric=train/loss
    python -m training.report runs/study1 --metric=train/loss --higher_is_better=False

Reads the sweep's manifest (sweep.json, see training/sweep.py) and each finished run's final
value of the metric: final_metrics.json when it holds it, else the last value in
metrics.jsonl. A run is finished when its outcome.json says so (training.run_outcome).
Default metric: the task's headline, the first present of eval/success_rate,
eval/return_last_N_episodes, eval/return. Runs that did not finish, lack the metric, stopped
short of their configuration's last step, diverged (counted at the floor by default) or have
an unreadable metrics line are shown in the runs column or listed, never dropped silently
(training/report_evidence.py).

Writes under --out (default SWEEP_DIR/report): report.md (tables to paste into a README),
report.json (the same numbers), intervals.png, curves.png (the training counterpart of the
metric over steps: mean over runs and its 95% bootstrap CI per step).

The bootstrap is seeded (--seed): each of the three estimates (table, P(X > Y), curves)
draws from a fresh `np.random.RandomState(seed)`, so a report is reproducible. With
--wandb.mode=online/offline the table and figures are logged to a wandb run of job type
"report", in the runs' project and group unless --wandb.project/--wandb.group say otherwise;
the default is disabled, so that re-running a report never adds runs to a project.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tyro

from training.cli import parse_config, run_main
from training.machine import machine_kind
from training.report_evidence import Diverged, Evidence, assess, read_final, read_metrics
from training.run_outcome import read_outcome, run_finished

HEADLINE = ("eval/success_rate", r"eval/return_last_\d+_episodes", "eval/return")
# The training-time counterpart of a headline metric, for the learning curves.
CURVES = {"success": "charts/success_rate", "return": "charts/episodic_return"}
CURVE_FALLBACK = "train/loss"
CURVE_POINTS = 100
UNRECORDED = "not recorded"  # the machine of a run made before runs recorded it


@dataclass(frozen=True)
class ReportWandb:
    """Where the report is logged in Weights & Biases (off by default)."""

    mode: Literal["disabled", "online", "offline"] = "disabled"
    """disabled: files only; online/offline: also a wandb run with the table and figures."""
    project: str | None = None
    """None = the runs' project (from their config.json)."""
    entity: str | None = None
    """None = your default entity."""
    group: str | None = None
    """None = the runs' group (the sweep's name)."""


@dataclass(frozen=True)
class ReportConfig:
    """Aggregate a sweep's runs over seeds with rliable; write report.md and figures."""

    sweep_dir: tyro.conf.Positional[str]
    """The sweep directory (holding sweep.json)."""
    metric: str | None = None
    """Metric key; None = the task's headline (eval/success_rate, eval/return_last_N_episodes,
    eval/return: the first present)."""
    higher_is_better: bool = True
    """False for losses: P(X > Y) then means the probability that X is lower."""
    curve_metric: str | None = None
    """Learning-curve metric in metrics.jsonl; None = the metric's training counterpart
    (charts/success_rate, charts/episodic_return) or train/loss, the first present."""
    out: str | None = None
    """Output directory; None = SWEEP_DIR/report."""
    reps: int = 2000
    """Bootstrap resamples."""
    seed: int = 0
    """Seeds the bootstrap."""
    diverged: Diverged = "floor"
    """A run whose final value is not finite: floor = counts at the worst finite final value
    of the study's runs (lowest; highest when lower is better); exclude = left out. Either
    way the table says so."""
    wandb: ReportWandb = ReportWandb()
    """Weights & Biases logging of the report."""


@dataclass
class RunResult:
    """One run of the sweep as the report sees it."""

    name: str
    label: str
    """Its configuration, e.g. "agent.lr=0.001"."""
    dir: Path
    status: str
    final: dict[str, float] = field(default_factory=dict)
    """The last value of every metric (final_metrics.json over metrics.jsonl)."""
    steps: dict[str, int] = field(default_factory=dict)
    """The step at which each final value was logged."""
    unreadable: list[str] = field(default_factory=list)
    """The lines of its record that could not be read, e.g. "metrics.jsonl line 41 ... (cut)"."""
    config: dict[str, Any] = field(default_factory=dict)
    """Its config.json (settings and the facts found at run time); {} when unreadable."""


@dataclass
class Report:
    """Everything report.md says, as numbers."""

    metric: str
    metric_reason: str
    curve_metric: str | None
    labels: list[str]
    scores: dict[str, np.ndarray]
    """label -> the runs' final values, (runs x 1): one task, as rliable expects."""
    planned: dict[str, int]
    estimates: dict[str, dict[str, list[float]]]
    """label -> {"mean": [point, low, high], "iqm": [...]}."""
    improvement: dict[tuple[str, str], list[float]]
    """(x, y) -> [P(x better than y), low, high]."""
    left_out: list[str]
    machines: dict[str, list[str]] = field(default_factory=dict)
    """machine kind -> the tabled runs that ran (partly) on it."""
    files: list[Path] = field(default_factory=list)
    evidence: Evidence | None = None
    """How each finished run entered the tables (diverged, short, unreadable lines)."""
    runs: dict[str, list[RunResult]] = field(default_factory=dict)
    """label -> its planned runs, for the runs column."""


# ----- reading the runs ---------------------------------------------------------------------


def read_records(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl as records, for the curves; the final values name what was unreadable."""
    return read_metrics(path)[0]


def config_label(config: dict[str, str], sweep_name: str) -> str:
    """A configuration's grid values; a sweep without a grid has one, named by its directory."""
    return ", ".join(f"{k}={v}" for k, v in config.items()) or sweep_name


def run_config(run_dir: Path) -> dict[str, Any]:
    """A run's config.json; {} when it is missing or unreadable (a run that never started)."""
    try:
        return json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def machines_of(config: dict[str, Any]) -> list[str]:
    """The machine kinds a run's config records (training.machine.machine_kind): where it
    began, then where each resume went on; [] when it records none."""
    records = [config.get("machine")] + [r.get("machine") for r in config.get("resumes", [])]
    kinds = [machine_kind(m) for m in records if isinstance(m, dict)]
    return list(dict.fromkeys(kinds))


def tabled_machines(tabled: list[RunResult]) -> dict[str, list[str]]:
    """machine kind -> the names of the tabled runs made (partly) on it."""
    found: dict[str, list[str]] = {}
    for run in tabled:
        for kind in machines_of(run.config) or [UNRECORDED]:
            found.setdefault(kind, []).append(run.name)
    return found


def run_status(run_dir: Path, planned: str) -> str:
    """"finished" only when its outcome.json says so; else what that says, else the sweep's
    word (a manifest's "finished" without an outcome.json is not taken on trust)."""
    if run_finished(run_dir):
        return "finished"
    outcome = read_outcome(run_dir)
    if outcome is not None:
        return outcome.status
    return "no outcome.json" if planned == "finished" else planned


def load_runs(root: Path) -> tuple[dict[str, Any], list[RunResult]]:
    """The manifest and every planned run, finished or not."""
    path = root / "sweep.json"
    if not path.is_file():
        raise FileNotFoundError(f"no sweep.json in {root}; name a directory written by "
                                f"python -m training.sweep")
    manifest = json.loads(path.read_text())
    runs = []
    sweep_name = root.resolve().name
    for name, info in manifest["runs"].items():
        run_dir = root / info["dir"]
        status = run_status(run_dir, info.get("status", "pending"))
        run = RunResult(name, config_label(info["config"], sweep_name), run_dir, status,
                        config=run_config(run_dir))
        if status == "finished":
            final = read_final(run_dir)
            run.final, run.steps, run.unreadable = final.values, final.steps, final.unreadable
        runs.append(run)
    return manifest, runs


def choose_metric(runs: list[RunResult], asked: str | None) -> tuple[str, str]:
    """The metric and why it was chosen."""
    if asked:
        return asked, "--metric"
    present = {k for r in runs for k in r.final}
    for pattern in HEADLINE:
        found = sorted(k for k in present if re.fullmatch(pattern, k))
        if found:  # of several eval/return_last_N_episodes, the one most runs have
            key = max(found, key=lambda k: sum(k in r.final for r in runs))
            return key, ("default: the first present of eval/success_rate, "
                         "eval/return_last_N_episodes, eval/return")
    shown = ", ".join(sorted(k for k in present if k.startswith("eval/"))) or "none"
    raise ValueError(f"no headline metric in the finished runs (eval keys: {shown}); "
                     f"pass --metric")


def choose_curve_metric(runs: list[RunResult], metric: str, asked: str | None) -> str | None:
    """The learning-curve metric: asked for, or the metric's training counterpart."""
    if asked:
        return asked
    wanted = [v for k, v in CURVES.items() if k in metric] + [CURVE_FALLBACK]
    keys = set()
    for run in runs:
        for record in read_records(run.dir / "metrics.jsonl"):
            keys.update(record)
    return next((k for k in wanted if k in keys), None)


def group_scores(runs: list[RunResult], metric: str, evidence: Evidence | None = None
                 ) -> tuple[dict[str, np.ndarray], dict[str, int], list[str], list[RunResult]]:
    """label -> final scores (runs x 1), label -> planned runs, what was left out and why,
    and the runs in the tables (the machine list takes the same runs). `evidence` decides
    the diverged and short runs (default: report_evidence.assess's)."""
    evidence = evidence or assess(runs, metric)
    planned = {r.label: 0 for r in runs}
    found: dict[str, list[float]] = {label: [] for label in planned}
    left_out, tabled = [], []
    for run in runs:
        planned[run.label] += 1
        verdict = evidence.verdicts.get(run.name)
        if run.status != "finished":
            left_out.append(f"{run.name}: not finished ({run.status})")
        elif verdict is None:
            left_out.append(f"{run.name}: no finite {metric} in its final metrics")
        elif verdict.score is None:
            left_out.append(f"{run.name}: " + "; ".join(verdict.notes))
        else:
            found[run.label].append(verdict.score)
            tabled.append(run)
    for label, values in found.items():
        if len(values) < planned[label]:
            left_out.append(f"{label}: {len(values)} of {planned[label]} runs"
                            + (" (left out of the tables)" if not values else ""))
    scores = {k: np.array(v, dtype=np.float64)[:, None] for k, v in found.items() if v}
    return scores, planned, left_out, tabled


# ----- the statistics (rliable) ----------------------------------------------------------------


@contextlib.contextmanager
def bootstrap_warnings() -> Iterator[None]:
    """rliable 1.2 seeds arch's bootstrap with `random_state`, which arch 7 deprecates."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "random_state is deprecated", FutureWarning)
        yield


def mean_and_iqm(scores: np.ndarray) -> np.ndarray:
    """The two aggregates of the table, in one bootstrap."""
    from rliable import metrics

    return np.array([metrics.aggregate_mean(scores), metrics.aggregate_iqm(scores)])


def interval_estimates(scores: dict[str, np.ndarray], reps: int, seed: int
                       ) -> dict[str, dict[str, list[float]]]:
    """Mean and IQM with 95% stratified-bootstrap CIs per configuration."""
    from rliable import library as rly

    with bootstrap_warnings():
        points, intervals = rly.get_interval_estimates(
            scores, mean_and_iqm, reps=reps, random_state=np.random.RandomState(seed))
    return {label: {name: [float(points[label][i]), *map(float, intervals[label][:, i])]
                    for i, name in enumerate(("mean", "iqm"))} for label in scores}


def improvement_pairs(scores: dict[str, np.ndarray], higher_is_better: bool
                      ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every ordered pair of configurations, keyed "X vs Y", scores signed so higher is better."""
    sign = 1.0 if higher_is_better else -1.0
    return {f"{x} vs {y}": (sign * scores[x], sign * scores[y])
            for x in scores for y in scores if x != y}


def probability_of_improvement(scores: dict[str, np.ndarray], higher_is_better: bool,
                               reps: int, seed: int) -> dict[tuple[str, str], list[float]]:
    """P(a run of X beats a run of Y) for every ordered pair, with 95% CIs."""
    from rliable import library as rly
    from rliable import metrics

    pairs = improvement_pairs(scores, higher_is_better)
    if not pairs:
        return {}
    with bootstrap_warnings():
        points, intervals = rly.get_interval_estimates(
            pairs, metrics.probability_of_improvement, reps=reps,
            random_state=np.random.RandomState(seed))
    keys = [(x, y) for x in scores for y in scores if x != y]
    return {(x, y): [float(points[f"{x} vs {y}"]), *np.ravel(intervals[f"{x} vs {y}"]).tolist()]
            for x, y in keys}


def curve_scores(runs: list[RunResult], key: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """label -> (steps, values runs x 1 x steps) at the steps every run of it logged."""
    series: dict[str, list[dict[int, float]]] = {}
    for run in runs:
        points = {int(r["step"]): float(r[key])
                  for r in read_records(run.dir / "metrics.jsonl") if key in r}
        series.setdefault(run.label, []).append(points)
    out = {}
    for label, per_run in series.items():
        steps = sorted(set.intersection(*(set(p) for p in per_run)))
        if len(steps) < 2:
            continue
        keep = np.unique(np.linspace(0, len(steps) - 1, CURVE_POINTS).round().astype(int))
        steps = [steps[i] for i in keep]
        values = np.array([[[p[s] for s in steps]] for p in per_run], dtype=np.float64)
        out[label] = (np.array(steps), values)
    return out


# ----- writing ------------------------------------------------------------------------------------


def number(x: float) -> str:
    return f"{x:.3f}" if abs(x) < 1e4 else f"{x:.4g}"


def with_ci(values: list[float]) -> str:
    point, low, high = values
    return f"{number(point)} [{number(low)}, {number(high)}]"


def machines_markdown(machines: dict[str, list[str]]) -> list[str]:
    """Where the tabled runs ran; a warning when on more than one machine kind."""
    kinds = {k: v for k, v in machines.items() if k != UNRECORDED}
    unrecorded = machines.get(UNRECORDED, [])
    if len(kinds) > 1:
        lines = ["Machines: these runs ran on more than one machine kind. Runs repeat bit "
                 "for bit only on one kind (docs/reliability.md, determinism across "
                 "machines), so compare configurations run on one kind, or count the "
                 "machine as a source of variation:"]
        lines += [f"- {kind}: {len(names)} run(s): {', '.join(names)}"
                  for kind, names in kinds.items()]
    elif kinds:
        kind, names = next(iter(kinds.items()))
        lines = [f"Machine: {'every run' if not unrecorded else f'{len(names)} run(s)'} "
                 f"on {kind}."]
    else:
        lines = []
    if unrecorded:
        lines.append(f"Machine not recorded (runs made before runs recorded it) for "
                     f"{len(unrecorded)} run(s): {', '.join(unrecorded)}.")
    return lines


def runs_column(rep: Report, label: str) -> str:
    """"3/3", or with what its runs' records lack: "3/3, 1 diverged", "2/3 + 1 short"."""
    if rep.evidence is None:
        return f"{len(rep.scores[label])}/{rep.planned[label]}"
    return rep.evidence.runs_cell(rep.runs[label], rep.planned[label])


def markdown(rep: Report, manifest: dict[str, Any], cfg: ReportConfig) -> str:
    """report.md: what was measured, the table, P(X > Y), what was left out."""
    better = "higher" if cfg.higher_is_better else "lower"
    entry = Path(manifest["entry"]).name
    grid = ", ".join(manifest["grid"]) or "no grid"
    lines = [
        f"# {Path(cfg.sweep_dir).resolve().name}: {rep.metric}", "",
        f"{entry} over {grid}; seeds {', '.join(map(str, manifest['seeds']))}. Metric "
        f"`{rep.metric}` ({rep.metric_reason}), each finished run's final value; {better} is "
        f"better. 95% CIs: stratified bootstrap (rliable, {cfg.reps} resamples, seed "
        f"{cfg.seed}). IQM: the mean of the middle 50% of runs.", "",
        "| config | runs | mean [95% CI] | IQM [95% CI] |", "|---|---|---|---|",
    ]
    caption = rep.evidence.caption() if rep.evidence else []
    if caption:  # before the table: how to read its runs column
        lines[-2:-2] = [" ".join(caption), ""]
    for label in rep.labels:
        runs = runs_column(rep, label)
        est = rep.estimates[label]
        lines.append(f"| {label} | {runs} | {with_ci(est['mean'])} | {with_ci(est['iqm'])} |")
    if rep.improvement:
        lines += ["", f"P(X > Y): the probability that a run of configuration X (row) scores "
                  f"{'higher' if cfg.higher_is_better else 'lower'} than a run of Y (column), "
                  f"ties counting half (Mann-Whitney U / nm), with 95% CIs.", "",
                  "| P(X > Y) | " + " | ".join(rep.labels) + " |",
                  "|---" * (len(rep.labels) + 1) + "|"]
        for x in rep.labels:
            cells = ["—" if x == y else with_ci(rep.improvement[(x, y)]) for y in rep.labels]
            lines.append(f"| {x} | " + " | ".join(cells) + " |")
    if min(len(s) for s in rep.scores.values()) < 4:
        lines += ["", "Below 4 runs the IQM equals the mean: it trims floor(n/4) runs from "
                  "each end."]
    few = [label for label in rep.labels if len(rep.scores[label]) < 3]
    if few:
        lines += ["", f"Fewer than 3 runs in {', '.join(few)}: the intervals cannot support a "
                  f"claim; add seeds (python -m training.sweep ... --seeds 0 1 2 ...)."]
    caveats = rep.evidence.caveats() if rep.evidence else []
    if caveats:
        lines += ["", "In the tables, with a caveat:", *(f"- {item}" for item in caveats)]
    if rep.left_out:
        lines += ["", "Not in the tables:", *(f"- {item}" for item in rep.left_out)]
    lines += ["", *machines_markdown(rep.machines)]
    if rep.files:
        curve = (f"; learning curves of `{rep.curve_metric}` (mean over runs, shaded 95% "
                 f"bootstrap CI)" if rep.curve_metric else "")
        lines += ["", "Figures: " + ", ".join(f"`{f.name}`" for f in rep.files) + curve + "."]
    return "\n".join(lines) + "\n"


def plot_intervals(rep: Report, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from rliable import plot_utils

    points = {k: [v["mean"][0], v["iqm"][0]] for k, v in rep.estimates.items()}
    intervals = {k: np.array([v["mean"][1:], v["iqm"][1:]]).T for k, v in rep.estimates.items()}
    height = 0.6 * len(rep.labels)  # inches; the x label goes below the tick labels
    fig, _ = plot_utils.plot_interval_estimates(
        points, intervals, metric_names=["Mean", "IQM"], algorithms=rep.labels,
        xlabel=rep.metric, subfigure_width=4.0, row_height=0.6,
        xlabel_y_coordinate=0.11 - 0.6 / height)
    fig.savefig(path, bbox_inches="tight", dpi=120)
    plt.close(fig)
    return path


def plot_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], key: str, reps: int,
                seed: int, path: Path, xlabel: str = "step",
                references: dict[str, float] | None = None) -> Path:
    """Mean over runs per step with its bootstrap CI (one rliable bootstrap over all steps),
    and horizontal reference lines (e.g. optimal and random returns)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from rliable import library as rly

    with bootstrap_warnings():
        points, intervals = rly.get_interval_estimates(
            {k: v for k, (_, v) in curves.items()}, lambda s: s.mean(axis=(0, 1)), reps=reps,
            random_state=np.random.RandomState(seed))
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (steps, values) in curves.items():
        line = ax.plot(steps, points[label], label=f"{label} ({len(values)} runs)")[0]
        ax.fill_between(steps, intervals[label][0], intervals[label][1], alpha=0.25,
                        color=line.get_color())
    for (label, value), style in zip((references or {}).items(), ("--", ":", "-."), strict=False):
        ax.axhline(value, color="k", ls=style, lw=1, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(key)
    # Steps run to 10^5..10^7: "40k" keeps the tick labels apart on a 6-inch axis.
    ax.xaxis.set_major_formatter(
        plt.FuncFormatter(lambda x, _: f"{x / 1000:g}k" if abs(x) >= 1000 else f"{x:g}"))
    # Below the axes: sweep labels are long (the grid's flags) and would cover the curves.
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.15))
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def log_to_wandb(rep: Report, runs: list[RunResult], cfg: ReportConfig, name: str) -> None:
    """The table (a wandb.Table) and the figures (wandb.Image) in a run of job type report."""
    import wandb

    saved = next((r.config for r in runs if r.config), {}).get("wandb", {})
    run = wandb.init(project=cfg.wandb.project or saved.get("project") or "rlenc",
                     entity=cfg.wandb.entity or saved.get("entity"),
                     group=cfg.wandb.group or saved.get("group") or name,
                     name=f"{name}-report", job_type="report", mode=cfg.wandb.mode,
                     config={"metric": rep.metric, "reps": cfg.reps, "seed": cfg.seed,
                             "higher_is_better": cfg.higher_is_better})
    columns = ["config", "runs", "planned", "mean", "mean_low", "mean_high", "iqm", "iqm_low",
               "iqm_high"]
    rows = [[label, len(rep.scores[label]), rep.planned[label], *rep.estimates[label]["mean"],
             *rep.estimates[label]["iqm"]] for label in rep.labels]
    logged: dict[str, Any] = {"report/table": wandb.Table(columns=columns, data=rows)}
    logged.update({f"report/{f.stem}": wandb.Image(str(f)) for f in rep.files})
    run.log(logged)
    run.finish()


def report(cfg: ReportConfig) -> Report:
    """Read, aggregate, write report.md / report.json / PNGs (and log them)."""
    if cfg.reps < 1:
        raise ValueError(f"--reps={cfg.reps}: give at least 1 bootstrap resample")
    root = Path(cfg.sweep_dir).expanduser().resolve()
    manifest, runs = load_runs(root)
    metric, reason = choose_metric(runs, cfg.metric)
    evidence = assess(runs, metric, cfg.higher_is_better, cfg.diverged)
    scores, planned, left_out, included = group_scores(runs, metric, evidence)
    if not scores:
        raise ValueError(f"no finished run of {root} has {metric}; nothing to report "
                         f"({len(left_out)} left out: {'; '.join(left_out[:3])})")
    labels = list(scores)
    rep = Report(metric, reason, None, labels, scores, planned,
                 interval_estimates(scores, cfg.reps, cfg.seed),
                 probability_of_improvement(scores, cfg.higher_is_better, cfg.reps, cfg.seed),
                 left_out, tabled_machines(included), evidence=evidence,
                 runs={label: [r for r in runs if r.label == label] for label in labels})
    out = Path(cfg.out).expanduser() if cfg.out else root / "report"
    out.mkdir(parents=True, exist_ok=True)
    rep.files.append(plot_intervals(rep, out / "intervals.png"))
    # A diverged run's curve holds non-finite values, which would blank its configuration's.
    curved = [r for r in included if math.isfinite(r.final[metric])]
    rep.curve_metric = choose_curve_metric(curved, metric, cfg.curve_metric)
    if rep.curve_metric and len(curved) < len(included):
        rep.left_out.append("learning curves: without the runs that diverged")
    curves = curve_scores(curved, rep.curve_metric) if rep.curve_metric else {}
    if curves:
        rep.files.append(plot_curves(curves, rep.curve_metric, cfg.reps, cfg.seed,
                                     out / "curves.png"))
    elif rep.curve_metric:
        rep.left_out.append(f"learning curves: no configuration has {rep.curve_metric} at 2 "
                            f"or more steps common to its runs")
    (out / "report.md").write_text(markdown(rep, manifest, cfg))
    (out / "report.json").write_text(json.dumps(as_json(rep, cfg), indent=2) + "\n")
    if cfg.wandb.mode != "disabled":
        log_to_wandb(rep, runs, cfg, root.name)
    print(f"metric: {metric} ({reason})")
    print((out / "report.md").read_text(), end="")
    print(f"wrote {out / 'report.md'}, report.json, " + ", ".join(f.name for f in rep.files))
    return rep


def as_json(rep: Report, cfg: ReportConfig) -> dict[str, Any]:
    return {
        "metric": rep.metric, "metric_reason": rep.metric_reason,
        "higher_is_better": cfg.higher_is_better, "reps": cfg.reps, "seed": cfg.seed,
        "curve_metric": rep.curve_metric,
        "configs": [{"config": label, "runs": len(rep.scores[label]),
                     "planned": rep.planned[label], "runs_column": runs_column(rep, label),
                     "scores": rep.scores[label][:, 0].tolist(),
                     **rep.estimates[label]} for label in rep.labels],
        "probability_of_improvement": [{"x": x, "y": y, "p": v[0], "ci": v[1:]}
                                       for (x, y), v in rep.improvement.items()],
        "left_out": rep.left_out,
        "caveats": rep.evidence.caveats() if rep.evidence else [],
        "diverged": {"mode": cfg.diverged, "floor": rep.evidence.floor if rep.evidence else None},
        "machines": rep.machines,
    }


def main(argv: list[str] | None = None) -> Report:
    return report(parse_config(ReportConfig, sys.argv[1:] if argv is None else argv,
                               description=__doc__))


if __name__ == "__main__":
    run_main(main)
