"""`roost report`: its numbers against pyarrow on the same files, its figures per column set,
a self-contained page that real Chromium renders without errors, and one-line user errors.

The outputs here are written by roost's own DatasetWriter with the real row schemas (no vLLM),
shaped like `roost curate`, a reward-pairs build, a Step-DPO build and an iterate loop."""
from __future__ import annotations

import json
import math
import random
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from roost.cli import app
from roost.dataset.writer import DatasetWriter, Reject, write_manifest
from roost.report import card_markdown, figures, summarize, write_report
from roost.schemas import PREFERENCE_ROWS, SFT_ROWS, row_id

CHROMIUM = Path("/usr/bin/chromium")
WORDS = ["alpha", "beta", "gamma", "delta", "élan", "naïve", "日本語", "emoji🙂", "x", "longerword"]
PNG = b"\x89PNG\r\n\x1a\n"


def _text(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def _sft_rows(rng: random.Random, n: int) -> list[dict]:
    rows = []
    for i in range(n):
        msgs = [{"role": "system", "content": "Be brief."}] if i % 3 == 0 else []
        msgs += [{"role": "user", "content": f"q{i} " + _text(rng, 2, 20)},
                 {"role": "assistant", "content": _text(rng, 1, 40)}]
        if i % 4 == 0:  # a second turn: the instruction is still the first user turn, the response the last
            msgs += [{"role": "user", "content": _text(rng, 1, 5)}, {"role": "assistant", "content": _text(rng, 1, 60)}]
        if i == 7:  # one very long answer: a long tail the length histogram cuts at p99
            msgs[-1] = {"role": "assistant", "content": "z" * 20_000}
        deita = rng.uniform(0, 10) if i % 25 else (None if i % 50 else float("nan"))
        rows.append({"id": row_id(msgs), "messages": msgs, "n_turns": sum(m["role"] == "user" for m in msgs),
                     "nearest_similarity": rng.uniform(0.2, 0.9), "deita_score": deita, "reward": rng.gauss(0, 2)})
    return rows


SFT_EXTRA = [pa.field("nearest_similarity", pa.float64()), pa.field("deita_score", pa.float64()),
             pa.field("reward", pa.float64())]


@pytest.fixture(scope="module")
def sft_out(tmp_path_factory) -> Path:
    """A curated SFT output: 2 shards, rejects from heuristics and semantic dedup, a curate manifest."""
    root = tmp_path_factory.mktemp("report") / "curated"
    rng = random.Random(0)
    writer = DatasetWriter(root, SFT_ROWS.extend(SFT_EXTRA), num_shards=2)
    rows = _sft_rows(rng, 300)
    removed = {"too_short": 0, "semantic_duplicate": 0}
    for i, part in enumerate((rows[:160], rows[160:])):
        rejects = [Reject("heuristics", "too_short", {"messages": []}, id=f"short{i}{j}",
                          detail="instruction < 8 chars") for j in range(3 + i)]
        rejects += [Reject("semantic_dedup", "semantic_duplicate", {"messages": []}, id=f"dup{i}{j}",
                           detail=f"cosine {rng.uniform(0.9, 1.0):.4f} >= 0.9", duplicate_of=part[j]["id"])
                    for j in range(5 + 2 * i)]
        for r in rejects:
            removed[r.reason] += 1
        writer.write_shard(i, part, rejects, {"roost_version": "test"})
    n = len(rows)
    stages = [
        {"name": "validate", "rows_in": n + 19, "kept": n + 19, "removed": {}, "settings": {}},
        {"name": "heuristics", "rows_in": n + 19, "kept": n + 12, "removed": {"too_short": 7}, "settings": {}},
        {"name": "semantic_dedup", "rows_in": n + 12, "kept": n, "removed": {"semantic_duplicate": 12},
         "settings": {"kind": "semantic_dedup", "threshold": 0.9}},
        {"name": "deita", "rows_in": n, "kept": n, "removed": {}, "settings": {}},
    ]
    assert removed == {"too_short": 7, "semantic_duplicate": 12}
    write_manifest(root, {"roost_version": "0.1.0", "kind": "curated", "row_kind": "sft", "recipe": {"name": "t"},
                          "input": {"kind": "parquet", "path": "nowhere", "files": 2}, "input_rows": n + 19,
                          "stages": stages, "rows": n, "rejects": 19, "rejects_by_reason": removed})
    return root


PAIR_EXTRA = [pa.field("chosen_score", pa.float64()), pa.field("rejected_score", pa.float64()),
              pa.field("score_gap", pa.float64()), pa.field("difficulty", pa.string())]


def _pair_rows(rng: random.Random, n: int, iteration: int, threshold: float, longer: int = 0) -> list[dict]:
    rows = []
    for i in range(n):
        prompt = [{"role": "user", "content": _text(rng, 1, 6)}]
        if i % 2:  # multi-turn prompt: the instruction is its last user turn
            prompt += [{"role": "assistant", "content": _text(rng, 1, 6)},
                       {"role": "user", "content": f"last{i} " + _text(rng, 1, 12)}]
        chosen = [{"role": "assistant", "content": _text(rng, 3, 30 + longer)}]
        rejected = [{"role": "assistant", "content": _text(rng, 1, 20 + longer)}]
        c, r = rng.uniform(0, 5), rng.uniform(-5, 0)
        rows.append({"id": row_id(prompt, chosen, rejected), "prompt": prompt, "chosen": chosen, "rejected": rejected,
                     "method": "reward_ranked", "model": "m", "iteration": iteration, "chosen_score": c,
                     "rejected_score": r, "score_gap": c - r, "difficulty": "easy" if c - r >= threshold else "hard"})
    return rows


def _write_pairs(root: Path, rows: list[dict], threshold: float, shards: int = 2) -> Path:
    writer = DatasetWriter(root, PREFERENCE_ROWS.extend(PAIR_EXTRA), num_shards=shards)
    size = -(-len(rows) // shards)
    for i in range(shards):
        part = rows[i * size:(i + 1) * size]
        rejects = [Reject("reward_pairs", "all_samples_tied", {"prompt": []}, id=f"tie{i}")] if i == 0 else []
        subsets = {name: (writer.schema.arrow, [r for r in part if r["difficulty"] == name])
                   for name in ("easy", "hard")}
        writer.write_shard(i, part, rejects, {"roost_version": "test"}, subsets=subsets)
    write_manifest(root, {"roost_version": "0.1.0", "kind": "preference", "synthesizer": "reward_pairs", "model": "m",
                          "revision": "r1", "seed": 0, "sampling": {"temperature": 1.0}, "rows": len(rows),
                          "difficulty": {"threshold": threshold, "rule": "score_gap >= threshold is easy",
                                         "subsets": {"easy": "easy/train-*.parquet", "hard": "hard/train-*.parquet"}}})
    return root


@pytest.fixture(scope="module")
def pairs_out(tmp_path_factory) -> Path:
    """A reward-pairs build whose rows span iterations 0 and 1 (as mixed SPIN data does)."""
    rng = random.Random(1)
    rows = _pair_rows(rng, 40, 0, 5.0) + _pair_rows(rng, 30, 1, 5.0, longer=30)
    return _write_pairs(tmp_path_factory.mktemp("report") / "pairs", rows, 5.0)


@pytest.fixture(scope="module")
def loop_out(tmp_path_factory) -> Path:
    """An iterate loop: iterations.json and two builds, iter-0/data and iter-1/data."""
    root = tmp_path_factory.mktemp("report") / "loop"
    rng = random.Random(2)
    steps = []
    for t, n in ((0, 24), (1, 36)):
        _write_pairs(root / f"iter-{t}" / "data", _pair_rows(rng, n, t, 5.0, longer=20 * t), 5.0)
        steps.append({"iteration": t, "model": f"model-{t}", "data": str(root / f"iter-{t}" / "data"), "rows": n,
                      "status": "trained"})
    (root / "iterations.json").write_text(json.dumps({"iterations": steps, "loop": {"train": "train {data}"},
                                                      "status": "complete", "final_model": "model-2"}))
    return root


@pytest.fixture(scope="module")
def strings_out(tmp_path_factory) -> Path:
    """Step-DPO's shape: prompt, chosen and rejected as plain strings; no rejects folder at all."""
    root = tmp_path_factory.mktemp("report") / "step-dpo"
    rng = random.Random(3)
    table = pa.table({"id": [f"s{i}" for i in range(12)], "prompt": [_text(rng, 5, 30) for _ in range(12)],
                      "chosen": [_text(rng, 1, 8) for _ in range(12)],
                      "rejected": [_text(rng, 1, 8) for _ in range(12)],
                      "solve_rate": [rng.random() for _ in range(12)]})
    (root / "data").mkdir(parents=True)
    pq.write_table(table, root / "data" / "train-00000-of-00001.parquet")
    write_manifest(root, {"kind": "preference", "synthesizer": "step_dpo", "rows": 12})
    return root


def _rows(root: Path) -> list[dict]:
    return pq.read_table(sorted((root / "data").glob("*.parquet"))).to_pylist()


def _check_stats(stats: dict, values: list) -> None:
    v = np.array([x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))], dtype=float)
    assert stats["count"] == len(v)
    assert stats["mean"] == pytest.approx(v.mean())
    assert stats["min"] == v.min() and stats["max"] == v.max()
    assert stats["p50"] == pytest.approx(np.percentile(v, 50)) and stats["p90"] == pytest.approx(np.percentile(v, 90))


