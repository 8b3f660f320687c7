"""`tags`: Magpie's instruction tags (task category, difficulty, input quality, language) from a
chat model, each answer decoded under a JSON schema (roost.judges.tags), and filters on them.

    - kind: tags
      model: Qwen/Qwen2.5-7B-Instruct            # or {model: ..., revision: ..., dtype: ..., max_model_len: ...}
      tags: [task_category, difficulty, input_quality, language]   # default: all four
      keep: {input_quality: ">= good", task_category: [Math, Coding & Debugging]}

Columns: one per tag (null only when the model's answer could not be read: `tags_reason` says
why, per task), Magpie's `intent`, `knowledge`, `quality_explanation` for the tasks that ask
them, and `tags_model`. The text tagged is the stage's `view` (auto: the first user message of
SFT rows, the prompt of preference rows). `keep` rules: a value, a list of values, or for the
ordered tags (difficulty, input_quality) `>=`, `>`, `<=`, `<`; a row that fails one goes to
rejects with reason `tag_<tag>` and a detail such as "poor < good" (a null tag fails every rule
on it). The manifest records the model, its revision, each task's prompt version and the
unreadable answers by task and kind.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field, ValidationInfo, field_validator

from roost.config import throughput
from roost.engines.config import EngineConfig
from roost.errors import ConfigError
from roost.stages.base import STAGES, Annotation, Annotator, Drop, StageConfig, View, engine_config

DEFAULT_TAGS = ("task_category", "difficulty", "input_quality", "language")




class TagsConfig(StageConfig):
    kind: Literal["tags"]
    model: EngineConfig  # the tagging model (any chat model); a string is its path or hub id
    tags: list[str] = Field(default_factory=lambda: list(DEFAULT_TAGS))
    view: View = "auto"  # the text tagged (auto: first_instruction for SFT rows, prompt for preference rows)
    # per answer (Magpie's 1024); an answer cut here is null, with the reason. It must leave room for
    # the explanations: up to 2 x max_explanation_chars characters, one token each at worst
    max_tokens: int = Field(1024, ge=1)
    max_explanation_chars: int = Field(300, ge=0)  # cap on intent/knowledge/explanation (0: not asked)
    templates: dict[str, str] = Field(default_factory=dict)  # task -> template file with {input}
    schemas: dict[str, str] = Field(default_factory=dict)  # task -> answer JSON Schema file
    keep: dict[str, str | list[str]] = Field(default_factory=dict)
    batch_size: int = throughput(256, ge=1)  # rows per engine call (x tasks questions)

    @field_validator("model", mode="before")
    @classmethod
    def _model(cls, value: Any) -> Any:
        return engine_config(value)

    @field_validator("tags")
    @classmethod
    def _tags(cls, tags: list[str]) -> list[str]:
        from roost.judges.tags import check_tags

        check_tags(tags)
        return tags

    @field_validator("templates")
    @classmethod
    def _templates(cls, paths: dict[str, str]) -> dict[str, str]:
        from roost.judges.tags import load_templates

        load_templates(paths)
        return paths

    @field_validator("schemas")
    @classmethod
    def _schemas(cls, paths: dict[str, str]) -> dict[str, str]:
        from roost.judges.tags import load_schemas

        load_schemas(paths)
        return paths

    @field_validator("keep")
    @classmethod
    def _keep(cls, keep: dict, info: ValidationInfo) -> dict:
        from roost.judges.tags import build_tasks, parse_rules, tag_specs

        if not {"tags", "schemas"} <= set(info.data):
            return keep  # an earlier field is wrong: that is the error reported
        parse_rules(keep, tag_specs(build_tasks(info.data["tags"], schemas=info.data["schemas"])))
        return keep

    def contents(self) -> dict[str, str]:
        """Digests of replaced templates and schemas: editing one makes this a new recipe."""
        from roost.config import file_digest

        files = {**{f"templates.{k}": v for k, v in self.templates.items()},
                 **{f"schemas.{k}": v for k, v in self.schemas.items()}}
        return {k: d for k, path in files.items() if (d := file_digest(path)) is not None}


@STAGES.register
class Tags(Annotator):
    kind = "tags"
    Config = TagsConfig

    def __init__(self, config: TagsConfig, context):
        super().__init__(config, context)
        from roost.engines import ensure_available
        from roost.judges.tags import build_tasks, parse_rules, tag_specs

        try:
            self.tasks = build_tasks(config.tags, config.templates, config.schemas,
                                     max_explanation_chars=config.max_explanation_chars)
            self.rules = parse_rules(config.keep, tag_specs(self.tasks))
        except ConfigError as e:  # recipes validate first; this is for configs built in code
            raise context.config_error(self, str(e)) from None
        ensure_available(config.model.model, config.model.revision)
        self.batch_size = config.batch_size
        self._tagger = None
        self.unreadable: Counter = Counter()  # (task, kind) -> answers
        self.examples: dict[str, str] = {}  # task -> one reason, as written

    def fields(self) -> list[pa.Field]:
        cols = []
        for task in self.tasks.values():
            cols += [pa.field(col, pa.string()) for col, _ in task.explanations]
            cols += [pa.field(tag.name, pa.string()) for tag in task.tags]
        return cols + [pa.field("tags_model", pa.string()), pa.field("tags_reason", pa.string())]

    def tagger(self):
        if self._tagger is None:
            from roost.engines import get_engine
            from roost.judges.tags import Tagger

            self._tagger = Tagger(get_engine(self.config.model), self.tasks, max_tokens=self.config.max_tokens,
                                  progress="tags")
        return self._tagger

    def annotate(self, rows) -> list[Annotation]:
        results = self.tagger().tag([r.view(self.view) for r in rows])
        out = []
        for r in results:
            for task, code in r.codes.items():
                self.unreadable[(task, code)] += 1
                self.examples.setdefault(task, r.reasons[task])
            reason = "; ".join(f"{task}: {why}" for task, why in r.reasons.items()) or None
            a = Annotation({**r.values, "tags_model": self.config.model.model, "tags_reason": reason})
            for rule in self.rules:
                problem = rule.failure(r.values.get(rule.tag.name))
                if problem:
                    a.drop = Drop(f"tag_{rule.tag.name}", problem)
                    break
            out.append(a)
        return out

    def settings(self) -> dict[str, Any]:
        out = {**super().settings(), "view": self.view, "keep": [r.describe() for r in self.rules]}
        if self._tagger is not None:
            out["tagger"] = self._tagger.describe()
        unreadable: dict[str, dict[str, int]] = {}
        for (task, code), n in sorted(self.unreadable.items()):
            unreadable.setdefault(task, {})[code] = n
        out["unreadable"] = unreadable
        out["unreadable_examples"] = self.examples
        return out
