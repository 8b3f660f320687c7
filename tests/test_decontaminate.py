"""Benchmark decontamination: the n-gram rule against a plain statement of it, planted
contamination (precision / recall table), and `roost curate` on SFT and preference rows."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from roost.algorithms.decontaminate import NgramIndex, tokens
from roost.cli import app
from roost.schemas import MESSAGES

REPO = Path(__file__).resolve().parents[1]
BENCHMARK = REPO / "data" / "benchmark_word_problems.jsonl"
RECIPE = REPO / "recipes" / "curate-decontaminate.yaml"


def _bench():
    """bench/bench_decontaminate.py: the planted table and the plain-Python rule live there."""
    spec = importlib.util.spec_from_file_location("bench_decontaminate", REPO / "bench" / "bench_decontaminate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _items() -> list[dict]:
    return [json.loads(line) for line in BENCHMARK.read_text().splitlines()]


def _read(out: Path, kind: str) -> list[dict]:
    return [r for f in sorted((out / kind).glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


# ---------------------------------------------------------------- the n-gram rule -----------

def test_overlap_is_the_share_of_the_item_covered_by_shared_ngrams():
    item = " ".join(f"w{i}" for i in range(30))  # 30 words
    other = "Write a persuasive essay about the importance of public libraries in small towns today."
    index = NgramIndex([other, item], n=13)
    words = item.split()
    texts = [
        "Please help! " + item.upper() + "!!! Thanks a lot, friend.",  # verbatim inside a longer text
        " ".join(words[:20] + ["CHANGED"] + words[21:]),  # one word changed: 20 + 0 (9 < 13 words left)
        " ".join(words[:10] + ["x"] + words[11:]),  # words 11..29 (19) covered
        " ".join(words[:12]),  # 12 words: no 13-gram
        "nothing in common at all",
    ]
    share, best = index.match(texts)
    assert best.tolist() == [1, 1, 1, -1, -1]
    np.testing.assert_allclose(share, [1.0, 20 / 30, 19 / 30, 0.0, 0.0])


def test_every_language_is_a_language():
    # Chinese has no spaces: its characters are the words, so copies are caught like English
    zh = "小明有十五个苹果，他把其中的三分之一送给了小红，又从商店买了八个苹果。请问小明现在一共有多少个苹果？"
    assert len(tokens(zh)) > 40 and tokens("ＡＢＣ Straße") == ["abc", "strasse"]
    index = NgramIndex([zh, "How many apples does Xiao Ming have now after giving a third of them away?"])
    share, best = index.match(["请解答下面的数学题：" + zh, "小明喜欢吃苹果。", zh.replace("八", "九")])
    assert best[0] == 0 and share[0] == 1.0
    assert share[1] == 0.0
    assert best[2] == 0 and 0.5 < share[2] < 1.0  # one character changed near the end


def test_short_items_match_whole_and_tiny_items_only_by_equality():
    items = ["What is the sum of all positive divisors of 36?",  # 10 words < 13: matched whole
             "What is 2 + 2?",  # 5 words < min_words 8: only a row equal to it
             "",  # ignored
             "What is the sum of all positive divisors of 36?"]  # a repeat: the first one is named
    index = NgramIndex(items, n=13, min_words=8)
    assert index.settings["items_whole"] == 2 and index.settings["items_equal_only"] == 1
    assert index.settings["items_empty"] == 1
    share, best = index.match([
        "Quick one: what is the sum of all positive divisors of 36? Thanks!",
        "What is the sum of all positive divisors of 84?",
        "what is 2+2 ?",
        "What is 2 + 2? And why is it not 5?",
        "",
    ])
    assert best.tolist() == [0, -1, 1, -1, -1]
    assert share.tolist() == [1.0, 0.0, 1.0, 0.0, 0.0]


def test_numpy_index_matches_the_plain_python_rule():
    # Random items and texts over a small vocabulary (English words and CJK characters), texts
    # made of pieces of items with edits, so overlaps of every size, repeats, short and tiny
    # items, ties; the numpy index must give the plain statement's best item and overlap.
    matched = 0
    bench = _bench()
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(25)] + list("苹果小明的个有")
    for trial in range(30):
        n = int(rng.integers(2, 8))
        min_words = int(rng.integers(1, n + 2))
        items = []
        for _ in range(int(rng.integers(1, 25))):
            k = int(rng.integers(0, 3 * n))
            items.append(" ".join(rng.choice(vocab, k).tolist()))
        texts = []
        for _ in range(40):
            parts = []
            for _ in range(int(rng.integers(0, 4))):
                if rng.random() < 0.6 and items:
                    ws = items[int(rng.integers(len(items)))].split()
                    a = int(rng.integers(0, len(ws) + 1))
                    piece = ws[a:a + int(rng.integers(0, len(ws) + 1))] if rng.random() < 0.5 else ws
                    if piece and rng.random() < 0.3:
                        piece[int(rng.integers(len(piece)))] = "edit"
                    parts += piece
                else:
                    parts += rng.choice(vocab, int(rng.integers(0, 2 * n))).tolist()
            texts.append(" ".join(parts))
        index = NgramIndex(items, n=n, min_words=min_words, chunk=int(rng.integers(1, 30)))  # built by chunks
        share, best = index.match(texts)
        ref_share, ref_best = bench.baseline_match(bench.baseline_index(items, n, min_words), texts)
        assert best.tolist() == ref_best.tolist(), (trial, n, min_words)
        np.testing.assert_allclose(share, ref_share, err_msg=f"trial {trial}")
        matched += int(((share > 0) & (share < 1)).sum())
    assert matched > 100  # partial overlaps, not only all-or-nothing


# ---------------------------------------------------------------- planted contamination -----

@pytest.fixture(scope="module")
def embedder():
    from roost.engines.embeddings import Embedder

    return Embedder()


def test_planted_contamination_precision_and_recall(embedder, capsys):
    bench = _bench()
    table = bench.planted_table(bench.planted_scores(embedder))
    with capsys.disabled():
        print("\n" + bench.format_table(table))
    rows = {(r["check"], r["min_overlap"], r["threshold"]): r for r in table}
    ngram, emb, both = rows[("n-gram", 0.5, None)], rows[("embedding", None, 0.9)], rows[("both", 0.5, 0.9)]
    # n-gram: every verbatim copy (in English, Chinese, Japanese, code), and nothing clean
    assert ngram["recall_exact"] == 1.0 and ngram["clean_removed"] == 0 and ngram["precision"] == 1.0
    # embedding at the default threshold: no clean row, most exact copies, some paraphrases
    assert emb["clean_removed"] == 0 and emb["recall_exact"] >= 0.9 and emb["recall_paraphrase"] >= 0.2
    # both: at least as much as either, still no clean row; every reject names the planted item
    assert both["recall_all"] >= max(ngram["recall_all"], emb["recall_all"]) and both["clean_removed"] == 0
    assert both["recall_exact"] == 1.0
    assert all(r["wrong_item"] == 0 for r in table if r["clean_removed"] == 0)
    # looser settings find more copies with changed numbers, still without clean rows here
    assert rows[("both", 0.3, 0.8)]["recall_all"] > both["recall_all"]


def test_stage_decides_as_the_table_says(tmp_path, embedder):
    """The stage in `curate`, at its defaults, removes exactly the rows the table's `both` row
    counts, each reject naming the planted item and its measure."""
    from roost.curation.runner import curate
    from roost.recipe import CurateRecipe

    bench = _bench()
    scores = bench.planted_scores(embedder)
    expected = (scores["share"] >= 0.5) | (scores["sim"] >= 0.9)
    recipe = CurateRecipe.model_validate({"input": {"path": str(REPO / "data" / "decontam_rows.jsonl")}, "stages": [
        {"kind": "decontaminate", "batch_size": 16, "benchmarks": [
            {"name": "word-problems", "path": str(BENCHMARK), "text_column": "question", "id_column": "id"}]}]})
    out = tmp_path / "out"
    manifest = curate(recipe, out, progress=False)
    rejects = _read(out, "rejects")
    rows = [json.loads(line) for line in (REPO / "data" / "decontam_rows.jsonl").read_text().splitlines()]
    removed = {json.loads(r["record"])["instruction"] for r in rejects}
    assert [r["instruction"] in removed for r in rows] == expected.tolist()
    pattern = re.compile(r"^word-problems#([\w-]+) "
                         r"(overlap \d\.\d\d >= 0\.5|cosine 0\.9\d{3} >= 0\.9|cosine 1\.0000 >= 0\.9)$")
    for r in rejects:
        record = json.loads(r["record"])
        m = pattern.match(r["detail"])
        assert m and m.group(1) == record["benchmark_item"], r["detail"]
        assert r["reason"] == ("contaminated_ngram" if "overlap" in r["detail"] else "contaminated_embedding")
        assert r["stage"] == "decontaminate" and r["duplicate_of"] is None
    assert {r["reason"] for r in rejects} == {"contaminated_ngram", "contaminated_embedding"}
    (stage,) = [s for s in manifest["stages"] if s["name"] == "decontaminate"]
    (info,) = stage["settings"]["benchmarks"]
    assert info["sha256"] == hashlib.sha256(BENCHMARK.read_bytes()).hexdigest()
    assert info["rows"] == info["items"] == len(_items())
    assert stage["settings"]["embedding_index"]["rows"] == len(_items())
    assert stage["settings"]["ngram_index"]["n"] == 13


# ---------------------------------------------------------------- roost curate (CLI) --------

def _conv(q: str, a: str = "Here is a careful and complete answer to that question.") -> list[dict]:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def test_cli_curate_decontaminates_sft_rows(tmp_path, monkeypatch):
    items = {b["id"]: b["question"] for b in _items()}
    rows = [
        {"messages": _conv(items["wp-01"]), "source": "copy"},
        {"messages": _conv("Solve this, please: " + items["zh-01"]), "source": "copy"},
        {"messages": _conv("Twice every week, James sends each of his two friends a letter that is three pages long. "
                           "Over a full year, what is the total number of pages he writes?"), "source": "paraphrase"},
        {"messages": _conv(items["wp-01"].lower()), "source": "exact-dup"},  # same normalized text as row 0
        {"messages": _conv("How do I reverse a list in Python?"), "source": "clean"},
        {"messages": _conv("What is the capital of France?"), "source": "clean"},
    ]
    path = tmp_path / "sft.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([("messages", MESSAGES), ("source", pa.string())])), path)
    monkeypatch.chdir(REPO)  # the recipe names its benchmark relative to the repository
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["curate", str(path), "--out", str(out), "--recipe", str(RECIPE)])
    assert result.exit_code == 0, result.output
    kept = _read(out, "data")
    assert sorted(r["source"] for r in kept) == ["clean", "clean"]
    rejects = {json.loads(r["record"])["source"]: r for r in _read(out, "rejects")}
    assert rejects["exact-dup"]["reason"] == "exact_duplicate"  # exact_dedup ran first
    copies = [r for r in _read(out, "rejects") if json.loads(r["record"])["source"] == "copy"]
    assert sorted(r["detail"] for r in copies) == ["word-problems#wp-01 overlap 1.00 >= 0.5",
                                                   "word-problems#zh-01 overlap 1.00 >= 0.5"]
    assert rejects["paraphrase"]["reason"] == "contaminated_embedding"
    assert re.fullmatch(r"word-problems#wp-03 cosine 0\.9\d{3} >= 0\.9", rejects["paraphrase"]["detail"])
    manifest = json.loads((out / "manifest.json").read_text())
    stage = next(s for s in manifest["stages"] if s["name"] == "decontaminate")
    assert stage["removed"] == {"contaminated_ngram": 2, "contaminated_embedding": 1}
    assert stage["settings"]["view"] == "first_instruction"
    assert stage["settings"]["benchmarks"][0]["sha256"] == hashlib.sha256(BENCHMARK.read_bytes()).hexdigest()
    assert "decontaminate" in result.output


def test_cli_curate_decontaminates_preference_rows_and_their_answers(tmp_path):
    items = {b["id"]: b["question"] for b in _items()}

    def pref(q, good="A careful, complete and correct answer.", bad="No."):
        return {"prompt": [{"role": "user", "content": q}], "chosen": [{"role": "assistant", "content": good}],
                "rejected": [{"role": "assistant", "content": bad}]}

    rows = [pref("Explain recursion with an example."),
            pref("Question: " + items["code-02"]),  # the prompt copies a benchmark item
            pref("Give me a practice problem about money.", good="Try this one. " + items["wp-07"]),  # the answer does
            pref("Give me a practice problem about trains.", bad=items["wp-04"]),  # the rejected answer does
            pref("What is the capital of France?")]
    schema = pa.schema([pa.field(c, MESSAGES) for c in ("prompt", "chosen", "rejected")])
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(json.dumps({"stages": [
        {"kind": "heuristics"}, {"kind": "exact_dedup"},
        {"kind": "decontaminate", "check_responses": True, "embedding": {"enabled": False},
         "benchmarks": [{"name": "wp", "path": str(BENCHMARK), "text_column": "question", "id_column": "id"}]}]}))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["curate", str(path), "--out", str(out), "--recipe", str(recipe)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["row_kind"] == "preference"
    kept = [r["prompt"][0]["content"] for r in _read(out, "data")]
    assert kept == ["Explain recursion with an example.", "What is the capital of France?"]
    details = sorted(r["detail"] for r in _read(out, "rejects"))
    assert details == ["wp#code-02 overlap 1.00 >= 0.5", "wp#wp-04 overlap 1.00 >= 0.5 in rejected",
                       "wp#wp-07 overlap 1.00 >= 0.5 in chosen"]
    stage = next(s for s in manifest["stages"] if s["name"] == "decontaminate")
    assert stage["settings"]["views"] == ["prompt", "chosen", "rejected"]
    assert "embedding_index" not in stage["settings"]


def test_bad_benchmark_sets_exit_2_naming_the_field(tmp_path):
    path = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist([{"messages": _conv("What is the capital of France?")}],
                                        schema=pa.schema([("messages", MESSAGES)])), path)
    notjson = tmp_path / "broken.jsonl"
    notjson.write_text('{"question": "ok"}\n{not json\n')
    notparquet = tmp_path / "bench.parquet"
    notparquet.write_text("not parquet at all")

    def run(benchmark: dict, **stage):
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(json.dumps({"stages": [
            {"kind": "heuristics"},
            {"kind": "decontaminate", "benchmarks": [{"name": "gsm8k", "text_column": "question", **benchmark}], **stage}]}))
        result = CliRunner().invoke(app, ["curate", str(path), "--out", str(tmp_path / "out"), "--recipe", str(recipe)])
        assert result.exit_code == 2, result.output
        return " ".join(result.output.split())

    where = "stages[1] (decontaminate): benchmarks[0] (gsm8k)"
    assert f"{where}.path: {tmp_path}/nope.jsonl: no such file" in run({"path": str(tmp_path / "nope.jsonl")})
    out = run({"path": str(BENCHMARK), "text_column": "questin"})
    assert f"{where}.text_column: no column 'questin' in {BENCHMARK}" in out and "(columns: id, question)" in out
    assert f"{where}.id_column: no column 'qid'" in run({"path": str(BENCHMARK), "id_column": "qid"})
    assert f"{where}.path: {notjson}: not valid JSON Lines" in run({"path": str(notjson)})
    assert f"{where}.path: {notparquet}: cannot read" in run({"path": str(notparquet)})
    assert f"{where}.path: hf://no-such-org/no-such-benchmark: cannot open config None split 'test'" in run(
        {"path": "hf://no-such-org/no-such-benchmark"})
    # config errors of the stage itself: pydantic's, one line naming the field
    assert "stages[1](decontaminate).benchmarks" in run({"path": str(BENCHMARK), "text_column": ""})
    assert "nothing to check" in run({"path": str(BENCHMARK)}, ngram={"enabled": False},
                                     embedding={"enabled": False})
    assert "stages[1](decontaminate).ngram.min_overlap" in run({"path": str(BENCHMARK)}, ngram={"min_overlap": 0})


def test_hub_benchmark_with_list_valued_text(tmp_path, monkeypatch):
    """hf:// sets are read through `datasets` (config, split and revision passed on); a cell
    holding a list of strings (MT-Bench's `turns`) is one item per string."""
    import datasets

    from roost.curation.runner import curate
    from roost.recipe import CurateRecipe

    turns = [["Compose an engaging travel blog post about a recent trip to Hawaii, highlighting cultural "
              "experiences and must-see attractions.",
              "Rewrite your previous response. Start every sentence with the letter A."],
             ["Draft a professional email seeking your supervisor's feedback on the Quarterly Financial Report you "
              "prepared.", "Take a moment to evaluate and critique your own response."]]
    asked = {}

    def fake_load_dataset(path, name=None, split=None, revision=None, streaming=False):
        asked.update(path=path, name=name, split=split, revision=revision, streaming=streaming)
        return datasets.Dataset.from_list([{"question_id": 81 + i, "turns": t} for i, t in enumerate(turns)]
                                          ).to_iterable_dataset()

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    path = tmp_path / "in.parquet"
    rows = [{"messages": _conv(turns[1][0])}, {"messages": _conv("Rewrite your previous response. Start every "
                                                                 "sentence with the letter A.")},
            {"messages": _conv("Compose a short poem about the ocean at night, please.")}]
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([("messages", MESSAGES)])), path)
    recipe = CurateRecipe.model_validate({"input": {"path": str(path)}, "stages": [
        {"kind": "decontaminate", "embedding": {"enabled": False}, "benchmarks": [
            {"name": "mt-bench", "path": "hf://example/mt_bench", "config": "default", "split": "train",
             "revision": "v1", "text_column": "turns", "id_column": "question_id"}]}]})
    manifest = curate(recipe, tmp_path / "out", progress=False)
    assert asked == {"path": "example/mt_bench", "name": "default", "split": "train", "revision": "v1", "streaming": True}
    assert sorted(r["detail"] for r in _read(tmp_path / "out", "rejects")) == [
        "mt-bench#81[1] overlap 1.00 >= 0.5", "mt-bench#82[0] overlap 1.00 >= 0.5"]
    (info,) = manifest["stages"][1]["settings"]["benchmarks"]
    assert info["rows"] == 2 and info["items"] == 4 and info["dataset"] == "example/mt_bench"
    assert info["revision"] == "v1" and len(info["content_sha256"]) == 64  # offline: the revision asked for


