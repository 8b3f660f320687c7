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

SEED_DATA = Path(__file__).resolve().parents[2] / "data" / "seed_conversations.jsonl"

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
    common = _trunk_config(spec, tokenizer,
                           [tokenizer.convert_tokens_to_ids(t) for t in [style["eos"], *style["extra_eos"]]])
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


# ---------------------------------------------------------------------------------------
# Tiny reward models
# ---------------------------------------------------------------------------------------
#
# Two kinds, built from the same tokenizer and chat template as the tiny chat model (so a
# conversation renders exactly as it would for the chat model of the same style):
# - "classifier": a standard `Qwen2ForSequenceClassification` (chatml) or
#   `LlamaForSequenceClassification` (llama3), `num_labels` outputs, what TRL's RewardTrainer,
#   Skywork-Reward and vLLM's pooling runner use;
# - "armo": an ArmoRM-like custom architecture (`LlamaForRewardModelWithGating`): a Llama
#   trunk, a regression layer with one output per objective, a gating MLP on the hidden
#   state of the prompt's last token, and `.score` = sum(gate * rewards). Its modeling code is
#   written into the model directory and found through `auto_map`, so it loads only with
#   `AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True)`,
#   exactly like RLHFlow/ArmoRM-Llama3-8B-v0.1. vLLM does not support it (nor the real one).
#
# A few seconds of Bradley-Terry training make the model prefer a seed conversation over the
# same conversation with the response's words shuffled, so demo rewards are not pure noise.

ARMO_MODELING_FILE = "modeling_tiny_armo.py"

ARMO_MODELING_SOURCE = '''\
"""A tiny ArmoRM-like reward model (custom code, loaded with trust_remote_code=True).

Mirrors RLHFlow/ArmoRM-Llama3-8B-v0.1's `modeling_custom.LlamaForRewardModelWithGating`:
per-objective rewards from the hidden state of the last token (found, as ArmoRM does, as the
position before the first pad token), a gating network on the hidden state of the prompt's
last token (found by searching for the last assistant-turn header), and
score = sum(gate * rewards @ reward_transform_matrix). Written by roost.tiny.models.
"""
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.llama.modeling_llama import LlamaModel, LlamaPreTrainedModel
from transformers.utils import ModelOutput


class GatingNetwork(nn.Module):
    def __init__(self, in_features, out_features, temperature=10.0, logit_scale=1.0,
                 hidden_dim=64, n_hidden=2):
        super().__init__()
        self.temperature = temperature
        self.logit_scale = nn.Parameter(torch.ones(1) * logit_scale)
        layers = []
        for _ in range(n_hidden):
            layers.append(nn.Linear(in_features, hidden_dim))
            in_features = hidden_dim
        layers.append(nn.Linear(in_features, out_features))
        self.layers = nn.ModuleList(layers)

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        x = F.softmax(x / self.temperature, dim=1)
        return x * self.logit_scale[0]


def find_token_for_gating(ids, pattern):
    """Index of the last occurrence of `pattern` (the assistant-turn header) in `ids`."""
    n = len(pattern)
    for i in range(len(ids) - n, -1, -1):
        if ids[i:i + n] == pattern:
            return i
    raise ValueError("Token pattern not found in the list.")


@dataclass
class CustomOutput(ModelOutput):
    rewards: Optional[torch.FloatTensor] = None
    hidden_state: Optional[torch.FloatTensor] = None
    prompt_embedding: Optional[torch.FloatTensor] = None
    gating_output: Optional[torch.FloatTensor] = None
    score: Optional[torch.FloatTensor] = None


class LlamaForRewardModelWithGating(LlamaPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.num_objectives = config.num_objectives
        self.model = LlamaModel(config)
        self.regression_layer = nn.Linear(config.hidden_size, self.num_objectives, bias=False)
        self.gating = GatingNetwork(config.hidden_size, self.num_objectives,
                                    temperature=config.gating_temperature,
                                    hidden_dim=config.gating_hidden_dim,
                                    n_hidden=config.gating_n_hidden)
        self.reward_transform_matrix = nn.Parameter(torch.eye(self.num_objectives), requires_grad=False)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=False, **kwargs):
        out = self.model(input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=False)
        tokens_hidden_states = out[0]
        batch_size, seq_len = input_ids.shape[:2]
        # ArmoRM: the position before the first pad token (modulo: no pad -> the last token).
        sequence_lengths = torch.eq(input_ids, self.config.pad_token_id).int().argmax(-1) - 1
        sequence_lengths = sequence_lengths % seq_len
        rows = torch.arange(batch_size, device=tokens_hidden_states.device)
        hidden_states = tokens_hidden_states[rows, sequence_lengths]
        rewards = self.regression_layer(hidden_states)
        pattern = list(self.config.gating_token_pattern)
        gating_positions = [find_token_for_gating(ids.tolist(), pattern) for ids in input_ids]
        prompt_embedding = tokens_hidden_states[rows, gating_positions, :]
        gating_output = self.gating(prompt_embedding)
        rewards_adjusted = rewards @ self.reward_transform_matrix
        score = torch.sum(gating_output * rewards_adjusted, dim=1)
        return CustomOutput(rewards=rewards, hidden_state=hidden_states, prompt_embedding=prompt_embedding,
                            gating_output=gating_output, score=score)
'''

