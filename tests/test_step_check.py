"""The step check (roost.reasoning.step_check): the arithmetic checker on planted slips and on
the forms equations take, the user's `python: "module:function"` checker, the search bounded
by the first failing step (pure logic); and Step-DPO end to end through the CLI on the tiny
math model with `locate.step_check: arithmetic`: no row teaches wrong arithmetic, where the
same build without the check has such rows."""
from __future__ import annotations

import json
import re
from fractions import Fraction
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from roost.cli import app
from roost.reasoning.arithmetic import make_problems, solution
from roost.reasoning.step_check import Verdict, arithmetic, checker, load_function
from roost.reasoning.steps import Estimate, Search, continuation_steps, locate, split_steps

REPO = Path(__file__).resolve().parents[1]


# -- the arithmetic checker ----------------------------------------------------------------------


def test_planted_slip_is_found_at_exactly_its_step():
    # solution(wrong_step=j) makes step j's result off by `error`; later steps carry the wrong
    # value on correctly, so step j is the only step whose arithmetic fails
    check = checker("arithmetic")
    cases = 0
    for problem in make_problems(200, seed=11):
        right = split_steps(solution(problem))
        assert check.first_failing(problem.question, right) is None
        assert all(arithmetic(problem.question, s).checked == 1 for s in right)  # one equation a step
        for j in range(1, len(problem.steps) + 1):
            for error in (-3, -1, 1, 2, 10):
                steps = split_steps(solution(problem, wrong_step=j, error=error))
                k, verdict = check.first_failing(problem.question, steps)
                assert k == j and not verdict.ok and verdict.reason, (j, error, steps)
                assert [arithmetic("", s).ok for s in steps] == [i != j for i in range(1, len(steps) + 1)]
                cases += 1
    assert cases > 2000


@pytest.mark.parametrize("step", [
    "Ava starts with 7 shells and finds 5 more: 7 + 5 = 12.", "12 - 4 = 8", "8 * 3 = 24", "3 x 4 = 12", "3 × 4 = 12",
    "12 / 4 = 3", "12 ÷ 4 = 3", "1,204 + 6 = 1,210", "2.5 + 1.25 = 3.75", "10 / 3 = 3.33", "3 - 5 = -2",
    "$5.50 + $2 = $7.50", "2 + 3 * 4 = 14", "7 + 5 + 3 = 15", "7 + 5 = 12 - 4 = 8", "2 + 2 = 4, and 3 + 3 = 6.",
    "0.1 + 0.2 = 0.3", "1,000 * 3 = 3,000", "3.33 = 10 / 3", "12 = 7 + 5",
])
def test_true_equations_pass(step):
    verdict = arithmetic("", step)
    assert verdict.ok and verdict.checked >= 1 and verdict.label == "ok", verdict


@pytest.mark.parametrize("step,why", [
    ("8 * 3 = 25", "8 * 3 is 24"), ("13 + 1 = 13.", "13 + 1 is 14"), ("4 - 3 = 2", "4 - 3 is 1"),
    ("She buys 6 more: 35 + 6 = 31.", "35 + 6 is 41"), ("3 x 4 = 13", "3 x 4 is 12"), ("3 × 4 = 11", "3 × 4 is 12"),
    ("7 / 2 = 3", "7 / 2 is 3.5"), ("1,204 + 6 = 1,211", "1,204 + 6 is 1210"), ("10 / 3 = 3.4", "10 / 3 is 3.33333"),
    ("2 + 2 = 4, and 3 + 3 = 7.", "3 + 3 is 6"), ("7 + 5 = 13 - 4 = 9", "7 + 5 is 12"),
    ("5 / 0 = 1", "division by zero"), ("2 + 3 = 5 = 6", "they differ"), ("3.4 = 10 / 3", "10 / 3 is 3.33333"),
    ("12 ÷ 4 = 4", "12 ÷ 4 is 3"), ("2.5 * 2 = 5.5", "2.5 * 2 is 5"),
])
def test_false_equations_fail_with_the_reason(step, why):
    verdict = arithmetic("", step)
    assert not verdict.ok and verdict.label == "fail" and why in verdict.reason, verdict


@pytest.mark.parametrize("step", [
    "The answer is \\boxed{8}.", "She has 12 apples left.", "12 = 12", "x = 5", "2x + 3 + 4 = 11", "Step 2 is next.",
    "50% of them", "",
])
def test_nothing_to_check_passes_unchecked(step):
    verdict = arithmetic("", step)
    assert verdict.ok and verdict.unchecked and verdict.label == "unchecked", verdict


def test_continuation_steps_start_inside_the_step():
    text = " She buys 6 more: 35 + 6 = 41.\nStep 4: She loses 2: 41 - 2 = 39.\nThe answer is \\boxed{39}."
    assert continuation_steps(text) == ["She buys 6 more: 35 + 6 = 41.",
                                        "She loses 2: 41 - 2 = 39.\nThe answer is \\boxed{39}."]
    assert continuation_steps(" 2 + 2 = 4.\nThe answer is \\boxed{4}.") == ["2 + 2 = 4.\nThe answer is \\boxed{4}."]


