"""The dataset card (README.md) of a published roost output, made with huggingface_hub's card
classes: `DatasetCardData` for the YAML header (configs, license, language, task, size, tags)
and `DatasetCard.from_template` with `templates/dataset_card.md` for the body.

No absolute path of the machine that made the data: local paths are written as
roost.dataset.portable records them.

Deterministic: everything comes from the output's own files (manifests, Parquet shards, the
report's figures), never from the clock, so publishing the same output twice gives the same
bytes and the Hub sees nothing to commit.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from roost.publish.source import Part, Source

TEMPLATE = Path(__file__).parent / "templates" / "dataset_card.md"
DEFAULT_LICENSE = "other"  # the text is the models' output: their terms apply; say which with --license
TRUNCATE = 300

_SIZES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
          (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"),
          (10_000_000_000, "1B<n<10B"), (100_000_000_000, "10B<n<100B"), (1_000_000_000_000, "100B<n<1T")]

_METHOD_TAGS = {  # synthesizer -> Hub tags (besides synthetic, roost)
    "magpie": ["magpie", "sft"],
    "reward_pairs": ["dpo", "reward-ranked"],
    "reward_ranked": ["dpo", "reward-ranked"],  # the rows' `method`
    "spin": ["spin", "dpo"],
    "sppo": ["sppo", "dpo"],
    "step_dpo": ["step-dpo", "dpo"],
}

_SUBSET_WHAT = {
    "easy": "pairs whose score gap is at least the difficulty threshold",
    "hard": "pairs whose score gap is below the difficulty threshold",
    "sppo": "SPPO's own columns (`chosen_probs`, `chosen_probs_win`, `chosen_probs_lose`)",
    "step_dpo": "Step-DPO's own column layout (`prompt`, `initial_reason_steps`, `chosen`, `rejected`, ...)",
    "prm": "step labels in TRL's stepwise-supervision form (`prompt`, `completions`, `labels`)",
    "rejects": "rows kept out, one per row with the `stage` and `reason` that removed it (`record` holds the row)",
}


def size_category(n: int) -> str:
    """The Hub's size_categories bucket for n rows."""
    for bound, name in _SIZES:
        if n < bound:
            return name
    return "n>1T"


def tags(source: Source) -> list[str]:
    """synthetic (when roost made the rows), roost, the method(s), and what the configs hold."""
    methods = [m.get("synthesizer") for m in (source.iterations or [source.manifest]) if m.get("synthesizer")]
    if source.kind == "curated":  # the curated rows say what made them (the input may be anyone's data)
        methods = _row_methods(source.default)
    out = (["synthetic"] if methods else []) + ["roost"]
    for method in methods:
        out += _METHOD_TAGS.get(method, [method.replace("_", "-")])
    if source.kind == "curated":
        out += ["curated", "sft" if source.row_kind == "sft" else "dpo"]
    if source.kind == "iterate":
        out.append("iterative")
    if any(p.dest.endswith("prm") for p in source.parts):
        out.append("prm")
    return list(dict.fromkeys(out))


def _row_methods(part: Part) -> list[str]:
    """What made the rows, read from them: preference rows' `method`; Magpie's SFT columns."""
    if "method" in part.columns:
        found = {v for f in part.files for v in pq.read_table(f, columns=["method"]).column("method").to_pylist() if v}
        return sorted(found)
    return ["magpie"] if "pre_query_template" in part.columns else []


_TEXT_COLUMNS = ("messages", "conversations", "prompt", "chosen", "rejected", "instruction", "response", "input",
                 "output", "question", "problem", "answer", "solution", "text", "completions")
LANGUAGE_SAMPLE = 1000  # rows read for the language, spread over the shards


