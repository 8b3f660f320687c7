"""The vLLM-server engine (roost.engines.server_engine) against a real `vllm serve` process on
the tiny ChatML model, started once for this module on a loopback port, and compared with the
in-process engines: Magpie builds through `roost build --server`, deita scores, the one-line
errors (server down, not vLLM, another model, a generative model asked for reward scores).

The server runs in float32 (the deita comparison needs it; vLLM on CPU would run the float32
checkpoint in bfloat16 with dtype auto), with --no-enable-chunked-prefill (a CPU server dies on
seeded requests otherwise, see the engine's docstring) and the structured-output settings of the
in-process engine.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from roost.cli import app
from roost.dataset.writer import read_roost_metadata

pytestmark = pytest.mark.engine

SEED = Path(__file__).resolve().parents[1] / "data" / "seed_conversations.jsonl"
START_TIMEOUT = 420  # seconds; ~50 s on an idle 2-core machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_process(tiny_chatml_path, tmp_path_factory):
    """`vllm serve` on the tiny model, started (not yet healthy); killed with its process group."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("vllm-server") / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_chatml_path),
           "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "1024", "--dtype", "float32",
           "--seed", "0", "--no-enable-chunked-prefill",
           "--structured-outputs-config", json.dumps({"backend": "guidance", "disable_any_whitespace": True})]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        yield proc, port, log_path
    finally:
        from roost.engines import server_engine

        for engine in list(server_engine._ENGINES.values()):
            engine.close()
        server_engine._ENGINES.clear()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


