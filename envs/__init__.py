"""Environments and the tasks built on them: one package per environment.

    durotaxis/   cells climbing a stiffness gradient (PPO, train_ppo.py)
    darkroom/    Dark Room gridworlds and their learning histories (AD, train_bc.py)
    lift/        robosuite Lift from robomimic image demos (flow BC, train_bc.py)
    bc_tasks.py  the task table of train_bc.py: each task's data and evaluation

Each package keeps its simulator, its data and its evaluation in separate modules.
Importing this package registers the Gymnasium ids below. Entry points are strings so
that registering costs nothing until an environment is made.
"""

import gymnasium

_DUROTAXIS = "envs.durotaxis.gymnasium_env"
_DARKROOM = "envs.darkroom.env"
_REGISTRATIONS = {
    "Durotaxis-v0": (f"{_DUROTAXIS}:DurotaxisEnv", f"{_DUROTAXIS}:DurotaxisVectorEnv"),
    "Darkroom-v0": (f"{_DARKROOM}:DarkroomEnv", f"{_DARKROOM}:DarkroomVectorEnv"),
    "DarkroomHard-v0": (f"{_DARKROOM}:DarkroomHardEnv", f"{_DARKROOM}:DarkroomHardVectorEnv"),
    "DarkKeyToDoor-v0": (f"{_DARKROOM}:DarkKeyToDoorEnv", f"{_DARKROOM}:DarkKeyToDoorVectorEnv"),
}

for _env_id, (_entry, _vector_entry) in _REGISTRATIONS.items():
    if _env_id not in gymnasium.registry:
        gymnasium.register(id=_env_id, entry_point=_entry, vector_entry_point=_vector_entry)
