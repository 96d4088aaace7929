"""`dllama-py serve` through the official openai client (and raw HTTP where a client would refuse to
send the request): every API parameter, streaming, tools, reasoning, JSON output, limits and faults.

Two models: a scripted GLM whose output is known token by token (tests/scripted_glm.py), and the tiny
random model of benchmarks/make_model.py, whose near-uniform distributions show sampling effects."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from scripted_glm import build_scripted_glm

openai = pytest.importorskip("openai")

from dllama_py import Engine  # noqa: E402
from dllama_py.server import ApiServer, ServerOptions  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CALL = ["<tool_call>", "get_weather", "<arg_key>", "city", "</arg_key>", "<arg_value>", "Paris", "</arg_value>",
        "</tool_call>"]
CHAINS = [["<|assistant|>", "<think>", "h", "m", "</think>", "O", "K", "<|user|>"],
          ["X", "Y", "é", "<|observation|>"],
          ["Z", *CALL, "<|observation|>"]]
WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                                 "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def scripted_engine(tmp_path_factory):
    path = build_scripted_glm(tmp_path_factory.mktemp("server_glm"), CHAINS, words=sorted(set(CALL)))
    with Engine(path, max_sequences=2) as eng:  # the server's two slots
        yield eng


def make_tiny_model(directory: Path) -> Path:
    from dllama_py.convert import convert

    subprocess.run([sys.executable, str(REPO / "benchmarks" / "make_model.py"), "tiny", str(directory / "hf")],
                   check=True, capture_output=True)
    out = directory / "tiny.m"
    convert(directory / "hf", out, dtype="q80", progress=False, log=lambda *a: None)
    return out


@pytest.fixture(scope="module")
def tiny_engine(tmp_path_factory):
    with Engine(make_tiny_model(tmp_path_factory.mktemp("server_tiny")), threads=1) as eng:
        yield eng


class Running:
    def __init__(self, engine, **options):
        self.server = ApiServer(engine, port=0, options=ServerOptions(**options)).start()
        self.url = self.server.url
        self.state = self.server.app.state.server
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key=options.get("api_key") or "none",
                                    max_retries=0, timeout=60)

    def raw(self, method: str, path: str, body: bytes | str | None = None, headers: dict | None = None):
        conn = http.client.HTTPConnection(self.server.host, self.server.port, timeout=30)
        conn.request(method, path, body=body.encode() if isinstance(body, str) else body,
                     headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        data = response.read()
        conn.close()
        return response.status, dict(response.getheaders()), data


@pytest.fixture(scope="module")
def scripted(scripted_engine):
    running = Running(scripted_engine, parallel=2)
    yield running
    running.server.stop()


@pytest.fixture(scope="module")
def tiny(tiny_engine):
    running = Running(tiny_engine, max_queue=128, body_timeout=1.0, header_timeout=1.0, max_body_bytes=1 << 20)
    yield running
    running.server.stop()


def extra(obj, key):
    return (obj.model_extra or {}).get(key)


# ---------------------------------------------------------------------------------------------------- chat


def test_chat_answer_reasoning_and_usage(scripted):
    reply = scripted.client.chat.completions.create(model="scripted", messages=HI, temperature=0)
    choice = reply.choices[0]
    assert choice.message.content == "OK" and extra(choice.message, "reasoning_content") == "hm"
    assert choice.finish_reason == "stop" and choice.message.tool_calls is None
    assert reply.usage.completion_tokens == 6  # <think> h m </think> O K, then <|user|>
    assert reply.usage.prompt_tokens == len(scripted.state.tokenizer.encode_chat(
        scripted.state.engine.apply_chat_template(HI)))


def test_chat_stream_with_usage(scripted):
    chunks = list(scripted.client.chat.completions.create(
        model="scripted", messages=HI, temperature=0, stream=True, stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant"
    assert "".join(d.content or "" for d in deltas) == "OK"
    assert "".join(extra(d, "reasoning_content") or "" for d in deltas) == "hm"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    plain = list(scripted.client.chat.completions.create(model="scripted", messages=HI, temperature=0, stream=True))
    assert all(c.usage is None for c in plain)


def test_reasoning_when_the_prompt_opens_it(scripted):
    """GLM-4.7's template ends the prompt with <think>: generation starts inside the reasoning."""
    reply = scripted.client.chat.completions.create(model="scripted", messages=HI, temperature=0,
                                                    extra_body={"chat_template_kwargs": {"assistant_prefix": "<think>"}})
    assert reply.choices[0].message.content == "OK" and extra(reply.choices[0].message, "reasoning_content") == "hm"


