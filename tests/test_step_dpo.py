"""Step-DPO: gold answers, steps and the search for the first wrong step (pure logic), and the
synthesizer end to end through the CLI on the tiny math model (real vLLM sampling: it solves
a real share of the shipped problems, so wrong solutions, recoverable prefixes and rectified
steps all happen), with TRL reading both outputs."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from roost.cli import app
from roost.reasoning.answers import grade, read_gold
from roost.reasoning.arithmetic import make_problems, solution
from roost.reasoning.locate_judge import read_decision
from roost.reasoning.steps import Estimate, Search, first_step_of, locate, split_steps

REPO = Path(__file__).resolve().parents[1]


# -- pure logic ----------------------------------------------------------------------------------


def test_gold_answers_in_each_convention():
    assert read_gold("Step 1: 2 + 2 = 4.\n#### 1,204", "gsm8k")[0].text == "1204"
    assert read_gold("so it is \\boxed{\\frac{1}{2}} and not \\boxed{2}", "math")[0].text == "2"
    assert read_gold("so it is \\boxed{\\frac{1}{2}}.", "math")[0].text == "\\frac{1}{2}"
    assert read_gold("42", "plain")[0].text == "42"
    assert read_gold("no marker here", "gsm8k") == (None, "no '#### <answer>' line")
    assert read_gold(None, "plain")[0] is None
    gold, _ = read_gold("\\boxed{\\frac{1}{2}}", "math")
    assert grade(gold, "... The answer is \\boxed{0.5}.").correct
    assert grade(gold, "The answer is 0.5").reason == "no_final_answer"
    assert grade(gold, "\\boxed{3}").reason == "wrong_answer"


def test_generated_solutions_split_and_grade():
    for problem in make_problems(50, seed=3):
        text = solution(problem)
        steps = split_steps(text)
        assert len(steps) == len(problem.steps) and "\\boxed" in steps[-1]
        gold, _ = read_gold(str(problem.answer), "plain")
        assert grade(gold, text).correct
        j = len(problem.steps)
        assert not grade(gold, solution(problem, wrong_step=j)).correct
    assert split_steps("no headers at all") == []
    assert split_steps("Step 1: a\nStep 3: b") == []  # not numbered 1..n
    assert first_step_of(" 5 + 3 = 8.\nStep 3: more") == "5 + 3 = 8."


def _scripted(p: dict[int, float]):
    """A stand-in for rollouts: p_k scripted per prefix (exact values are the point here)."""
    calls = []

    def estimate(asks):
        calls.append(len(asks))
        return [Estimate(k, p[k], 8, round(p[k] * 8)) for _, k in asks]
    return estimate, calls


@pytest.mark.parametrize("truth,n", [(1, 2), (3, 6), (7, 9), (12, 16)])
def test_binary_search_finds_the_step_of_a_monotone_p_in_log_rounds(truth, n):
    p = {k: (0.9 - 0.05 * k if k < truth else 0.0) for k in range(n)}
    for mode in ("binary", "linear"):
        estimate, calls = _scripted(p)
        searches = [Search(n, 0.9, 0.0, mode)]
        rounds = locate(searches, estimate)
        assert searches[0].first_wrong == truth
        if mode == "binary":
            assert rounds <= max(1, (n - 1).bit_length()) and sum(calls) == rounds
        else:
            assert rounds == 1 and sum(calls) == n - 1


def test_non_monotone_p_binary_finds_a_boundary_linear_the_first():
    p = {0: 0.9, 1: 0.0, 2: 0.5, 3: 0.6, 4: 0.0, 5: 0.0}  # step 1 looks wrong, then recovers
    estimate, _ = _scripted(p)
    linear, binary = [Search(6, 0.9, 0.0, "linear")], [Search(6, 0.9, 0.0, "binary")]
    locate(linear, estimate)
    locate(binary, estimate)
    assert linear[0].first_wrong == 1
    k = binary[0].first_wrong
    assert p[k] <= 0.0 < p[k - 1]  # a boundary, though not the first one


def test_unsolved_problem_is_not_searched_and_rounds_are_shared():
    estimate, calls = _scripted({k: 0.5 if k < 2 else 0.0 for k in range(8)})
    searches = [Search(8, 0.0, 0.0), Search(8, 0.5, 0.0), Search(4, 0.5, 0.0)]
    rounds = locate(searches, estimate)
    assert searches[0].first_wrong is None and searches[1].first_wrong == 2 and searches[2].first_wrong == 2
    assert rounds == 3 and calls[0] == 2  # one request per round, for every live search


def test_judge_decisions_are_read_or_refused_with_a_reason():
    assert read_decision("analysis...\nFinal Decision:\nStep 1: correct; Step 2: neutral; Step 3: incorrect", 3) == (2, None)
    assert read_decision("Step 2: incorrect, I think", 3)[0] is None
    assert read_decision("Final Decision: all good", 3)[0] is None
    assert read_decision("Final Decision: Step 9: incorrect", 3)[0] is None
