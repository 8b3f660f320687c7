"""The documentation site (docs/, mkdocs.yml) builds strictly, with the parts read from the
code filled in; a broken link fails the build. Real MkDocs Material, in a subprocess."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _build(root: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(root / "mkdocs.yml"),
                           "-d", str(site)], capture_output=True, text=True, timeout=300, env=env, cwd=root)


def test_the_docs_site_builds_strictly_with_every_method_s_exact_columns(tmp_path):
    from roost.synthesizers.base import SYNTHESIZERS

    done = _build(REPO, tmp_path / "site")
    assert done.returncode == 0, done.stderr[-3000:]
    for kind in SYNTHESIZERS.kinds():  # a new synthesizer is listed on the architecture page
        cls = SYNTHESIZERS.get(kind)
        page = (tmp_path / "site" / "methods" / kind.replace("_", "-") / "index.html").read_text()
        cells = set(re.findall(r"<td><code>(\w+)</code></td>", page))
        assert {f.name for f in cls.schema.arrow} <= cells, kind  # every column the code writes
        assert f"<code>{kind}</code>" in (tmp_path / "site" / "architecture" / "index.html").read_text()
    assert 'class="mermaid"' in (tmp_path / "site" / "architecture" / "index.html").read_text()


def test_a_broken_link_fails_the_build(tmp_path):
    root = tmp_path / "repo"
    shutil.copytree(REPO / "docs", root / "docs")
    shutil.copytree(REPO / "scripts", root / "scripts")
    shutil.copy(REPO / "mkdocs.yml", root / "mkdocs.yml")
    assert _build(root, tmp_path / "ok").returncode == 0
    page = root / "docs" / "inputs.md"
    page.write_text(page.read_text() + "\nSee [the recipes](recipes-that-moved.md).\n")
    done = _build(root, tmp_path / "broken")
    assert done.returncode != 0 and "recipes-that-moved.md" in done.stderr