def _check_histogram(h, values: list, integer: bool) -> None:
    v = np.array([x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))], dtype=float)
    edges = np.array(h.edges)
    assert len(h.counts) == len(edges) - 1 and edges[0] <= v.min()
    counts, _ = np.histogram(np.clip(v, edges[0], edges[-1]), bins=edges)
    assert h.counts == counts.tolist()
    assert h.above == int((v >= edges[-1]).sum() if integer else (v > edges[-1]).sum())


def test_sft_summary_equals_pyarrow(sft_out):
    s = summarize(sft_out)
    rows = _rows(sft_out)
    rejects = pq.read_table(sorted((sft_out / "rejects").glob("*.parquet"))).to_pylist()
    assert (s.kind, s.row_kind, s.rows, s.rejects, s.files) == ("curated", "sft", len(rows), len(rejects), 2)

    first_user = [len(next(m["content"] for m in r["messages"] if m["role"] == "user")) for r in rows]
    last_answer = [len([m for m in r["messages"] if m["role"] == "assistant"][-1]["content"]) for r in rows]
    columns = {"instruction_chars": first_user, "response_chars": last_answer,
               **{c: [r[c] for r in rows] for c in ("deita_score", "reward", "nearest_similarity")}}
    assert set(s.stats) == set(columns) | {"removed_similarity"}
    for name, values in columns.items():
        _check_stats(s.stats[name], values)
        _check_histogram(s.histograms[name], values, integer=name.endswith("_chars"))
    assert s.stats["deita_score"]["count"] == len(rows) - 12  # null and NaN scores are not counted
    tail = s.histograms["response_chars"]  # the axis stops at p99, not at the 20,000-character answer
    assert tail.edges[-1] < 2_000 and 1 <= tail.above <= 3

    removed = [float(r["detail"].split()[1]) for r in rejects if r["reason"] == "semantic_duplicate"]
    _check_stats(s.stats["removed_similarity"], removed)
    _check_histogram(s.histograms["removed_similarity"], removed, integer=False)
    assert s.histograms["removed_similarity"].edges == s.histograms["nearest_similarity"].edges
    assert s.thresholds["semantic_dedup"] == 0.9

    expected = {}
    for r in rejects:
        expected[(r["stage"], r["reason"])] = expected.get((r["stage"], r["reason"]), 0) + 1
    assert {(r["stage"], r["reason"]): r["rows"] for r in s.rejects_by_reason} == expected
    assert [st["name"] for st in s.stages] == ["validate", "heuristics", "semantic_dedup", "deita"]
    assert s.iterations == []
    assert len(s.sample) == 5 and s.sample[0]["id"] == rows[0]["id"]
    assert all(len(r["response"]) <= 401 for r in s.sample)


