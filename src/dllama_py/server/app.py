"""`dllama-py serve`: the OpenAI-style HTTP API (Starlette + uvicorn, bodies validated by pydantic).

POST /v1/chat/completions and /v1/completions (streamed as server-sent events or not), GET /v1/models,
/health, /metrics (Prometheus), and a chat page at /. Generations run in the Scheduler (scheduler.py);
this module turns requests into prompts and sampling parameters, and tokens into OpenAI's responses.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import socket
import threading
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Callable

from anyio import fail_after, to_thread
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..constrained import ConstraintError, json_grammar
from ..engine import Engine
from ..reasoning import THINK_END, ThinkingSplitter, prompt_starts_in_thinking
from ..tool_calls import ToolCallStream, forced_call_prefix, tool_call_format
from .http_protocol import HeaderDeadlineProtocol
from .protocol import ApiError, ChatRequest, CompletionRequest, NamedToolChoice, validation_error
from .scheduler import Finished, Generation, QueueFull, SamplingParams, Scheduler, TokenEvent

STATIC = Path(__file__).parent / "static"
DEFAULT_TEMPERATURE, DEFAULT_TOP_P = 0.8, 0.9  # as `generate` and `chat`; OpenAI's 1.0 / 1.0 ramble on small models


@dataclass
class ServerOptions:
    parallel: int = 1  # sequence slots
    max_queue: int = 64  # requests waiting for a slot before 503
    api_key: str | None = None
    cors_origins: list[str] | None = None
    max_body_bytes: int = 8 << 20
    body_timeout: float = 15.0  # seconds for a whole request body to arrive
    header_timeout: float = 15.0  # seconds for a request's line and headers to arrive
    model_name: str | None = None


class _State:
    def __init__(self, engine: Engine, options: ServerOptions):
        if engine.tokenizer is None:
            raise RuntimeError(f"{engine.path} has no tokenizer bundle: the server needs one")
        self.engine, self.options, self.tokenizer = engine, options, engine.tokenizer
        self.model_name = options.model_name or Path(engine.path).stem
        if options.parallel > engine.max_sequences:
            raise ValueError(f"{options.parallel} server slots need an Engine with max_sequences >= {options.parallel} "
                             f"(it has {engine.max_sequences})")
        self.scheduler = Scheduler(engine.scheduler, engine.tokenizer, options.parallel, options.max_queue,
                                   draft=engine.draft, draft_tokens=engine.draft_tokens)
        self.tool_format = tool_call_format(engine.tokenizer.chat_template)
        self.started = int(time.time())


# ---------------------------------------------------------------------------------------------------- plumbing


def _error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body, status_code=error.status, headers=error.headers)


def _endpoint(handler: Callable, authorize: bool = True):
    """A route: API key check, ApiError -> its status, any other fault -> 500 with its message."""

    async def endpoint(request: Request) -> Response:
        state: _State = request.app.state.server
        try:
            if authorize and state.options.api_key:
                given = request.headers.get("authorization", "")
                if not hmac.compare_digest(given.encode(), f"Bearer {state.options.api_key}".encode()):
                    raise ApiError(401, "a valid API key is needed: send 'Authorization: Bearer <key>'",
                                   code="invalid_api_key")
            return await handler(request, state)
        except ApiError as e:
            return _error_response(e)
        except ClientDisconnect:
            return Response(status_code=499)  # nobody is listening any more
        except Exception as e:  # a server fault: still an answer, with what went wrong
            return _error_response(ApiError(500, f"{type(e).__name__}: {e}"))

    return endpoint


async def _read(request: Request, state: _State, model: type[BaseModel]):
    """The body, read within the size and time limits, validated as `model`."""
    limit = state.options.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise ApiError(413 if declared.isdigit() else 400,
                       f"the request body is larger than {limit} bytes" if declared.isdigit()
                       else "Content-Length is not a number", code="request_too_large")
    body = bytearray()
    try:
        with fail_after(state.options.body_timeout):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise ApiError(413, f"the request body is larger than {limit} bytes", code="request_too_large")
    except TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {state.options.body_timeout:g} s",
                       code="request_timeout", headers={"Connection": "close"}) from None
    try:
        return model.model_validate_json(bytes(body) or b"{}")
    except ValidationError as e:
        raise validation_error(e) from None


def _submit(state: _State, prompts: list[list[int]], params: list[SamplingParams]) -> list[Generation]:
    gens = []
    try:
        for ids, p in zip(prompts, params):
            gens.append(state.scheduler.submit(ids, p))
    except QueueFull as e:
        for g in gens:
            g.cancel()
        raise ApiError(503, str(e), code="server_busy", headers={"Retry-After": str(e.retry_after)}) from None
    return gens


async def _cancel_on_disconnect(request: Request, gens: list[Generation]) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
    for g in gens:
        g.cancel()


def _failure(event: Finished) -> ApiError:
    if isinstance(event.error, ValueError):
        return ApiError(400, str(event.error))
    return ApiError(500, f"generation failed: {type(event.error).__name__}: {event.error}")


def _sampling(state: _State, req, prompt_len: int, max_tokens: int | None, top_logprobs: int | None,
              grammar: str | None = None, grammar_after: str | None = None) -> list[SamplingParams]:
    """One SamplingParams per choice (n), checked against the context and the vocabulary."""
    room = state.engine.context_length - prompt_len
    if room < 1:
        raise ApiError(400, f"the prompt has {prompt_len} tokens; the context holds {state.engine.context_length}",
                       param="messages" if isinstance(req, ChatRequest) else "prompt", code="context_length_exceeded")
    bias = {}
    for key, value in (req.logit_bias or {}).items():
        if not key.lstrip("-").isdigit() or not 0 <= int(key) < state.engine.config.vocab_size:
            raise ApiError(400, f"logit_bias: {key!r} is not a token id of this model", param="logit_bias")
        bias[int(key)] = value
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    seed = None if req.seed is None else req.seed % 2**64
    return [SamplingParams(max_tokens=min(max_tokens or room, room), stop=stop,
                           temperature=DEFAULT_TEMPERATURE if req.temperature is None else req.temperature,
                           top_p=DEFAULT_TOP_P if req.top_p is None else req.top_p, top_k=req.top_k or 0,
                           seed=None if seed is None else (seed + i) % 2**64, presence_penalty=req.presence_penalty,
                           frequency_penalty=req.frequency_penalty, logit_bias=bias or None,
                           top_logprobs=top_logprobs, grammar=grammar, grammar_after=grammar_after)
            for i in range(req.n)]


def _token_text(state: _State, token: int, as_id: bool = False) -> str:
    return f"token_id:{token}" if as_id else state.tokenizer.decode([token])


def _sse(payload) -> bytes:
    return b"data: " + (payload if isinstance(payload, bytes) else json.dumps(payload, ensure_ascii=False).encode()) + b"\n\n"


async def _merged(gens: list[Generation]) -> AsyncIterator[tuple[int, TokenEvent | Finished]]:
    """(choice index, event) from several generations as they come."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, gen: Generation):
        async for event in gen.events():
            await queue.put((i, event))

    tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(gens)]
    running = len(gens)
    try:
        while running:
            i, event = await queue.get()
            yield i, event
            running -= isinstance(event, Finished)
    finally:
        for t in tasks:
            t.cancel()
        for g in gens:
            g.cancel()


