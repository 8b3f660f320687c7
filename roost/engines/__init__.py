"""Engines: the one interface to a model (see base.Engine). Configs are plain data
(config.py); the modules that import vLLM or torch load only when an engine is built."""
from roost.engines.base import Completion, Engine, Generation, Sampling, release_registered, render_chat
from roost.engines.config import EngineConfig, RewardModelConfig, ServerConfig, ensure_available


def get_engine(config: EngineConfig):
    """The process-wide generative engine for this model (built once, then reused): in this
    process, or on the vLLM server `config.server` names (roost.engines.server_engine)."""
    ensure_available(config.model, config.revision)  # a server engine tokenizes here too
    if config.server is not None:
        from roost.engines.server_engine import get_server_engine

        return get_server_engine(config)
    from roost.engines.vllm_engine import get_engine as get_vllm_engine

    return get_vllm_engine(config)


def release_all() -> None:
    """Drop every model this process holds (generative engines, scoring and reward backends,
    and the synthesizers that reach them), so their memory goes back before another program
    (a training step) needs it. The next use loads them again."""
    import gc
    import sys

    release_registered()
    gc.collect()
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


__all__ = ["Completion", "Engine", "EngineConfig", "Generation", "RewardModelConfig", "Sampling", "ServerConfig",
           "ensure_available", "get_engine", "release_all", "render_chat"]
