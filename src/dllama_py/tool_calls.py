"""Tool calls in a model's answer, turned into OpenAI-style `tool_calls`.

Three formats, by model family:
- GLM-4.5 / 4.6 / 4.7: `<tool_call>name<arg_key>k</arg_key><arg_value>v</arg_value>…</tool_call>` (4.5
  puts newlines between the parts, 4.7 does not); string values are raw, others JSON.
- Qwen3 (Hermes style): `<tool_call>{"name": …, "arguments": {…}}</tool_call>`.
- INTELLECT-3 / Qwen3-Coder: `<tool_call><function=name><parameter=k>v</parameter>…</function></tool_call>`.
"""

from __future__ import annotations

import json
import re
import uuid

_TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)
_GLM_ARG = re.compile(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.S)
_XML_FUNCTION = re.compile(r"<function=([^>]+)>(.*?)</function>", re.S)
_XML_PARAMETER = re.compile(r"<parameter=([^>]+)>(.*?)</parameter>", re.S)


def _value(text: str):
    """A JSON value when the text is one (numbers, objects, booleans), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _parse_one(body: str) -> tuple[str, dict] | None:
    body = body.strip()
    if body.startswith("{"):
        try:
            call = json.loads(body)
        except ValueError:
            return None
        args = call.get("arguments", {})
        return call.get("name", ""), (_value(args) if isinstance(args, str) else args)
    function = _XML_FUNCTION.search(body)
    if function:
        params = {k.strip(): _value(v.strip("\n")) for k, v in _XML_PARAMETER.findall(function.group(2))}
        return function.group(1).strip(), params
    name = body.split("<arg_key>", 1)[0].strip()
    return (name, {k.strip(): _value(v) for k, v in _GLM_ARG.findall(body)}) if name else None


def split_tool_calls(answer: str) -> tuple[str, list[dict]]:
    """(the answer without its tool calls, the calls in OpenAI's format)."""
    calls = []
    for body in _TOOL_CALL.findall(answer):
        parsed = _parse_one(body)
        if parsed:
            name, args = parsed
            calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                          "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)}})
    return (_TOOL_CALL.sub("", answer).strip() if calls else answer), calls


TOOL_CALL_START, TOOL_CALL_END = "<tool_call>", "</tool_call>"


def tool_call_format(chat_template: str | None) -> str:
    """Which of the three formats a chat template teaches its model: "glm", "xml" (Qwen3-Coder) or "json"."""
    template = chat_template or ""
    if "<arg_key>" in template:
        return "glm"
    return "xml" if "<function=" in template else "json"


def forced_call_prefix(fmt: str, name: str | None = None) -> str:
    """The start of a tool call in format `fmt`, for `tool_choice` "required" (any tool) or a named tool:
    appended to the prompt, so the model continues inside the call."""
    if name is None:
        return TOOL_CALL_START
    return TOOL_CALL_START + {"glm": name, "xml": f"\n<function={name}>",
                              "json": '\n{"name": ' + json.dumps(name) + ', "arguments": '}[fmt]


class ToolCallStream:
    """Splits streamed answer text into plain content and complete tool calls, in order.

    `push` and `flush` return ("content", text) and ("tool_call", call) items, a call in OpenAI's format
    as soon as its closing tag arrives. Text that might be the start of `<tool_call>` is held back; a
    call the model leaves unclosed at the end is parsed as it stands; a body that parses as no call stays
    content. `prefix` is text the prompt already holds (see `forced_call_prefix`)."""

    def __init__(self, prefix: str = ""):
        self._buffer = prefix
        self._in_call = False
        self.calls = 0

    def push(self, text: str) -> list[tuple[str, object]]:
        from .reasoning import partial_tag_length

        self._buffer += text
        out: list[tuple[str, object]] = []
        while True:
            if not self._in_call:
                start = self._buffer.find(TOOL_CALL_START)
                if start < 0:
                    keep = partial_tag_length(self._buffer, TOOL_CALL_START)
                    self._content(out, self._buffer[: len(self._buffer) - keep])
                    self._buffer = self._buffer[len(self._buffer) - keep :]
                    return out
                self._content(out, self._buffer[:start])
                self._buffer, self._in_call = self._buffer[start + len(TOOL_CALL_START) :], True
            end = self._buffer.find(TOOL_CALL_END)
            if end < 0:
                return out
            self._call(out, self._buffer[:end], TOOL_CALL_END)
            self._buffer, self._in_call = self._buffer[end + len(TOOL_CALL_END) :], False

    def flush(self) -> list[tuple[str, object]]:
        out: list[tuple[str, object]] = []
        if self._in_call:
            self._call(out, self._buffer, "")
        else:
            self._content(out, self._buffer)
        self._buffer, self._in_call = "", False
        return out

    def _content(self, out: list, text: str) -> None:
        if text and not (self.calls and text.isspace()):  # whitespace between calls is not content
            out.append(("content", text))

    def _call(self, out: list, body: str, closing: str) -> None:
        parsed = _parse_one(body)
        if parsed is None:
            self._content(out, TOOL_CALL_START + body + closing)
            return
        name, args = parsed
        self.calls += 1
        out.append(("tool_call", {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                                  "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)}}))
