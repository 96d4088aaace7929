"""Chat templates rendered the way transformers 5 `apply_chat_template(..., tokenize=False)` renders them.

The Jinja environment (sandbox, trim_blocks/lstrip_blocks, loopcontrols, `{% generation %}`, `tojson`,
`raise_exception`, `strftime_now`), the conversion of Python functions into JSON-schema tools, and the
preparation of the messages follow transformers' documented behaviour, so a model's template produces the
same prompt here as under transformers, without importing it.
"""

from __future__ import annotations

import contextvars
import dataclasses
import enum
import functools
import inspect
import json
import re
import time
import types
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
import numpy as np
from jinja2.sandbox import ImmutableSandboxedEnvironment

# Names a message's reasoning may come under; templates read `reasoning_content` (gpt-oss ones `thinking`).
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")

# Bounds on one rendering, so that a hostile or broken template fails quickly instead of hanging the
# caller or filling memory: characters it may produce (or hold in one value), loop iterations, seconds.
MIN_OUTPUT_CHARS = 1 << 20  # raised to 4x the size of the conversation and tools for long ones
MAX_LOOP_ITERATIONS = 1_000_000
MAX_RENDER_SECONDS = 5.0


class ChatTemplateError(ValueError):
    """A chat template that cannot render this conversation: a syntax error, an error the template raises
    itself (e.g. roles that do not alternate), unsafe code, or a rendering limit reached."""


def render_chat_template(
    template: str,
    messages: list[dict[str, Any]],
    tools: list[dict | Callable] | None = None,
    add_generation_prompt: bool = True,
    bos_token: str | None = None,
    eos_token: str | None = None,
    documents: list[dict[str, str]] | None = None,
    **kwargs: Any,
) -> str:
    """Render `messages` with a Jinja chat template.

    `tools` holds JSON-schema dicts or Python functions (type hints + Google-style docstring), converted
    with `get_json_schema`. `bos_token`/`eos_token` and any other keyword (e.g. `enable_thinking`) become
    template variables; special tokens that are None are left undefined, as transformers does.
    """
    if not messages:
        raise ValueError("cannot render an empty conversation")
    special = {"bos_token": bos_token, "eos_token": eos_token}
    template_vars = {name: token for name, token in special.items() if token is not None}
    template_vars.update(kwargs)
    context = dict(
        messages=_prepare_messages(messages),
        tools=_plain(_tool_schemas(tools)),
        documents=_plain(documents),
        add_generation_prompt=add_generation_prompt,
        **_plain(template_vars),
    )
    limits = _Limits(MIN_OUTPUT_CHARS + 4 * len(json.dumps(context, default=str)))
    token = _limits.set(limits)
    try:
        compiled = _compile(template)
        parts, size = [], 0
        for part in compiled.generate(**context):
            size += len(part)
            if size > limits.max_chars:
                raise ChatTemplateError(f"chat template output exceeds {limits.max_chars:,} characters")
            parts.append(part)
        return "".join(parts)
    except ChatTemplateError:
        raise
    except Exception as error:  # the template is foreign code: anything it raises is its failure
        raise ChatTemplateError(f"chat template failed: {type(error).__name__}: {error}") from error
    finally:
        _limits.reset(token)


def _prepare_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop None-valued keys and copy the reasoning under every name templates read it by."""
    prepared = []
    for message in messages:
        if not isinstance(message, Mapping):
            raise TypeError(f"chat messages must be dicts, got {message!r}")
        message = _plain({key: value for key, value in message.items() if value is not None})
        reasoning = next((message[key] for key in _REASONING_FIELDS if message.get(key) is not None), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        prepared.append(message)
    return prepared


def _tool_schemas(tools: list[dict | Callable] | None) -> list[dict] | None:
    if tools is None:
        return None
    schemas = []
    for tool in tools:
        if isinstance(tool, dict):
            schemas.append(tool)
        elif inspect.isfunction(tool) or inspect.ismethod(tool):
            schemas.append(get_json_schema(tool))
        else:
            raise ValueError("a tool must be a JSON-schema dict or a function with type hints and a docstring")
    return schemas


def _plain(value: Any) -> Any:
    """Rebuild `value` from plain JSON-like types so the sandboxed template sees no rich objects."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_plain(item) for item in value)
    if isinstance(value, np.generic):
        return _plain(value.item())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: _plain(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):
        return _plain(value.model_dump())
    return f"<{type(value).__name__}>"


