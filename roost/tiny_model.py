"""Build a tiny chat model offline, for tests, benchmarks and the demo.

Our machines reach no model hub, so tests and the demo build their own model: a byte-level
BPE tokenizer trained on local text, a real chat template (ChatML/Qwen-style or
Llama-3-header-style) and a small Qwen2/Llama network. It is saved with `save_pretrained`,
so it loads through exactly the path a user's hub model takes.

By default the network is briefly trained on the shipped seed conversations so that it
learns the *turn structure* of its template (it ends a user turn with the end-of-turn
token), which is what Magpie relies on. Its words are still noise: it is a format
test-bed, not a language model.
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path

SEED_DATA = Path(__file__).resolve().parents[1] / "data" / "seed_conversations.jsonl"

CHATML_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message['role'] == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)

STYLES = {
    "chatml": {
        "architecture": "qwen2",
        "template": CHATML_TEMPLATE,
        "specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "bos": None,
        "eos": "<|im_end|>",
        "pad": "<|endoftext|>",
        "extra_eos": ["<|endoftext|>"],
    },
    "llama3": {
        "architecture": "llama",
        "template": LLAMA3_TEMPLATE,
        "specials": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                     "<|end_header_id|>", "<|eot_id|>"],
        "bos": "<|begin_of_text|>",
        "eos": "<|eot_id|>",
        "pad": "<|end_of_text|>",
        "extra_eos": ["<|end_of_text|>"],
    },
}


@dataclass(frozen=True)
class TinyModelSpec:
    style: str = "chatml"
    vocab_size: int = 1024
    hidden_size: int = 128
    intermediate_size: int = 256
    num_layers: int = 2
    num_heads: int = 2  # head_dim = hidden/heads must be >= 32 for vLLM's CPU attention
    num_kv_heads: int = 1
    max_position_embeddings: int = 2048
    train_steps: int = 150
    seed: int = 0
    dtype: str = "float32"


def load_seed_conversations(path: Path = SEED_DATA) -> list[list[dict]]:
    with open(path) as f:
        return [json.loads(line)["messages"] for line in f if line.strip()]


def build_tiny_model(out_dir: str | Path, spec: TinyModelSpec = TinyModelSpec()) -> Path:
    """Build (or reuse, if already built with the same spec) a tiny model at `out_dir`."""
    out = Path(out_dir)
    stamp = out / "roost_tiny_spec.json"
    if stamp.exists() and json.loads(stamp.read_text()) == asdict(spec):
        return out
    if spec.hidden_size // spec.num_heads < 32:
        raise ValueError("head_dim must be >= 32 (vLLM CPU attention)")
    if spec.style not in STYLES:
        raise ValueError(f"style must be one of {sorted(STYLES)}")
    out.mkdir(parents=True, exist_ok=True)
    conversations = load_seed_conversations()
    tokenizer = _train_tokenizer(spec, conversations)
    model = _build_network(spec, tokenizer)
    if spec.train_steps:
        _learn_turn_structure(model, tokenizer, conversations, spec)
    _save(model, tokenizer, spec, out)
    stamp.write_text(json.dumps(asdict(spec), indent=2))
    return out


def _train_tokenizer(spec: TinyModelSpec, conversations: list[list[dict]]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    style = STYLES[spec.style]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=style["specials"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [m["content"] for conv in conversations for m in conv]
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=style["bos"],
        eos_token=style["eos"],
        pad_token=style["pad"],
    )
    fast.chat_template = style["template"]
    return fast


def _build_network(spec: TinyModelSpec, tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(spec.seed)
    style = STYLES[spec.style]
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=False,
        eos_token_id=[tokenizer.convert_tokens_to_ids(t) for t in [style["eos"], *style["extra_eos"]]],
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    if style["architecture"] == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**common)).float()
    return LlamaForCausalLM(LlamaConfig(**common)).float()


def _learn_turn_structure(model, tokenizer, conversations, spec: TinyModelSpec) -> None:
    """A few hundred optimizer steps on the seed chats: enough to learn where turns end."""
    import torch

    rng = random.Random(spec.seed)
    texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"][:256] for t in texts]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    batch_size = 16
    for step in range(spec.train_steps):
        batch = rng.sample(encoded, batch_size)
        width = max(map(len, batch))
        ids = torch.full((batch_size, width), tokenizer.pad_token_id)
        labels = torch.full((batch_size, width), -100)
        mask = torch.zeros((batch_size, width), dtype=torch.long)
        for i, seq in enumerate(batch):
            ids[i, : len(seq)] = torch.tensor(seq)
            labels[i, : len(seq)] = torch.tensor(seq)
            mask[i, : len(seq)] = 1
        lr = 3e-3 * 0.5 * (1 + math.cos(math.pi * step / spec.train_steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def _save(model, tokenizer, spec: TinyModelSpec, out: Path) -> None:
    import torch
    from transformers import GenerationConfig

    dtype = getattr(torch, spec.dtype)
    model.to(dtype)
    model.config.torch_dtype = dtype
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    style = STYLES[spec.style]
    GenerationConfig(
        eos_token_id=[tokenizer.convert_tokens_to_ids(t) for t in [style["eos"], *style["extra_eos"]]],
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    ).save_pretrained(out)