def test_stop_and_max_completion_tokens(scripted):
    reply = scripted.client.chat.completions.create(model="scripted", messages=HI, temperature=0, stop=["K"])
    assert reply.choices[0].message.content == "O" and reply.choices[0].finish_reason == "stop"
    reply = scripted.client.chat.completions.create(model="scripted", messages=HI, temperature=0,
                                                    max_completion_tokens=3)
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 3
    assert extra(reply.choices[0].message, "reasoning_content") == "hm"


def test_follow_up_turn_reuses_the_cached_prefix(scripted):
    first = scripted.client.chat.completions.create(model="scripted", messages=HI, temperature=0)
    messages = HI + [{"role": "assistant", "content": "OK"}, {"role": "user", "content": "Hi"}]
    second = scripted.client.chat.completions.create(model="scripted", messages=messages, temperature=0)
    assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens


# ---------------------------------------------------------------------------------------------------- tools


def call_of(tool_calls):
    assert len(tool_calls) == 1 and tool_calls[0].type == "function" and tool_calls[0].id.startswith("call_")
    return tool_calls[0].function.name, json.loads(tool_calls[0].function.arguments)


@pytest.mark.parametrize("choice", ["auto", "required", "named"])
def test_tool_calls(scripted, choice):
    kwargs = dict(model="scripted", messages=HI, temperature=0, tools=[WEATHER_TOOL])
    if choice == "auto":  # the model starts the call itself
        kwargs["extra_body"] = {"chat_template_kwargs": {"assistant_prefix": "Z"}}
    else:
        kwargs["tool_choice"] = "required" if choice == "required" else {"type": "function",
                                                                          "function": {"name": "get_weather"}}
    reply = scripted.client.chat.completions.create(**kwargs)
    assert reply.choices[0].finish_reason == "tool_calls"
    assert call_of(reply.choices[0].message.tool_calls) == ("get_weather", {"city": "Paris"})
    assert not reply.choices[0].message.content
    chunks = list(scripted.client.chat.completions.create(**kwargs, stream=True))
    deltas = [d for c in chunks for d in c.choices]
    calls = [t for d in deltas for t in d.delta.tool_calls or []]
    assert calls[0].index == 0 and call_of(calls) == ("get_weather", {"city": "Paris"})
    assert not "".join(d.delta.content or "" for d in deltas)
    assert deltas[-1].finish_reason == "tool_calls"


def test_tool_choice_none_and_bad_choices(scripted):
    reply = scripted.client.chat.completions.create(model="scripted", messages=HI, temperature=0, tools=[WEATHER_TOOL],
                                                    tool_choice="none")
    assert reply.choices[0].message.content == "OK" and reply.choices[0].message.tool_calls is None
    with pytest.raises(openai.BadRequestError) as bad:
        scripted.client.chat.completions.create(model="scripted", messages=HI, tools=[WEATHER_TOOL],
                                                tool_choice={"type": "function", "function": {"name": "nope"}})
    assert bad.value.body["param"] == "tool_choice"
    with pytest.raises(openai.BadRequestError):
        scripted.client.chat.completions.create(model="scripted", messages=HI, tool_choice="required")


def test_assistant_tool_calls_and_tool_results_reach_the_template(scripted):
    messages = HI + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    reply = scripted.client.chat.completions.create(model="scripted", messages=messages, temperature=0)
    assert reply.choices[0].message.content == "OK"


# ---------------------------------------------------------------------------------------------------- completions