@pytest.fixture(scope="module")
def server_url(server_process, chatml_engine, fp32_engine):
    """The server's URL (…/v1) once /health answers. The in-process engines the tests compare
    with load while the server starts."""
    proc, port, log_path = server_process
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            pytest.fail(f"vllm serve exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"vllm serve not healthy after {START_TIMEOUT} s:\n{log_path.read_text()[-3000:]}")
        time.sleep(1)
    return f"http://127.0.0.1:{port}/v1"


@pytest.fixture(scope="module")
def server_engine(server_url, tiny_chatml_path):
    from roost.engines import EngineConfig, get_engine

    return get_engine(EngineConfig(model=str(tiny_chatml_path), dtype="float32", max_model_len=1024, seed=0,
                                   server=server_url))


@pytest.fixture(scope="module")
def fp32_engine(tiny_chatml_path):
    """In-process float32 twin of the server (the same engine as tests/test_deita.py's)."""
    from roost.engines import EngineConfig, get_engine

    return get_engine(EngineConfig(model=str(tiny_chatml_path), dtype="float32", max_model_len=1024, seed=0))


def _recipe(tmp_path: Path, model_path, name: str = "server-build") -> Path:
    data = {
        "name": name,
        # the conftest engine's identity: the in-process build reuses chatml_engine
        "model": {"model": str(model_path), "max_model_len": 1024, "seed": 0},
        "output": {"num_rows": 12, "shard_size": 6},
        "synthesizer": {"kind": "magpie", "max_rounds": 4,
                        "instruction": {"temperature": 1.0, "max_tokens": 48},
                        "response": {"temperature": 0.7, "top_p": 0.95, "max_tokens": 64}},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _rows(out: Path) -> list[dict]:
    return [r for f in sorted((out / "data").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def _one_line_error(result, needle: str) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    text = " ".join(lines)
    assert len(lines) <= 2 and len(text) < 600 and needle in text, result.output
    return text


# -- builds ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def builds(tmp_path_factory, server_url, chatml_engine, tiny_chatml_path):
    """The same Magpie recipe built in-process and through the server (twice, into two dirs)."""
    tmp = tmp_path_factory.mktemp("builds")
    recipe = _recipe(tmp, tiny_chatml_path)
    outs = {}
    for name, extra in (("local", []), ("server", ["--server", server_url]), ("server2", ["--server", server_url])):
        outs[name] = tmp / name
        result = CliRunner().invoke(app, ["build", str(recipe), "--out", str(outs[name]), *extra])
        assert result.exit_code == 0, result.output
    return outs


def test_magpie_build_through_the_server_has_the_in_process_shape_and_provenance(builds, server_url, tiny_chatml_path):
    local, server = builds["local"], builds["server"]
    files = sorted(p.name for p in (local / "data").iterdir())
    assert sorted(p.name for p in (server / "data").iterdir()) == files
    for f in files:
        assert pq.read_schema(local / "data" / f).remove_metadata() == pq.read_schema(server / "data" / f).remove_metadata()
    local_rows, server_rows = _rows(local), _rows(server)
    assert local_rows and server_rows
    assert set(local_rows[0]) == set(server_rows[0])
    # the same pre-query prompt text reached the model (rendered and tokenized here, sent as ids)
    assert {r["pre_query_template"] for r in server_rows} == {r["pre_query_template"] for r in local_rows}
    for r in server_rows:
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"] and r["output_tokens"] > 0

    m_local = json.loads((local / "manifest.json").read_text())
    m_server = json.loads((server / "manifest.json").read_text())
    assert m_server["recipe_hash"] == m_local["recipe_hash"]  # where the model runs is not the recipe
    assert set(m_server) == set(m_local) and m_server["status"] == "complete"
    assert m_server["revision"] == m_local["revision"]  # the same local model files
    p_local = read_roost_metadata(local / "data" / files[0])["provenance"]
    p_server = read_roost_metadata(server / "data" / files[0])["provenance"]
    assert set(p_server) == set(p_local)
    assert p_server["sampling"] == p_local["sampling"]
    assert p_local["engine"]["engine"] == "vllm"
    engine = p_server["engine"]
    assert engine["engine"] == "vllm-server" and engine["server"] == server_url
    assert engine["served_model"] == str(tiny_chatml_path) and engine["vllm_version"]
    assert engine["server_max_model_len"] == 1024 and engine["reproducibility"] == "per-request seeds"
    assert "key" not in json.dumps(engine).lower()


def test_server_builds_are_reproducible_and_resume(builds, server_url, tiny_chatml_path):
    # per-request seeds: the same recipe gives the same rows, whatever ran on the server before
    assert _rows(builds["server"]) == _rows(builds["server2"])
    # the recipe (with --server) resumes its own output: nothing to redo
    recipe = _recipe(builds["server"].parent, tiny_chatml_path)
    result = CliRunner().invoke(app, ["build", str(recipe), "--out", str(builds["server"]), "--server", server_url])
    assert result.exit_code == 0 and "skipped 2 finished shard(s)" in result.output, result.output


# -- the engine interface ------------------------------------------------------------------------


def test_generate_with_seeds_n_stop_strings_and_logprobs(server_engine):
    from roost.engines import Sampling

    prompts = ["<|im_start|>user\n", "<|im_start|>system\nYou write poems.<|im_end|>\n<|im_start|>user\n"]
    sampling = Sampling(max_tokens=24, n=3, stop=("<|im_end|>", "\n"), logprobs=2)
    first = server_engine.generate(prompts, sampling, seed=11)
    server_engine.generate(prompts[::-1], sampling, seed=5)  # other work in between
    again = server_engine.generate(prompts, sampling, seed=11)
    other = server_engine.generate(prompts, sampling, seed=12)

    def ids(gens):
        return [[c.token_ids for c in g.completions] for g in gens]

    assert ids(first) == ids(again) and ids(first) != ids(other)
    for gen, prompt in zip(first, prompts):
        assert gen.prompt == prompt and gen.prompt_tokens == len(server_engine.encode(prompt))
        assert len(gen.completions) == 3
        for c in gen.completions:
            assert "\n" not in c.text and "<|im_end|>" not in c.text
            assert c.finish_reason in ("stop", "length") and c.logprobs is not None
            assert len(c.logprobs) == len(c.token_ids)
            assert all(t in pos for t, pos in zip(c.token_ids, c.logprobs))  # the sampled token is there
    chat = server_engine.chat([[{"role": "user", "content": "Say hi."}]], Sampling(max_tokens=8, temperature=0.0))
    assert chat[0].prompt.endswith("<|im_start|>assistant\n") and chat[0].completions[0].token_ids


def test_greedy_prompts_share_requests_and_equal_the_in_process_engine(server_engine, fp32_engine):
    from roost.engines import Sampling
    from roost.engines.base import render_chat

    convs = [[{"role": "user", "content": q}] for q, _ in _seed_pairs(40)]
    prompts = [render_chat(server_engine.tokenizer, c, add_generation_prompt=True) for c in convs]
    greedy = Sampling(max_tokens=24, temperature=0.0)
    # mixed samplings in one call: greedy runs (several prompts to a request) around seeded ones
    samplings = [greedy if i % 7 else Sampling(max_tokens=12, temperature=1.0, n=2) for i in range(len(prompts))]
    gens = server_engine.generate(prompts, samplings, seed=3)
    assert [g.prompt for g in gens] == prompts
    assert [len(g.completions) for g in gens] == [s.n for s in samplings]
    assert all(c.n_tokens <= s.max_tokens for g, s in zip(gens, samplings) for c in g.completions)
    local = fp32_engine.generate(prompts, greedy)
    same = sum(g.completions[0].token_ids == l_.completions[0].token_ids
               for g, l_, s in zip(gens, local, samplings) if s is greedy)
    assert same >= 0.9 * sum(s is greedy for s in samplings)  # same float32 model, greedy


def test_structured_output_through_the_server(server_engine):
    from roost.engines import Sampling

    prompt = "<|im_start|>user\nAnswer.<|im_end|>\n<|im_start|>assistant\n"
    choice = server_engine.generate([prompt], Sampling(max_tokens=8, temperature=0.0, choice=("yes", "no")))
    assert choice[0].completions[0].text in ("yes", "no")
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"],
              "additionalProperties": False}
    doc = server_engine.generate([prompt], Sampling(max_tokens=24, temperature=0.0, json_schema=schema))[0].completions[0]
    if doc.finish_reason == "stop":
        assert isinstance(json.loads(doc.text)["a"], int)


# -- deita -----------------------------------------------------------------------------------------


def _seed_pairs(n: int) -> list[tuple[str, str]]:
    rows = [json.loads(line)["messages"] for line in SEED.read_text().splitlines() if line.strip()]
    return [(m[0]["content"], m[1]["content"]) for m in rows[:n]]


def test_deita_scores_through_the_server_equal_the_in_process_ones(server_engine, fp32_engine):
    from roost.scorers.deita import DeitaScorer

    assert fp32_engine.describe()["dtype"] == "torch.float32"
    pairs = _seed_pairs(24)
    pairs.append(("word " * 1500, "answer " * 300))  # over the context: cut the same way on both
    instructions, responses = [p[0] for p in pairs], [p[1] for p in pairs]
    results = {}
    for name, engine in (("server", server_engine), ("local", fp32_engine)):
        scorer = DeitaScorer(engine)
        results[name] = (scorer.complexity(instructions), scorer.quality(instructions, responses), scorer.settings())
    s_c, s_q, s_settings = results["server"]
    l_c, l_q, l_settings = results["local"]
    assert s_settings == l_settings
    assert [s.truncated for s in s_c + s_q] == [s.truncated for s in l_c + l_q] and s_q[-1].truncated
    diffs = [abs(a.value - b.value) for a, b in zip(s_c + s_q, l_c + l_q)]
    assert max(diffs) < 1e-4, max(diffs)
    assert len({round(s.value, 6) for s in s_q}) > 1

    # the raw per-choice log-probs too: renormalized over exactly the six tokens
    prompts = [DeitaScorer(fp32_engine).complexity_prompt(i).text for i in instructions[:8]]
    ids = DeitaScorer(fp32_engine).token_ids
    a, b = server_engine.choice_logprobs(prompts, ids), fp32_engine.choice_logprobs(prompts, ids)
    assert max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)) < 1e-4


def test_curate_scores_deita_on_the_scorer_server(builds, server_url, tiny_chatml_path, tmp_path):
    out = tmp_path / "curated"
    result = CliRunner().invoke(app, ["curate", str(builds["server"]), "--out", str(out), "--no-semantic",
                                      "--scorer", str(tiny_chatml_path), "--scorer-server", server_url])
    assert result.exit_code == 0, result.output
    rows = _rows(out)
    assert rows and all(r["deita_score"] is not None for r in rows)
    manifest = json.loads((out / "manifest.json").read_text())
    assert server_url in json.dumps(manifest)


# -- errors: one line, exit 2 ----------------------------------------------------------------------


def test_server_down_is_one_line(tmp_path, tiny_chatml_path):
    url = f"http://127.0.0.1:{_free_port()}/v1"
    result = CliRunner().invoke(app, ["build", str(_recipe(tmp_path, tiny_chatml_path)), "--out", str(tmp_path / "o"),
                                      "--server", url])
    _one_line_error(result, "cannot connect")


class _NotVLLM(BaseHTTPRequestHandler):
    failures_left = 0

    def do_GET(self):  # noqa: N802 - http.server's name
        if self.path == "/flaky" and type(self).failures_left > 0:
            type(self).failures_left -= 1
            self.send_response(503)
            self.end_headers()
            return
        body = b'{"ok": true}' if self.path == "/flaky" else b"<html>hello</html>"
        self.send_response(200 if self.path == "/flaky" else 404)
        self.send_header("Content-Type", "application/json" if self.path == "/flaky" else "text/html")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def not_vllm():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _NotVLLM)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_not_a_vllm_server_is_one_line_and_5xx_are_retried(tmp_path, tiny_chatml_path, not_vllm):
    result = CliRunner().invoke(app, ["build", str(_recipe(tmp_path, tiny_chatml_path)), "--out", str(tmp_path / "o"),
                                      "--server", not_vllm + "/v1"])
    _one_line_error(result, "does not look like a vLLM server")

    from roost.engines import ServerConfig
    from roost.engines.server_engine import ServerError, _Client

    client = _Client(ServerConfig(url=not_vllm, retries=2))
    try:
        _NotVLLM.failures_left = 2
        assert client.run(client.request("GET", "/flaky")) == {"ok": True}
        _NotVLLM.failures_left = 3
        with pytest.raises(ServerError, match="HTTP 503"):
            client.run(client.request("GET", "/flaky"))
    finally:
        client.close()


