"""The `judge` curation stage (absolute 1-5 scores under structured output; pairwise win
probabilities from roost.judges.pairwise) and the judge as reward_pairs' scorer.

On the tiny ChatML model (real vLLM, the session engine) the verdicts mean nothing; what is
checked: every score is an integer in 1..5 or null with the reason (never a default), the
unreadable answers are counted, filters drop what they should naming the score, the columns are
what the judge says of these very rows, and bad templates are one line, exit 2."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from roost.cli import app
from roost.dataset.portable import portable_path
from roost.errors import ConfigError
from roost.judges.absolute import (
    RUBRIC_VERSION,
    TEMPLATE_VERSION,
    AbsoluteJudge,
    answer_schema,
    check_template,
    default_template,
    fill,
    instruction_text,
)
from roost.judges.structured import read_answer
from roost.schemas import MESSAGES

QUESTIONS = ["How do I reverse a list in Python?", "What is the capital of France?", "Solve 3x + 5 = 20 for x.",
             "Write a haiku about autumn leaves.", "Plan a three day trip to Rome on a budget."]
ANSWERS = ["Use reversed() or xs[::-1].", "Paris.", "x = 5.", "Red leaves fall slowly / ...", "Day 1: the Colosseum."]
LONG = "Please summarize this text. " + "The quick brown fox jumps over the lazy dog again and again. " * 200


def _model(path: Path) -> dict:
    return {"model": str(path), "max_model_len": 1024}  # the session engine's identity


def _read(out: Path, kind: str) -> list[dict]:
    return [r for f in sorted((out / kind).glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def _curate(tmp_path: Path, data: Path, stages: list[dict], name: str):
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(yaml.safe_dump({"stages": stages}))
    out = tmp_path / name
    result = CliRunner().invoke(app, ["curate", str(data), "--out", str(out), "--recipe", str(recipe)])
    return result, out


def _sft(tmp_path: Path) -> Path:
    """20 question/answer rows, one over the judge's context, one without an answer."""
    rows = [{"instruction": f"{QUESTIONS[i % 5]} (#{i})", "response": ANSWERS[(i * 3) % 5]} for i in range(20)]
    rows += [{"instruction": LONG, "response": "Ok."}, {"instruction": "Say hi.", "response": None}]
    path = tmp_path / "sft.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([("instruction", pa.string()), ("response", pa.string())])),
                   path)
    return path


def _pairs(tmp_path: Path) -> Path:
    rows = [{"prompt": [{"role": "user", "content": f"{QUESTIONS[i % 5]} (#{i})"}],
             "chosen": [{"role": "assistant", "content": ANSWERS[i % 5]}],
             "rejected": [{"role": "assistant", "content": "I do not know."}]} for i in range(12)]
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([pa.field(c, MESSAGES) for c in
                                                                ("prompt", "chosen", "rejected")])), path)
    return path


def _stage(manifest_dir: Path) -> dict:
    manifest = json.loads((manifest_dir / "manifest.json").read_text())
    return next(s for s in manifest["stages"] if s["name"] == "judge")


# -- template, schema and reading answers (pure) ------------------------------------------------------


