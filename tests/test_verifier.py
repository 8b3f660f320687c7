"""The verifier scorer (roost.scorers.verifier): rewards, format term and tie-breaks (pure logic
over scripted texts), problems with gold answers as prompts, and reward_pairs / sppo end to end
through the CLI on the tiny math model (real vLLM sampling: it solves some shipped problems and
not others), every verdict checked again here with math-verify itself."""
from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from roost.cli import app
from roost.reasoning.answers import read_gold
from roost.reasoning.prompting import INSTRUCTION, user_turn
from roost.recipe import load_recipe, validate_recipe
from roost.scorers.reward import Reward
from roost.scorers.verifier import TIE_BAND, Verifier, VerifierConfig
from roost.synthesizers.base import Shard
from roost.synthesizers.reward_pairs import VERIFIED_PAIRS, RewardPairs

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "reward-pairs-verifier.yaml"
PROBLEMS = REPO / "data" / "arithmetic_problems.jsonl"
PROMPT = [{"role": "user", "content": "Rosa has 15 rocks and gets 8 more. How many?" + INSTRUCTION}]
GOLD = read_gold("Step 1: 15 + 8 = 23.\n#### 23", "gsm8k")[0]
RIGHT, WRONG, NO_ANSWER = "15 + 8 = 23.\nThe answer is \\boxed{23}.", "15 + 8 = 22.\nThe answer is \\boxed{22}.", "23"


def _grade(texts, tokens=None, gold=GOLD, verifier=None, **cfg):
    verifier = verifier or Verifier(VerifierConfig(**cfg))
    convs = [PROMPT + [{"role": "assistant", "content": t}] for t in texts]
    return verifier.score(convs, [gold] * len(texts), tokens or [len(t) for t in texts])


# -- the reward and its tie-breaks (pure logic) ----------------------------------------------------


def test_reward_is_one_for_right_zero_for_wrong_plus_the_format_term():
    right, wrong, none = _grade([RIGHT, WRONG, NO_ANSWER])
    assert (right.reward, wrong.reward, none.reward) == (1.0, 0.0, 0.0)
    assert right.correct and not wrong.correct and (wrong.verdict, none.verdict) == ("wrong_answer", "no_final_answer")
    assert (right.answer, wrong.answer, none.answer) == ("23", "22", None)
    assert [g.reward for g in _grade([RIGHT, WRONG, NO_ANSWER], format_weight=0.1)] == [1.1, 0.1, 0.0]
    assert _grade(["... so \\boxed{23.0}"])[0].correct  # math-verify, not string equality
    gold = read_gold("\\boxed{\\frac{1}{2}}", "math")[0]
    assert _grade(["it is \\boxed{0.5}", "it is \\boxed{1/3}"], gold=gold)[0].correct


@pytest.mark.parametrize("format_weight", [0.0, 0.01, 0.5, 3.0])
def test_a_length_tie_break_orders_equal_rewards_and_never_beats_correctness(format_weight):
    # right but very long vs wrong in one token: the right one still ranks first
    long_right, short_wrong, short_right, no_answer = _grade([RIGHT, WRONG, RIGHT, NO_ANSWER], [100_000, 1, 5, 1],
                                                             format_weight=format_weight)
    assert long_right.value > short_wrong.value and short_right.value > long_right.value  # equal reward: shorter first
    if format_weight:
        assert short_wrong.value > no_answer.value  # a final answer, even a wrong one, beats none
    smallest = min(format_weight, 1.0) if format_weight else 1.0
    for g in (long_right, short_wrong, short_right, no_answer):
        assert 0 <= g.value - g.reward <= TIE_BAND * smallest < smallest
    assert short_wrong.value - no_answer.value >= format_weight - TIE_BAND * smallest
    tied = _grade([RIGHT, RIGHT], [5, 500], tie_break="none")
    assert tied[0].value == tied[1].value == 1.0


class _ScriptedRM:
    def __init__(self, scores):
        self.scores = scores

    def score(self, convs, progress=None):
        return [Reward(s) for s in self.scores[:len(convs)]]