def test_reference_index_is_exact_nearest_neighbour():
    from roost.algorithms.semantic_dedup import ReferenceIndex

    rng = np.random.default_rng(1)
    ref = rng.standard_normal((300, 32)).astype(np.float32)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    q = rng.standard_normal((1000, 32)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    index = ReferenceIndex(ref, batch_size=128)
    sim, idx = index.nearest(q)
    full = q @ ref.T
    assert idx.tolist() == full.argmax(axis=1).tolist()
    np.testing.assert_allclose(sim, full.max(axis=1), atol=1e-5)
    assert index.settings["index"] == "flat" and index.settings["rows"] == 300
    sim, idx = ReferenceIndex(np.zeros((0, 32), np.float32)).nearest(q[:3])
    assert idx.tolist() == [-1, -1, -1] and np.isnan(sim).all()


def test_editing_a_benchmark_file_in_place_is_a_new_recipe(tmp_path):
    """The fingerprint covers the benchmark's bytes, not only its path: an output curated
    against the old file is never taken as finished for the new one."""
    from roost.recipe import CurateRecipe, validate

    bench = tmp_path / "bench.jsonl"
    bench.write_text((REPO / "data" / "benchmark_word_problems.jsonl").read_text())
    raw = {"input": {"path": "x"}, "stages": [{"kind": "decontaminate",
                                               "benchmarks": [{"name": "b", "path": str(bench), "text_column": "question"}]}]}
    before = validate(CurateRecipe, raw, "t").fingerprint()
    assert validate(CurateRecipe, raw, "t").fingerprint() == before  # stable
    with bench.open("a") as f:
        f.write('{"id": "new", "question": "A train leaves at noon and travels 60 miles an hour for three hours."}\n')
    assert validate(CurateRecipe, raw, "t").fingerprint() != before
