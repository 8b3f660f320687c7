"""Open-ended evaluation: the model's win rate against a reference (what SPPO and iterative DPO
report on AlpacaEval 2 / MT-Bench-style prompts).

For each prompt (a dataset's conversation up to its last user turn, read as a synthesizer's
`prompts:` are, roost.synthesizers.common.prompted.PromptRows):
- the evaluated model answers once (`open_ended.sampling`, greedy by default), seeded with
  `derive_seed(seed, "open_ended", part)`;
- so does the reference: another model (`reference: {model: {...}}`, e.g. the base model before
  training; the same sampling and the same seeds, so a model against itself gives the same
  answers), or the dataset's own answer (`reference: gold`: the assistant turn after the prompt,
  or a preference row's chosen answer). A prompt without one is counted (`no_gold_answer`),
  never dropped silently;
- a judge gives P = P(model answer beats reference answer):
  - `reward_model`: Bradley-Terry, P = sigmoid((r_model - r_reference) / temperature), with
    sppo's `bradley_terry` over the rewards of roost.scorers.reward (each distinct
    conversation scored once);
  - `pairwise`: roost.judges.pairwise asked in both orders, averaged (sppo's `judge`
    preference); the evaluated model judges unless `model` names another.
  Two identical answers are a tie by definition: P = 1/2 exactly (no judge can prefer one).

Metrics (over the judged prompts):
- `win_rate`: 100 x mean P (AlpacaEval's scale), `win_share`: mean P; standard error
  std(P, ddof=1) / sqrt(n) (AlpacaEval's);
- `length_controlled_win_rate` (AlpacaEval 2's idea, per run): a logistic regression of the
  soft label P on [1, tanh(d / std(d))], d = model tokens - reference tokens (both counted with
  the evaluated model's tokenizer), fitted by Newton's method (`fit_logistic`); the predicted
  win rate at equal length, sigmoid(intercept). Its standard error is the sandwich (robust)
  one by the delta method. A preference that length alone explains gives ~50; one length does
  not explain leaves it at the raw win rate. `length_coefficient` is the fitted slope;
- wins / losses / ties (P > 1/2, < 1/2, = 1/2), `tie_share` (of the judged prompts),
  `unjudged` / `unjudged_share` (of the prompts: no gold answer, a prompt longer than a
  model's context, a reward the model could not give, a judge question it could not read);
- `mean_answer_tokens_model` / `_reference` and the shares cut at max_tokens.

Layout under OUT/open_ended/: `outcomes/part-<i>.parquet` (one row per prompt, OUTCOMES; each
part carries the recipe's fingerprint, a re-run keeps finished parts), `unusable.parquet`
(input rows that are not prompts, with the reason) and `summary.json` (this section, also in
OUT/summary.json under `open_ended`).
"""
from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa

from roost.schemas import MESSAGES

DIR = "open_ended"
TIE = 1e-12  # |P - 1/2| below this is a tie

OUTCOMES = pa.schema([
    pa.field("id", pa.string()),
    pa.field("row", pa.int64()),  # index of the input row
    pa.field("prompt", MESSAGES),  # as the models got it (system prompt and instruction included)
    pa.field("model_answer", pa.string()),
    pa.field("reference_answer", pa.string()),
    pa.field("model_tokens", pa.int64()),  # both counted with the evaluated model's tokenizer
    pa.field("reference_tokens", pa.int64()),
    pa.field("model_truncated", pa.bool_()),
    pa.field("reference_truncated", pa.bool_()),  # null for gold answers
    pa.field("identical", pa.bool_()),
    pa.field("model_reward", pa.float64()),  # reward_model judge
    pa.field("reference_reward", pa.float64()),
    pa.field("judge_model_first", pa.float64()),  # pairwise judge: P("A") with the model's answer as A
    pa.field("judge_reference_first", pa.float64()),  # P("A") with the reference's answer as A
    pa.field("p_win", pa.float64()),  # P(model beats reference); null: unjudged
    pa.field("reason", pa.string()),  # why unjudged
    pa.field("detail", pa.string()),
])


