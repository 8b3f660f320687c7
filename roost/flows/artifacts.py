"""What a flow run shows in the Prefect UI: a markdown summary (counts, stages, where the data
went) and a table artifact of the counts. The text is built by plain functions from the
manifest; `attach` hands it to Prefect and is a no-op outside a flow run."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any


def count_table(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Curation: one row per stage. Build: one row per shard."""
    if manifest.get("kind") == "curated":
        return [{"stage": s["name"], "rows_in": s["rows_in"], "kept": s["kept"],
                 "removed": sum(s["removed"].values()),
                 "removed_by_reason": ", ".join(f"{k}: {v}" for k, v in s["removed"].items())}
                for s in manifest.get("stages", [])]
    return [{"shard": name, "rows": s.get("rows"), "rejects": s.get("rejects"),
             "rejects_by_reason": ", ".join(f"{k}: {v}" for k, v in s.get("rejects_by_reason", {}).items()),
             "seconds": s.get("seconds")}
            for name, s in manifest.get("shards", {}).items()]


def summary_markdown(manifest: dict[str, Any], out: str | Path) -> str:
    out = Path(out)
    recipe = manifest.get("recipe", {})
    curated = manifest.get("kind") == "curated"
    lines = [f"# roost {'curate' if curated else 'build'}: {recipe.get('name', out.name)}", ""]
    facts = [("status", manifest.get("status")), ("rows", manifest.get("rows")),
             ("rejects", manifest.get("rejects"))]
    if curated:
        facts += [("row kind", manifest.get("row_kind")), ("input", (manifest.get("input") or {}).get("path")),
                  ("input rows", manifest.get("input_rows"))]
    else:
        facts += [("synthesizer", manifest.get("synthesizer")), ("model", manifest.get("model")),
                  ("revision", manifest.get("revision")), ("seed", manifest.get("seed"))]
    facts += [("data", out / "data"), ("rejects", out / "rejects"), ("manifest", out / "manifest.json"),
              ("recipe hash", manifest.get("recipe_hash"))]
    lines += ["| | |", "|---|---|", *(f"| {k} | `{v}` |" for k, v in facts if v is not None), ""]
    for name, pattern in (manifest.get("subsets") or {}).items():
        lines.append(f"- subset `{name}`: `{out / pattern}`")
    if manifest.get("rejects_by_reason"):
        lines += ["", "## Rejects by reason", "", "| reason | rows |", "|---|---|"]
        lines += [f"| {reason} | {n} |" for reason, n in sorted(manifest["rejects_by_reason"].items(),
                                                                  key=lambda kv: -kv[1])]
    table = count_table(manifest)
    if table:
        lines += ["", "## Stages" if curated else "## Shards", "", _markdown_table(table)]
    return "\n".join(lines) + "\n"


def attach(manifest: dict[str, Any], out: str | Path) -> None:
    """Attach the summary and count table to the current Prefect flow run (if any)."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is None:
        return
    kind = "curate" if manifest.get("kind") == "curated" else "build"
    key = artifact_key(kind, manifest.get("recipe", {}).get("name", Path(out).name))
    create_markdown_artifact(key=key, markdown=summary_markdown(manifest, out),
                             description=f"roost {kind}: what this run made and where it went")
    create_table_artifact(key=f"{key}-counts", table=count_table(manifest),
                          description="stage counts" if kind == "curate" else "shard counts")


def artifact_key(kind: str, name: str) -> str:
    """Prefect keys are lowercase letters, digits and dashes."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", f"{kind}-{name}".lower())).strip("-")


def _markdown_table(rows: list[dict[str, Any]]) -> str:
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join("" if r.get(c) is None else str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(out)
