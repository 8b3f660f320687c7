"""Prefect task for `roost publish`: thin wiring over roost.publish, so a flow can publish what
a build or a curation just wrote:

    manifest = curate_flow(recipe, out)
    publish_task(out, "my-org/my-data", private=True)

The token is never a parameter (Prefect records parameters): publish reads HF_TOKEN or the
login cache itself. The task's result and its artifact hold no token.
"""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from roost.publish import publish


@task(name="publish", cache_policy=NO_CACHE, task_run_name="publish-{repo}")
def publish_task(out: str, repo: str, private: bool = False, revision: str | None = None) -> dict:
    result = publish(out, repo, private=private, revision=revision)
    _artifact(result)
    return result


def _artifact(result: dict) -> None:
    """A markdown summary on the flow run (a no-op outside one)."""
    from prefect.artifacts import create_markdown_artifact
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is None:
        return
    what = (f"commit `{result['commit']}`" if result["committed"]
            else f"nothing changed: still at commit `{result['commit']}`")
    lines = [f"# roost publish: {result['repo']}@{result['revision']}", "", f"{result['url']}", "", what, "",
             f"{result['files']} files: {result['changed']} new or changed, {result['unchanged']} unchanged, "
             f"{result['deleted']} deleted", "", "| config | rows |", "|---|---:|"]
    lines += [f"| {name} | {rows} |" for name, rows in result["configs"].items()]
    key = "publish-" + "".join(c if c.isalnum() else "-" for c in result["repo"].lower())
    create_markdown_artifact(key=key, markdown="\n".join(lines) + "\n", description="where roost published the data")
