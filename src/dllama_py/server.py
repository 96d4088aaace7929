"""`dllama-py serve`: an OpenAI-style HTTP API over one Engine (standard library only).

POST /v1/chat/completions (streaming or not; the model's <think> text comes back as
`reasoning_content`, and without streaming its tool calls as `tool_calls`), POST /v1/completions,
GET /v1/models. Requests run one at a time: the engine has
one KV cache, and a follow-up turn reuses the prefix it shares with the previous conversation.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .engine import Engine
from .tool_calls import split_tool_calls


class RequestError(ValueError):
    """A request the API refuses (answered with status 400 and the message)."""


def _sampling(body: dict) -> dict:
    def number(key, default, kind=float):
        value = body.get(key, default)
        if value is None:
            return default
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise RequestError(f"'{key}' must be a number")
        return kind(value)

    stop = body.get("stop")
    if stop is not None and not (isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))):
        raise RequestError("'stop' must be a string or a list of strings")
    return dict(max_tokens=number("max_tokens", body.get("max_completion_tokens") or 1024, int),
                temperature=number("temperature", 0.8), top_p=number("top_p", 0.9), top_k=number("top_k", 0, int),
                seed=body.get("seed"), stop=stop)


class ApiServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, engine: Engine, host: str = "127.0.0.1", port: int = 8000, model_name: str | None = None):
        self.engine = engine
        self.model_name = model_name or Path(engine.path).stem
        self.lock = threading.Lock()  # one generation at a time
        super().__init__((host, port), _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: ApiServer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet: one line per request is printed by serve()
        pass

    # -- plumbing ----------------------------------------------------------------------------
    def _send_json(self, status: int, payload: dict):
        data = json.dumps(payload, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str):
        self._send_json(status, {"error": {"message": message, "type": "invalid_request_error" if status < 500
                                           else "server_error"}})

    def _read_json(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RequestError(f"the request body is not JSON: {e}") from None
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        return body

    def _start_stream(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def _event(self, payload):
        self.wfile.write(b"data: " + (payload if isinstance(payload, bytes) else json.dumps(payload, ensure_ascii=False).encode()) + b"\n\n")
        self.wfile.flush()

    # -- routes ------------------------------------------------------------------------------
    def do_GET(self):
        if self.path.rstrip("/") == "/v1/models":
            self._send_json(200, {"object": "list", "data": [{"id": self.server.model_name, "object": "model",
                                                               "created": 0, "owned_by": "dllama_py"}]})
        else:
            self._error(404, f"no route {self.path}")

    def do_POST(self):
        route = self.path.rstrip("/")
        handlers = {"/v1/chat/completions": self._chat, "/v1/completions": self._completion}
        if route not in handlers:
            self._error(404, f"no route {self.path}")
            return
        try:
            body = self._read_json()
            with self.server.lock:
                handlers[route](body)
        except RequestError as e:
            self._error(400, str(e))
        except (ValueError, RuntimeError) as e:  # e.g. a prompt longer than the context
            self._error(400, str(e))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client left mid-stream

    def _usage(self) -> dict:
        s = self.server.engine.last_stats
        usage = {"prompt_tokens": s.prompt_tokens, "completion_tokens": s.generated_tokens,
                 "total_tokens": s.prompt_tokens + s.generated_tokens}
        if s.completion_tokens_details():  # serve --draft: how many guesses were kept
            usage["completion_tokens_details"] = s.completion_tokens_details()
        return usage

    def _finish_reason(self) -> str:
        return "length" if self.server.engine.last_stats.finish_reason in ("length", "context") else "stop"

    def _chat(self, body: dict):
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise RequestError("'messages' must be a non-empty list of objects")
        kwargs = dict(body.get("chat_template_kwargs") or {})
        pieces = self.server.engine.chat(messages, tools=body.get("tools"), **_sampling(body), **kwargs)
        ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        base = {"id": ident, "created": created, "model": self.server.model_name}
        if not body.get("stream"):
            text = {"answer": "", "reasoning": ""}
            for piece in pieces:
                text[piece.kind] += piece
            content, calls = split_tool_calls(text["answer"])
            message = {"role": "assistant", "content": content}
            if text["reasoning"]:
                message["reasoning_content"] = text["reasoning"]
            if calls:
                message["tool_calls"] = calls
            finish = "tool_calls" if calls else self._finish_reason()
            self._send_json(200, base | {"object": "chat.completion", "usage": self._usage(), "choices": [
                {"index": 0, "message": message, "finish_reason": finish}]})
            return
        first = next(pieces, None)  # errors (e.g. a too-long prompt) surface before the stream starts
        self._start_stream()
        chunk = base | {"object": "chat.completion.chunk"}
        self._event(chunk | {"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]})
        for piece in itertools.chain([first] if first is not None else [], pieces):
            key = "content" if piece.kind == "answer" else "reasoning_content"
            self._event(chunk | {"choices": [{"index": 0, "delta": {key: str(piece)}, "finish_reason": None}]})
        self._event(chunk | {"choices": [{"index": 0, "delta": {}, "finish_reason": self._finish_reason()}],
                             "usage": self._usage()})
        self._event(b"[DONE]")

    def _completion(self, body: dict):
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise RequestError("'prompt' must be a non-empty string")
        text = "".join(self.server.engine.generate(prompt, **_sampling(body)))
        self._send_json(200, {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion",
                              "created": int(time.time()), "model": self.server.model_name, "usage": self._usage(),
                              "choices": [{"index": 0, "text": text, "finish_reason": self._finish_reason()}]})


def serve(engine: Engine, host: str, port: int):
    server = ApiServer(engine, host, port)
    print(f"dllama-py serving {server.model_name} on http://{host}:{server.server_address[1]}/v1", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
