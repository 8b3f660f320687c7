"""Engines: the one interface to a model (see base.Engine)."""
from roost.engines.base import Completion, Engine, Generation, Sampling, render_chat
from roost.engines.vllm_engine import EngineConfig, get_engine

__all__ = ["Completion", "Engine", "EngineConfig", "Generation", "Sampling", "get_engine", "render_chat"]
