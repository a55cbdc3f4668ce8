"""robosuite Lift from robomimic image demos (one package per environment).

    env.py         LiftEnv (robosuite built from robomimic env_args), select_gl_backend,
                   CAMERAS / IMAGE_SIZE / LOWDIM_KEYS / HORIZON_PH / HORIZON_MH;
                   `python -m envs.lift.env benchmark`
    env_args.py    normalize_env_args: robomimic env_args of robosuite 1.4 or 1.5 files
                   for the installed robosuite
    scripted.py    the scripted operators (Operator, presets ph / mh / small) and
                   ScriptedLiftPolicy
    demos.py       scripted demonstrations and image rendering of robomimic files;
                   `python -m envs.lift.demos generate|measure|render`
    dataset.py     check_dataset, LiftData and make_data (train_bc.py's data)
    evaluation.py  EpisodeRunner, rollout workers, LiftEvaluator and make_evaluator
                   (train_bc.py's evaluation)

The main names are re-exported here; each module is imported when one of its names is
first used (envs/_lazy.py), so `import envs.lift` loads neither robosuite, robomimic nor
h5py (LiftEnv imports robosuite only when made).
"""

from envs._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "env": (
        "CAMERAS", "IMAGE_SIZE", "LOWDIM_KEYS", "HORIZON_PH", "HORIZON_MH", "LiftEnv",
        "default_env_args", "select_gl_backend",
    ),
    "env_args": ("normalize_env_args",),
    "scripted": ("Operator", "PRESETS", "make_operators", "ScriptedLiftPolicy"),
    "demos": ("RobomimicWriter", "generate", "render"),
    "dataset": (
        "IMAGE_KEYS", "env_action_dim", "check_dataset", "process_obs", "LiftData",
        "default_dataset", "make_data",
    ),
    "evaluation": ("EpisodeRunner", "LiftEvaluator", "make_evaluator"),
})
