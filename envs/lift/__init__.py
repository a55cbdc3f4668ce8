"""robosuite Lift from robomimic image demos (one package per environment).

    env.py         LiftEnv (robosuite built from robomimic env_args), select_gl_backend,
                   CAMERAS / IMAGE_SIZE / LOWDIM_KEYS / HORIZON_PH / HORIZON_MH;
                   `python -m envs.lift.env benchmark`
    demos.py       scripted demonstrations and image rendering of robomimic files;
                   `python -m envs.lift.demos generate|render`
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
    "demos": ("Operator", "make_operators", "ScriptedLiftPolicy", "RobomimicWriter", "generate",
              "render"),
    "dataset": (
        "IMAGE_KEYS", "env_action_dim", "check_dataset", "process_obs", "LiftData",
        "default_dataset", "make_data",
    ),
    "evaluation": ("EpisodeRunner", "LiftEvaluator", "make_evaluator"),
})
