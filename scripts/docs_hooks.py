"""MkDocs hooks: the parts of the documentation that are read from the code, so they cannot
drift from it.

    <!-- columns: KIND -->   the exact columns a synthesizer writes (its schema, and each subset
                            folder beside data/), with the comment beside each field in the source
    <!-- stages -->         every registered curation stage: kind, what it is, its settings
    <!-- synthesizers -->   every registered synthesizer: kind, what it is, its settings
    <!-- architecture -->   a diagram of roost's packages and who imports whom (roost/ parsed with ast)

A marker naming an unknown kind fails the build (mkdocs build --strict runs in the tests).
"""
from __future__ import annotations

import ast
import re
import sys
from collections import defaultdict
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "roost"
MARKER = re.compile(r"<!-- (columns: ?(?P<kind>[\w-]+)|stages|synthesizers|architecture) -->")


def on_page_markdown(markdown: str, page, config, files) -> str:
    def replace(m: re.Match) -> str:
        if m.group("kind"):
            return columns(m.group("kind"))
        return {"stages": lambda: plugins("stages"), "synthesizers": lambda: plugins("synthesizers"),
                "architecture": architecture}[m.group(1)]()

    return MARKER.sub(replace, markdown)


# -- columns -----------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def field_comments() -> dict[str, dict[str, str]]:
    """{module path: {field name: the comment beside its pa.field(...) line}}."""
    found: dict[str, dict[str, str]] = {}
    pattern = re.compile(r'pa\.field\(\s*"(\w+)".*#\s*(.+)$')
    for path in PACKAGE.rglob("*.py"):
        for line in path.read_text().splitlines():
            m = pattern.search(line)
            if m:
                found.setdefault(str(path), {})[m.group(1)] = m.group(2).strip()
    return found


def _comment(name: str, modules: list[str]) -> str:
    comments = field_comments()
    for module in modules:
        if name in comments.get(module, {}):
            return comments[module][name]
    return ""


def _type(t) -> str:
    import pyarrow as pa

    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"list of {_type(t.value_type)}"
    if pa.types.is_struct(t):
        return "{" + ", ".join(f"{f.name}: {_type(f.type)}" for f in t) + "}"
    return {"string": "string", "large_string": "string", "int64": "int", "int32": "int", "double": "float",
            "float": "float", "bool": "bool"}.get(str(t), str(t))


def _table(schema, modules: list[str]) -> str:
    rows = ["| column | type | |", "|---|---|---|"]
    for f in schema:
        kind = _type(f.type).replace("|", "\\|")
        note = _comment(f.name, modules) + ("" if f.nullable else " (never null)")
        rows.append(f"| `{f.name}` | {kind} | {note.strip()} |")
    return "\n".join(rows)


def columns(kind: str) -> str:
    import inspect

    from roost.synthesizers.base import SYNTHESIZERS

    cls = SYNTHESIZERS.get(kind)  # KeyError: an unknown kind fails the build
    own = inspect.getsourcefile(cls)
    modules = [own, str(PACKAGE / "schemas" / "rows.py"), *_imported(own)]
    out = [f"Rows of `data/` (`{kind}`, {cls.schema.name} rows, `{cls.schema.name}` schema):", "", _table(cls.schema.arrow, modules)]
    for name, schema in (cls.subsets or {}).items():
        out += ["", f"Rows of `{name}/` (a config of its own on the Hub):", "", _table(schema, modules)]
    return "\n".join(out)


def _imported(path: str) -> list[str]:
    """Source files of the roost modules a module imports names from (where shared columns live)."""
    out = []
    for node in ast.parse(Path(path).read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("roost."):
            base = ROOT / Path(*node.module.split("."))
            for candidate in (base.with_suffix(".py"), base / "__init__.py"):
                if candidate.exists():
                    out.append(str(candidate))
    return out


# -- plug-ins ----------------------------------------------------------------------------------


def plugins(which: str) -> str:
    if which == "stages":
        from roost.stages.base import STAGES as registry
    else:
        from roost.synthesizers.base import SYNTHESIZERS as registry
    stages = which == "stages"
    rows = (["| kind | what it does | settings | `roost curate` flags |", "|---|---|---|---|"] if stages
            else ["| kind | what it does | settings |", "|---|---|---|"])
    for kind in registry.kinds():
        cls = registry.get(kind)
        doc = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip().split("\n\n")[0]
        doc = re.sub(r"^`\w+`:\s*", "", " ".join(doc.split()))
        settings = ", ".join(f"`{n}`" for n in cls.Config.model_fields if n != "kind")
        row = f"| `{kind}` | {doc.replace('|', '/')} | {settings} |"
        if stages:  # declared by the stage itself (Stage.options)
            row += " " + ", ".join(f"`{o.flag or '--' + o.name.replace('_', '-')}`" for o in cls.options) + " |"
        rows.append(row)
    return "\n".join(rows)


# -- architecture ------------------------------------------------------------------------------


def _unit(module: str) -> str:
    """roost.a.b -> roost.a for packages, roost.x for top-level modules."""
    parts = module.split(".")
    return ".".join(parts[:2])


@lru_cache(maxsize=1)
def import_graph() -> dict[str, set[str]]:
    """{unit: units it imports} over roost/ (function-level imports included)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        unit = _unit(module)
        graph.setdefault(unit, set())
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                if name.startswith("roost.") and _unit(name) != unit:
                    target = _unit(name)
                    if (PACKAGE / target.split(".")[1]).exists() or (PACKAGE / f"{target.split('.')[1]}.py").exists():
                        graph[unit].add(target)
    return dict(graph)


def architecture() -> str:
    graph = import_graph()
    ids = {u: u.replace("roost.", "").replace(".", "_") for u in graph}
    lines = ["```mermaid", "flowchart LR"]
    for unit in sorted(graph):
        lines.append(f"  {ids[unit]}[\"{unit.replace('roost.', '')}\"]")
    for unit in sorted(graph):
        for target in sorted(graph[unit]):
            if target in ids:
                lines.append(f"  {ids[unit]} --> {ids[target]}")
    lines.append("```")
    return "\n".join(lines)
