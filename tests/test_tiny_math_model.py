"""The tiny math model (roost.tiny.math_model): real vLLM sampling on shipped problems gets
some right and some wrong, in the step format, which is what Step-DPO needs of a policy."""
from __future__ import annotations

import pytest

from roost.engines import Sampling

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def math_engine(tiny_math_path):
    from roost.engines import EngineConfig, get_engine

    return get_engine(EngineConfig(model=str(tiny_math_path), max_model_len=1024, seed=0))


def test_build_is_reused(tiny_math_path):
    import json

    from transformers import AutoTokenizer

    from roost.tiny.math_model import TinyMathSpec, build_tiny_math_model

    stamp = tiny_math_path / "roost_tiny_spec.json"
    before = stamp.stat().st_mtime_ns
    assert build_tiny_math_model(tiny_math_path, TinyMathSpec()) == tiny_math_path
    assert stamp.stat().st_mtime_ns == before  # same spec: nothing rebuilt
    assert json.loads(stamp.read_text())["tiny_math"] is True
    im_end = AutoTokenizer.from_pretrained(tiny_math_path).convert_tokens_to_ids("<|im_end|>")
    assert json.loads((tiny_math_path / "generation_config.json").read_text())["eos_token_id"][0] == im_end


def test_solves_some_shipped_problems_not_all(math_engine):
    from roost.tiny.math_model import load_shipped_problems, measure

    problems = load_shipped_problems(100)
    report = measure(math_engine, problems, Sampling(max_tokens=160, temperature=0.8, top_p=0.95), seed=0)
    summary = {k: v for k, v in report.items() if k != "texts"} | {"first": report["texts"][:3]}
    # useless (< 0.15) or trivial (> 0.9) would starve Step-DPO of wrong or of right solutions
    # (measured 0.66 here; 0.63 on 300 problems)
    assert 0.15 <= report["accuracy"] <= 0.9, summary
    assert report["step_format"] >= 0.9, summary  # "Step 2:" and a \boxed{} in (nearly) every completion
    assert report["finished"] >= 0.9, summary  # ends its turn instead of running to max_tokens