# -- the length-controlled win rate (pure) ---------------------------------------------------------


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=float)))


def fit_logistic(x: np.ndarray, y: np.ndarray, *, ridge: float = 1e-8, iters: int = 200,
                 tol: float = 1e-12) -> np.ndarray:
    """Weights w maximizing sum y log s(Xw) + (1 - y) log(1 - s(Xw)) - ridge/2 |w|^2 for soft
    labels y in [0, 1]: Newton's method (IRLS) with step halving. The tiny ridge only keeps the
    Hessian invertible (a constant column, labels all 0 or all 1)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    w = np.zeros(x.shape[1])

    def objective(w):
        z = x @ w
        return float(np.sum(y * z - np.logaddexp(0.0, z)) - 0.5 * ridge * w @ w)

    current = objective(w)
    for _ in range(iters):
        s = _sigmoid(x @ w)
        grad = x.T @ (y - s) - ridge * w
        hess = (x * (s * (1 - s))[:, None]).T @ x + ridge * np.eye(x.shape[1])
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-10:
            trial = objective(w + t * step)
            if trial >= current - 1e-15:
                break
            t *= 0.5
        w, gain, current = w + t * step, trial - current, trial
        if np.max(np.abs(t * step)) < 1e-10 or abs(gain) < tol:
            break
    return w


@dataclass(frozen=True)
class LengthControlled:
    share: float  # sigmoid(intercept): the predicted win share at equal length
    stderr: float | None  # sandwich standard error of `share` (delta method)
    intercept: float
    length_coefficient: float
    length_scale: float  # std(d): d / length_scale goes into tanh


def length_controlled(prefs: Sequence[float], model_tokens: Sequence[int],
                      reference_tokens: Sequence[int]) -> LengthControlled:
    """AlpacaEval 2's length control on one run: logistic regression of the preferences on
    [1, tanh(d / std(d))], d = model length - reference length; the win share at d = 0."""
    y = np.asarray(prefs, dtype=float)
    d = np.asarray(model_tokens, dtype=float) - np.asarray(reference_tokens, dtype=float)
    scale = float(np.std(d, ddof=1)) if len(d) > 1 else 0.0
    feature = np.tanh(d / scale) if scale > 0 else np.zeros_like(d)
    x = np.column_stack([np.ones_like(d), feature])
    w = fit_logistic(x, y)
    share = float(_sigmoid(w[0]))
    stderr = None
    if len(y) > 1:
        s = _sigmoid(x @ w)
        hess = (x * (s * (1 - s))[:, None]).T @ x + 1e-8 * np.eye(2)
        g = x * (s - y)[:, None]
        inv = np.linalg.inv(hess)
        cov = inv @ (g.T @ g) @ inv
        stderr = float(share * (1 - share) * math.sqrt(max(cov[0, 0], 0.0)))
    return LengthControlled(share, stderr, float(w[0]), float(w[1]), scale)


def _r(v):
    return round(v, 6) if isinstance(v, float) else v


def summarize(rows: Sequence[dict]) -> dict:
    """`metrics`, `stderr` and `unjudged` of the open-ended section from outcome rows."""
    judged = [r for r in rows if r["p_win"] is not None]
    n, prompts = len(judged), len(rows)
    metrics: dict = {"prompts": prompts, "judged": n}
    stderr: dict = {}
    if n:
        p = np.array([r["p_win"] for r in judged], dtype=float)
        mt = [r["model_tokens"] for r in judged]
        rt = [r["reference_tokens"] for r in judged]
        share = float(p.mean())
        se = float(p.std(ddof=1) / math.sqrt(n)) if n > 1 else None
        lc = length_controlled(p, mt, rt)
        ties = int(np.sum(np.abs(p - 0.5) <= TIE))
        wins = int(np.sum(p > 0.5 + TIE))
        ref_cut = [r["reference_truncated"] for r in judged if r["reference_truncated"] is not None]
        metrics.update(
            win_rate=100 * share, win_share=share,
            length_controlled_win_rate=100 * lc.share, length_controlled_win_share=lc.share,
            length_coefficient=lc.length_coefficient,
            wins=wins, losses=n - wins - ties, ties=ties, tie_share=ties / n,
            mean_answer_tokens_model=float(np.mean(mt)), mean_answer_tokens_reference=float(np.mean(rt)),
            model_truncated=sum(bool(r["model_truncated"]) for r in judged) / n,
        )
        if ref_cut:
            metrics["reference_truncated"] = sum(ref_cut) / len(ref_cut)
        if se is not None:
            stderr.update(win_rate=100 * se, win_share=se)
        if lc.stderr is not None:
            stderr.update(length_controlled_win_rate=100 * lc.stderr, length_controlled_win_share=lc.stderr)
    metrics.update(unjudged=prompts - n, unjudged_share=(prompts - n) / prompts if prompts else 0.0)
    missing = [r for r in rows if r["p_win"] is None]
    return {"metrics": {k: _r(v) for k, v in metrics.items()}, "stderr": {k: _r(v) for k, v in stderr.items()},
            "unjudged": {"count": len(missing), "by_reason": dict(Counter(r["reason"] for r in missing)),
                         "ids": [r["id"] for r in missing[:50]]}}


# -- prompts -----------------------------------------------------------------------------------------


@dataclass
class Item:
    id: str
    row: int
    messages: list[dict]  # the prompt as the models get it
    gold: str | None  # the dataset's own answer


def open_prompts(cfg):
    """The prompts dataset (PromptRows), opened and checked; errors name open_ended.prompts."""
    from roost.errors import InputError
    from roost.synthesizers.common.prompted import PromptRows

    try:
        return PromptRows(cfg.prompts, who="open-ended eval")
    except InputError as e:
        raise InputError(str(e).replace("synthesizer.prompts.", "open_ended.prompts.")) from None


def _dress(cfg, prompt: list[dict]) -> list[dict]:
    """The system prompt before a prompt that has none; the instruction after its last user turn
    (as a synthesizer's prompts are dressed)."""
    from roost.reasoning.prompting import user_turn

    if cfg.system_prompt and prompt[0]["role"] != "system":
        prompt = [{"role": "system", "content": cfg.system_prompt}, *prompt]
    if cfg.instruction and prompt[-1]["role"] == "user":
        prompt = [*prompt[:-1], user_turn(prompt[-1]["content"], cfg.instruction)]
    return prompt


def read_items(source, cfg, start: int, stop: int) -> tuple[list[Item], list[dict]]:
    """Prompts of rows [start, stop) with their gold answers, and the rows that are no prompt."""
    items, bad = [], []
    for n, (row, parsed, problem, rid) in enumerate(source.rows(start, stop), start=start):
        if problem:
            bad.append({"id": rid, "row": n, "reason": "bad_input", "detail": problem,
                        "data": json.dumps(row, default=str)})
            continue
        after = parsed.messages[len(parsed.prompt):]
        gold = after[0]["content"] if after and after[0]["role"] == "assistant" else None
        items.append(Item(rid, n, _dress(cfg.prompts, parsed.prompt), gold))
    return items, bad


# -- one part ------------------------------------------------------------------------------------------


@dataclass
class Answer:
    text: str | None
    truncated: bool | None = None
    problem: str | None = None  # why there is none


def _encoder(engine):
    from roost.scorers.deita import _encode_with

    return getattr(engine, "encode", None) or _encode_with(engine.tokenizer)


def answer(engine, convs: list[list[dict]], sampling, seed: int, who: str) -> list[Answer]:
    """One answer per conversation (`engine.chat`); a prompt that leaves no room in the model's
    context gets none (`prompt_too_long`)."""
    from roost.engines.base import render_chat
    from roost.scorers.deita import engine_max_model_len

    limit, encode = engine_max_model_len(engine), _encoder(engine)
    out: list[Answer] = [Answer(None)] * len(convs)
    fits = []
    for i, conv in enumerate(convs):
        n = len(encode(render_chat(engine.tokenizer, conv, add_generation_prompt=True))) if limit else 0
        if limit and n >= limit:
            out[i] = Answer(None, None, f"prompt has {n} tokens, the {who}'s context is {limit}")
        else:
            fits.append(i)
    gens = engine.chat([convs[i] for i in fits], sampling, seed=seed, progress=f"open-ended {who} answers") if fits else []
    for i, gen in zip(fits, gens):
        c = gen.completions[0]
        out[i] = Answer(c.text.strip(), c.truncated)
    return out


class Judge:
    """P(model answer beats reference answer) per prompt, from the recipe's judge."""

    def __init__(self, spec, model_engine):
        self.spec = spec
        self._model_engine = model_engine
        self._scorer = self._pairwise = None

    def describe(self) -> dict:
        if self.spec.kind == "reward_model":
            return {"kind": "reward_model", "rule": "P = sigmoid((r_model - r_reference) / temperature)",
                    "temperature": self.spec.temperature, "reward_model": self.scorer().describe()}
        return self.pairwise().describe()

    def scorer(self):
        if self._scorer is None:
            from roost.scorers.reward import get_reward_scorer

            self._scorer = get_reward_scorer(self.spec.reward_model)
        return self._scorer

    def pairwise(self):
        if self._pairwise is None:
            from roost.engines import get_engine
            from roost.judges.pairwise import PairwiseJudge, load_template

            engine = get_engine(self.spec.model) if self.spec.model is not None else self._model_engine()
            template = load_template(self.spec.template) if self.spec.template else None
            self._pairwise = PairwiseJudge(engine, template, source=self.spec.template, progress="open-ended judge")
        return self._pairwise

    def judge(self, prompts: list[list[dict]], model: list[str], reference: list[str]) -> list[dict]:
        """Per prompt: {p_win, reason, detail} and the judge's own numbers."""
        if self.spec.kind == "reward_model":
            return self._rewards(prompts, model, reference)
        return self._compare(prompts, model, reference)

    def _rewards(self, prompts, model, reference) -> list[dict]:
        from roost.synthesizers.sppo import bradley_terry

        convs: dict[str, list[dict]] = {}
        keys = []
        for p, a, b in zip(prompts, model, reference):
            pair = []
            for text in (a, b):
                conv = [*p, {"role": "assistant", "content": text}]
                key = json.dumps(conv, sort_keys=True)
                convs.setdefault(key, conv)
                pair.append(key)
            keys.append(pair)
        scored = dict(zip(convs, self.scorer().score(list(convs.values()), progress="open-ended rewards")))
        out = []
        for km, kr in keys:
            rm, rr = scored[km], scored[kr]
            row = {"model_reward": rm.value, "reference_reward": rr.value, "reason": None, "detail": None}
            if rm.value is None or rr.value is None:
                row.update(p_win=None, reason="reward_null", detail=rm.reason or rr.reason)
            else:
                row["p_win"] = bradley_terry([rm.value, rr.value], self.spec.temperature)[0][1]
            out.append(row)
        return out

    def _compare(self, prompts, model, reference) -> list[dict]:
        asked = [i for i, (a, b) in enumerate(zip(model, reference)) if a != b]
        prefs = self.pairwise().compare([(prompts[i], model[i], reference[i]) for i in asked]) if asked else []
        out = [{"p_win": 0.5, "reason": None, "detail": None} for _ in prompts]  # identical: a tie
        for i, pref in zip(asked, prefs):
            out[i] = {"p_win": pref.value, "judge_model_first": pref.a_first, "judge_reference_first": pref.b_first,
                      "reason": "judge_unreadable" if pref.value is None else None, "detail": pref.reason}
        return out


def evaluate_items(recipe, items: list[Item], *, part: int, model_engine, reference_engine, judge: Judge) -> list[dict]:
    """One outcome row per prompt: both answers, their tokens, the judge's numbers, P."""
    from roost.engines.base import derive_seed

    cfg = recipe.open_ended
    rows = [{name: None for name in OUTCOMES.names} | {"id": it.id, "row": it.row, "prompt": it.messages}
            for it in items]
    todo = []
    for it, row in zip(items, rows):
        if cfg.gold and it.gold is None:
            row.update(reason="no_gold_answer", detail="no assistant turn after the prompt in the input row")
        else:
            todo.append((it, row))
    if not todo:
        return rows
    seed = derive_seed(recipe.seed, "open_ended", part)  # the same for model and reference
    sampling = cfg.sampling.to_engine()
    engine = model_engine()
    convs = [it.messages for it, _ in todo]
    mine = answer(engine, convs, sampling, seed, "model")
    theirs = ([Answer(it.gold.strip()) for it, _ in todo] if cfg.gold
              else answer(reference_engine(), convs, sampling, seed, "reference"))
    encode = _encoder(engine)
    ready = []
    for (it, row), a, b in zip(todo, mine, theirs):
        row.update(model_answer=a.text, reference_answer=b.text, model_truncated=a.truncated,
                   reference_truncated=b.truncated)
        if a.text is None or b.text is None:
            row.update(reason="prompt_too_long", detail=a.problem or b.problem)
            continue
        row.update(model_tokens=len(encode(a.text)) if a.text else 0,
                   reference_tokens=len(encode(b.text)) if b.text else 0, identical=a.text == b.text)
        ready.append((it, row))
    if ready:
        verdicts = judge.judge([it.messages for it, _ in ready], [r["model_answer"] for _, r in ready],
                               [r["reference_answer"] for _, r in ready])
        for (_, row), verdict in zip(ready, verdicts):
            row.update(verdict)
    return rows


# -- the whole open-ended half ---------------------------------------------------------------------


def _part(out: Path, i: int) -> Path:
    return out / DIR / "outcomes" / f"part-{i:05d}.parquet"


def read_section(out: str | Path) -> dict | None:
    path = Path(out) / DIR / "summary.json"
    return json.loads(path.read_text()) if path.exists() else None


def check_resumable(recipe, out: Path) -> None:
    """Open-ended parts in OUT made by other settings: refused, one line (OUT/summary.json is
    checked by roost.evaluation.run.check_resumable)."""
    from roost.dataset.writer import read_roost_metadata
    from roost.errors import OutputMismatch

    folder = out / DIR / "outcomes"
    parts = sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []
    key = recipe.fingerprint()
    theirs = read_roost_metadata(parts[0]).get("fingerprint") if parts else None
    if theirs is not None and theirs != key:
        raise OutputMismatch(f"{out} holds an open-ended evaluation with other settings (hash {theirs}, this one "
                             f"{key}); choose another --out or delete it")


def run_open_ended(recipe, out: str | Path, *, say: Callable[[str], None] = lambda s: None) -> tuple[dict, object]:
    """Every part of the open-ended half, then its section of the summary. Returns (section,
    the evaluated model's engine or None when every part was done before)."""
    import pyarrow.parquet as pq

    from roost.dataset.writer import _with_meta, atomic_write_bytes, atomic_write_table, read_roost_metadata
    from roost.engines import get_engine
    from roost.errors import InputError

    out, cfg, key = Path(out), recipe.open_ended, recipe.fingerprint()
    check_resumable(recipe, out)
    source = open_prompts(cfg)
    stop = min(cfg.max_prompts or source.total, source.total)
    bounds = [(lo, min(lo + recipe.chunk_size, stop)) for lo in range(0, stop, recipe.chunk_size)]
    engines: dict[str, object] = {}

    def model_engine():
        if "model" not in engines:
            engines["model"] = get_engine(recipe.model)
        return engines["model"]

    def reference_engine():
        if "reference" not in engines:
            engines["reference"] = get_engine(cfg.reference.model)
        return engines["reference"]

    judge, bad = Judge(cfg.judge, model_engine), []
    for i, (lo, hi) in enumerate(bounds):
        items, unusable = read_items(source, cfg, lo, hi)
        bad += unusable
        path = _part(out, i)
        if path.exists() and read_roost_metadata(path).get("fingerprint") == key:
            continue
        rows = evaluate_items(recipe, items, part=i, model_engine=model_engine, reference_engine=reference_engine,
                              judge=judge)
        table = _with_meta(pa.Table.from_pylist(rows, schema=OUTCOMES), {"fingerprint": key, "rows": [lo, hi]})
        atomic_write_table(path, table)
        engines["judge"] = judge
        say(f"eval: open-ended part {i + 1}/{len(bounds)} ({len(items)} prompts)")
    rows = [r for i in range(len(bounds)) for r in pq.read_table(_part(out, i)).to_pylist()]
    if not rows:
        reasons = Counter(b["reason"] for b in bad)
        raise InputError(f"{cfg.prompts.path}: none of rows [0, {stop}) is a usable prompt "
                         f"({', '.join(f'{n} {r}' for r, n in reasons.items())})")
    if bad:
        atomic_write_table(out / DIR / "unusable.parquet", pa.Table.from_pylist(bad))
    old = read_section(out) or {}
    if cfg.gold:
        reference = {"kind": "gold", "path": cfg.prompts.path}
    else:
        reference = ({"kind": "model", "model": cfg.reference.model.model, "engine": engines["reference"].describe()}
                     if "reference" in engines else old.get("reference"))
    section = {
        "prompts": {"path": cfg.prompts.path, "rows": [0, stop], "total_rows": source.total, "read_as": source.shape.line()},
        "reference": reference,
        "judge": judge.describe() if "judge" in engines else old.get("judge"),
        "sampling": {**cfg.sampling.model_dump(), "seed": recipe.seed},
        **summarize(rows),
        "unusable": {"count": len(bad), "by_reason": dict(Counter(b["reason"] for b in bad)),
                     "ids": [b["id"] for b in bad[:50]]},
        "outcomes": str(out / DIR / "outcomes"),
    }
    atomic_write_bytes(out / DIR / "summary.json", json.dumps(section, indent=2, default=str).encode())
    return section, engines.get("model")


def preflight(recipe) -> None:
    """What a user can get wrong in `open_ended`, before any engine starts: the prompts read,
    the reference model and the judge load (a reward head; one-token answers)."""
    from roost.engines import ensure_available
    from roost.engines.config import local_model_problem
    from roost.errors import ModelError

    cfg = recipe.open_ended
    source = open_prompts(cfg)
    if cfg.gold:
        stop = min(cfg.max_prompts or source.total, source.total)
        items, _ = read_items(source, cfg, 0, stop)
        if not any(it.gold is not None for it in items):
            from roost.errors import InputError

            raise InputError(f"field 'open_ended.reference': gold, but none of rows [0, {stop}) of {cfg.prompts.path} "
                             "has an assistant answer after its prompt; give reference: {model: {...}}")

    def available(field: str, model: str, revision: str | None) -> None:
        try:
            ensure_available(model, revision)
            if Path(model).expanduser().exists() and (why := local_model_problem(model)):
                raise ModelError(f"model '{model}': {why}")
        except ModelError as e:
            raise ModelError(f"field '{field}': {e}") from None

    if not cfg.gold:
        available("open_ended.reference.model", cfg.reference.model.model, cfg.reference.model.revision)
    spec = cfg.judge
    if spec.kind == "reward_model":
        from roost.scorers.reward import RewardModelError, _hf_config, check_reward_head

        rm = spec.reward_model
        try:
            check_reward_head(_hf_config(rm), rm.model, rm.trust_remote_code)
        except RewardModelError as e:
            raise RewardModelError(f"field 'open_ended.judge.reward_model': {e}") from None
    else:
        from transformers import AutoTokenizer

        from roost.judges.pairwise import answer_token_ids, load_template

        judge = spec.model or recipe.model
        if spec.model is not None:
            available("open_ended.judge.model", judge.model, judge.revision)
        tokenizer = AutoTokenizer.from_pretrained(judge.tokenizer or judge.model, trust_remote_code=judge.trust_remote_code,
                                                  revision=judge.revision if judge.tokenizer is None else None)
        answer_token_ids(tokenizer, load_template(spec.template))
