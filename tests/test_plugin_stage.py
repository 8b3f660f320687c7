"""A curation stage added from outside roost/stages/ (here, this test file) with nothing else
edited: its config validates in recipes, its flag is `roost curate`'s (and listed by --help), its
score column is what a later selection ranks by, its rows' drops land in rejects with its reason,
and `roost report` draws its panel. Real Parquet, FAISS selection and matplotlib; no model."""
from __future__ import annotations

import json
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from roost.cli import app
from roost.schemas import MESSAGES
from roost.stages.base import STAGES, Annotation, Annotator, Drop, Option, Panel, StageConfig, setting


class WordsConfig(StageConfig):
    kind: Literal["words"]
    min_words: int = 0


class Words(Annotator):
    """Counts the words of the response; drops responses shorter than `min_words`."""

    kind = "words"
    Config = WordsConfig
    score_columns = ("words",)
    uses_embedder = False
    options = (Option("min_words", int, "words: drop responses with fewer words (adds the words stage)",
                      setting("min_words")),)
    report_panels = (Panel("words", "Words per response", "words", ("words",), labels={"words": "words in the response"}),)

    def fields(self) -> list[pa.Field]:
        return [pa.field("words", pa.float64())]

    def annotate(self, rows) -> list[Annotation]:
        out = []
        for row in rows:
            n = len(row.view("response").split())
            drop = Drop("few_words", f"{n} < {self.config.min_words}") if n < self.config.min_words else None
            out.append(Annotation({"words": float(n)}, drop))
        return out


@pytest.fixture
def words_stage():
    """The stage registered as a user's module registers it (`@STAGES.register` on the class),
    for this test only: the rest of the session sees roost's own stages."""
    STAGES.register(Words)
    yield Words
    STAGES.unregister(Words.kind)


ANSWERS = ["Yes.", "It is Paris, the capital and largest city of France.", "Use reversed() or slicing with a step of -1.",
           "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen inside the leaves of plants.",
           "Leaves fall", "Two, three and five are the primes below six, and seven is the next one after them."]
QUESTIONS = ["Is water wet?", "What is the capital of France?", "How do I reverse a list in Python?",
             "Explain photosynthesis to a ten year old.", "Write a haiku about autumn leaves.", "Name some small primes."]


def test_a_stage_registered_from_a_test_file_runs_through_curate_report_and_help(tmp_path, words_stage):
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in zip(QUESTIONS, ANSWERS)]
    data = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([pa.field("messages", MESSAGES)])), data)

    help_text = CliRunner().invoke(app, ["curate", "--help"], env={"COLUMNS": "200"}).output
    assert "--min-words" in help_text and "words: drop responses with fewer words" in help_text

    out = tmp_path / "curated"
    result = CliRunner().invoke(app, ["curate", str(data), "--out", str(out), "--no-semantic", "--min-words", "3",
                                      "--budget", "2", "--tau", "0.99"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["name"] for s in manifest["stages"]][-2:] == ["words", "selection"]
    assert manifest["stages"][-2]["removed"] == {"few_words": 2}  # "Yes." and "Leaves fall"
    kept = [r for f in sorted((out / "data").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    # the selection ranked by the new stage's score: the two responses with the most words
    assert sorted((r["words"] for r in kept), reverse=True) == sorted((float(len(a.split())) for a in ANSWERS),
                                                                      reverse=True)[:2]
    rejects = [r for f in sorted((out / "rejects").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert sorted(r["reason"] for r in rejects if r["stage"] == "words") == ["few_words", "few_words"]

    result = CliRunner().invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "report" / "figures" / "words.png").stat().st_size > 0
    assert "Words per response" in (out / "report" / "report.html").read_text()

    # and once taken out, recipes refuse it again, in one line naming the field
    from roost.errors import ConfigError
    from roost.recipe import load_curate_recipe

    STAGES.unregister("words")
    with pytest.raises(ConfigError, match="stages"):
        load_curate_recipe(None, {"input.path": str(data), "stages": [{"kind": "words"}]})


def test_the_plugins_declare_their_panels_without_loading_the_plotting_libraries():
    import subprocess
    import sys

    code = ("import sys; from roost.stages.base import STAGES; from roost.synthesizers.base import SYNTHESIZERS; "
            "STAGES.load(); SYNTHESIZERS.load(); "
            "heavy = [m for m in ('polars', 'matplotlib', 'vllm', 'torch') if m in sys.modules]; assert not heavy, heavy; "
            "panels = [p for r in (STAGES, SYNTHESIZERS) for k in r.kinds() for p in r.get(k).report_panels]; "
            "assert {'deita', 'reward', 'similarity', 'score_gap', 'sppo', 'solve_rate'} <= {p.key for p in panels}; "
            "print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_an_option_no_stage_declares_is_one_line_naming_it(tmp_path):
    from roost.api import curate_recipe
    from roost.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^thresold: not an option of any stage \(options: .*threshold"):
        curate_recipe(input=str(tmp_path / "rows.parquet"), thresold=0.8)
    result = CliRunner().invoke(app, ["curate", str(tmp_path / "rows.parquet"), "--out", str(tmp_path / "o"),
                                      "--thresold", "0.8"])
    assert result.exit_code == 2 and "No such option" in result.output