def test_completions(scripted):
    c = scripted.client.completions
    reply = c.create(model="scripted", prompt="X", temperature=0)
    assert reply.choices[0].text == "Yé" and reply.choices[0].finish_reason == "stop"
    reply = c.create(model="scripted", prompt="X", temperature=0, max_tokens=1)
    assert reply.choices[0].text == "Y" and reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 1
    chunks = list(c.create(model="scripted", prompt="X", temperature=0, stream=True,
                           stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == "Yé"
    assert chunks[-1].usage.completion_tokens == 3
    reply = c.create(model="scripted", prompt="X", temperature=0, max_tokens=5, extra_body={"ignore_eos": True})
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 5  # past <|observation|>
    assert reply.choices[0].text.startswith("Yé")
    reply = c.create(model="scripted", prompt="X", temperature=0, echo=True)
    assert reply.choices[0].text == "XYé"
    ids = scripted.state.tokenizer.encode("X")
    assert c.create(model="scripted", prompt=ids, temperature=0).choices[0].text == "Yé"
    reply = c.create(model="scripted", prompt=["X", "Y"], temperature=0, n=2)
    assert [ch.text for ch in sorted(reply.choices, key=lambda ch: ch.index)] == ["Yé", "Yé", "é", "é"]


# ---------------------------------------------------------------------------------------------------- sampling


def test_logprobs(tiny):
    reply = tiny.client.chat.completions.create(model="tiny", messages=HI, temperature=0, max_tokens=8,
                                                logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens == 8
    for entry in content:
        assert len(entry.top_logprobs) == 3 and entry.logprob <= 0
        tops = [t.logprob for t in entry.top_logprobs]
        assert tops == sorted(tops, reverse=True)
        assert entry.top_logprobs[0].token == entry.token and entry.top_logprobs[0].logprob == entry.logprob
    assert "".join(e.token for e in content) == reply.choices[0].message.content
    reply = tiny.client.completions.create(model="tiny", prompt="Hello", temperature=1, max_tokens=5, logprobs=2, seed=1)
    lp = reply.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    # a dict by token text: two tokens that decode alike (parts of one character) share a key
    assert all(1 <= len(top) <= 2 for top in lp.top_logprobs) and lp.text_offset[0] == 0


def test_seed_and_n(tiny):
    def texts(seed):
        reply = tiny.client.chat.completions.create(model="tiny", messages=HI, temperature=1.0, top_p=1.0,
                                                    max_tokens=12, n=3, seed=seed)
        return [c.message.content for c in sorted(reply.choices, key=lambda c: c.index)]

    first = texts(7)
    assert len(first) == 3 and first == texts(7)
    assert len(set(first)) > 1  # each choice draws its own tokens
    assert texts(8) != first


def test_logit_bias_and_penalties(tiny):
    def tokens(**kw):
        reply = tiny.client.completions.create(model="tiny", prompt="Hello", temperature=0, max_tokens=24,
                                               logprobs=0, extra_body={"return_tokens_as_token_ids": True}, **kw)
        return [int(t.removeprefix("token_id:")) for t in reply.choices[0].logprobs.tokens]

    greedy = tokens()
    assert tokens(logit_bias={str(greedy[0]): -100})[0] != greedy[0]
    forced = tiny.state.tokenizer.encode("q")[0]
    assert set(tokens(logit_bias={str(forced): 100})) == {forced}
    # A frequency penalty makes repeated tokens rarer than in the greedy text, a presence penalty too.
    assert max(Counter(greedy).values()) > 2, "the greedy text of the random model repeats"
    assert max(Counter(tokens(frequency_penalty=2.0)).values()) < max(Counter(greedy).values())
    assert len(set(tokens(presence_penalty=2.0))) > len(set(greedy))


def test_response_format_json(tiny):
    close = str(tiny.state.tokenizer.encode("}")[0])
    reply = tiny.client.chat.completions.create(model="tiny", messages=HI, temperature=0.7, max_tokens=40, seed=3,
                                                response_format={"type": "json_object"}, logit_bias={close: 8})
    assert reply.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(reply.choices[0].message.content), dict)
    schema = {"type": "object", "properties": {"color": {"enum": ["red", "green"]}, "ok": {"type": "boolean"}},
              "required": ["color", "ok"], "additionalProperties": False}
    for seed in range(3):
        reply = tiny.client.chat.completions.create(
            model="tiny", messages=HI, temperature=1.0, max_tokens=40, seed=seed,
            response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}})
        value = json.loads(reply.choices[0].message.content)
        assert value["color"] in ("red", "green") and isinstance(value["ok"], bool) and len(value) == 2
    with pytest.raises(openai.BadRequestError) as bad:
        tiny.client.chat.completions.create(model="tiny", messages=HI, response_format={
            "type": "json_schema", "json_schema": {"name": "c", "schema": {"type": "string", "pattern": "(("}}})
    assert bad.value.body["param"] == "response_format"