def test_a_reward_model_tie_break_stays_inside_its_band():
    with pytest.raises(ValueError, match="tie_break: reward_model needs a reward_model block"):
        VerifierConfig(tie_break="reward_model")
    with pytest.raises(ValueError, match="needs tie_break: reward_model"):
        VerifierConfig(reward_model={"model": "rm"})
    verifier = Verifier(VerifierConfig(tie_break="reward_model", reward_model={"model": "rm"}))
    verifier._reward_model = lambda: _ScriptedRM([-1e6, 3.0, 2.0, 1e6, None])  # huge scores: no saturation either
    low_right, right_a, right_b, high_wrong, unscored = _grade([RIGHT, RIGHT, RIGHT, WRONG, RIGHT], verifier=verifier)
    assert right_a.value > right_b.value > low_right.value > high_wrong.value  # the RM orders the rights only
    assert unscored.value == 1.0 and high_wrong.value < TIE_BAND
    assert all(0 <= g.tie <= 1 for g in (low_right, right_a, right_b, high_wrong))


# -- pairs from verifier rewards (pure logic, scripted texts) ------------------------------------


def _recipe(model, prompts: dict, scorer: dict | None = None, **synth) -> dict:
    return {"name": "verifier-test", "model": {"model": str(model), "max_model_len": 1024, "seed": 0},
            "output": {"shard_size": 13},
            "synthesizer": {"kind": "reward_pairs", "prompts": prompts, "k": 4,
                            "sampling": {"temperature": 0.8, "top_p": 0.95, "max_tokens": 256},
                            "scorer": scorer or {"kind": "verifier"}, **synth}}


def _pairs(texts, tokens=None, **synth):
    raw = _recipe("policy", {"path": "unused"}, **synth)
    synth_ = RewardPairs(validate_recipe(raw).synthesizer, validate_recipe(raw))
    synth_._rev = {"model": "policy-rev", "reward_model": "0.0"}
    tokens = tokens or [10] * len(texts)
    group = [(t, n, True) for t, n in zip(texts, tokens)]
    graded = _grade(texts, tokens)
    return synth_._pairs("p", PROMPT, group, graded, random.Random(0), Shard(0, 1, 7, start=0, stop=1), gold=GOLD)


def test_pairs_are_right_vs_wrong_with_the_verifier_reward_in_the_row():
    rows, problem = _pairs([WRONG, RIGHT, RIGHT + " Done.", NO_ANSWER], [10, 40, 30, 2])
    assert problem is None and len(rows) == 1
    row = rows[0]
    assert row["chosen"][0]["content"] == RIGHT + " Done."  # of the two right ones, the shorter
    assert row["rejected"][0]["content"] == WRONG  # of the two wrong ones, the longer
    assert (row["chosen_score"], row["rejected_score"], row["score_gap"]) == (1.0, 0.0, 1.0)
    assert row["all_scores"] == [0.0, 1.0, 1.0, 0.0] and row["all_verdicts"] == [False, True, True, False]
    assert (row["chosen_correct"], row["rejected_correct"]) == (True, False)
    assert (row["gold_answer"], row["chosen_answer"], row["rejected_answer"]) == ("23", "23", "22")
    assert row["all_answers"] == ["22", "23", "23", None] and row["solve_rate"] == 0.5
    assert row["reward_model"] == "math-verify" and VERIFIED_PAIRS.problem(row) is None
    every, _ = _pairs([WRONG, RIGHT, RIGHT + " Done.", NO_ANSWER], pair_rule="all_above_margin")
    assert len(every) == 4 and all(r["chosen_correct"] and not r["rejected_correct"] for r in every)
    rows, _ = _pairs([RIGHT, RIGHT + " ok", WRONG, NO_ANSWER], pair_rule="best_random")
    assert rows and rows[0]["chosen_correct"] and not rows[0]["rejected_correct"]


def test_all_right_or_all_wrong_makes_no_pair_whatever_the_tie_break():
    assert _pairs([RIGHT, RIGHT + " Done.", RIGHT + "!"], [5, 50, 500])[1][0] == "all_correct"
    reason, detail = _pairs([WRONG, NO_ANSWER, "\\boxed{7}"])[1]
    assert reason == "all_wrong" and "'23'" in detail and "22, 7" in detail
    assert _pairs([RIGHT, WRONG], margin=1.0)[1][0] == "tie_within_margin"  # the margin is on the verifier reward
    with pytest.raises(Exception, match="length_penalty does not apply to a verifier"):
        validate_recipe(_recipe("policy", {"path": "unused"}, length_penalty=0.01))


