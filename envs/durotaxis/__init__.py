"""Durotaxis: a cluster of cells migrating on a stiffness landscape (one package per env).

    config.py         DurotaxisConfig and its presets (easy, standard, hard), the action kinds
    engine.py         DurotaxisEngine (the engines' contract), make_engine (the preset's)
    frame_stack.py    FrameStack: any engine with its last K frames as the observation
    cluster.py        CellClusters: what both engines share (episodes, cells, actions, state)
    core.py           the hashing RNG, DurotaxisCore (the easy engine)
    migration.py      MigrationCore (the standard and hard engine)
    gymnasium_env.py  DurotaxisEnv and DurotaxisVectorEnv (Gymnasium API, Durotaxis-v0)
    baselines.py      random, blind, image read-out and privileged policies; their command line
    evaluation.py     run_episodes, greedy_policy, baselines_on_evaluation_seeds
    rendering.py      episode_frame, render_episode (GIF), plot_learning_curve

The main names are re-exported here; each module is imported when one of its names is
first used (envs/_lazy.py).
"""

from envs._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "config": (
        "SPAWN", "DELETE", "HOLD", "KIND_NAMES", "PARAM_NAMES", "PARAM_LOW", "PARAM_HIGH",
        "PARAMS_USED", "FAIL_NONE", "FAIL_NO_CELLS", "FAIL_TOO_MANY", "FAIL_OUT_OF_BOUNDS",
        "DurotaxisConfig", "PRESETS",
    ),
    "engine": ("DurotaxisEngine", "make_engine"),
    "core": ("DurotaxisCore", "hash_uniform"),
    "migration": ("MigrationCore",),
    "frame_stack": ("FrameStack",),
    "gymnasium_env": ("DurotaxisEnv", "DurotaxisVectorEnv"),
    "baselines": ("random_policy", "blind_policy", "readout_policy", "privileged_policy",
                  "heuristic_policy"),
    "evaluation": ("run_episodes", "greedy_policy"),
    "rendering": ("episode_frame", "render_episode", "plot_learning_curve"),
})