def _usage(prompt_tokens: int, finished: list[Finished]) -> dict:
    completion = sum(f.completion_tokens for f in finished)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion,
             "prompt_tokens_details": {"cached_tokens": min((f.cached_tokens for f in finished), default=0)}}
    drafted, accepted = sum(f.drafted_tokens for f in finished), sum(f.accepted_tokens for f in finished)
    if drafted:  # serve --draft: the guesses in OpenAI's fields for predicted outputs
        usage["completion_tokens_details"] = {"accepted_prediction_tokens": accepted,
                                              "rejected_prediction_tokens": drafted - accepted}
    return usage


# ---------------------------------------------------------------------------------------------------- chat


def _template_message(message) -> dict:
    """A request message as chat templates expect it: text parts joined, tool-call arguments as objects."""
    m = message.model_dump(exclude_none=True)
    if isinstance(message.content, list):
        m["content"] = "".join(part.text or "" for part in message.content if part.type == "text")
    if m.get("role") == "developer":
        m["role"] = "system"
    for call in m.get("tool_calls", []):
        args = call["function"].get("arguments")
        if isinstance(args, str):
            try:
                call["function"]["arguments"] = json.loads(args) if args.strip() else {}
            except ValueError:
                pass  # not JSON: the template gets the text
    return m