def test_new_options_at_their_defaults_keep_old_fingerprints():
    base = {"name": "x", "model": {"model": "m"},
            "synthesizer": {"kind": "reward_pairs", "prompts": {"path": "p"}, "reward_model": {"model": "rm"}}}
    explicit = json.loads(json.dumps(base))
    explicit["synthesizer"]["prompts"].update(instruction="", question_column=None, answer_column=None,
                                             convention="auto")
    assert validate_recipe(base).fingerprint() == validate_recipe(explicit).fingerprint()
    judge = json.loads(json.dumps(base))
    del judge["synthesizer"]["reward_model"]
    judge["synthesizer"]["scorer"] = {"max_tokens": 64}  # no kind: still the judge
    assert validate_recipe(judge).synthesizer.scorer.kind == "judge"


def test_the_recipe_puts_question_plus_instruction_in_the_policy_chat_template(tiny_math_path):
    from transformers import AutoTokenizer

    from roost.engines.base import render_chat
    from roost.reasoning.arithmetic import make_problems
    from roost.tiny.math_model import conversation

    recipe = load_recipe(RECIPE)
    cfg = recipe.synthesizer
    assert (recipe.model.model, cfg.prompts.path, recipe.output.num_rows) == (".cache/models/tiny-math",
                                                                              "data/arithmetic_problems.jsonl", 200)
    assert (cfg.k, cfg.sampling.temperature, cfg.sampling.top_p, cfg.sampling.max_tokens) == (4, 0.8, 0.95, 256)
    assert cfg.scorer.kind == "verifier" and cfg.pair_rule == "best_worst" and cfg.prompts.instruction == INSTRUCTION
    # the user turn the tiny math model was trained on is question + INSTRUCTION
    problem = make_problems(1, seed=5)[0]
    assert conversation(problem)[0] == user_turn(problem.question) == {"role": "user",
                                                                        "content": problem.question + INSTRUCTION}
    raw = recipe.model_dump(mode="json")
    raw["model"]["model"], raw["synthesizer"]["prompts"]["path"] = str(tiny_math_path), str(PROBLEMS)
    recipe = validate_recipe(raw)
    synth = RewardPairs(recipe.synthesizer, recipe)
    prompts, rejects, _ = synth._prompts(synth.plan()[0])
    rows = [json.loads(line) for line in PROBLEMS.read_text().splitlines()[:50]]
    assert not rejects and [p.messages for p in prompts] == [[user_turn(r["question"])] for r in rows]
    assert [p.gold.text for p in prompts] == [r["answer"].rsplit("####", 1)[1].strip() for r in rows]
    tokenizer = AutoTokenizer.from_pretrained(tiny_math_path)
    text = render_chat(tokenizer, prompts[0].messages, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                    f"{rows[0]['question']}{INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n")


# -- end to end on the tiny math model -----------------------------------------------------------


def _right(text: str, answer_field: str) -> bool:
    """math-verify on the last \\boxed{} against the GSM8K gold, independently of roost's grader."""
    from math_verify import parse, verify

    boxed = re.findall(r"\\boxed\{([^{}]*)\}", text)
    gold = answer_field.rsplit("####", 1)[1].strip().replace(",", "")
    return bool(boxed) and bool(verify(parse(f"${gold}$"), parse(f"${boxed[-1]}$")))


BAD_GOLD = {"How many legs do 3 cats have?": "Twelve, I think.",  # no '#### N'
            "What is 1 + 1?": "#### \\frac{"}  # math-verify cannot parse it


# 24 shipped problems: the first 20 (the tiny model solves most of them every time) and 4 it
# never solved in a build of the recipe's 200, so pairs, all_correct and all_wrong all happen
PICK = [*range(20), 20, 29, 43, 47]


def _problems(tmp_path: Path, pick: list[int], bad: bool = True) -> tuple[Path, list[dict]]:
    """These shipped problems (and, with `bad`, two whose gold answer is unusable)."""
    lines = PROBLEMS.read_text().splitlines()
    rows = [json.loads(lines[i]) for i in pick]
    for at, (question, answer) in zip((5, 9), BAD_GOLD.items() if bad else ()):
        rows.insert(at, {"question": question, "answer": answer})
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, [r for r in rows if r["question"] not in BAD_GOLD]


