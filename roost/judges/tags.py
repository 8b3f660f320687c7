"""Magpie's instruction tags from any chat model, with answers that are valid by construction.

Magpie (exp/unitag.py) asks an LLM three questions about every instruction and parses the JSON
it writes back (on failure: every field None). Here the same questions are asked, and the
answer is decoded under a JSON schema by the engine's structured output
(`roost.judges.structured`), so every tag a finished answer holds is one of its allowed values
even from a weak model:

    task       answer (JSON keys, in order)            tags (column <- key)
    difficulty intent, knowledge, difficulty           difficulty: very easy < easy < medium < hard < very hard
    quality    explanation, input_quality              input_quality: very poor < poor < average < good < excellent
    classification primary_tag                         task_category: Magpie's 12 categories
    language   language                                language: an ISO 639-1 code

`intent`, `knowledge` and `quality_explanation` (the `explanation` key) are kept as columns, as
in Magpie's datasets; they are capped at `max_explanation_chars` by the schema so a rambling
model still closes its answer (0: not asked, the tag alone). Magpie detects the language with
lingua; here the model picks an ISO 639-1 code from the full list (183 codes), constrained too.
Magpie also keeps `other_task_category`; not asked here.

The questions follow Magpie's prompts (R exp/str_utils.py: input_difficulty_rating,
input_quality_rating, input_classification), one `{input}` placeholder each, in
templates/tags_*.txt; a recipe may replace a task's template and its answer schema with files.
A replaced schema must keep the task's tag keys as string enums: their values (in order, for
`>=` rules) are then the tag's levels.

Versions: each task's prompt is recorded as `<version>` of the shipped file or "custom", with
the sha256 of the template text and of the answer schema.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from roost.errors import ConfigError

TEMPLATES = Path(__file__).resolve().parent / "templates"

TASK_CATEGORIES = ("Information seeking", "Reasoning", "Planning", "Editing", "Coding & Debugging", "Math",
                   "Role playing", "Data analysis", "Creative writing", "Advice seeking", "Brainstorming", "Others")
DIFFICULTY = ("very easy", "easy", "medium", "hard", "very hard")
INPUT_QUALITY = ("very poor", "poor", "average", "good", "excellent")
# ISO 639-1 (the 183 codes in force; "bh" was withdrawn in 2021)
LANGUAGES = tuple("""
aa ab ae af ak am an ar as av ay az ba be bg bi bm bn bo br bs ca ce ch co cr cs cu cv cy da de dv dz ee el en
eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz ia id ie ig ii ik io is it iu ja jv
ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt my na nb nd ne
ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl sm sn so sq sr ss st
su sv sw ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu""".split())

PLACEHOLDER = "{input}"


@dataclass(frozen=True)
class TagSpec:
    name: str  # the column
    key: str  # its key in the task's answer
    levels: tuple[str, ...]
    ordinal: bool  # levels are ordered (low to high): `>=` rules compare by position


@dataclass(frozen=True)
class TaskSpec:
    name: str
    template: str  # file name under templates/
    version: str
    tags: tuple[TagSpec, ...]
    explanations: tuple[tuple[str, str], ...] = ()  # (column, key) of free-text fields asked before the tags


TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    TaskSpec("difficulty", "tags_difficulty.txt", "magpie-difficulty-1",
             (TagSpec("difficulty", "difficulty", DIFFICULTY, True),),
             (("intent", "intent"), ("knowledge", "knowledge"))),
    TaskSpec("quality", "tags_quality.txt", "magpie-quality-1",
             (TagSpec("input_quality", "input_quality", INPUT_QUALITY, True),),
             (("quality_explanation", "explanation"),)),
    TaskSpec("classification", "tags_classification.txt", "magpie-classification-1",
             (TagSpec("task_category", "primary_tag", TASK_CATEGORIES, False),)),
    TaskSpec("language", "tags_language.txt", "roost-language-1",
             (TagSpec("language", "language", LANGUAGES, False),)),
)}
TAG_TASK = {tag.name: task.name for task in TASKS.values() for tag in task.tags}
ALL_TAGS = tuple(TAG_TASK)  # task_category is third: difficulty, input_quality, task_category, language


def default_schema(task: TaskSpec, max_explanation_chars: int) -> dict:
    props: dict[str, Any] = {}
    if max_explanation_chars > 0:
        for _, key in task.explanations:
            props[key] = {"type": "string", "maxLength": max_explanation_chars}
    for tag in task.tags:
        props[tag.key] = {"type": "string", "enum": list(tag.levels)}
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def check_template(text: str, *, source: str) -> None:
    if PLACEHOLDER not in text:
        raise ConfigError(f"{source} has no {PLACEHOLDER} placeholder (a tagging template needs {PLACEHOLDER}, "
                          "where the instruction goes)")


def read_text(path: str, *, what: str) -> str:
    try:
        return Path(path).expanduser().read_text()
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path} ({e.strerror or type(e).__name__})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"cannot read {what} {path} (not UTF-8 text)") from None


def fill(template: str, text: str) -> str:
    """The template with `{input}` replaced (one pass: braces inside the text stay as they are)."""
    return re.sub(re.escape(PLACEHOLDER), lambda _: text, template)


@dataclass
class Task:
    """One question as it will be asked: template text, answer schema, the tags it yields."""

    spec: TaskSpec
    template: str
    schema: dict
    tags: tuple[TagSpec, ...]
    explanations: tuple[tuple[str, str], ...]
    template_source: str  # "default" or the file
    schema_source: str
    schema_json: str = field(init=False)

    def __post_init__(self):
        self.schema_json = json.dumps(self.schema, sort_keys=True)

    def describe(self) -> dict[str, Any]:
        default = self.template_source == "default"
        return {"prompt_version": self.spec.version if default else "custom",
                "template_sha256": _sha(self.template), "template_source": self.template_source,
                "schema_sha256": _sha(self.schema_json), "schema_source": self.schema_source,
                "tags": {t.name: list(t.levels) if len(t.levels) <= 12 else f"{len(t.levels)} values"
                         for t in self.tags}}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_tags(tags: Sequence[str]) -> None:
    unknown = [t for t in tags if t not in TAG_TASK]
    if unknown:
        raise ConfigError(f"unknown tag '{unknown[0]}' (tags: {', '.join(ALL_TAGS)})")
    if not tags:
        raise ConfigError(f"no tags asked for (tags: {', '.join(ALL_TAGS)})")


def load_templates(paths: dict[str, str]) -> dict[str, str]:
    """Task -> template text of replaced templates, read and checked (ConfigError: 'task: why')."""
    out = {}
    for name, path in paths.items():
        if name not in TASKS:
            raise ConfigError(f"unknown task '{name}' (tasks: {', '.join(TASKS)})")
        try:
            out[name] = read_text(path, what="tagging template")
            check_template(out[name], source=path)
        except ConfigError as e:
            raise ConfigError(f"{name}: {e}") from None
    return out


def load_schemas(paths: dict[str, str]) -> dict[str, tuple[dict, tuple[TagSpec, ...]]]:
    """Task -> (schema, its tags' levels) of replaced answer schemas, read and checked."""
    from roost.judges.structured import load_schema

    out = {}
    for name, path in paths.items():
        if name not in TASKS:
            raise ConfigError(f"unknown task '{name}' (tasks: {', '.join(TASKS)})")
        try:
            schema = load_schema(path)
            out[name] = (schema, tuple(_levels_from(schema, tag, path) for tag in TASKS[name].tags))
        except ConfigError as e:
            raise ConfigError(f"{name}: {e}") from None
    return out


def build_tasks(tags: Sequence[str], templates: dict[str, str] | None = None, schemas: dict[str, str] | None = None,
                *, max_explanation_chars: int = 300) -> dict[str, Task]:
    """The tasks that answer `tags`, replaced templates/schemas read and checked (ConfigError)."""
    check_tags(tags)
    templates, schemas = templates or {}, schemas or {}
    texts, loaded = load_templates(templates), load_schemas(schemas)
    out: dict[str, Task] = {}
    for name, spec in TASKS.items():
        if not any(TAG_TASK[t] == name for t in tags):
            continue
        template = texts.get(name) or (TEMPLATES / spec.template).read_text()
        if name in loaded:
            schema, task_tags = loaded[name]
            explanations = tuple((col, key) for col, key in spec.explanations if key in schema["properties"])
        else:
            schema, task_tags = default_schema(spec, max_explanation_chars), spec.tags
            explanations = spec.explanations if max_explanation_chars > 0 else ()
        out[name] = Task(spec, template, schema, tuple(t for t in task_tags if t.name in tags), explanations,
                         templates.get(name, "default"), schemas.get(name, "default"))
    return out


def _levels_from(schema: dict, tag: TagSpec, source: str) -> TagSpec:
    prop = schema["properties"].get(tag.key)
    levels = prop.get("enum") if isinstance(prop, dict) else None
    if not (isinstance(levels, list) and levels and all(isinstance(v, str) for v in levels)
            and tag.key in schema.get("required", [])):
        raise ConfigError(f"{source} must have a required property '{tag.key}' with an \"enum\" of strings "
                          f"(the {tag.name} tag's levels)")
    return TagSpec(tag.name, tag.key, tuple(levels), tag.ordinal)


def tag_specs(tasks: dict[str, Task]) -> dict[str, TagSpec]:
    return {t.name: t for task in tasks.values() for t in task.tags}


# -- keep rules ---------------------------------------------------------------------------------

_RULE = re.compile(r"^\s*(>=|<=|==|!=|>|<)?\s*(.*?)\s*$")
_NEGATE = {">=": "<", ">": "<=", "<=": ">", "<": ">=", "==": "!=", "!=": "=="}


@dataclass(frozen=True)
class Rule:
    """`tag op level` (ordinal tags compare by level order) or `tag in [levels]`."""

    tag: TagSpec
    op: str  # >=, >, <=, <, ==, !=, in
    levels: tuple[str, ...]

    def failure(self, value: str | None) -> str | None:
        """None if `value` passes, else the rejects' detail (e.g. "poor < good")."""
        if value is None:
            return f"{self.tag.name} is null (unreadable answer)"
        if self.op == "in":
            return None if value in self.levels else f"{value} not in [{', '.join(self.levels)}]"
        level = self.levels[0]
        if self.op in ("==", "!="):
            ok = (value == level) == (self.op == "==")
        else:
            a, b = self.tag.levels.index(value), self.tag.levels.index(level)
            ok = {">=": a >= b, ">": a > b, "<=": a <= b, "<": a < b}[self.op]
        return None if ok else f"{value} {_NEGATE[self.op]} {level}"

    def describe(self) -> str:
        return f"{self.tag.name} in [{', '.join(self.levels)}]" if self.op == "in" else \
            f"{self.tag.name} {self.op} {self.levels[0]}"


def parse_rules(keep: dict[str, Any], specs: dict[str, TagSpec]) -> list[Rule]:
    """`keep: {input_quality: ">= good", task_category: [Math, ...]}` as rules, or ConfigError
    naming the field (a tag not asked for, an unknown level, an order rule on a category tag)."""
    rules = []
    for name, rule in keep.items():
        where = name
        spec = specs.get(name)
        if spec is None:
            known = ", ".join(specs) or "none"
            raise ConfigError(f"{where}: not one of this stage's tags ({known})")
        if isinstance(rule, (list, tuple)):
            if not rule or not all(isinstance(v, str) for v in rule):
                raise ConfigError(f"{where}: a list of {name} values is expected")
            op, levels = "in", tuple(rule)
        elif isinstance(rule, str):
            m = _RULE.match(rule)
            op, levels = m.group(1) or "==", (m.group(2),)
        else:
            raise ConfigError(f"{where}: expected a value, a rule such as \">= {spec.levels[len(spec.levels) // 2]}\", "
                              "or a list of values")
        for level in levels:
            if level not in spec.levels:
                shown = ", ".join(spec.levels) if len(spec.levels) <= 12 else "ISO 639-1 codes such as en, zh, fr"
                raise ConfigError(f"{where}: unknown level '{level}' (levels: {shown})")
        if op in (">=", ">", "<=", "<") and not spec.ordinal:
            raise ConfigError(f"{where}: '{op}' needs an ordered tag; {name} is a category: give a value or a list")
        rules.append(Rule(spec, op, levels))
    return rules


# -- the tagger ---------------------------------------------------------------------------------


@dataclass
class Tagged:
    values: dict[str, str | None]  # tag and explanation columns
    reasons: dict[str, str]  # task -> why its answer is null
    codes: dict[str, str]  # task -> the kind of reason


class Tagger:
    """Tags for texts, from a chat model (`engine`), one question per task per text, all in
    one engine call per batch."""

    def __init__(self, engine, tasks: dict[str, Task], *, max_tokens: int, progress: str | None = None):
        from roost.judges.structured import StructuredAsker

        self.tasks = tasks
        self.asker = StructuredAsker(engine, max_tokens=max_tokens, seed_name="tags", progress=progress)

    def tag(self, texts: Sequence[str]) -> list[Tagged]:
        questions, keys = [], []
        for i, text in enumerate(texts):
            for name, task in self.tasks.items():
                questions.append((fill(task.template, text), task.schema_json))
                keys.append((i, name))
        answers = self.asker.ask(questions)
        out = [Tagged({}, {}, {}) for _ in texts]
        for (i, name), answer in zip(keys, answers):
            task, row = self.tasks[name], out[i]
            value = answer.value or {}
            for col, key in task.explanations:
                row.values[col] = value.get(key)
            for tag in task.tags:
                row.values[tag.name] = value.get(tag.key)
            if answer.value is None:
                row.reasons[name], row.codes[name] = answer.reason, answer.code
        return out

    def describe(self) -> dict[str, Any]:
        return {**self.asker.describe(), "tasks": {name: t.describe() for name, t in self.tasks.items()}}
