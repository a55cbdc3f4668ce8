"""Agents by name: a plain table of (config class, agent class)."""

from __future__ import annotations

from pathlib import Path

from agents.ad import ADAgent, ADConfig
from agents.compressed_ad import (
    CompressedADAgent,
    CompressedADConfig,
    CompressedADPretrainAgent,
    CompressedADPretrainConfig,
)
from agents.fbc import FBCAgent, FBCConfig

AGENTS: dict[str, tuple[type, type]] = {
    "fbc": (FBCConfig, FBCAgent),
    "ad": (ADConfig, ADAgent),
    "compressed_ad_pretrain": (CompressedADPretrainConfig, CompressedADPretrainAgent),
    "compressed_ad": (CompressedADConfig, CompressedADAgent),
}


def agent_name(spec: str) -> str:
    """`fbc`, or the seeds' `agents/fbc.py` form, as a registry name."""
    path = Path(spec)
    return path.stem if path.suffix == ".py" else spec


def get_agent(spec: str) -> tuple[type, type]:
    """(Config class, Agent class) for a name, failing with the list of known names."""
    name = agent_name(spec)
    try:
        return AGENTS[name]
    except KeyError:
        raise ValueError(f"unknown agent {spec!r}; known: {', '.join(sorted(AGENTS))}") from None