# -- a user's checker: python: "module:function" -------------------------------------------------


def refuse_sevens(problem: str, step: str):
    """A user's checker (tests refer to it as test_step_check:refuse_sevens)."""
    return "mentions 7" if "7" in step else None


def never_ok(problem: str, step: str):
    return False


def test_python_checker_is_loaded_and_its_answers_read():
    check = checker(python="test_step_check:refuse_sevens")
    assert check.name == "python:test_step_check:refuse_sevens"
    assert check("q", "2 + 5 = 7") == Verdict(False, 1, "mentions 7") and check("q", "2 + 2 = 4").ok
    assert not checker(python="test_step_check:never_ok")("q", "x").ok
    assert check.describe()["kind"] == "python" and len(check.describe()["source_sha256"]) == 64
    assert checker(python="roost.reasoning.step_check:arithmetic")("", "8 * 3 = 25").reason == "8 * 3 = 25: 8 * 3 is 24"
    for spec, needle in [("nocolon", "expected 'module:function'"), ("no_such_module_x:f", "cannot import"),
                         ("test_step_check:missing", "has no 'missing'"), ("test_step_check:REPO", "not callable")]:
        with pytest.raises(ValueError, match=needle):
            load_function(spec)
    with pytest.raises(ValueError, match="unknown step check"):
        checker("algebra")


# -- the search, bounded by the first failing step -------------------------------------------------


def _scripted(p):
    asked = []

    def estimate(asks):
        asked.extend(k for _, k in asks)
        return [Estimate(k, p[k], 8, round(p[k] * 8)) for _, k in asks]
    return estimate, asked


@pytest.mark.parametrize("mode", ["binary", "linear"])
def test_bound_caps_the_search_where_rollouts_see_no_error(mode):
    # a lucky prefix: rollouts reach the answer from every prefix (p > 0 up to step 5) though
    # step 3 fails the check; unbounded, the search blames a later step, bounded it is step 3
    p = {0: 0.9, 1: 0.8, 2: 0.8, 3: 0.5, 4: 0.25, 5: 0.125, 6: 0.0, 7: 0.0}
    estimate, _ = _scripted(p)
    free, bounded = Search(8, 0.9, 0.0, mode), Search(8, 0.9, 0.0, mode, bound=3)
    locate([free, bounded], estimate)
    assert free.first_wrong == 6 and bounded.first_wrong == 3
    assert all(k < 3 for k in bounded.estimates)  # nothing at or past the bound is estimated


@pytest.mark.parametrize("mode", ["binary", "linear"])
def test_rollouts_still_decide_below_the_bound(mode):
    # step 2 is wrong in a way the check cannot see (p_2 = 0); step 4 fails the check
    p = {0: 0.9, 1: 0.7, 2: 0.0, 3: 0.0}
    estimate, _ = _scripted(p)
    search = Search(6, 0.9, 0.0, mode, bound=4)
    locate([search], estimate)
    assert search.first_wrong == 2


def test_bound_at_step_one_needs_no_rollouts():
    estimate, asked = _scripted({})
    search = Search(5, 0.5, 0.0, bound=1)
    assert locate([search], estimate) == 0 and search.first_wrong == 1 and not asked
    with pytest.raises(ValueError):
        Search(3, 0.5, 0.0, bound=4)


def test_step_check_is_absent_from_fingerprints_at_its_default():
    from roost.config import canonical
    from roost.recipe import validate_recipe

    base = {"name": "x", "model": {"model": "m"},
            "synthesizer": {"kind": "step_dpo", "problems": {"path": str(REPO / "data" / "arithmetic_problems.jsonl")},
                            "locate": {"rollouts": 8}}}
    plain = validate_recipe(base)
    assert "step_check" not in canonical(plain.synthesizer.locate)
    assert plain.synthesizer.locate.step_check is None
    checked = validate_recipe({**base, "synthesizer": {**base["synthesizer"],
                                                       "locate": {"rollouts": 8, "step_check": "arithmetic"}}})
    assert checked.fingerprint() != plain.fingerprint()
    assert checked.synthesizer.locate.step_check.kind == "arithmetic"
    user = validate_recipe({**base, "synthesizer": {**base["synthesizer"], "locate": {
        "step_check": {"python": "test_step_check:refuse_sevens"}}}})
    assert user.synthesizer.locate.step_check.build().name == "python:test_step_check:refuse_sevens"


# -- end to end on the tiny math model ---------------------------------------------------------


_EQUATION = re.compile(r"(\d+) ([-+*]) (\d+) = (\d+)")


def wrong_equations(text: str) -> list[str]:
    """Every `a op b = c` of the shipped problems' solutions that does not hold: an
    independent re-check (not the checker under test)."""
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
    return [m.group(0) for m in _EQUATION.finditer(text)
            if Fraction(ops[m.group(2)](int(m.group(1)), int(m.group(3)))) != int(m.group(4))]


