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
