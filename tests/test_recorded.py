"""What an output records: manifest.json with the data's file mode, no absolute path of the
machine that made it (roost.dataset.portable), the input's provenance when a curation reads a roost
output (roost.dataset.lineage), and the languages of the rows' text (roost.dataset.languages).

Real files throughout: shards written by roost's DatasetWriter, manifests by write_manifest,
a recipe validated and fingerprinted as `roost build` does.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from roost.dataset import portable
from roost.dataset.languages import detect, language_of
from roost.dataset.lineage import find_output, generator, input_provenance
from roost.dataset.writer import DatasetWriter, base_manifest, summarize, write_manifest
from roost.schemas import SFT_ROWS, row_id

REPO = Path(__file__).resolve().parents[1]


def _rows(n: int, text: str = "How do I sort a list of {i} numbers in Python?") -> list[dict]:
    out = []
    for i in range(n):
        conv = [{"role": "user", "content": text.format(i=i)}, {"role": "assistant", "content": f"Use sorted() ({i})."}]
        out.append({"id": row_id(conv), "messages": conv, "n_turns": 1, "model": "org/policy"})
    return out


def _build(root: Path, *, model: str, name: str = "made-here", shards: int = 2) -> Path:
    writer = DatasetWriter(root, SFT_ROWS, num_shards=shards)
    stats = [writer.write_shard(s, _rows(4), [], {"synthesizer": "magpie", "model": model}) for s in range(shards)]
    recipe = {"name": name, "model": {"model": model, "revision": None, "seed": 0}, "synthesizer": {"kind": "magpie"}}
    write_manifest(root, base_manifest("sft", recipe, "feedfeedfeedfeed", status="complete", schema="sft", split="train",
                                       num_shards=shards, synthesizer="magpie", model=model, seed=3, iteration=0,
                                       revision="local-sha256:0123456789abcdef",
                                       engine={"engine": "vllm", "model": model, "revision": "local-sha256:0123456789abcdef"},
                                       reward_model={"model": "org/rm", "revision": "r1"}, **summarize(stats)))
    return root


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- 1. file modes ------------------------------------------------------------------------------

@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_manifest_has_the_mode_of_the_shards_beside_it(tmp_path, umask, expected):
    old = os.umask(umask)
    try:
        out = _build(tmp_path / "out", model="org/policy")
        write_manifest(out, json.loads((out / "manifest.json").read_text()))  # rewritten over an existing one
    finally:
        os.umask(old)
    shard = next((out / "data").glob("*.parquet"))
    assert _mode(out / "manifest.json") == _mode(shard) == expected
    assert not [p for p in out.rglob("*.tmp")]  # no temp file left beside it


# -- 2. no absolute paths ---------------------------------------------------------------------

def _model_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "qwen2"}')
    (path / "tokenizer.json").write_text("{}")
    return path


def test_portable_paths_follow_the_documented_rules(tmp_path):
    out, cwd = tmp_path / "runs" / "out", tmp_path / "project"
    out.mkdir(parents=True)
    cwd.mkdir()
    model = _model_dir(tmp_path / "elsewhere" / "far" / "tiny-model")
    p = lambda s: portable.portable_path(s, out, cwd)  # noqa: E731

    assert p(str(cwd / ".cache" / "models" / "m")) == ".cache/models/m"  # inside the working directory
    assert p(str(out / ".cache")) == ".cache" and p(str(out)) == "."  # inside the output
    assert p(str(tmp_path / "runs" / "prompts.parquet")) == "../prompts.parquet"  # beside it
    assert p(str(tmp_path / "elsewhere" / "x.parquet")) == "../../elsewhere/x.parquet"  # two levels up at most
    from roost.engines.common import resolve_revision

    far = portable.portable_path(str(model), tmp_path / "a" / "b" / "c" / "out", cwd)
    assert far == f"tiny-model@{resolve_revision(str(model), None)}"  # a model: its name and the digest of its files
    generic = _model_dir(tmp_path / "elsewhere" / "far" / "minilm" / "model")
    assert portable.portable_path(str(generic), tmp_path / "a" / "b" / "c", cwd).startswith("minilm/model@local-sha256:")
    sha = "0123456789abcdef0123456789abcdef01234567"
    hub = f"/root/.cache/huggingface/hub/models--Qwen--Qwen2.5-1.5B/snapshots/{sha}"
    assert portable.portable_path(hub, tmp_path / "a" / "b" / "c", "/nonexistent-cwd") == f"Qwen/Qwen2.5-1.5B@{sha}"
    # what is not a local path stays as it is
    for value in ["</s>", "/", "org/model", "hf://org/data", "http://host:8000/v1", "/nonexistent-root-xyz/a/b",
                  "a/b/c", " /tmp/x/y", "/tmp/a\nb", "Step {k}:"]:
        assert p(value) == value
    # commands: each path inside them, nothing else
    text = f"python train.py --data {out}/iter-0/train-data --model {cwd}/m --lr 1e-5 --stop '</s>'"
    assert portable.portable_text(text, out, cwd) == "python train.py --data iter-0/train-data --model m --lr 1e-5 --stop '</s>'"


def test_manifest_records_no_absolute_path_and_the_fingerprint_is_the_live_recipe(tmp_path, monkeypatch):
    from roost.building.runner import Build
    from roost.recipe import validate_recipe

    project = tmp_path / "project"
    model = _model_dir(project / ".cache" / "models" / "tiny-chatml")
    prompts = project / "prompts.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": ["What is a list?", "What is a tuple?"]}), prompts)
    monkeypatch.chdir(project)
    raw = {"name": "pairs", "model": {"model": str(model), "seed": 0}, "output": {"shard_size": 2},
           "synthesizer": {"kind": "reward_pairs", "prompts": {"path": str(prompts)}, "k": 2,
                           "reward_model": {"model": str(model)}}}
    recipe = validate_recipe(raw)
    fingerprint = Build(recipe, tmp_path / "outs" / "pairs").fingerprint
    out = tmp_path / "outs" / "pairs"
    cache = out / ".cache"
    manifest = base_manifest("preference", recipe.model_dump(mode="json"), fingerprint, status="complete",
                             model=str(model), engine={"model": str(model), "revision": "local-sha256:ab"},
                             cache={"dir": str(cache)}, loop={"train": f"python t.py --data {out}/d --model {model}"})
    write_manifest(out, manifest)
    text = (out / "manifest.json").read_text()
    assert str(tmp_path) not in text and str(REPO) not in text and not portable.absolute_paths(json.loads(text), out)
    on_disk = json.loads(text)
    assert on_disk["recipe"]["model"]["model"] == on_disk["model"] == ".cache/models/tiny-chatml"
    assert on_disk["recipe"]["synthesizer"]["prompts"]["path"] == "prompts.parquet"
    assert on_disk["cache"]["dir"] == ".cache" and on_disk["loop"]["train"] == "python t.py --data d --model .cache/models/tiny-chatml"
    assert on_disk["engine"]["revision"] == "local-sha256:ab"  # the model's identity, unchanged
    assert on_disk["paths"] == portable.NOTE
    # only what is recorded changed: the live recipe's fingerprint is the recorded hash, so
    # the output resumes (roost.building.runner.Build.check_resumable compares exactly these)
    assert on_disk["recipe_hash"] == fingerprint == Build(validate_recipe(raw), out).fingerprint


# -- 4. the input's provenance ----------------------------------------------------------------

def test_a_curation_of_a_roost_output_records_what_made_its_input(tmp_path):
    built = _build(tmp_path / "magpie", model="org/policy", name="magpie-demo")
    for spec in (built, built / "data", built / "data" / "train-00000-of-00002.parquet", f"{built}/data/*.parquet"):
        assert find_output(spec) == built, spec
    assert find_output(tmp_path) is None and find_output("hf://org/data") is None

    curated = tmp_path / "curated"
    write_manifest(curated, base_manifest("curated", {"name": "curate-demo"}, "c0ffee", status="complete",
                                          input={"kind": "parquet", "path": str(built), "files": 2}, rows=8))
    m = json.loads((curated / "manifest.json").read_text())
    prov = m["input_provenance"]
    assert prov["kind"] == "build" and prov["synthesizer"] == "magpie" and prov["model"] == "org/policy"
    assert prov["recipe"] == {"name": "magpie-demo", "hash": "feedfeedfeedfeed"}
    assert prov["revision"] == "local-sha256:0123456789abcdef" and prov["seed"] == 3 and prov["rows"] == 8
    assert {(e["role"], e["model"], e["revision"]) for e in prov["models"]} == {
        ("policy", "org/policy", "local-sha256:0123456789abcdef"), ("reward model", "org/rm", "r1")}
    assert m["input"]["path"] == "../magpie"  # the recorded path is portable; the provenance was read first

    # a curation of that curation: the chain ends at the build that made the rows
    again = tmp_path / "again"
    write_manifest(again, base_manifest("curated", {"name": "curate-again"}, "beef", status="complete",
                                        input={"kind": "parquet", "path": str(curated)}))
    chain = json.loads((again / "manifest.json").read_text())["input_provenance"]
    made, curations = generator(chain)
    assert [c["recipe"]["name"] for c in curations] == ["curate-demo"] and made["recipe"]["name"] == "magpie-demo"

    # an input that is not a roost output records nothing
    plain = tmp_path / "plain.parquet"
    plain.write_bytes(b"")
    other = tmp_path / "other"
    write_manifest(other, base_manifest("curated", {}, "x", input={"kind": "parquet", "path": str(plain)}))
    assert "input_provenance" not in json.loads((other / "manifest.json").read_text())
    assert input_provenance(plain) is None


# -- 3. languages from the text ----------------------------------------------------------------

def test_language_of_a_text_by_its_script():
    cases = {
        "zh": "用一句话解释量子纠缠。请给出一个例子。", "ja": "量子もつれを一文で説明してください。例も挙げてください。",
        "ko": "양자 얽힘을 한 문장으로 설명하세요.", "ru": "Объясните квантовую запутанность одним предложением.",
        "uk": "Поясніть квантову заплутаність одним реченням, будь ласка.", "ar": "اشرح التشابك الكمي في جملة واحدة.",
        "fa": "درهم‌تنیدگی کوانتومی را در یک جمله توضیح دهید.", "el": "Εξηγήστε την κβαντική διεμπλοκή.",
        "he": "הסבר מהי הסתבכות קוונטית.", "hi": "क्वांटम उलझाव को एक वाक्य में समझाइए।", "th": "อธิบายความพัวพันเชิงควอนตัม",
        "en": "Explain what a Python list comprehension is and how to use it.",
        "fr": "Expliquez ce que est une liste en Python et comment la trier.",
        "de": "Erkläre, was eine Liste ist und wie man sie mit der Funktion sortiert.",
        "es": "Explica qué es una lista y cómo se ordena con la función sorted.",
    }
    for code, text in cases.items():
        assert language_of(text) == code, (code, text)
    # a Chinese question with a code answer is Chinese; kanji-heavy Japanese with kana is Japanese
    assert language_of("请写一个反转字符串的函数。\ndef rev(s):\n    return s[::-1]") == "zh"
    assert language_of("東京都の人口を教えてください") == "ja"
    assert language_of("12 + 30 = 42") is None


def test_detect_gives_every_language_above_the_threshold_most_common_first():
    zh, ja, en = "用一句话解释量子纠缠。", "量子もつれを説明してください。", "What is the difference between a list and a tuple?"
    assert detect([zh] * 10) == ["zh"] and detect([ja] * 10) == ["ja"]
    assert detect([zh] * 6 + [en] * 3 + [ja] * 1) == ["zh", "en", "ja"]
    assert detect([zh] * 19 + [en]) == ["zh"]  # 5% is under the 10% threshold
    assert detect([en] * 3 + ["x1 y2 zz"] * 3) == ["en"]  # Latin without telling words: the sample's Latin language
    assert detect(["Bonjour, comment est la vie ?"] * 2 + ["def f(x): return x"]) == ["fr"]
    assert detect(["123", "", "!!"]) == []