class _ChatChoice:
    """One choice's text turned into OpenAI deltas: reasoning apart, tool calls parsed, log-probabilities."""

    def __init__(self, state: _State, starts_in_thinking: bool, tools: bool, call_prefix: str, logprobs: bool,
                 tokens_as_ids: bool = False):
        self.state, self.tokens_as_ids = state, tokens_as_ids
        self.splitter = ThinkingSplitter(starts_in_thinking)
        self.calls = ToolCallStream(call_prefix) if tools else None
        self.logprobs = logprobs
        self.n_calls = 0

    def deltas(self, event: TokenEvent | Finished) -> list[dict]:
        pieces = self.splitter.push(event.text)
        if isinstance(event, Finished):
            pieces += self.splitter.flush()
        out: list[dict] = []
        for kind, text in pieces:
            if kind == "reasoning":
                out.append({"reasoning_content": text})
                continue
            for item_kind, item in self.calls.push(text) if self.calls else [("content", text)]:
                out.append(self._item(item_kind, item))
        if isinstance(event, Finished) and self.calls:
            out += [self._item(k, v) for k, v in self.calls.flush()]
        return out

    def _item(self, kind: str, item) -> dict:
        if kind == "content":
            return {"content": item}
        self.n_calls += 1
        return {"tool_calls": [{"index": self.n_calls - 1, **item}]}

    def logprob_entry(self, event: TokenEvent) -> dict:
        def entry(token, logprob):
            text = _token_text(self.state, token, self.tokens_as_ids)
            return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

        return entry(event.token, event.logprob) | {"top_logprobs": [entry(t, lp) for t, lp in event.top_logprobs]}


