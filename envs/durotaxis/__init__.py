"""Durotaxis: a cluster of cells climbing a stiffness gradient (one package per environment).

    config.py         DurotaxisConfig, the action space (kinds, parameter bounds)
    core.py           the hashing RNG, DurotaxisCore (the batched engine)
    gymnasium_env.py  DurotaxisEnv and DurotaxisVectorEnv (Gymnasium API, Durotaxis-v0)
    baselines.py      random_policy (floor), heuristic_policy (ceiling); their command line
    evaluation.py     run_episodes, greedy_policy
    rendering.py      episode_frame, render_episode (GIF), plot_learning_curve

The main names are re-exported here; each module is imported when one of its names is
first used (envs/_lazy.py).
"""

from envs._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "config": (
        "SPAWN", "DELETE", "HOLD", "KIND_NAMES", "PARAM_NAMES", "PARAM_LOW", "PARAM_HIGH",
        "PARAMS_USED", "FAIL_NONE", "FAIL_NO_CELLS", "FAIL_TOO_MANY", "FAIL_OUT_OF_BOUNDS",
        "DurotaxisConfig",
    ),
    "core": ("DurotaxisCore", "hash_uniform"),
    "gymnasium_env": ("DurotaxisEnv", "DurotaxisVectorEnv"),
    "baselines": ("random_policy", "heuristic_policy"),
    "evaluation": ("run_episodes", "greedy_policy"),
    "rendering": ("episode_frame", "render_episode", "plot_learning_curve"),
})
