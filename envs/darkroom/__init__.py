"""Dark Room gridworlds for in-context RL (one package per environment).

    grids.py       GridSpec and the variants, task splits, oracle_action, exact optimal
                   and random returns (the task geometry)
    env.py         DarkroomBatch (batched torch simulator) and the Gymnasium envs
    histories.py   learning histories of batched Q-learners: generate, save, load, plot;
                   `python -m envs.darkroom.histories`
    dataset.py     DarkroomHistoryData and make_data (train_bc.py's data)
    evaluation.py  InContextEvaluator and make_evaluator (train_bc.py's evaluation)
    compare.py     `python -m envs.darkroom.compare`: several runs' return curves, one plot

The main names are re-exported here; each module is imported when one of its names is
first used (envs/_lazy.py).
"""

from envs._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "grids": (
        "NUM_ACTIONS", "ACTION_NAMES", "MOVES", "NOOP", "GridSpec", "DARKROOM", "DARKROOM_HARD",
        "DARK_KEY_TO_DOOR", "GRIDS", "TEST_TASKS", "VALID_TASKS", "SPLITS", "get_grid",
        "grid_cells", "all_tasks", "task_split", "held_out_mask", "oracle_action",
        "optimal_returns", "random_returns",
    ),
    "env": (
        "DarkroomBatch", "DarkroomEnv", "DarkroomHardEnv", "DarkKeyToDoorEnv",
        "DarkroomVectorEnv", "DarkroomHardVectorEnv", "DarkKeyToDoorVectorEnv",
    ),
    "histories": (
        "QLearningConfig", "HistoriesConfig", "Histories", "default_config",
        "generate_histories", "save_histories", "load_histories", "plot_history_returns",
    ),
    "dataset": ("DarkroomHistoryData", "make_data"),
    "evaluation": ("InContextEvaluator", "make_evaluator"),
})
