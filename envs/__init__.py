"""Environments and the tasks built on them.

Importing this package registers the Gymnasium ids below. Entry points are strings so
that registering costs nothing until an environment is made.
"""

import gymnasium

_REGISTRATIONS = {
    "Durotaxis-v0": ("envs.durotaxis:DurotaxisEnv", "envs.durotaxis:DurotaxisVectorEnv"),
    "Darkroom-v0": ("envs.darkroom:DarkroomEnv", "envs.darkroom:DarkroomVectorEnv"),
    "DarkroomHard-v0": ("envs.darkroom:DarkroomHardEnv", "envs.darkroom:DarkroomHardVectorEnv"),
    "DarkKeyToDoor-v0": ("envs.darkroom:DarkKeyToDoorEnv", "envs.darkroom:DarkKeyToDoorVectorEnv"),
}

for _env_id, (_entry, _vector_entry) in _REGISTRATIONS.items():
    if _env_id not in gymnasium.registry:
        gymnasium.register(id=_env_id, entry_point=_entry, vector_entry_point=_vector_entry)