# ---------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("body, param", [
    ({"seed": "abc"}, "seed"), ({"seed": 1.5}, "seed"), ({"max_tokens": -1}, "max_tokens"),
    ({"max_tokens": -5}, "max_tokens"), ({"max_tokens": 0}, "max_tokens"), ({"temperature": -0.5}, "temperature"),
    ('"temperature": NaN', "temperature"), ('"temperature": Infinity', "temperature"),
    ('"top_p": -Infinity', "top_p"), ({"temperature": "0.5"}, "temperature"), ({"n": 0}, "n"),
    ({"presence_penalty": 3}, "presence_penalty"), ({"logit_bias": {"abc": 1}}, "logit_bias"),
    ({"logit_bias": {"5": 500}}, "logit_bias.5"), ({"logit_bias": {"99999": 1}}, "logit_bias"),
    ({"chat_template_kwargs": "x"}, "chat_template_kwargs"),
    ({"chat_template_kwargs": {"messages": []}}, "chat_template_kwargs"),
    ({"messages": []}, "messages"), ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
    ({"stop": [1]}, "stop"), ({"top_logprobs": 2}, "top_logprobs"), ({"stream": "yes"}, "stream"),
    ({"response_format": {"type": "xml"}}, "response_format.type"), ({"tools": [{"type": "function"}]}, "tools.0.function"),
])
def test_bad_parameters_get_400_naming_them(scripted, body, param):
    if isinstance(body, str):
        raw = '{"messages": [{"role": "user", "content": "Hi"}], ' + body + "}"
    else:
        raw = json.dumps({"messages": HI} | body)
    status, _, data = scripted.raw("POST", "/v1/chat/completions", raw)
    error = json.loads(data)["error"]
    assert status == 400 and error["type"] == "invalid_request_error", (status, error)
    assert error["param"] is not None and error["param"].startswith(param.split(".")[0]), error
    assert param.split(".")[0] in error["message"]


def test_template_kwargs_that_are_not_ours_are_answered(scripted):
    status, _, data = scripted.raw("POST", "/v1/chat/completions", json.dumps(
        {"messages": HI, "temperature": 0, "chat_template_kwargs": {"max_tokens": 5, "enable_thinking": False}}))
    assert status == 200 and json.loads(data)["choices"][0]["message"]["content"] == "OK"


@pytest.mark.parametrize("raw, status", [("not json", 400), ("[1, 2]", 400), ("", 400), (b"\xff\xfe{", 400),
                                         ('{"prompt": ""}', 400), ('{"prompt": [999999]}', 400), ('{"prompt": []}', 400)])
def test_bodies_that_are_not_requests(scripted, raw, status):
    got, _, data = scripted.raw("POST", "/v1/completions", raw)
    assert got == status and json.loads(data)["error"]["message"]


def test_prompt_longer_than_the_context(scripted):
    status, _, data = scripted.raw("POST", "/v1/completions", json.dumps({"prompt": "X" * 5000}))
    error = json.loads(data)["error"]
    assert status == 400 and error["code"] == "context_length_exceeded" and error["param"] == "prompt"