def test_preference_summary_equals_pyarrow(pairs_out):
    s = summarize(pairs_out)
    rows = _rows(pairs_out)
    assert (s.kind, s.row_kind, s.rows, s.rejects) == ("preference", "preference", 70, 1)
    last_user = [len([m for m in r["prompt"] if m["role"] == "user"][-1]["content"]) for r in rows]
    for name, values in {"instruction_chars": last_user,
                         "chosen_chars": [len(r["chosen"][-1]["content"]) for r in rows],
                         "rejected_chars": [len(r["rejected"][-1]["content"]) for r in rows],
                         "score_gap": [r["score_gap"] for r in rows]}.items():
        _check_stats(s.stats[name], values)
        _check_histogram(s.histograms[name], values, integer=name.endswith("_chars"))
    assert s.histograms["chosen_chars"].edges == s.histograms["rejected_chars"].edges  # drawn over each other
    assert s.thresholds["difficulty"] == 5.0
    easy = sum(r["difficulty"] == "easy" for r in rows)
    assert s.subsets == {"easy": easy, "hard": len(rows) - easy}
    assert "reward" not in s.stats and "deita_score" not in s.stats and "nearest_similarity" not in s.stats

    # rows of two iterations: compared per iteration, from the `iteration` column
    assert [(it["iteration"], it["rows"]) for it in s.iterations] == [(0, 40), (1, 30)]
    chosen1 = [len(r["chosen"][-1]["content"]) for r in rows if r["iteration"] == 1]
    assert s.iterations[1]["stats"]["chosen_chars"]["mean"] == pytest.approx(np.mean(chosen1))
    assert s.iterations[1]["stats"]["chosen_chars"]["p50"] == pytest.approx(np.median(chosen1))


def test_iterate_loop_is_compared_per_iteration(loop_out):
    s = summarize(loop_out)
    assert s.kind == "iterate" and s.rows == 60 and s.rejects == 2
    assert [(it["iteration"], it["rows"], it["rejects"], it["model"]) for it in s.iterations] == [
        (0, 24, 1, "model-0"), (1, 36, 1, "model-1")]
    for it in s.iterations:
        rows = _rows(loop_out / f"iter-{it['iteration']}" / "data")
        gaps = [r["score_gap"] for r in rows]
        assert it["stats"]["score_gap"]["mean"] == pytest.approx(np.mean(gaps))
    assert "iterations" in figures(s)