# ----------------------------------------------------------------------------------------------- environment


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}…{% endgeneration %}` marks assistant text for training masks; rendering keeps the body."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> list[jinja2.nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


class _SafeNamespace(jinja2.utils.Namespace):
    """`namespace()` that refuses underscore-prefixed attribute names."""

    def __init__(*args: Any, **kwargs: Any):
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _check_attribute_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _check_attribute_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, _limits.get().check_size(value))


def _check_attribute_name(name: Any) -> None:
    if isinstance(name, str) and name.startswith("_"):
        raise jinja2.exceptions.SecurityError(f"chat templates cannot set the attribute {name!r} on a namespace")


class _SafeDict:
    """`dict(...)` and `dict.fromkeys(...)` without exposing the `dict` type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _Limits:
    """The budget of one rendering, charged by the environment's hooks (calls, attribute and item access,
    operators, filters, loop iterations)."""

    def __init__(self, max_chars: int):
        self.max_chars = max_chars
        self.iterations = 0
        self.deadline = time.monotonic() + MAX_RENDER_SECONDS

    def tick(self) -> None:
        self.iterations += 1
        if self.iterations > MAX_LOOP_ITERATIONS:
            raise ChatTemplateError(f"chat template runs more than {MAX_LOOP_ITERATIONS:,} loop iterations or steps")
        if self.iterations % 1024 == 0 and time.monotonic() > self.deadline:
            raise ChatTemplateError(f"chat template takes more than {MAX_RENDER_SECONDS:g} s to render")

    def check_size(self, value: Any) -> Any:
        if isinstance(value, (str, list, tuple, dict)) and len(value) > self.max_chars:
            raise ChatTemplateError(f"chat template builds a value of more than {self.max_chars:,} items")
        return value

    def check_arguments(self, args: Iterable[Any]) -> None:
        for arg in args:
            if isinstance(arg, int) and abs(arg) > self.max_chars:  # a width or count that large fills memory
                raise ChatTemplateError(f"chat template passes {arg} to a function or filter")
            self.check_size(arg)


_limits: contextvars.ContextVar[_Limits] = contextvars.ContextVar("chat_template_limits")


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    """jinja2's sandbox, charging every step of a rendering to the current _Limits."""

    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        limits = _limits.get()
        limits.tick()
        if operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 64:
            raise ChatTemplateError(f"chat template computes {left} ** {right}")
        if operator == "*" and isinstance(left, int) != isinstance(right, int):  # repeating a string or list
            count, item = (left, right) if isinstance(left, int) else (right, left)
            if hasattr(item, "__len__") and count * len(item) > limits.max_chars:
                raise ChatTemplateError(f"chat template repeats a value {count} times")
        if operator == "%" and isinstance(left, str):
            limits.check_arguments(int(width) for width in re.findall(r"%[-+ #0]*(\d+)", left))
        return limits.check_size(super().call_binop(context, operator, left, right))

    def call(__self, __context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 (jinja2's signature)
        limits = _limits.get()
        limits.tick()
        limits.check_arguments([*args, *kwargs.values()])
        return limits.check_size(super().call(__context, __obj, *args, **kwargs))

    def getattr(self, obj: Any, attribute: str) -> Any:
        _limits.get().tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _limits.get().tick()
        return super().getitem(obj, argument)

    def bounded_loop(self, iterable: Iterable[Any]) -> Iterable[Any]:
        """Every `{% for %}` iterates through this (see _compile)."""
        limits = _limits.get()
        for item in iterable:
            limits.tick()
            yield item


def _bounded_filter(fn: Callable) -> Callable:
    @functools.wraps(fn)  # keeps jinja2's pass_context / pass_environment markers
    def bounded(*args: Any, **kwargs: Any) -> Any:
        limits = _limits.get()
        limits.tick()
        limits.check_arguments([*args[1:], *kwargs.values()])
        return limits.check_size(fn(*args, **kwargs))

    return bounded


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys=False) -> str:
    # Unlike Jinja's own filter: no HTML escaping, non-ASCII kept, and the json.dumps options exposed.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


@lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    env = _BoundedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.filters = {name: _bounded_filter(fn) for name, fn in env.filters.items()}
    env.globals.update(
        raise_exception=_raise_exception, strftime_now=_strftime_now, dict=_SafeDict(), namespace=_SafeNamespace
    )
    tree = env.parse(template)
    # Loops over a template's own data make no calls the environment sees: count their iterations.
    for loop in tree.find_all(jinja2.nodes.For):
        loop.iter = jinja2.nodes.Call(jinja2.nodes.EnvironmentAttribute("bounded_loop"), [loop.iter], [], None, None)
    return env.from_string(tree)


# ------------------------------------------------------------------------------------------- function -> schema

_JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean", type(None): "null"}
_BARE_TYPES = {**_JSON_TYPES, list: "array", tuple: "array", dict: "object"}
_SECTION_HEADERS = ("Args:", "Returns:", "Raises:")


class ToolSchemaError(ValueError):
    """A function cannot be described as a JSON-schema tool."""


def get_json_schema(func: Callable) -> dict:
    """Describe a function as a tool: {"type": "function", "function": {name, description, parameters[, return]}}.

    Needs a type hint on every parameter and a Google-style docstring describing each one; an argument
    description may end with `(choices: [...])`, which becomes an "enum".
    """
    name = getattr(func, "__name__", "operation")
    doc = (inspect.getdoc(func) or "").strip()
    if not doc:
        raise ToolSchemaError(f"cannot describe {name}: it has no docstring")
    description, arg_docs, returns_doc = _parse_docstring(doc)
    parameters = _parameters_schema(func, name)
    return_schema = parameters["properties"].pop("return", None)
    if return_schema is not None and returns_doc is not None:
        return_schema["description"] = returns_doc
    for arg, schema in parameters["properties"].items():
        if arg not in arg_docs:
            raise ToolSchemaError(f"cannot describe {name}: the docstring does not describe the argument {arg!r}")
        arg_doc = arg_docs[arg]
        choices = re.search(r"\(choices:\s*(.*?)\)\s*$", arg_doc, flags=re.IGNORECASE)
        if choices:
            schema["enum"] = [c.strip() if isinstance(c, str) else c for c in json.loads(choices.group(1))]
            arg_doc = arg_doc[: choices.start()].strip()
        schema["description"] = arg_doc
    function = {"name": name, "description": description, "parameters": parameters}
    if return_schema is not None:
        function["return"] = return_schema
    return {"type": "function", "function": function}


def _parse_docstring(doc: str) -> tuple[str, dict[str, str], str | None]:
    """(description, {argument: description}, returns description) of a Google-style docstring."""
    sections = _docstring_sections(doc)
    arg_docs = _parse_args_section(sections.get("Args:", []))
    returns = "\n".join(sections["Returns:"]).strip() if "Returns:" in sections else None
    return "\n".join(sections[""]).strip(), arg_docs, returns


def _docstring_sections(doc: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {"": []}
    current = ""
    for line in doc.split("\n"):
        if line.strip() in _SECTION_HEADERS and line.strip() not in sections:
            current = line.strip()
            sections[current] = []
        else:
            sections[current].append(line)
    return sections


def _parse_args_section(lines: list[str]) -> dict[str, str]:
    lines = [line for line in lines if line.strip()]
    if not lines:
        return {}
    base_indent = len(lines[0]) - len(lines[0].lstrip())
    arg_docs: dict[str, list[str]] = {}
    current = None
    for line in lines:
        indent = len(line) - len(line.lstrip())
        match = re.match(r"\s*(\w+):\s*(.*)$", line)
        if match and indent <= base_indent:
            current = match.group(1)
            arg_docs[current] = [match.group(2).strip()]
        elif current is not None:
            arg_docs[current].append(line.strip())
    return {arg: " ".join(part for part in parts if part) for arg, parts in arg_docs.items()}


def _parameters_schema(func: Callable, name: str) -> dict:
    signature = inspect.signature(func)
    params = list(signature.parameters.values())
    receiver = None
    if params and params[0].name in ("self", "cls") and params[0].annotation is inspect.Parameter.empty:
        receiver = params[0].name
    required = []
    for param in params:
        if param.name == receiver:
            continue
        if param.annotation is inspect.Parameter.empty:
            raise ToolSchemaError(f"argument {param.name} of {name} has no type hint")
        if param.default is inspect.Parameter.empty:
            required.append(param.name)
    properties = {}
    for param_name, hint in get_type_hints(func).items():
        if param_name == receiver:
            continue
        if param_name != "return":
            properties[param_name] = _hint_schema(hint)
            continue
        try:  # the model never produces the return value, so an unsupported return hint is left out
            properties["return"] = _hint_schema(hint)
        except ToolSchemaError:
            pass
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


def _hint_schema(hint: Any) -> dict:
    """JSON schema of one type hint."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is None:
        return _bare_type_schema(hint)
    if origin is Union or origin is types.UnionType:
        return _union_schema(args)
    if origin is Literal and args:
        if any(type(arg) not in _JSON_TYPES for arg in args):
            raise ToolSchemaError("typing.Literal may only list int, float, str, bool or None values")
        return _enum_schema(list(args))
    if origin is list:
        return {"type": "array", "items": _hint_schema(args[0])} if args else {"type": "array"}
    if origin is tuple:
        return _tuple_schema(args)
    if origin is dict:
        schema = {"type": "object"}
        if len(args) == 2:
            schema["additionalProperties"] = _hint_schema(args[1])
        return schema
    raise ToolSchemaError(f"cannot convert the type hint {hint!r} to a JSON schema")


def _bare_type_schema(hint: Any) -> dict:
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        values = [member.value for member in hint]
        if not values or any(type(value) not in _JSON_TYPES for value in values):
            raise ToolSchemaError(f"the Enum {hint.__name__} needs members with JSON scalar values")
        return _enum_schema(values)
    if hint is Any:
        return {}
    if hint in _BARE_TYPES:
        return {"type": _BARE_TYPES[hint]}
    raise ToolSchemaError(f"cannot convert the type hint {hint!r} to a JSON schema; pass a JSON schema instead")


def _union_schema(args: tuple) -> dict:
    subtypes = [_hint_schema(arg) for arg in args if arg is not type(None)]
    if len(subtypes) == 1:
        schema = subtypes[0]
    elif all(sub.keys() == {"type"} and isinstance(sub["type"], str) for sub in subtypes):
        names = sorted({sub["type"] for sub in subtypes})
        schema = {"type": names[0] if len(names) == 1 else names}
    else:
        schema = {"anyOf": subtypes}
    if type(None) in args:
        schema["nullable"] = True
    return schema


def _tuple_schema(args: tuple) -> dict:
    if not args:
        return {"type": "array"}
    if len(args) == 1 or ... in args:
        raise ToolSchemaError("tuple hints need two or more fixed element types; use list[...] instead")
    return {"type": "array", "prefixItems": [_hint_schema(arg) for arg in args]}


def _enum_schema(values: list) -> dict:
    json_types = list(dict.fromkeys(_JSON_TYPES[type(value)] for value in values))
    return {"type": json_types[0] if len(json_types) == 1 else json_types, "enum": values}