def languages(source: Source) -> list[str]:
    """ISO 639-1 codes of the languages the rows are written in, detected from their text
    (roost.dataset.languages: by script, Latin by common words; each language of >= 10% of a sample of
    rows). Rows without letters fall back to the languages recorded on them (Magpie's
    `language`), else the recipe's, else en."""
    from roost.dataset.languages import detect

    part = source.default
    found = detect(row_texts(part, LANGUAGE_SAMPLE))
    if found:
        return found
    recorded: set[str] = set()
    if "language" in part.columns:
        for f in part.files:
            recorded.update(v for v in pq.read_table(f, columns=["language"]).column("language").to_pylist() if v)
    synth = (source.recipe.get("synthesizer") or {}) if isinstance(source.recipe, dict) else {}
    if not recorded and synth.get("language"):
        recorded.add(synth["language"])
    codes = sorted(v.lower() for v in recorded if re.fullmatch(r"[A-Za-z]{2,3}", v))
    return codes or ["en"]


def row_texts(part: Part, limit: int) -> list[str]:
    """One text per row (its messages' contents, system turns left out) for up to `limit` rows,
    taken from the start of every shard in turn (deterministic: the same files give the same
    sample)."""
    columns = [c for c in _TEXT_COLUMNS if c in part.columns]
    if not columns or not part.files:
        return []
    per_file = max(1, -(-limit // len(part.files)))
    texts: list[str] = []
    for f in part.files:
        if len(texts) >= limit:
            break
        pf = pq.ParquetFile(f)
        batch = next(pf.iter_batches(batch_size=min(per_file, limit - len(texts)), columns=columns), None)
        if batch is None:
            continue
        for row in batch.to_pylist():
            pieces: list[str] = []
            for c in columns:
                _strings(row.get(c), pieces)
            texts.append("\n".join(pieces))
    return texts


def _strings(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, list):
        for v in value:
            _strings(v, out)
    elif isinstance(value, dict):
        if value.get("role") == "system" or value.get("from") == "system":
            return
        for key in ("content", "value", "text"):
            if isinstance(value.get(key), str):
                out.append(value[key])


def models(source: Source) -> list[dict[str, str]]:
    """Every model the manifest(s) record with its revision: policy, reward model, judge,
    deita scorers, embedding model (roles named by where they sit in the manifest; one row
    per model and revision), and for a curated output the models that made its input."""
    from roost.dataset.lineage import generator, manifest_models

    found: list[dict[str, str]] = []
    manifests = source.iterations or [source.manifest]
    for t, m in enumerate(manifests):
        found += manifest_models(m, f"iteration {t}: " if source.iterations else "")
    if source.kind == "curated":
        made, curations = generator(input_provenance(source))
        for i, step in enumerate(curations):  # a curation of a curation: its models too
            prefix = "input's " if i == 0 else f"input's input ({i + 1} curations back): "
            found += [{**e, "role": prefix + e["role"]} for e in step.get("models") or []]
        if made is not None:
            prefix = "input: " if not curations else "original input: "
            found += [{**e, "role": prefix + e["role"]} for e in made.get("models") or []]
    merged: dict[tuple[str, str], list[str]] = {}
    for entry in found:
        roles = merged.setdefault((entry["model"], entry["revision"]), [])
        if entry["role"] not in roles:
            roles.append(entry["role"])
    return [{"role": ", ".join(roles), "model": model, "revision": revision}
            for (model, revision), roles in merged.items()]


def input_provenance(source: Source) -> dict[str, Any] | None:
    """What made a curated output's input: recorded in its manifest (`input_provenance`), or,
    for an output curated before roost recorded it, read from the input if it is still there."""
    from roost.dataset.lineage import input_provenance as read
    from roost.dataset.portable import portable

    m = source.manifest
    if m.get("input_provenance") or source.kind != "curated":
        return m.get("input_provenance")
    given = (m.get("input") or {}).get("path") if isinstance(m.get("input"), dict) else None
    if not isinstance(given, str):
        return None
    out = source.out.resolve()
    found = read(given, bases=(out, *out.parents))
    return portable(found, source.out) if found else None


def facts(source: Source) -> list[str]:
    m = source.manifest
    recipe_name = (source.recipe or {}).get("name") or source.out.name
    out = []
    if source.kind == "build":
        out.append(f"`roost build` with the `{m.get('synthesizer')}` synthesizer, recipe `{recipe_name}` "
                   f"(hash `{m.get('recipe_hash')}`), seed {m.get('seed')}, {m.get('num_shards')} shard(s), "
                   f"finished {m.get('created_at')}.")
    elif source.kind == "curated":
        inp = m.get("input") or {}
        stages = " → ".join(s.get("name", "?") for s in m.get("stages") or [])
        out.append(f"`roost curate` of {m.get('input_rows')} {m.get('row_kind')} rows ({inp.get('kind')} input "
                   f"`{inp.get('path')}`), recipe `{recipe_name}` (hash `{m.get('recipe_hash')}`), finished "
                   f"{m.get('created_at')}.")
        out.append(f"Stages: {stages}; {m.get('rows')} rows kept, {m.get('rejects')} removed.")
        out += _input_facts(input_provenance(source))
    else:
        steps = len(source.iterations)
        out.append(f"`roost iterate`: {steps} rounds of build (with the `{m.get('synthesizer')}` synthesizer) then "
                   f"training, recipe `{recipe_name}`; `default` is the last round's data, `iter-<t>` each round's.")
    out.append(f"roost version {m.get('roost_version')}; the recipe is `roost_recipe.yaml`, everything roost "
               "recorded is in " + ("`iterations.json` and `iter-<t>/manifest.json`." if source.iterations
                                    else "`manifest.json`."))
    return out


def _input_facts(provenance: dict[str, Any] | None) -> list[str]:
    """What made a curated output's input: the build at the start of the chain (synthesizer,
    recipe, policy and revision), and the curations between."""
    from roost.dataset.lineage import generator

    made, curations = generator(provenance)
    out = []
    for i, step in enumerate(curations):
        recipe = step.get("recipe") or {}
        whose = "Its input" if i == 0 else "That input's input"
        out.append(f"{whose} was itself a `roost curate` output: recipe `{recipe.get('name')}` (hash "
                   f"`{recipe.get('hash')}`), stages {' → '.join(step.get('stages') or []) or '?'}, "
                   f"{step.get('rows')} rows.")
    if made is not None:
        recipe = made.get("recipe") or {}
        whose = "The rows it curated were" if not curations else "Those rows were first"
        out.append(f"{whose} made by `roost build` with the `{made.get('synthesizer')}` synthesizer, recipe "
                   f"`{recipe.get('name')}` (hash `{recipe.get('hash')}`), policy `{made.get('model')}` (revision "
                   f"`{made.get('revision') or '-'}`), seed {made.get('seed')}, roost version {made.get('roost_version')}.")
    elif provenance is None:
        out.append("Its input is not a roost output (or is no longer where it was): what made it is not recorded.")
    return out


def config_rows(source: Source) -> list[dict[str, Any]]:
    rows = []
    for p in source.parts:
        leaf = p.dest.rsplit("/", 1)[-1]
        if p.name == "default":
            what = ("the rows: SFT conversations (`messages`)" if source.row_kind == "sft"
                    else "the rows: preference pairs (`prompt`, `chosen`, `rejected`)")
            if source.kind == "iterate":
                what += f", from the last round (`{p.dest}/`)"
        elif p.kind == "data":
            what = f"round {p.name.split('-')[1]}'s rows"
        else:
            what = _SUBSET_WHAT.get(leaf, f"the `{leaf}` subset the synthesizer wrote")
            if source.kind == "iterate":
                what = f"round {p.name.split('-')[1]}: {what}"
        rows.append({"name": p.name, "rows": p.rows, "files": len(p.files), "what": what,
                     "var": re.sub(r"\W", "_", p.name)})
    return rows


def examples(part: Part, n: int = 3, out: Path | None = None) -> list[str]:
    """The first n rows of `part` as fenced JSON blocks (long strings cut; a value that is a
    local path, such as a row's `model`, as roost.dataset.portable records it)."""
    from roost.dataset.portable import portable

    rows: list[dict] = []
    for f in part.files:
        if len(rows) >= n:
            break
        rows += pq.read_table(f).slice(0, n - len(rows)).to_pylist()
    blocks = []
    for row in rows:
        text = json.dumps(_cut(portable(row, out)), indent=2, ensure_ascii=False, default=str)
        fence = "`" * max(3, 1 + max((len(r) for r in re.findall(r"`+", text)), default=0))
        blocks.append(f"{fence}json\n{text}\n{fence}")
    return blocks


def _cut(value: Any) -> Any:
    if isinstance(value, str):
        return value if len(value) <= TRUNCATE else value[:TRUNCATE] + f"… [{len(value) - TRUNCATE} more characters]"
    if isinstance(value, list):
        return [_cut(v) for v in value]
    if isinstance(value, dict):
        return {k: _cut(v) for k, v in value.items()}
    return value


def trainer_snippet(source: Source) -> tuple[str, str]:
    if source.row_kind == "sft":
        return ("TRL's `SFTTrainer` trains on `default` as it is (conversational `messages`):",
                'from trl import SFTConfig, SFTTrainer\n\n'
                'trainer = SFTTrainer(model="YOUR/BASE-MODEL", train_dataset=ds, args=SFTConfig(output_dir="sft"))\n'
                'trainer.train()')
    synth = source.manifest.get("synthesizer")
    loss = ', loss_type="sppo_hard"' if synth == "sppo" else ""
    intro = ("TRL's `DPOTrainer` trains on `default` as it is (`prompt`, `chosen`, `rejected`)"
             + (" with SPPO's hard-label loss" if loss else "") + ":")
    if any(p.dest.endswith("prm") for p in source.parts):
        intro += " (`prm` is in TRL's stepwise-supervision form for a process reward model.)"
    return intro, ('from trl import DPOConfig, DPOTrainer\n\n'
                   f'trainer = DPOTrainer(model="YOUR/POLICY", train_dataset=ds, args=DPOConfig(output_dir="dpo"{loss}))\n'
                   'trainer.train()')


def card_data(source: Source, license: str):
    from huggingface_hub import DatasetCardData

    split = source.split
    configs = [{"config_name": p.name, "data_files": [{"split": split, "path": f"{p.dest}/{split}-*"}]}
               for p in source.parts]
    return DatasetCardData(
        license=license,
        language=languages(source),
        task_categories=["text-generation"],
        size_categories=[size_category(source.default.rows)],
        tags=tags(source),
        pretty_name=(source.recipe or {}).get("name") or source.out.name,
        configs=configs,
    )


def render(source: Source, repo_id: str, *, license: str | None, report_markdown: str):
    """The DatasetCard (call `.save(path)`)."""
    from huggingface_hub import DatasetCard

    from roost.dataset.portable import portable, portable_text

    license = license or (source.recipe or {}).get("license") or DEFAULT_LICENSE
    data = card_data(source, license)
    intro, snippet = trainer_snippet(source)
    m = source.manifest
    method = m.get("synthesizer") or ("curation" if source.kind == "curated" else "?")
    kind = "SFT conversations" if source.row_kind == "sft" else "preference pairs"
    summary = f"{source.default.rows} {kind} ({method}), in {len(source.parts)} config(s)."
    its = []
    if source.iterations:
        steps = json.loads((source.out / "iterations.json").read_text()).get("iterations") or []
        its = portable([{"iteration": s.get("iteration"), "model": s.get("model"), "rows": s.get("rows"),
                         "output": s.get("output")} for s in steps], source.out)
    sampling = m.get("sampling")
    card = DatasetCard.from_template(
        data, template_path=str(TEMPLATE),
        title=data.pretty_name, summary=summary, roost_version=m.get("roost_version"),
        config_rows=config_rows(source), split=source.split,
        default_columns=", ".join(f"`{c}`" for c in source.default.columns),
        facts=[portable_text(f, source.out) for f in facts(source)], models=portable(models(source), source.out),
        sampling=json.dumps(sampling, indent=2, ensure_ascii=False) if sampling else None,
        iterations=its, report=portable_text(report_markdown.strip(), source.out),
        examples=examples(source.default, out=source.out), truncate=TRUNCATE,
        repo_id=repo_id, trainer_intro=intro, trainer_snippet=snippet,
        license_note=None if license != DEFAULT_LICENSE else "no license was given (`roost publish --license`).",
    )
    # the template's optional blocks leave runs of blank lines; JSON and code blocks have none
    return DatasetCard(re.sub(r"\n{3,}", "\n\n", card.content).rstrip("\n") + "\n")