def test_unknown_routes_and_keep_alive(scripted):
    conn = http.client.HTTPConnection(scripted.server.host, scripted.server.port, timeout=30)
    conn.request("POST", "/v1/embeddings", body=json.dumps({"input": "x" * 1000}), headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 404 and "no route" in json.loads(response.read())["error"]["message"]
    conn.request("GET", "/health")  # the same connection: the 404's body must not leak into this request
    response = conn.getresponse()
    assert response.status == 200 and json.loads(response.read())["status"] == "ok"
    conn.request("GET", "/v1/chat/completions")
    response = conn.getresponse()
    assert response.status == 405 and json.loads(response.read())["error"]
    conn.close()


# ---------------------------------------------------------------------------------------------------- limits


def raw_socket(running, data: bytes) -> socket.socket:
    s = socket.create_connection((running.server.host, running.server.port), timeout=10)
    s.sendall(data)
    return s


def read_status(s: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ")[1])


def test_body_over_the_limit_is_413(tiny):
    s = raw_socket(tiny, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000000000000\r\n\r\n{")
    assert read_status(s) == 413
    s.close()
    status, _, data = tiny.raw("POST", "/v1/completions", b'{"prompt": "' + b"x" * (2 << 20) + b'"}')
    assert status == 413 and json.loads(data)["error"]["code"] == "request_too_large"
    chunked = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" +
               b"".join(b"%x\r\n%s\r\n" % (1 << 16, b"x" * (1 << 16)) for _ in range(20)) + b"0\r\n\r\n")
    s = raw_socket(tiny, b"")
    s.sendall(chunked)
    assert read_status(s) == 413
    s.close()


def test_short_or_trickling_body_is_408(tiny):
    short = raw_socket(tiny, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"prompt\"")
    trickle = raw_socket(tiny, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
    t0 = time.monotonic()
    for _ in range(4):
        time.sleep(0.4)
        try:
            trickle.sendall(b" ")
        except OSError:
            break
    assert read_status(short) == 408 and read_status(trickle) == 408
    assert time.monotonic() - t0 < 5
    short.close()
    trickle.close()
    assert tiny.raw("GET", "/health")[0] == 200


def closed_by_server(s, deadline: float) -> bool:
    """Whether the server closes s (EOF or reset) before `deadline` (time.monotonic())."""
    s.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_silent_or_trickling_headers_are_cut_off(tiny):
    """header_timeout is 1 s here: the trickle would need 8 s to finish its headers."""
    silent = raw_socket(tiny, b"")
    trickle = raw_socket(tiny, b"GET /health HTTP/1.1\r\n")
    cut_off_while_sending = False
    for byte in b"Host: x\r\nX-Slow: " + b"y" * 30:  # a byte every 0.2 s
        time.sleep(0.2)
        try:
            trickle.sendall(bytes([byte]))
        except OSError:
            cut_off_while_sending = True
            break
        assert tiny.raw("GET", "/health")[0] == 200  # others are served meanwhile
    assert cut_off_while_sending or closed_by_server(trickle, time.monotonic() + 5)
    assert closed_by_server(silent, time.monotonic() + 5)
    silent.close()
    trickle.close()


def test_fifty_clients_two_requests_each_all_answered(tiny):
    statuses: list[int] = []
    lock = threading.Lock()

    def client():
        for _ in range(2):
            status, _, data = tiny.raw("POST", "/v1/completions", json.dumps(
                {"prompt": "Hello", "max_tokens": 2, "temperature": 0}))
            with lock:
                statuses.append(status)

    threads = [threading.Thread(target=client) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 100


class Blocked:
    """Holds the engine's decode steps until released (or a step raises `fault`)."""

    def __init__(self, running, fault: Exception | None = None):
        self.backend = running.state.scheduler.backend
        self.release, self.entered, self.fault = threading.Event(), threading.Event(), fault

    def __enter__(self):
        real = self.backend.decode

        def decode(rows):
            self.entered.set()
            if self.fault is not None:
                raise self.fault
            self.release.wait(30)
            return real(rows)

        self.backend.decode = decode
        return self

    def __exit__(self, *exc):
        self.release.set()
        del self.backend.decode


def test_full_queue_is_503_with_retry_after(tiny_engine):
    running = Running(tiny_engine, parallel=1, max_queue=1)
    try:
        with Blocked(running) as blocked:
            results = []
            body = json.dumps({"prompt": "Hello", "max_tokens": 3})
            threads = [threading.Thread(target=lambda: results.append(running.raw("POST", "/v1/completions", body)))]
            threads[0].start()
            assert blocked.entered.wait(30)  # the first request holds the slot
            threads.append(threading.Thread(target=lambda: results.append(running.raw("POST", "/v1/completions", body))))
            threads[1].start()
            deadline = time.monotonic() + 10
            while running.state.scheduler.queue_length < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            with pytest.raises(openai.APIStatusError) as busy:
                running.client.completions.create(model="tiny", prompt="Hello", max_tokens=3)
            assert busy.value.status_code == 503 and int(busy.value.response.headers["retry-after"]) >= 1
        for t in threads:
            t.join()
        assert [r[0] for r in results] == [200, 200]
    finally:
        running.server.stop()


def test_engine_fault_is_a_500_with_its_message(tiny):
    with Blocked(tiny, fault=RuntimeError("peer closed the connection")):
        status, _, data = tiny.raw("POST", "/v1/completions", json.dumps({"prompt": "Hello", "max_tokens": 3}))
        assert status == 500 and "peer closed the connection" in json.loads(data)["error"]["message"]
        assert json.loads(data)["error"]["type"] == "server_error"
        with pytest.raises(openai.APIError, match="peer closed"):
            list(tiny.client.chat.completions.create(model="tiny", messages=HI, max_tokens=3, stream=True))
    assert tiny.client.completions.create(model="tiny", prompt="Hello", max_tokens=2).choices[0].text is not None


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_leaves_stops_its_generation(tiny, stream):
    scheduler = tiny.state.scheduler
    before = scheduler.tokens_generated
    body = json.dumps({"prompt": "Hello", "max_tokens": 3000, "temperature": 1.0, "stream": stream})
    s = raw_socket(tiny, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body.encode()))
    deadline = time.monotonic() + 30
    while scheduler.tokens_generated - before < 20 and time.monotonic() < deadline:
        time.sleep(0.005)
    s.close()
    deadline = time.monotonic() + 10
    while scheduler.slots_busy and time.monotonic() < deadline:
        time.sleep(0.01)
    assert scheduler.slots_busy == 0
    assert scheduler.tokens_generated - before < 3000
    # The engine is free for the next client at once.
    assert tiny.client.completions.create(model="tiny", prompt="Hello", max_tokens=2,  # a sampled EOS would end early
                                          extra_body={"ignore_eos": True}).usage.completion_tokens == 2


# ---------------------------------------------------------------------------------------------------- the rest


def test_api_key_cors_health_metrics_models_and_page(tiny_engine):
    running = Running(tiny_engine, api_key="sesame", cors_origins=["http://example.test"])
    try:
        assert running.client.models.list().data[0].id == "tiny"
        assert running.client.models.retrieve("tiny").id == "tiny"
        nokey = openai.OpenAI(base_url=running.url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            nokey.models.list()
        assert running.raw("GET", "/metrics")[0] == 401
        status, headers, data = running.raw("GET", "/health")
        assert status == 200 and json.loads(data)["slots_total"] == 1
        status, headers, _ = running.raw("OPTIONS", "/v1/chat/completions", headers={
            "Origin": "http://example.test", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type"})
        assert status == 200 and headers["access-control-allow-origin"] == "http://example.test"
        running.client.completions.create(model="tiny", prompt="Hello", max_tokens=4)
        status, _, data = running.raw("GET", "/metrics", headers={"Authorization": "Bearer sesame"})
        from prometheus_client.parser import text_string_to_metric_families

        values = {s.name: s.value for f in text_string_to_metric_families(data.decode()) for s in f.samples}
        assert values["dllama_generated_tokens_total"] == 4 and values["dllama_slots_busy"] == 0
        assert values["dllama_queue_length"] == 0 and values["dllama_tokens_per_second"] > 0
        status, headers, data = running.raw("GET", "/")
        assert status == 200 and b"/static/chat.js" in data and headers["content-type"].startswith("text/html")
        assert running.raw("GET", "/static/chat.js")[0] == 200
    finally:
        running.server.stop()


def test_cli_serve(tiny_engine):
    import os
    import re

    proc = subprocess.Popen([sys.executable, "-m", "dllama_py.cli", "serve", "-m", str(tiny_engine.path), "--port", "0",
                             "-t", "1", "--parallel", "2", "--api-key", "k", "--model-name", "demo"],
                            stdout=subprocess.PIPE, text=True, env=dict(os.environ, DLLAMA_API_KEY=""))
    try:
        line = proc.stdout.readline()
        url = re.search(r"on (http://\S+) ", line).group(1)
        client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0, timeout=60)
        assert client.models.list().data[0].id == "demo"
        reply = client.chat.completions.create(model="demo", messages=HI, max_tokens=3)
        assert reply.usage.completion_tokens <= 3 and reply.model == "demo"
        assert "2 slot(s)" in line
    finally:
        proc.terminate()
        assert proc.wait(30) is not None