def _build(tmp_path, model, data, name, **locate) -> tuple[list[dict], dict, list[dict]]:
    recipe = {
        "name": "step-check-test", "model": {"model": str(model), "max_model_len": 1024, "seed": 0},
        "output": {"shard_size": 12},
        # T=1.0 (not the recipe's 0.8): at 40 problems, wrong solutions with lucky compensating
        # errors happen often enough to show (at 0.8, 40 problems had none)
        "synthesizer": {"kind": "step_dpo", "problems": {"path": str(data), "dataset": "arith"}, "samples": 4,
                        "sampling": {"temperature": 1.0, "top_p": 0.95, "max_tokens": 192},
                        "locate": {"rollouts": 6, **locate}, "rectify": {"samples": 8}},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / name
    result = CliRunner().invoke(app, ["build", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    read = lambda sub: [r for f in sorted((out / sub).glob("*.parquet")) for r in pq.read_table(f).to_pylist()]  # noqa: E731
    manifest = json.loads((out / "manifest.json").read_text())
    return read("data"), manifest, read("rejects")


def _teaches_wrong_arithmetic(row: dict) -> list[str]:
    k = row["first_wrong_step"]
    prefix = split_steps(row["solution"])[: k - 1]
    return [e for text in prefix + [row["chosen_step"], row["full_chosen"]] for e in wrong_equations(text)]


def test_step_check_end_to_end(tmp_path, tiny_math_path):
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(line + "\n" for line in (REPO / "data" / "arithmetic_problems.jsonl").read_text()
                                .splitlines()[:40]))
    # the control: rollouts alone keep pairs whose prefix or chosen step has wrong arithmetic
    control, control_manifest, _ = _build(tmp_path, tiny_math_path, problems, "control")
    taught = [row for row in control if _teaches_wrong_arithmetic(row)]
    assert taught, "without the check some chosen steps or prefixes have wrong arithmetic"
    assert "step_check" not in pq.read_schema(next((tmp_path / "control" / "data").glob("*.parquet"))).names
    assert "step_check" not in control_manifest and "step_check" not in control_manifest["locate"]

    data, manifest, rejects = _build(tmp_path, tiny_math_path, problems, "checked", step_check="arithmetic")
    assert data
    stats = list(manifest["shards"].values())
    total = {key: sum(s[key] for s in stats) for key in ("refused_continuations", "refused_chosen_step",
                                                         "refused_later_step", "chosen_unchecked", "failed_check",
                                                         "search_bounded_by_check", "located_at_check", "located")}
    assert total["refused_continuations"] > 0, total
    assert total["refused_continuations"] == total["refused_chosen_step"] + total["refused_later_step"]
    assert total["search_bounded_by_check"] > 0 and total["located_at_check"] <= total["search_bounded_by_check"]
    assert manifest["step_check"] == {"kind": "arithmetic", "rules": ["rule_no_division_by_zero", "rule_sides_equal"]}
    unchecked = 0
    for row in data:
        # every prompt prefix step, the chosen step and the whole continuation hold (re-checked
        # here independently) and pass the checker
        assert not _teaches_wrong_arithmetic(row), row
        k = row["first_wrong_step"]
        prefix = split_steps(row["solution"])[: k - 1]
        assert all(arithmetic("", s).ok for s in prefix) and row["initial_reason_steps"].count("Step ") == k
        assert all(arithmetic("", s).ok for s in continuation_steps(row["full_chosen"]))
        check = row["step_check"]
        assert check["checker"] == "arithmetic" and check["chosen"] in ("ok", "unchecked")
        assert check["continuation_steps"] == len(continuation_steps(row["full_chosen"]))
        unchecked += check["chosen"] == "unchecked"
        # the search never went past the first failing step; a failing rejected step says why
        if check["first_failing_step"] is not None:
            assert k <= check["first_failing_step"] and check["first_failing_reason"]
        assert (check["rejected"] == "fail") == bool(check["rejected_reason"])
        if check["rejected"] == "fail":
            assert wrong_equations(row["rejected_step"]), row["rejected_step"]
    assert unchecked == total["chosen_unchecked"]
    # a user's checker through the recipe: one that refuses every step refuses every
    # continuation, so nothing is rectified (counted, and a reject with the reason)
    data, manifest, rejects = _build(tmp_path, tiny_math_path, problems, "refuse-all",
                                     step_check={"python": "test_step_check:never_ok"})
    stats = list(manifest["shards"].values())
    assert manifest["rows"] == 0 and sum(s["refused_continuations"] for s in stats) > 0
    assert sum(s["located_at_check"] for s in stats) == sum(s["located"] for s in stats) > 0  # all at step 1
    assert manifest["rejects_by_reason"].get("step_check_refused", 0) > 0
    assert manifest["step_check"]["function"] == "test_step_check:never_ok"