async def chat_completions(request: Request, state: _State) -> Response:
    req: ChatRequest = await _read(request, state, ChatRequest)
    tools_on = bool(req.tools) and req.tool_choice != "none"
    tools = [t.model_dump(exclude_none=True) for t in req.tools] if tools_on else None
    messages = [_template_message(m) for m in req.messages]
    try:
        prompt = await to_thread.run_sync(lambda: state.engine.apply_chat_template(
            messages, tools=tools, **(req.chat_template_kwargs or {})))
    except Exception as e:  # the model's template refused these messages or kwargs
        raise ApiError(400, f"the chat template failed: {type(e).__name__}: {e}",
                       param="chat_template_kwargs" if req.chat_template_kwargs else "messages") from None
    call_prefix = ""
    if tools_on and (req.tool_choice == "required" or isinstance(req.tool_choice, NamedToolChoice)):
        name = req.tool_choice.function.name if isinstance(req.tool_choice, NamedToolChoice) else None
        call_prefix = forced_call_prefix(state.tool_format, name)
        prompt += (THINK_END if prompt_starts_in_thinking(prompt) else "") + call_prefix
    thinking = prompt_starts_in_thinking(prompt)
    grammar = None
    if req.response_format is not None and req.response_format.type != "text":
        schema = req.response_format.json_schema.schema_ if req.response_format.type == "json_schema" else None
        try:
            grammar = json_grammar({} if schema is True else schema)
        except (ConstraintError, ValueError, RuntimeError) as e:
            raise ApiError(400, f"response_format: {e}", param="response_format") from None
    ids = await to_thread.run_sync(state.tokenizer.encode_chat, prompt)
    top = (req.top_logprobs or 0) if req.logprobs else None
    params = _sampling(state, req, len(ids), req.max_completion_tokens or req.max_tokens, top, grammar,
                       THINK_END if thinking else None)
    gens = _submit(state, [ids] * req.n, params)
    choices = [_ChatChoice(state, thinking, tools_on, call_prefix, req.logprobs, req.return_tokens_as_token_ids)
               for _ in gens]
    base = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": state.model_name,
            "system_fingerprint": None}
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(_chat_stream(gens, choices, base, len(ids), include_usage),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    watcher = asyncio.create_task(_cancel_on_disconnect(request, gens))
    try:
        results = [{"content": "", "reasoning_content": "", "tool_calls": [], "logprobs": []} for _ in gens]
        finished: list[Finished] = [None] * len(gens)
        async for i, event in _merged(gens):
            if isinstance(event, Finished) and event.error is not None:
                raise _failure(event)
            for delta in choices[i].deltas(event):
                for key, value in delta.items():
                    results[i][key] += value
            if isinstance(event, TokenEvent) and req.logprobs:
                results[i]["logprobs"].append(choices[i].logprob_entry(event))
            if isinstance(event, Finished):
                finished[i] = event
    finally:
        watcher.cancel()
    out = []
    for i, (r, f) in enumerate(zip(results, finished)):
        message = {"role": "assistant", "content": r["content"] if r["content"] or not r["tool_calls"] else None}
        if r["reasoning_content"]:
            message["reasoning_content"] = r["reasoning_content"]
        if r["tool_calls"]:
            message["tool_calls"] = [{k: v for k, v in c.items() if k != "index"} for c in r["tool_calls"]]
        out.append({"index": i, "message": message, "finish_reason": "tool_calls" if r["tool_calls"] else f.reason,
                    "logprobs": {"content": r["logprobs"]} if req.logprobs else None})
    return JSONResponse(base | {"object": "chat.completion", "choices": out, "usage": _usage(len(ids), finished)})


async def _chat_stream(gens, choices, base, prompt_tokens, include_usage) -> AsyncIterator[bytes]:
    chunk = base | {"object": "chat.completion.chunk"}

    def event(i, delta, finish=None, logprobs=None):
        return _sse(chunk | {"choices": [{"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]})

    for i in range(len(gens)):
        yield event(i, {"role": "assistant", "content": ""})
    finished = []
    async for i, ev in _merged(gens):
        if isinstance(ev, Finished) and ev.error is not None:
            yield _sse(_failure(ev).body)
            break
        logprobs = {"content": [choices[i].logprob_entry(ev)]} if isinstance(ev, TokenEvent) and choices[i].logprobs else None
        deltas = choices[i].deltas(ev) or ([{}] if logprobs else [])
        for k, delta in enumerate(deltas):
            yield event(i, delta, logprobs=logprobs if k == 0 else None)
        if isinstance(ev, Finished):
            finished.append(ev)
            yield event(i, {}, "tool_calls" if choices[i].n_calls else ev.reason)
    else:
        if include_usage:
            yield _sse(chunk | {"choices": [], "usage": _usage(prompt_tokens, finished)})
    yield _sse(b"[DONE]")


# ---------------------------------------------------------------------------------------------------- completions


async def completions(request: Request, state: _State) -> Response:
    req: CompletionRequest = await _read(request, state, CompletionRequest)
    if isinstance(req.prompt, str) or isinstance(req.prompt[0], str):
        texts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        prompts = [await to_thread.run_sync(state.tokenizer.encode_prompt, t) for t in texts]
    else:
        if max(req.prompt) >= state.engine.config.vocab_size:
            raise ApiError(400, f"prompt: token id {max(req.prompt)} is outside the vocabulary", param="prompt")
        prompts, texts = [list(req.prompt)], [state.tokenizer.decode(req.prompt)]
    if not all(prompts):
        raise ApiError(400, "prompt: a prompt encodes to no tokens", param="prompt")
    gens, echo = [], []
    try:
        for ids, text in zip(prompts, texts):
            params = _sampling(state, req, len(ids), req.max_tokens, req.logprobs)
            gens += _submit(state, [ids] * req.n, params)
            echo += [text if req.echo else ""] * req.n
    except ApiError:
        for g in gens:
            g.cancel()
        raise
    base = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
            "model": state.model_name, "system_fingerprint": None}
    prompt_tokens = sum(len(p) for p in prompts)

    def logprobs_of(events: list[TokenEvent], offset: int):
        if req.logprobs is None:
            return None
        as_ids = req.return_tokens_as_token_ids
        tokens = [_token_text(state, e.token, as_ids) for e in events]
        offsets = [offset + sum(len(e.text) for e in events[:k]) for k in range(len(events))]
        return {"tokens": tokens, "token_logprobs": [e.logprob for e in events], "text_offset": offsets,
                "top_logprobs": [{_token_text(state, t, as_ids): lp for t, lp in e.top_logprobs} for e in events]}

    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def stream():
            finished, offsets = [], [len(e) for e in echo]
            for i, text in enumerate(echo):
                if text:
                    yield _sse(base | {"choices": [{"index": i, "text": text, "logprobs": None, "finish_reason": None}]})
            async for i, ev in _merged(gens):
                if isinstance(ev, Finished) and ev.error is not None:
                    yield _sse(_failure(ev).body)
                    break
                lp = logprobs_of([ev], offsets[i]) if isinstance(ev, TokenEvent) else None
                if ev.text or lp:
                    yield _sse(base | {"choices": [{"index": i, "text": ev.text, "logprobs": lp, "finish_reason": None}]})
                    offsets[i] += len(ev.text)
                if isinstance(ev, Finished):
                    finished.append(ev)
                    yield _sse(base | {"choices": [{"index": i, "text": "", "logprobs": None, "finish_reason": ev.reason}]})
            else:
                if include_usage:
                    yield _sse(base | {"choices": [], "usage": _usage(prompt_tokens, finished)})
            yield _sse(b"[DONE]")

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    watcher = asyncio.create_task(_cancel_on_disconnect(request, gens))
    try:
        events: list[list[TokenEvent]] = [[] for _ in gens]
        finished: list[Finished] = [None] * len(gens)
        async for i, ev in _merged(gens):
            if isinstance(ev, Finished):
                if ev.error is not None:
                    raise _failure(ev)
                finished[i] = ev
            else:
                events[i].append(ev)
    finally:
        watcher.cancel()
    choices = [{"index": i, "text": echo[i] + "".join(e.text for e in evs) + finished[i].text,
                "logprobs": logprobs_of(evs, len(echo[i])), "finish_reason": finished[i].reason}
               for i, evs in enumerate(events)]
    return JSONResponse(base | {"choices": choices, "usage": _usage(prompt_tokens, finished)})


# ---------------------------------------------------------------------------------------------------- the rest


async def models(request: Request, state: _State) -> Response:
    card = {"id": state.model_name, "object": "model", "created": state.started, "owned_by": "dllama_py",
            "context_length": state.engine.context_length}
    model_id = request.path_params.get("model")
    if model_id is None:
        return JSONResponse({"object": "list", "data": [card]})
    if model_id != state.model_name:
        raise ApiError(404, f"no model {model_id!r}; this server runs {state.model_name!r}", param="model")
    return JSONResponse(card)


async def health(request: Request, state: _State) -> Response:
    s = state.scheduler
    return JSONResponse({"status": "ok", "model": state.model_name, "slots_total": s.parallel,
                         "slots_busy": s.slots_busy, "queue_length": s.queue_length})


async def metrics(request: Request, state: _State) -> Response:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    s = state.scheduler

    class Collector:
        def collect(self):
            yield GaugeMetricFamily("dllama_tokens_per_second", "Generated tokens per second over the last 10 s",
                                    value=s.tokens_per_second())
            yield GaugeMetricFamily("dllama_queue_length", "Requests waiting for a slot", value=s.queue_length)
            yield GaugeMetricFamily("dllama_slots_busy", "Sequence slots holding a request", value=s.slots_busy)
            yield GaugeMetricFamily("dllama_slots_total", "Sequence slots (--parallel)", value=s.parallel)
            yield CounterMetricFamily("dllama_generated_tokens", "Tokens generated", value=s.tokens_generated)
            yield CounterMetricFamily("dllama_prompt_tokens", "Prompt tokens computed (not reused from a cache)",
                                      value=s.prompt_tokens)
            yield CounterMetricFamily("dllama_requests", "Generations finished", value=s.requests_finished)
            yield CounterMetricFamily("dllama_draft_tokens", "Speculative guesses checked (serve --draft)",
                                      value=s.drafted_tokens)
            yield CounterMetricFamily("dllama_draft_tokens_accepted", "Speculative guesses kept",
                                      value=s.accepted_tokens)

    registry = CollectorRegistry()
    registry.register(Collector())
    return Response(generate_latest(registry), media_type="text/plain; version=0.0.4; charset=utf-8")


async def page(request: Request, state: _State) -> Response:
    return FileResponse(STATIC / "index.html")


async def _http_error(request: Request, exc: HTTPException) -> Response:
    message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
    return _error_response(ApiError(exc.status_code, message))


def create_app(engine: Engine, options: ServerOptions | None = None) -> Starlette:
    options = options or ServerOptions()
    state = _State(engine, options)

    @asynccontextmanager
    async def lifespan(app):
        yield
        state.scheduler.close()

    routes = [
        Route("/", _endpoint(page, authorize=False)),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
        Route("/health", _endpoint(health, authorize=False)),
        Route("/metrics", _endpoint(metrics)),
        Route("/v1/models", _endpoint(models)),
        Route("/v1/models/{model:path}", _endpoint(models)),
        Route("/v1/chat/completions", _endpoint(chat_completions), methods=["POST"]),
        Route("/v1/completions", _endpoint(completions), methods=["POST"]),
    ]
    middleware = []
    if options.cors_origins:
        middleware.append(Middleware(CORSMiddleware, allow_origins=options.cors_origins, allow_methods=["*"],
                                     allow_headers=["*"]))
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                    exception_handlers={HTTPException: _http_error})
    app.state.server = state
    return app


class ApiServer:
    """The server on a socket it binds itself (port 0 picks a free one), run in the foreground
    (`serve_forever`) or in a background thread (`start` / `stop`, for tests and benchmarks)."""

    def __init__(self, engine: Engine, host: str = "127.0.0.1", port: int = 8000,
                 options: ServerOptions | None = None, backlog: int = 2048):
        import uvicorn

        self.app = create_app(engine, options)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((host, port))
        self.socket.listen(backlog)
        self.host, self.port = host, self.socket.getsockname()[1]
        protocol = type("Protocol", (HeaderDeadlineProtocol,), {"header_timeout": self.app.state.server.options.header_timeout})
        config = uvicorn.Config(self.app, backlog=backlog, log_level="warning", access_log=False,
                                timeout_keep_alive=30, lifespan="on", http=protocol)
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def serve_forever(self) -> None:
        self._server.run(sockets=[self.socket])

    def start(self) -> "ApiServer":
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        while not self._server.started and self._thread.is_alive():
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.socket.close()


def serve(engine: Engine, host: str, port: int, options: ServerOptions | None = None) -> None:
    server = ApiServer(engine, host, port, options)
    state = server.app.state.server
    print(f"dllama-py serving {state.model_name} on {server.url} (chat page at /, API at /v1, "
          f"{state.options.parallel} slot(s))", flush=True)
    try:
        server.serve_forever()
    finally:
        server.socket.close()
