"""Agents by name: a plain table of (config class, agent class)."""