def test_figures_follow_the_columns(sft_out, pairs_out, loop_out, strings_out):
    expected = {
        sft_out: ["lengths", "deita", "reward", "dedup-similarity", "stages", "rejects"],
        pairs_out: ["lengths", "score-gap", "rejects", "iterations"],
        loop_out: ["lengths", "score-gap", "rejects", "iterations"],
        strings_out: ["lengths", "solve-rate"],  # no rejects/ folder, no stages: those figures are skipped
    }
    for out, names in expected.items():
        figs = figures(summarize(out))
        assert list(figs) == names, out
        assert all(png.startswith(PNG) and len(png) > 5000 for png in figs.values())
    s = summarize(strings_out)
    prompts = pq.read_table(strings_out / "data").column("prompt").to_pylist()
    assert s.stats["instruction_chars"]["max"] == max(len(p) for p in prompts)  # plain strings are measured whole


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.urls: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.urls += [(tag, k, v or "") for k, v in attrs if k in ("src", "href", "srcset", "action", "data")]


def test_page_is_self_contained(sft_out):
    html = write_report(sft_out)
    assert html == sft_out / "report" / "report.html"
    page = html.read_text()
    parser = _Links()
    parser.feed(page)
    assert not {"script", "link", "iframe", "object"} & set(parser.tags)
    assert parser.urls and all(tag == "img" and k == "src" and v.startswith("data:image/png;base64,")
                               for tag, k, v in parser.urls)
    assert "http://" not in page and "https://" not in page
    pngs = sorted(p.stem for p in (sft_out / "report" / "figures").glob("*.png"))
    assert pngs == sorted(figures(summarize(sft_out))) and parser.tags.count("img") == len(pngs)
    assert "characters" in page and f"{len(_rows(sft_out)):,}" in page


def test_card_markdown(sft_out):
    s = summarize(sft_out)
    md = card_markdown(s, {"lengths": "report/figures/lengths.png", "rejects": "report/figures/rejects.png"})
    assert "| semantic_dedup | 312 | 300 | semantic_duplicate: 12 |" in md
    assert "| semantic_dedup | semantic_duplicate | 12 |" in md
    assert "### Lengths (characters)" in md and "| instruction_chars | 300 |" in md
    assert "| deita_score | 288 |" in md
    assert "![Instruction and response lengths](report/figures/lengths.png)" in md
    assert "![Rejects by stage and reason](report/figures/rejects.png)" in md


def test_cli_report_and_its_user_errors(tmp_path, pairs_out):
    result = CliRunner().invoke(app, ["report", str(pairs_out), "--html", str(tmp_path / "r" / "pairs.html")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r" / "pairs.html").is_file() and str(tmp_path / "r" / "pairs.html") in result.output

    not_roost = tmp_path / "not-roost"
    (not_roost / "data").mkdir(parents=True)
    pq.write_table(pa.table({"text": ["a"]}), not_roost / "data" / "x.parquet")
    empty = tmp_path / "empty"
    DatasetWriter(empty, SFT_ROWS, num_shards=1).write_shard(0, [], [], {})
    write_manifest(empty, {"kind": "sft", "rows": 0})
    no_data = tmp_path / "no-data"
    no_data.mkdir()
    (no_data / "manifest.json").write_text("{}")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    cases = [(not_roost, "not a roost output (no manifest.json)"), (empty, "empty (0 rows"), (no_data, "empty (0 rows"),
             (broken, "manifest.json: unreadable"), (tmp_path / "absent", "no such directory")]
    for out, needle in cases:
        result = CliRunner().invoke(app, ["report", str(out)])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and needle in lines[0], (out, result.output)
        assert not (out / "report").exists()


@pytest.mark.skipif(not CHROMIUM.exists(),
                    reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")
def test_page_renders_in_chromium(pairs_out, tmp_path):
    from playwright.sync_api import sync_playwright

    html = write_report(pairs_out, tmp_path / "report.html")
    n_figures = len(list((pairs_out / "report" / "figures").glob("*.png")))
    errors, requests = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
            page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("request", lambda r: requests.append(r.url))
            page.goto(html.as_uri(), wait_until="load")
            images = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt])")
            headings = page.locator("h2").all_inner_texts()
        finally:
            browser.close()
    assert errors == []
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []  # nothing fetched: it opens offline
    assert len(images) == n_figures == 4
    assert all(complete and width > 0 for complete, width, _ in images), images
    assert "Per-iteration comparison" in headings and "Sample rows" in headings