REWARD_KINDS = ("classifier", "armo")


@dataclass(frozen=True)
class TinyRewardSpec:
    kind: str = "classifier"  # "classifier" (standard *ForSequenceClassification) or "armo" (custom code)
    style: str = "chatml"  # chatml -> Qwen2 trunk, llama3 -> Llama trunk ("armo" is always a Llama trunk)
    num_labels: int = 1  # classifier outputs
    num_objectives: int = 4  # armo objectives
    vocab_size: int = 1024
    hidden_size: int = 128
    intermediate_size: int = 256
    num_layers: int = 2
    num_heads: int = 2  # head_dim = hidden/heads must be >= 32 for vLLM's CPU attention
    num_kv_heads: int = 1
    max_position_embeddings: int = 2048
    train_steps: int = 40  # Bradley-Terry steps (seed response preferred over shuffled words); 0: random head
    seed: int = 0
    dtype: str = "float32"


def build_tiny_reward_model(out_dir: str | Path, spec: TinyRewardSpec = TinyRewardSpec()) -> Path:
    """Build (or reuse, if already built with the same spec) a tiny reward model at `out_dir`.

    Loads with `AutoModelForSequenceClassification.from_pretrained(out_dir)` (kind "armo":
    with `trust_remote_code=True`); renders conversations with the tiny chat template of
    `spec.style`. Takes a few seconds (tokenizer training + `train_steps` optimizer steps).
    """
    out = Path(out_dir)
    stamp = out / "roost_tiny_spec.json"
    want = {**asdict(spec), "reward_model": True}
    if spec.kind == "armo":
        import hashlib

        want["modeling_sha256"] = hashlib.sha256(ARMO_MODELING_SOURCE.encode()).hexdigest()[:16]
    if stamp.exists() and json.loads(stamp.read_text()) == want:
        return out
    if spec.kind not in REWARD_KINDS:
        raise ValueError(f"kind must be one of {REWARD_KINDS}")
    if spec.hidden_size // spec.num_heads < 32:
        raise ValueError("head_dim must be >= 32 (vLLM CPU attention)")
    if spec.style not in STYLES:
        raise ValueError(f"style must be one of {sorted(STYLES)}")
    if spec.num_labels < 1 or spec.num_objectives < 1:
        raise ValueError("num_labels and num_objectives must be >= 1")
    out.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    conversations = load_seed_conversations()
    chat_spec = TinyModelSpec(style=spec.style, vocab_size=spec.vocab_size)
    tokenizer = _train_tokenizer(chat_spec, conversations)
    if spec.kind == "armo":
        model = _build_armo_network(spec, tokenizer, out)
    else:
        model = _build_classifier_network(spec, tokenizer)
    if spec.train_steps:
        _learn_preferences(model, tokenizer, conversations, spec)
    import torch

    model.to(getattr(torch, spec.dtype))
    model.config.dtype = getattr(torch, spec.dtype)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if spec.kind == "armo":
        _finish_armo_config(out)
    stamp.write_text(json.dumps(want, indent=2))
    return out


def _reward_trunk_config(spec: TinyRewardSpec, tokenizer) -> dict:
    # pad_token_id matters here: batched scoring finds each row's last token by it
    return _trunk_config(spec, tokenizer, tokenizer.convert_tokens_to_ids(STYLES[spec.style]["eos"]))


def _trunk_config(spec, tokenizer, eos_token_id) -> dict:
    """The transformer trunk shared by the tiny chat and reward models (a TinyModelSpec or
    TinyRewardSpec: both carry these sizes)."""
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=False,
        eos_token_id=eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )


def _build_classifier_network(spec: TinyRewardSpec, tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification, Qwen2Config, Qwen2ForSequenceClassification

    torch.manual_seed(spec.seed)
    common = {**_reward_trunk_config(spec, tokenizer), "num_labels": spec.num_labels}
    if STYLES[spec.style]["architecture"] == "qwen2":
        return Qwen2ForSequenceClassification(Qwen2Config(**common)).float().eval()
    return LlamaForSequenceClassification(LlamaConfig(**common)).float().eval()


def _gating_pattern(tokenizer) -> list[int]:
    """Token ids that open the last assistant turn (ArmoRM searches for this to gate on)."""
    probe = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    with_reply = tokenizer.apply_chat_template(probe, tokenize=False)
    prompt = tokenizer.apply_chat_template(probe[:1], tokenize=False, add_generation_prompt=True)
    user_only = tokenizer.apply_chat_template(probe[:1], tokenize=False)
    assert with_reply.startswith(prompt) and prompt.startswith(user_only.rstrip("\n"))
    # From the end-of-turn token of the user message to the end of the assistant header.
    header = prompt[len(user_only.rstrip("\n")) - len(tokenizer.eos_token):]
    return list(tokenizer(header, add_special_tokens=False)["input_ids"])


def _armo_config_extras(spec: TinyRewardSpec, tokenizer) -> dict:
    return dict(
        architectures=["LlamaForRewardModelWithGating"],
        auto_map={"AutoModelForSequenceClassification": "modeling_tiny_armo.LlamaForRewardModelWithGating"},
        num_objectives=spec.num_objectives,
        gating_temperature=10.0,
        gating_hidden_dim=64,
        gating_n_hidden=2,
        gating_token_pattern=_gating_pattern(tokenizer),
    )


def _load_armo_class(out: Path):
    """Import the modeling file we just wrote, the way trust_remote_code would."""
    import importlib.util

    src = out / ARMO_MODELING_FILE
    src.write_text(ARMO_MODELING_SOURCE)
    module_spec = importlib.util.spec_from_file_location("roost_tiny_armo_build", src)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.LlamaForRewardModelWithGating


def _build_armo_network(spec: TinyRewardSpec, tokenizer, out: Path):
    import torch
    from transformers import LlamaConfig

    torch.manual_seed(spec.seed)
    cls = _load_armo_class(out)
    config = LlamaConfig(**_reward_trunk_config(spec, tokenizer), **_armo_config_extras(spec, tokenizer))
    return cls(config).float().eval()


def _finish_armo_config(out: Path) -> None:
    """save_pretrained writes the class name of our locally imported module; point config.json
    at the copy in the model directory instead, as the hub ArmoRM does."""
    (out / ARMO_MODELING_FILE).write_text(ARMO_MODELING_SOURCE)
    path = out / "config.json"
    cfg = json.loads(path.read_text())
    cfg["architectures"] = ["LlamaForRewardModelWithGating"]
    cfg["auto_map"] = {"AutoModelForSequenceClassification": "modeling_tiny_armo.LlamaForRewardModelWithGating"}
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True))


def corrupt_response(conversation: list[dict], rng: random.Random) -> list[dict]:
    """The same conversation with the last assistant message's words shuffled (a 'rejected' twin)."""
    out = [dict(m) for m in conversation]
    for m in reversed(out):
        if m["role"] == "assistant":
            words = m["content"].split()
            if len(words) > 1:
                shuffled = words[:]
                for _ in range(4):
                    rng.shuffle(shuffled)
                    if shuffled != words:
                        break
                words = shuffled
            else:
                words = [w[::-1] for w in words] or ["?"]
            m["content"] = " ".join(words)
            break
    return out


def _reward_of(output):
    score = getattr(output, "score", None)
    return score if score is not None else output.logits[:, 0]


def _learn_preferences(model, tokenizer, conversations, spec: TinyRewardSpec) -> None:
    """Bradley-Terry on (seed conversation, same with shuffled response words) pairs."""
    import torch

    rng = random.Random(spec.seed)
    pad = tokenizer.pad_token_id

    def encode(conv):
        return tokenizer(tokenizer.apply_chat_template(conv, tokenize=False), add_special_tokens=False)["input_ids"]

    pairs = [(encode(c), encode(corrupt_response(c, rng))) for c in conversations]
    pairs = [p for p in pairs if max(len(p[0]), len(p[1])) <= 160]  # whole conversations only (fast)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    batch_pairs = 16
    for step in range(spec.train_steps):
        batch = rng.sample(pairs, batch_pairs)
        seqs = [p[0] for p in batch] + [p[1] for p in batch]
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), pad)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, seq in enumerate(seqs):
            ids[i, : len(seq)] = torch.tensor(seq)
            mask[i, : len(seq)] = 1
        lr = 2e-3 * 0.5 * (1 + math.cos(math.pi * step / spec.train_steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        rewards = _reward_of(model(input_ids=ids, attention_mask=mask))
        loss = -torch.nn.functional.logsigmoid(rewards[:batch_pairs] - rewards[batch_pairs:]).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
