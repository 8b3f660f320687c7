"""Quiet by default: the terminal shows roost's progress bars, summaries and errors; the
libraries' logs (vLLM, its engine and worker processes, transformers, Prefect) go to
`<out>/logs/roost.log`. `--verbose` leaves every library's own console logging on.

Set before any of those libraries is imported (the CLI imports them lazily): vLLM reads its
logging config from the environment in every process it spawns, so the engine core and
worker processes log to the same file.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path

_LIBRARIES = ("py.warnings", "transformers", "sentence_transformers", "huggingface_hub", "datasets", "faiss", "prefect",
              "httpx")


def setup(out_dir: str | Path, verbose: bool = False, name: str = "roost") -> Path | None:
    """Route library logs to `<out_dir>/logs/<name>.log` (returns its path), unless verbose.
    (`name`: one file per process that logs beside others, e.g. each Ray worker's.)"""
    if verbose:
        return None
    log = Path(out_dir) / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "filename": str(log), "formatter": "plain",
                              "level": "DEBUG"}},
        "loggers": {"vllm": {"handlers": ["file"], "level": "INFO", "propagate": False}},
    }
    vllm_config = log.parent / ("vllm-logging.json" if name == "roost" else f"{name}.vllm-logging.json")
    vllm_config.write_text(json.dumps(config))
    os.environ["VLLM_CONFIGURE_LOGGING"] = "1"
    os.environ["VLLM_LOGGING_CONFIG_PATH"] = str(vllm_config)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    global _handler
    logging.captureWarnings(True)  # library FutureWarnings and the like: to the file too
    handler = logging.FileHandler(log)
    handler.setFormatter(logging.Formatter(config["formatters"]["plain"]["format"]))
    for name in _LIBRARIES:  # their own levels stay (transformers: TRANSFORMERS_VERBOSITY)
        _attach(logging.getLogger(name), handler)
    _quiet_prefect(handler)
    _attach_root(handler)  # a logger with no handler of its own would print through logging's last resort
    if _handler is not None:
        _handler.close()
    _handler = handler
    global _log_path
    _log_path = log
    return log


_log_path: Path | None = None


@contextmanager
def engine_start():
    """While a model engine starts, this process's stdout and stderr file descriptors point at
    the log file. The processes vLLM spawns (engine core, workers) inherit them, so what they
    print outside Python logging (Triton and NUMA notices, weight-loading bars, C++ warnings)
    lands in the log, not on the terminal. Restored on exit; a no-op with --verbose."""
    if _log_path is None:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    target = os.open(_log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.dup2(target, 1)
        os.dup2(target, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, target):
            os.close(fd)


_handler: logging.Handler | None = None  # the current log file (one per process: a demo runs several steps)


def _attach(logger: logging.Logger, handler: logging.Handler) -> None:
    if _handler is not None:
        logger.removeHandler(_handler)
    logger.addHandler(handler)
    logger.propagate = False


def _attach_root(handler: logging.Handler) -> None:
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)


def _quiet_prefect(handler: logging.Handler) -> None:
    """Prefect configures its own console handlers at import: send its loggers to the file."""
    import prefect.main  # noqa: F401  (its logging setup runs on this import)

    known = [n for n in logging.root.manager.loggerDict if n.split(".")[0] in ("prefect", "uvicorn", "docket")]
    for name in dict.fromkeys(["prefect", "prefect.flow_runs", "prefect.task_runs", "prefect.server", "prefect.events",
                               "prefect._internal", "uvicorn", "uvicorn.error", "docket", *known]):
        logger = logging.getLogger(name)
        for h in list(logger.handlers):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                logger.removeHandler(h)
        _attach(logger, handler)