def _build(tmp_path: Path, raw: dict, name: str):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / name
    result = CliRunner().invoke(app, ["build", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    read = lambda sub: [r for f in sorted((out / sub).glob("*.parquet")) for r in pq.read_table(f).to_pylist()]  # noqa: E731
    return out, read("data"), read("rejects"), json.loads((out / "manifest.json").read_text())


def _check_groups(data, rejects, rows, stage: str) -> Counter:
    """Chosen right, rejected wrong; all_correct / all_wrong groups really are; every problem
    is a pair or such a reject."""
    answer = {user_turn(r["question"])["content"]: r["answer"] for r in rows}
    for row in data:
        gold = answer[row["prompt"][-1]["content"]]
        assert _right(row["chosen"][0]["content"], gold) and not _right(row["rejected"][0]["content"], gold)
        assert row["chosen_correct"] and not row["rejected_correct"]
        assert row["gold_answer"] == gold.split("####")[1].strip()
        assert row["chosen"][0]["content"].startswith("Let's think step by step.\nStep 1:")  # the model's own opener
    groups = [(r["reason"], json.loads(r["record"])) for r in rejects if r["stage"] == stage]
    for reason, record in groups:
        gold = answer[record["prompt"][-1]["content"]]
        assert record["verdicts"] == [None if v is None else _right(t, gold)
                                      for t, v in zip(record["responses"], record["verdicts"])]
        graded = [v for v in record["verdicts"] if v is not None]
        assert {"all_correct": all(graded), "all_wrong": not any(graded)}[reason], (reason, record)
    reasons = Counter(r["reason"] for r in rejects)
    assert reasons["all_correct"] > 0 and reasons["all_wrong"] > 0 and data, reasons
    made = [row["prompt"][-1]["content"] for row in data] + [rec["prompt"][-1]["content"] for _, rec in groups]
    assert sorted(made) == sorted(answer)
    return reasons


def test_reward_pairs_verifier_end_to_end_from_the_recipe(tmp_path, tiny_math_path, monkeypatch):
    from roost.engines.vllm_engine import VLLMEngine

    seen, generate = [], VLLMEngine.generate

    def spy(self, prompts, *args, **kwargs):  # what the policy is asked, as text
        seen.extend(prompts)
        return generate(self, prompts, *args, **kwargs)

    monkeypatch.setattr(VLLMEngine, "generate", spy)
    data_path, rows = _problems(tmp_path, PICK)
    raw = yaml.safe_load(RECIPE.read_text())
    raw["model"]["model"] = str(tiny_math_path)
    raw["synthesizer"]["prompts"]["path"] = str(data_path)
    raw["output"] = {"shard_size": 13}
    out, data, rejects, manifest = _build(tmp_path, raw, "pairs")
    reasons = _check_groups(data, rejects, rows, "reward_pairs")
    assert manifest["rejects_by_reason"] == dict(reasons) and manifest["rows"] == len(data)
    assert {r["reason"]: r["detail"] for r in rejects if r["stage"] == "prompts"} == {
        "no_gold_answer": "'answer': no '#### <answer>' line",  # a reject with its reason, counted, not dropped
        "unparsable_gold_answer": "'answer': math-verify cannot parse the gold answer '\\\\frac{'"}
    assert manifest["reward_model"]["name"] == "math-verify" and manifest["reward_model"]["version"]
    assert manifest["problems"]["convention"] == "gsm8k" and manifest["instruction"] == INSTRUCTION
    # the policy saw exactly its chat template of [user: question + INSTRUCTION] with the generation prompt
    from transformers import AutoTokenizer

    from roost.engines.base import render_chat

    tokenizer = AutoTokenizer.from_pretrained(tiny_math_path)
    assert sorted(seen) == sorted(render_chat(tokenizer, [user_turn(r["question"])], add_generation_prompt=True)
                                  for r in rows)
    for row in data:
        assert row["chosen_score"] == 1.0 and row["rejected_score"] == 0.0 and row["score_gap"] == 1.0
        assert 0 < row["solve_rate"] < 1 and len(row["all_verdicts"]) == 4

    import datasets
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    ds = datasets.load_dataset("parquet", data_dir=str(out / "data"), split="train")
    assert {"prompt", "chosen", "rejected"} <= set(ds.column_names) and len(ds) == len(data)
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=1, per_device_train_batch_size=2, report_to=[],
                     save_strategy="no", use_cpu=True, max_length=512)
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_math_path), args=args, train_dataset=ds,
                         processing_class=tokenizer)
    prepared = trainer.train_dataset
    assert len(prepared) == len(data) and {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(prepared.column_names)
    # TRL renders the same prompt the policy was sampled on
    assert tokenizer.decode(prepared[0]["prompt_ids"]) == render_chat(tokenizer, data[0]["prompt"],
                                                                     add_generation_prompt=True)


def test_verifier_bad_input_is_one_line_exit_2(tmp_path, tiny_math_path):
    def run(prompts, **synth):
        path = tmp_path / "r.yaml"
        path.write_text(yaml.safe_dump(_recipe(tiny_math_path, prompts, **synth)))
        result = CliRunner().invoke(app, ["build", str(path), "--out", str(tmp_path / "o")])
        lines = [line for line in result.output.strip().splitlines() if line.strip()]
        return result.exit_code, " ".join(lines), len(lines)

    def table(name, row):
        pq.write_table(pa.Table.from_pylist([row]), tmp_path / name)
        return str(tmp_path / name)

    no_answer = table("q.parquet", {"question": "What is 2 + 2?"})
    messages = table("m.parquet", {"messages": [{"role": "user", "content": "2 + 2?"}]})
    problems = table("qa.parquet", {"question": "What is 2 + 2?", "answer": "#### 4"})
    for prompts, synth, needle in [
        ({"path": no_answer}, {}, "synthesizer.prompts.answer_column: "),
        ({"path": messages}, {}, "no 'answer' column of gold answers for the verifier"),
        ({"path": problems, "question_column": "problem"}, {}, "synthesizer.prompts.question_column: "),
        ({"magpie": {}}, {}, "synthesizer.prompts.magpie"),
        ({"path": problems}, {"scorer": {"kind": "verifier", "tie_break": "reward_model"}}, "synthesizer.scorer"),
        ({"path": problems}, {"scorer": {"kind": "oracle"}}, "scorer.kind must be judge or verifier"),
        ({"path": problems}, {"length_penalty": 0.1}, "use scorer.tie_break: length"),
        ({"path": problems, "convention": "latex"}, {}, "synthesizer.prompts.convention"),
    ]:
        code, text, n = run(prompts, **synth)
        assert code == 2 and n == 1 and needle in text, (needle, text)


def test_sppo_with_the_verifier_preference(tmp_path, tiny_math_path):
    from roost.synthesizers.sppo import SPPO_SUBSET

    data_path, rows = _problems(tmp_path, PICK[12:], bad=False)
    raw = {"name": "sppo-verifier-test", "model": {"model": str(tiny_math_path), "max_model_len": 1024, "seed": 0},
           "output": {"shard_size": 12},
           "synthesizer": {"kind": "sppo", "prompts": {"path": str(data_path), "instruction": INSTRUCTION}, "k": 4,
                           "sampling": {"temperature": 0.8, "top_p": 0.95, "max_tokens": 256},
                           "preference": {"kind": "verifier", "temperature": 0.5}}}
    out, data, rejects, manifest = _build(tmp_path, raw, "sppo")
    _check_groups(data, rejects, rows, "sppo")
    for row in data:
        probs, scores, w = row["probability"], row["all_scores"], row["chosen_probs_win"]
        i = next(j for j, t in enumerate(row["all_responses"]) if t == row["chosen"][0]["content"])
        l = next(j for j, t in enumerate(row["all_responses"]) if t == row["rejected"][0]["content"])
        assert (scores[i], scores[l], row["preference_kind"]) == (1.0, 0.0, "verifier")
        # Bradley-Terry on the rewards at temperature 0.5 (the tie-break term moves it by < 1e-2)
        assert row["chosen_probs"] == pytest.approx(1 / (1 + math.exp(-1 / 0.5)), abs=1e-2) == probs[i][l]
        assert w > 0.5 > row["chosen_probs_lose"]
        assert row["preference_model"] == "math-verify" and row["preference_model_revision"]
    assert manifest["preference"]["verifier"]["name"] == "math-verify"
    assert pq.read_schema(sorted((out / "sppo").glob("*.parquet"))[0]).equals(SPPO_SUBSET)
