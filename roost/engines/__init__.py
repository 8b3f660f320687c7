"""Engines: the one interface to a model (see base.Engine). Configs are plain data
(config.py); the modules that import vLLM or torch load only when an engine is built."""
from roost.engines.base import Completion, Engine, Generation, Sampling, render_chat
from roost.engines.config import EngineConfig, RewardModelConfig, ensure_available


def get_engine(config: EngineConfig):
    """The process-wide generative engine for this model (built once, then reused)."""
    from roost.engines.vllm_engine import get_engine as get_vllm_engine

    ensure_available(config.model, config.revision)
    return get_vllm_engine(config)


__all__ = ["Completion", "Engine", "EngineConfig", "Generation", "RewardModelConfig", "Sampling",
           "ensure_available", "get_engine", "render_chat"]
