"""Shared fixtures: tiny models built offline, and real vLLM engines over them.

Engines are session-scoped and cached per process by `get_engine`, so every test that asks
for the ChatML engine shares one (engine start is ~20 s on these CPUs).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def pytest_configure(config):
    # Prefect's console log handler binds to the sys.stderr it first sees. Set it up now, on
    # pytest's stream, not inside a CliRunner invocation whose stream is closed afterwards.
    from prefect.logging.configuration import setup_logging

    setup_logging()

MODEL_CACHE = Path(os.environ.get("ROOST_TEST_MODELS", Path(__file__).resolve().parents[1] / ".cache" / "test-models"))


@pytest.fixture(scope="session")
def tiny_chatml_path() -> Path:
    from roost.tiny.models import TinyModelSpec, build_tiny_model

    return build_tiny_model(MODEL_CACHE / "tiny-chatml", TinyModelSpec(style="chatml"))


@pytest.fixture(scope="session")
def tiny_llama3_path() -> Path:
    from roost.tiny.models import TinyModelSpec, build_tiny_model

    return build_tiny_model(MODEL_CACHE / "tiny-llama3", TinyModelSpec(style="llama3"))


@pytest.fixture(scope="session")
def chatml_engine(tiny_chatml_path):
    from roost.engines import EngineConfig, get_engine

    return get_engine(EngineConfig(model=str(tiny_chatml_path), max_model_len=1024, seed=0))


@pytest.fixture(scope="session")
def llama3_engine(tiny_llama3_path):
    from roost.engines import EngineConfig, get_engine

    return get_engine(EngineConfig(model=str(tiny_llama3_path), max_model_len=1024, seed=0))


def pytest_sessionfinish(session, exitstatus):
    # vLLM's atexit shutdown logs after pytest has closed its capture streams; those
    # "--- Logging error ---" tracebacks are noise, not failures.
    import logging

    logging.raiseExceptions = False


# -- reward models and the transformers scoring backend (tests/test_reward.py, test_deita.py) --

@pytest.fixture(scope="session")
def tiny_rm_chatml_path() -> Path:
    """Qwen2ForSequenceClassification, one output, trained briefly to prefer seed responses."""
    from roost.tiny.models import TinyRewardSpec, build_tiny_reward_model

    return build_tiny_reward_model(MODEL_CACHE / "tiny-rm-chatml", TinyRewardSpec())


@pytest.fixture(scope="session")
def tiny_rm3_llama3_path() -> Path:
    """LlamaForSequenceClassification with three outputs (a BOS-carrying Llama-3 template)."""
    from roost.tiny.models import TinyRewardSpec, build_tiny_reward_model

    return build_tiny_reward_model(MODEL_CACHE / "tiny-rm3-llama3",
                                   TinyRewardSpec(style="llama3", num_labels=3, train_steps=0))


@pytest.fixture(scope="session")
def tiny_armo_path() -> Path:
    """ArmoRM-like custom code (auto_map + trust_remote_code), four objectives, Llama-3 template."""
    from roost.tiny.models import TinyRewardSpec, build_tiny_reward_model

    return build_tiny_reward_model(MODEL_CACHE / "tiny-armo-llama3",
                                   TinyRewardSpec(kind="armo", style="llama3", train_steps=0))


@pytest.fixture(scope="session")
def rm3_vllm_scorer(tiny_rm3_llama3_path):
    """The three-output RM on vLLM's pooling runner, float32 (one engine for the session)."""
    from roost.engines import RewardModelConfig
    from roost.scorers.reward import get_reward_scorer

    return get_reward_scorer(RewardModelConfig(model=str(tiny_rm3_llama3_path), backend="vllm",
                                               max_model_len=512))


@pytest.fixture(scope="session")
def chatml_hf_scoring_engine(tiny_chatml_path):
    from roost.engines import EngineConfig
    from roost.engines.hf_scoring import get_scoring_engine

    return get_scoring_engine(EngineConfig(model=str(tiny_chatml_path), dtype="float32", max_model_len=1024, seed=0),
                              backend="transformers")


@pytest.fixture(scope="session")
def llama3_hf_scoring_engine(tiny_llama3_path):
    from roost.engines import EngineConfig
    from roost.engines.hf_scoring import get_scoring_engine

    return get_scoring_engine(EngineConfig(model=str(tiny_llama3_path), dtype="float32", max_model_len=1024, seed=0),
                              backend="transformers")


@pytest.fixture(scope="session")
def tiny_math_path() -> Path:
    """A Qwen2 chat model trained ~2.5 CPU minutes on worked arithmetic solutions: it solves
    some shipped problems and gets others wrong (roost.tiny.math_model)."""
    from roost.tiny.math_model import TinyMathSpec, build_tiny_math_model

    return build_tiny_math_model(MODEL_CACHE / "tiny-math", TinyMathSpec())