def test_template_placeholders_schema_and_unreadable_answers(tmp_path):
    check_template(default_template())
    with pytest.raises(ConfigError, match=r"has no \{rubric\} placeholder"):
        check_template("Rate {response} to {instruction}.", source="t.txt")
    assert fill("{instruction}|{response}|{rubric}", "{response}", "r", " R \n") == "{response}|r|R"
    assert instruction_text([{"role": "user", "content": "Hi?"}]) == "Hi?"
    assert instruction_text([{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."},
                             {"role": "user", "content": "And?"}]) == "User: Hi?\nAssistant: Hello.\nUser: And?"
    schema = json.dumps(answer_schema(100), sort_keys=True)
    assert read_answer('{"feedback":"Fine.","score":4}', "stop", schema, 64).value == {"feedback": "Fine.", "score": 4}
    # what structured output cannot rule out is read as unreadable, with the reason, never as a default
    cut = read_answer('{"feedback":"Fine, but', "length", schema, 8)
    assert cut.value is None and cut.code == "truncated" and "max_tokens (8)" in cut.reason
    end = read_answer('{"feedback":"Fine, but', "length", schema, 512, n_tokens=300, prompt_tokens=724, context=1024)
    assert end.code == "context_overflow" and "end of the model's context (1024 tokens: 724 of question, 300" in end.reason
    assert read_answer('{"feedback":"Fine."', "stop", schema, 64).code == "not_json"
    bad = read_answer('{"feedback":"Fine.","score":7}', "stop", schema, 64)
    assert bad.code == "schema_mismatch" and "at score: 7 is greater than the maximum of 5" in bad.reason
    assert read_answer('{"feedback":"' + "x" * 101 + '","score":3}', "stop", schema, 512).code == "schema_mismatch"


def test_bad_judge_configs_are_one_line_exit_2(tmp_path, tiny_chatml_path):
    sft, pairs = _sft(tmp_path), _pairs(tmp_path)
    no_rubric = tmp_path / "abs.txt"
    no_rubric.write_text("Rate the response {response} to {instruction} from 1 to 5.")
    no_conv = tmp_path / "pair.txt"
    no_conv.write_text("Which is better, {response_a} or {response_b}? A or B.")
    empty = tmp_path / "rubric.txt"
    empty.write_text("  \n")
    m = _model(tiny_chatml_path)
    cases = [
        (sft, {"template": str(no_rubric)}, "field 'stages[0](judge).template'", "abs.txt has no {rubric} placeholder"),
        (pairs, {"mode": "pairwise", "template": str(no_conv)}, "(judge).template", "pair.txt has no {conversation} placeholder"),
        (pairs, {"mode": "pairwise", "template": str(no_rubric)}, "(judge).template", "no {conversation}, {response_a}, {response_b}"),
        (sft, {"template": str(tmp_path / "missing.txt")}, "(judge).template", "cannot read judge template"),
        (sft, {"rubric": str(empty)}, "(judge).rubric", "is empty"),
        (sft, {"min_win": 0.5}, "stages[0](judge)", "min_win is not an option of mode absolute"),
        (sft, {"min_score": 6}, "(judge).min_score", "less than or equal to 5"),
        (sft, {"mode": "pairwise"}, "stages[0] (judge)", "mode pairwise needs preference rows"),
        (sft, {"min_margin": 1}, "stages[0] (judge)", "min_margin needs preference rows"),
    ]
    for data, extra, field, needle in cases:
        result, _ = _curate(tmp_path, data, [{"kind": "judge", "model": m, **extra}], "bad")
        lines = [line for line in result.output.strip().splitlines() if line.strip()]
        text = " ".join(lines)
        assert result.exit_code == 2 and len(lines) == 1 and field in text and needle in text, (extra, result.output)


# -- on the tiny model ------------------------------------------------------------------------------------


def test_absolute_scores_on_sft_rows_nulls_with_reasons_and_min_score(tmp_path, chatml_engine, tiny_chatml_path):
    data = _sft(tmp_path)
    stage = {"kind": "judge", "model": _model(tiny_chatml_path), "max_feedback_chars": 80, "max_tokens": 256}
    result, out = _curate(tmp_path, data, [stage], "scored")
    assert result.exit_code == 0, result.output
    rows = {r["instruction"]: r for r in _read(out, "data")}
    assert len(rows) == 22
    for q, r in rows.items():
        if q in (LONG, "Say hi."):
            continue
        assert isinstance(r["judge_score"], int) and 1 <= r["judge_score"] <= 5 and r["judge_reason"] is None
        assert isinstance(r["judge_feedback"], str) and len(r["judge_feedback"]) <= 80
        assert r["judge_model"] == str(tiny_chatml_path)
    assert rows[LONG]["judge_score"] is None and "over the model's limit of 1023" in rows[LONG]["judge_reason"]
    assert rows["Say hi."]["judge_score"] is None and rows["Say hi."]["judge_reason"] == "no response to judge"
    st = _stage(out)
    assert st["settings"]["unreadable"] == {"context_overflow": 1, "no_response": 1}
    judge = st["settings"]["judge"]
    # the manifest records the model path portably (roost.dataset.portable), its identity by revision
    assert judge["model"] == portable_path(str(tiny_chatml_path), out) and judge["revision"].startswith("local-sha256:")
    assert judge["template_version"] == TEMPLATE_VERSION and judge["rubric_version"] == RUBRIC_VERSION
    assert judge["answer_schema"]["properties"]["score"] == {"type": "integer", "minimum": 1, "maximum": 5}

    # the columns are the judge's answers to these very rows
    asked = [q for q in rows if q not in (LONG, "Say hi.")][:6]
    direct = AbsoluteJudge(chatml_engine, max_tokens=256, max_feedback_chars=80).judge(
        [([{"role": "user", "content": q}], rows[q]["response"]) for q in asked])
    assert [(v.score, v.feedback) for v in direct] == [(rows[q]["judge_score"], rows[q]["judge_feedback"]) for q in asked]

    # min_score: the best score seen keeps its rows; lower and null scores go, the score named
    best = max(r["judge_score"] for r in rows.values() if r["judge_score"] is not None)
    result, out = _curate(tmp_path, data, [{**stage, "min_score": best}], "min")
    assert result.exit_code == 0, result.output
    expected = {q for q, r in rows.items() if r["judge_score"] is not None and r["judge_score"] >= best}
    assert {r["instruction"] for r in _read(out, "data")} == expected
    rejects = {json.loads(r["record"])["instruction"]: r for r in _read(out, "rejects")}
    assert set(rejects) == set(rows) - expected and all(r["reason"] == "low_judge_score" for r in rejects.values())
    assert rejects["Say hi."]["detail"] == f"judge_score null (no response to judge) < {best}"
    for q, rej in rejects.items():
        if rows[q]["judge_score"] is not None:
            assert rej["detail"] == f"judge_score {rows[q]['judge_score']} < {best}"


def test_max_tokens_too_small_makes_unreadable_answers_counted_not_defaults(tmp_path, chatml_engine, tiny_chatml_path):
    data = _sft(tmp_path)
    stage = {"kind": "judge", "model": _model(tiny_chatml_path), "max_tokens": 6, "min_score": 1}
    result, out = _curate(tmp_path, data, [stage], "short")
    assert result.exit_code == 0, result.output
    assert _read(out, "data") == []  # min_score 1 keeps every readable score: none was readable
    rejects = _read(out, "rejects")
    assert len(rejects) == 22 and {r["reason"] for r in rejects} == {"low_judge_score"}
    cut = [r for r in rejects if "answer cut at max_tokens (6)" in r["detail"]]
    assert len(cut) == 20
    assert _stage(out)["settings"]["unreadable"] == {"truncated": 20, "context_overflow": 1, "no_response": 1}
    assert _stage(out)["removed"] == {"low_judge_score": 22}


def test_pairwise_and_absolute_judges_on_preference_rows(tmp_path, chatml_engine, tiny_chatml_path):
    from roost.judges.pairwise import PairwiseJudge

    data = _pairs(tmp_path)
    result, out = _curate(tmp_path, data, [{"kind": "judge", "mode": "pairwise", "model": _model(tiny_chatml_path)}], "pw")
    assert result.exit_code == 0, result.output
    rows = _read(out, "data")
    assert len(rows) == 12
    prefs = PairwiseJudge(chatml_engine).compare([(r["prompt"], r["chosen"][0]["content"], r["rejected"][0]["content"])
                                                  for r in rows])
    for r, p in zip(rows, prefs):  # both orders averaged, as the shared pairwise judge computes it
        assert 0.0 <= r["judge_chosen_win"] <= 1.0 and r["judge_chosen_win"] == pytest.approx(p.value, abs=1e-9)
        assert r["judge_reason"] is None
    st = _stage(out)
    assert st["settings"]["judge"]["kind"] == "pairwise_judge" and st["settings"]["unreadable"] == {}

    wins = sorted(r["judge_chosen_win"] for r in rows)
    cut = (wins[3] + wins[4]) / 2 if wins[3] < wins[4] else wins[4] + 1e-12
    stage = {"kind": "judge", "mode": "pairwise", "model": _model(tiny_chatml_path), "min_win": cut}
    result, out = _curate(tmp_path, data, [stage], "pw-min")
    assert result.exit_code == 0, result.output
    assert {r["id"] for r in _read(out, "data")} == {r["id"] for r in rows if r["judge_chosen_win"] >= cut}
    rejects = _read(out, "rejects")
    assert rejects and all(r["reason"] == "judge_disagrees" and r["detail"].startswith("judge_chosen_win 0.")
                           and r["detail"].endswith(f" < {cut}") for r in rejects)

    stage = {"kind": "judge", "model": _model(tiny_chatml_path), "max_feedback_chars": 60, "max_tokens": 200}
    result, out = _curate(tmp_path, data, [stage], "abs")
    assert result.exit_code == 0, result.output
    for r in _read(out, "data"):
        assert 1 <= r["chosen_judge_score"] <= 5 and 1 <= r["rejected_judge_score"] <= 5 and r["judge_reason"] is None
        assert r["judge_score_margin"] == r["chosen_judge_score"] - r["rejected_judge_score"]
        assert len(r["chosen_judge_feedback"]) <= 60 and len(r["rejected_judge_feedback"]) <= 60


class ScriptedEngine:
    """A stand-in engine whose answers are scripted JSON (the judge's arithmetic is the point)."""

    model = "scripted-judge"
    revision = None
    max_model_len = 1024

    def __init__(self, tokenizer, answer):
        self.tokenizer, self.answer, self.asked = tokenizer, answer, []

    def generate(self, prompts, sampling, *, seed=None, progress=None):
        from roost.engines.base import Completion, Generation

        self.asked += list(zip(prompts, sampling))
        return [Generation(p, 0, [Completion(self.answer(p), [0], "stop")]) for p in prompts]

    def describe(self):
        return {"model": self.model, "revision": "scripted"}


def test_judge_scores_rank_reward_pairs_samples(tiny_chatml_path):
    """Scripted verdicts through JudgeRewardScorer and reward_pairs' ranking: best vs worst score."""
    import random

    from transformers import AutoTokenizer

    from roost.judges.absolute import JudgeRewardScorer
    from roost.recipe import validate_recipe
    from roost.synthesizers.base import Shard
    from roost.synthesizers.reward_pairs import RewardPairs

    def answer(prompt: str) -> str:
        score = next(n for word, n in (("excellent", 5), ("fine", 3), ("poor", 1), ("", 2)) if word in prompt.split(
            "###Response to evaluate:")[1].split("###Score Rubric:")[0])
        return json.dumps({"feedback": "Scripted.", "score": score})

    engine = ScriptedEngine(AutoTokenizer.from_pretrained(tiny_chatml_path), answer)
    scorer = JudgeRewardScorer(AbsoluteJudge(engine))
    prompt = [{"role": "user", "content": "Explain zip."}]
    texts = ["A fine answer.", "An excellent answer.", "A poor answer.", "Another fine answer."]
    rewards = scorer.score([prompt + [{"role": "assistant", "content": t}] for t in texts])
    assert [r.value for r in rewards] == [3.0, 5.0, 1.0, 3.0] and all(r.reason is None for r in rewards)
    assert all(s.temperature == 0.0 and json.loads(s.json_schema) == answer_schema(1000) for _, s in engine.asked)
    raw = {"name": "p", "model": {"model": "policy"}, "synthesizer": {
        "kind": "reward_pairs", "prompts": {"path": "unused"}, "scorer": {"kind": "judge"}}}
    synth = RewardPairs(validate_recipe(raw).synthesizer, validate_recipe(raw))
    synth._rev = {"model": "policy-rev", "reward_model": "scripted"}
    rows, problem = synth._pairs("p1", prompt, [(t, 5, True) for t in texts], rewards, random.Random(0),
                                 Shard(0, 1, seed=7, start=0, stop=1))
    assert problem is None and len(rows) == 1
    (row,) = rows
    assert row["chosen"][0]["content"] == "An excellent answer." and row["rejected"][0]["content"] == "A poor answer."
    assert (row["chosen_score"], row["rejected_score"], row["score_gap"]) == (5.0, 1.0, 4.0)
    assert row["reward_model"] == "policy"  # the policy judges its own samples (scorer.model unset)


def test_reward_pairs_build_with_the_judge_as_scorer(tmp_path, chatml_engine, tiny_chatml_path):
    prompts = tmp_path / "prompts.parquet"
    rows = [{"messages": [{"role": "user", "content": q}]} for q in QUESTIONS * 2]
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([pa.field("messages", MESSAGES)])), prompts)
    recipe = {"name": "judge-pairs", "model": {"model": str(tiny_chatml_path), "max_model_len": 1024, "seed": 0},
              "output": {"shard_size": 5},
              "synthesizer": {"kind": "reward_pairs", "prompts": {"path": str(prompts)}, "k": 4,
                              "sampling": {"temperature": 1.0, "top_p": 0.95, "max_tokens": 32},
                              "scorer": {"kind": "judge", "max_feedback_chars": 40, "max_tokens": 128}}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "pairs"
    result = CliRunner().invoke(app, ["build", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    made, rejects = _read(out, "data"), _read(out, "rejects")
    assert len(made) + len(rejects) == 10
    # every finished sample got a real 1-5 judge score (the policy judges its own samples; a sample
    # cut at max_tokens is not scored); the tiny model gives its samples one score, so its groups
    # are ties, reported as such
    groups = [r["all_scores"] for r in made] + [json.loads(r["record"])["scores"] for r in rejects]
    assert all(len(g) == 4 and all(s is None or s in (1.0, 2.0, 3.0, 4.0, 5.0) for s in g) for g in groups)
    assert sum(s is not None for g in groups for s in g) >= 20
    for r in made:
        scored = [s for s in r["all_scores"] if s is not None]
        assert r["chosen_score"] == max(scored) > r["rejected_score"] == min(scored)
    for r in rejects:
        scores = [s for s in json.loads(r["record"])["scores"] if s is not None]
        if r["reason"] == "tie_within_margin":
            assert max(scores) == min(scores)
            assert r["detail"] == f"best {max(scores):.4f} vs worst {min(scores):.4f}: gap 0.0000 <= margin 0.0"
        else:
            assert r["reason"] in ("too_few_scored", "all_truncated_or_empty") and len(scores) < 2
    manifest = json.loads((out / "manifest.json").read_text())
    text = json.dumps(manifest)
    assert '"kind": "absolute_judge"' in text and TEMPLATE_VERSION in text

    path.write_text(yaml.safe_dump({**recipe, "synthesizer": {**recipe["synthesizer"], "reward_model": {"model": "x"}}}))
    both = CliRunner().invoke(app, ["build", str(path), "--out", str(tmp_path / "both")])
    assert both.exit_code == 2 and "set reward_model or scorer" in both.output


def test_example_recipes_validate():
    from roost.recipe import load_curate_recipe

    root = Path(__file__).resolve().parents[1] / "recipes"
    tags = load_curate_recipe(root / "curate-tags.yaml")
    assert [s.kind for s in tags.stages][-1] == "tags" and tags.stages[-1].keep
    judge = load_curate_recipe(root / "curate-judge.yaml")
    assert [s.kind for s in judge.stages][-2:] == ["judge", "selection"] and judge.stages[-2].mode == "absolute"