def test_another_model_on_the_server_is_one_line(tmp_path, server_url, tiny_llama3_path):
    result = CliRunner().invoke(app, ["build", str(_recipe(tmp_path, tiny_llama3_path)), "--out", str(tmp_path / "o"),
                                      "--server", server_url])
    text = _one_line_error(result, "not the recipe's model")
    assert str(tiny_llama3_path) in text


def test_reward_scores_from_a_generative_server_are_one_line(tmp_path, server_url, builds, tiny_chatml_path):
    result = CliRunner().invoke(app, ["curate", str(builds["server"]), "--out", str(tmp_path / "c"), "--no-semantic",
                                      "--reward-model", str(tiny_chatml_path), "--reward-server", server_url])
    _one_line_error(result, "no /classify route")


@pytest.mark.skipif(os.environ.get("ROOST_TEST_REWARD_SERVER") != "1",
                    reason="starts a second vllm serve (~60 s); set ROOST_TEST_REWARD_SERVER=1")
def test_reward_scores_through_a_reward_model_server(tiny_rm_chatml_path, tmp_path):
    """A reward model served by vLLM (/classify, raw head outputs) scores as transformers does."""
    from roost.engines import RewardModelConfig
    from roost.scorers.reward import get_reward_scorer

    port = _free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_rm_chatml_path),
           "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "512", "--dtype", "float32"]
    log = tmp_path / "rm-server.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"})
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        convs = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in _seed_pairs(24)]
        served = get_reward_scorer(RewardModelConfig(model=str(tiny_rm_chatml_path), max_model_len=512,
                                                     server=f"http://127.0.0.1:{port}/v1"))
        local = get_reward_scorer(RewardModelConfig(model=str(tiny_rm_chatml_path), max_model_len=512,
                                                    backend="transformers", dtype="float32"))
        a, b = served.score(convs), local.score(convs)
        assert max(abs(x.value - y.value) for x, y in zip(a, b)) < 1e-4
        info = served.describe()
        assert info["backend"] == "server" and info["engine"] == "vllm-server-pooling"
        served._backend.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def test_api_key_comes_from_the_environment_only(tmp_path, tiny_chatml_path, server_url, monkeypatch):
    from roost.engines import EngineConfig

    with pytest.raises(ValueError, match="never stored"):
        EngineConfig(model="m", server={"url": server_url, "api_key": "sk-secret"})
    recipe = yaml.safe_load(_recipe(tmp_path, tiny_chatml_path).read_text())
    recipe["model"]["server"] = {"url": server_url, "api_key_env": "ROOST_TEST_NO_SUCH_KEY"}
    path = tmp_path / "keyed.yaml"
    path.write_text(yaml.safe_dump(recipe))
    monkeypatch.delenv("ROOST_TEST_NO_SUCH_KEY", raising=False)
    result = CliRunner().invoke(app, ["build", str(path), "--out", str(tmp_path / "o")])
    _one_line_error(result, "ROOST_TEST_NO_SUCH_KEY")
