"""Chat templates render exactly as transformers' `apply_chat_template(tokenize=False)`."""

from __future__ import annotations

import enum
import time
from typing import Any, Literal

import jinja2
import pytest
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast
from transformers.utils import get_json_schema as hf_get_json_schema

from dllama_py.chat_template import (MAX_RENDER_SECONDS, MIN_OUTPUT_CHARS, ChatTemplateError, ToolSchemaError,
                                     get_json_schema, render_chat_template)

# Qwen3-style ChatML, written with plain block tags so trim_blocks/lstrip_blocks matter.
CHATML_TEMPLATE = """\
{% if tools %}
<|im_start|>system
{% if messages[0].role == 'system' %}
{{ messages[0].content }}

{% endif %}
# Tools

You may call one or more functions to assist with the user query.

<tools>
{% for tool in tools %}
{{ tool | tojson }}
{% endfor %}
</tools><|im_end|>
{% elif messages[0].role == 'system' %}
<|im_start|>system
{{ messages[0].content }}<|im_end|>
{% endif %}
{% set ns = namespace(last_user=-1) %}
{% for message in messages %}
    {% if message.role == 'user' %}{% set ns.last_user = loop.index0 %}{% endif %}
{% endfor %}
{% for message in messages %}
    {% if message.role == 'system' %}{% continue %}{% endif %}
    {% if message.role == 'user' %}
<|im_start|>user
{{ message.content }}<|im_end|>
    {% elif message.role == 'assistant' %}
<|im_start|>assistant
{% generation %}
        {% if loop.index0 > ns.last_user and message.reasoning_content is defined %}
<think>
{{ message.reasoning_content | trim }}
</think>

        {% endif %}
        {% if message.content is defined %}{{ message.content }}{% endif %}
        {% for call in message.tool_calls | default([]) %}
<tool_call>
{{ {'name': call.function.name, 'arguments': call.function.arguments} | tojson }}
</tool_call>
        {% endfor %}
<|im_end|>
{% endgeneration %}
    {% elif message.role == 'tool' %}
<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
    {% else %}
{{ raise_exception('unknown role ' + message.role) }}
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}
<|im_start|>assistant
{% if enable_thinking is defined and not enable_thinking %}
<think>

</think>

{% endif %}
{% endif %}
"""

# GLM-4.5/4.6 style: newline after role tags, `/nothink`, `<think></think>` on history, XML-ish tool calls.
GLM45_TEMPLATE = """\
[gMASK]<sop>
{%- macro text(content) -%}
    {%- if content is string -%}{{ content }}
    {%- elif content is iterable and content is not mapping -%}
        {%- for part in content if part is mapping and part.type == 'text' -%}{{ part.text }}{%- endfor -%}
    {%- endif -%}
{%- endmacro -%}
{%- if tools -%}
<|system|>
# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{% for tool in tools %}
{{ tool | tojson(ensure_ascii=False) }}
{% endfor %}
</tools>
{%- endif -%}
{%- set ns = namespace(last_user=-1) -%}
{%- for m in messages -%}{%- if m.role == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}{%- endfor -%}
{%- set no_think = enable_thinking is defined and not enable_thinking -%}
{%- for m in messages -%}
{%- if m.role == 'system' -%}
<|system|>
{{ text(m.content) }}
{%- elif m.role == 'user' -%}
<|user|>
{{ text(m.content) }}{{ '/nothink' if no_think and not text(m.content).endswith('/nothink') else '' }}
{%- elif m.role == 'assistant' -%}
<|assistant|>
{%- set reasoning = m.reasoning_content if m.reasoning_content is string else '' -%}
{%- set after_last_user = loop.index0 > ns.last_user -%}
{{ '\\n<think>' + reasoning.strip() + '</think>' if after_last_user and reasoning else '\\n<think></think>' }}
{%- if text(m.content).strip() %}{{ '\\n' + text(m.content).strip() }}{% endif -%}
{%- for tc in m.tool_calls | default([]) -%}
{%- set f = tc.function if tc.function is defined else tc %}

<tool_call>{{ f.name }}
{% for k, v in f.arguments.items() %}
<arg_key>{{ k }}</arg_key>
<arg_value>{{ v if v is string else v | tojson(ensure_ascii=False) }}</arg_value>
{% endfor %}
</tool_call>
{%- endfor -%}
{%- elif m.role == 'tool' -%}
{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}<|observation|>{% endif %}

<tool_response>
{{ m.content if m.content is string else m.content | tojson }}
</tool_response>
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
<|assistant|>{{ '\\n<think></think>' if no_think else '' }}
{%- endif -%}
"""

# GLM-4.7 style: no newline after role tags, prompt ends in `<think>` (or `</think>` with thinking off).
GLM47_TEMPLATE = """\
[gMASK]<sop>
{%- if tools -%}
<|system|># Tools

<tools>
{% for tool in tools %}
{{ tool | tojson(ensure_ascii=False) }}
{% endfor %}
</tools>
{%- endif -%}
{%- set ns = namespace(last_user=-1) -%}
{%- for m in messages -%}{%- if m.role == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}{%- endfor -%}
{%- set keep_all = clear_thinking is defined and not clear_thinking -%}
{%- for m in messages -%}
{%- if m.role == 'system' -%}<|system|>{{ m.content }}
{%- elif m.role == 'user' -%}<|user|>{{ m.content }}
{%- elif m.role == 'assistant' -%}<|assistant|>
{%- if m.reasoning_content is defined and (keep_all or loop.index0 > ns.last_user) -%}
<think>{{ m.reasoning_content.strip() }}</think>
{%- else -%}</think>{%- endif -%}
{{ m.content | default('') | trim }}
{%- for tc in m.tool_calls | default([]) -%}
<tool_call>{{ tc.function.name }}
{%- for k, v in tc.function.arguments | dictsort -%}
<arg_key>{{ k }}</arg_key><arg_value>{{ v if v is string else v | tojson(ensure_ascii=False) }}</arg_value>
{%- endfor -%}
</tool_call>
{%- endfor -%}
{%- elif m.role == 'tool' -%}
{%- if loop.first or messages[loop.index0 - 1].role != 'tool' -%}<|observation|>{%- endif -%}
<tool_response>{{ m.content }}</tool_response>
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
<|assistant|>{{ '</think>' if enable_thinking is defined and not enable_thinking else '<think>' }}
{%- endif -%}
"""

TEMPLATES = {"chatml": CHATML_TEMPLATE, "glm45": GLM45_TEMPLATE, "glm47": GLM47_TEMPLATE}


class Unit(enum.Enum):
    CELSIUS = "celsius"
    FAHRENHEIT = "fahrenheit"


def get_weather(city: str, days: int = 1, unit: Unit = Unit.CELSIUS, hourly: bool | None = None) -> dict:
    """Get the weather forecast for a city.

    Args:
        city: The city name, e.g. "Paris" or "東京".
        days: How many days to forecast,
            counted from today.
        unit: The temperature unit.
        hourly: Whether to add hourly detail.

    Returns:
        The forecast, keyed by day.
    """
    return {}


SEARCH_TOOL = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the web.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}, "top_n": {"type": "integer", "default": 3}},
            "required": ["query"],
        },
    },
}

SYSTEM = {"role": "system", "content": "You are a helpful assistant. Réponds en français 🙂"}
TOOL_CONVERSATION = [
    SYSTEM,
    {"role": "user", "content": "What's the weather in Paris?"},
    {
        "role": "assistant",
        "content": None,  # dropped, as transformers drops None values
        "reasoning_content": "  I should call the tool.\n",
        "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}
        ],
    },
    {"role": "tool", "content": '{"temp": 21, "sky": "sunny ☀"}'},
    {"role": "assistant", "content": "It is 21°C and sunny.", "reasoning": "The tool said 21."},
]
CONVERSATIONS = {
    "single": [{"role": "user", "content": "Hi there"}],
    "system": [SYSTEM, {"role": "user", "content": "Hi"}],
    "history": [
        SYSTEM,
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!", "reasoning_content": "Greet back."},
        {"role": "user", "content": "Thanks! 谢谢"},
    ],
    "tool_call": TOOL_CONVERSATION,
    "tool_then_user": [*TOOL_CONVERSATION, {"role": "user", "content": "And tomorrow?"}],
}


@pytest.fixture(scope="module")
def hf_tokenizer() -> PreTrainedTokenizerFast:
    """A transformers tokenizer whose only job is to render templates (the oracle)."""
    hf_get_json_schema(get_weather)  # the first call imports torch (~1 s); pay it here, not inside a test
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def hf_render(tokenizer: PreTrainedTokenizerFast, template: str, messages, **kwargs: Any) -> str:
    return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, **kwargs)


def our_render(template: str, messages, **kwargs: Any) -> str:
    kwargs.setdefault("add_generation_prompt", False)
    return render_chat_template(template, messages, bos_token="<s>", eos_token="</s>", unk_token="<unk>", **kwargs)


@pytest.mark.parametrize("template_name", TEMPLATES)
@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("thinking", [None, True, False])
def test_render_matches_transformers(hf_tokenizer, template_name, conversation, thinking):
    template, messages = TEMPLATES[template_name], CONVERSATIONS[conversation]
    kwargs: dict[str, Any] = {"add_generation_prompt": conversation != "tool_call"}
    if thinking is not None:
        kwargs["enable_thinking"] = thinking
    if conversation.startswith("tool"):
        kwargs["tools"] = [get_weather, SEARCH_TOOL]
    expected = hf_render(hf_tokenizer, template, messages, **kwargs)
    assert our_render(template, messages, **kwargs) == expected


def test_glm45_format():
    messages = CONVERSATIONS["history"]
    text = our_render(GLM45_TEMPLATE, messages, add_generation_prompt=True)
    assert text == (
        "[gMASK]<sop><|system|>\nYou are a helpful assistant. Réponds en français 🙂<|user|>\nHi"
        "<|assistant|>\n<think></think>\nHello!<|user|>\nThanks! 谢谢<|assistant|>"
    )
    no_think = our_render(GLM45_TEMPLATE, messages, add_generation_prompt=True, enable_thinking=False)
    assert "Hi/nothink" in no_think and no_think.endswith("<|assistant|>\n<think></think>")


def test_glm47_tool_turns_and_thinking():
    text = our_render(GLM47_TEMPLATE, CONVERSATIONS["tool_then_user"], tools=[SEARCH_TOOL], add_generation_prompt=True)
    assert text.startswith("[gMASK]<sop><|system|># Tools\n\n<tools>\n{")
    assert "<|assistant|></think><tool_call>get_weather<arg_key>city</arg_key><arg_value>Paris</arg_value>" in text
    assert '<|observation|><tool_response>{"temp": 21, "sky": "sunny ☀"}</tool_response>' in text
    assert text.endswith("<|user|>And tomorrow?<|assistant|><think>")
    kept = our_render(GLM47_TEMPLATE, CONVERSATIONS["tool_then_user"], clear_thinking=False)
    assert "<think>I should call the tool.</think>" in kept and "<think>The tool said 21.</think>" in kept


def test_chatml_generation_tag_and_tools_json(hf_tokenizer):
    text = our_render(CHATML_TEMPLATE, TOOL_CONVERSATION, tools=[get_weather])
    assert "{% generation %}" not in text and "<think>\nI should call the tool.\n</think>" in text
    # tojson keeps non-ASCII characters and does not HTML-escape
    assert '"The city name, e.g. \\"Paris\\" or \\"東京\\"."' in text
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n</tool_call>' in text


def test_raise_exception_and_sandbox(hf_tokenizer):
    with pytest.raises(ChatTemplateError, match="unknown role robot"):
        our_render(CHATML_TEMPLATE, [{"role": "robot", "content": "beep"}])
    with pytest.raises(ChatTemplateError, match="SecurityError") as raised:
        our_render("{% set ns = namespace() %}{% set ns._secret = 1 %}", CONVERSATIONS["single"])
    assert isinstance(raised.value.__cause__, jinja2.exceptions.SecurityError)
    with pytest.raises(ChatTemplateError, match="SecurityError"):
        our_render("{{ ''.__class__.__mro__ }}", CONVERSATIONS["single"])
    with pytest.raises(ChatTemplateError, match="TemplateSyntaxError"):
        our_render("{% for m in messages %}", CONVERSATIONS["single"])


@pytest.mark.parametrize("template,limit", [
    # nested loops that print nothing
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "loop iterations"),
    ("{% set s = 'abcdefghij' * 10 %}{% for a in s %}{% for b in s %}{% for c in s %}{% for d in s %}"
     "{% endfor %}{% endfor %}{% endfor %}{% endfor %}", "loop iterations"),
    # output, or values, that fill memory
    ("{% for i in range(100000) %}{{ 'x' * 100000 }}{% endfor %}", "output exceeds"),
    ("{{ 'x' * 1000000000 }}", "repeats a value"),
    ("{% set ns = namespace(s='xx') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
     "builds a value"),
    ("{{ 'x' | center(1000000000) }}", "passes 1000000000"),
    ("{{ 'x'.ljust(1000000000) }}", "passes 1000000000"),
    ("{{ '%999999999d' % 1 }}", "passes 999999999"),
    ("{{ 2 ** 100000000 }}", "computes 2 \\*\\* 100000000"),
    ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "RecursionError"),
])
def test_runaway_templates_fail_fast(template, limit):
    start = time.monotonic()
    with pytest.raises(ChatTemplateError, match=limit):
        our_render(template, CONVERSATIONS["single"])
    assert time.monotonic() - start < MAX_RENDER_SECONDS


def test_output_limit_grows_with_the_conversation():
    long = [{"role": "user", "content": "x" * (2 * MIN_OUTPUT_CHARS)}]
    assert len(our_render(CHATML_TEMPLATE, long)) > 2 * MIN_OUTPUT_CHARS


def test_globals_and_special_tokens(hf_tokenizer):
    template = (
        "{{ bos_token }}|{{ eos_token }}|{{ unk_token }}|{{ strftime_now('%Y') }}|{{ dict(a=1) | tojson }}"
        "|{{ {'b': [1, 2], 'a': 'é'} | tojson(indent=2, sort_keys=True) }}|{{ pad_token is defined }}"
    )
    messages = CONVERSATIONS["single"]
    assert our_render(template, messages) == hf_render(hf_tokenizer, template, messages)
    assert render_chat_template("{{ bos_token is defined }}", messages, bos_token=None) == "False"
    with pytest.raises(ValueError, match="empty"):
        our_render(template, [])


def tool_with_collections(
    ids: list[int], weights: dict[str, float], point: tuple[int, str], mode: Literal["fast", "slow", 3],
    extra: list[int] | dict[str, int] | None = None, anything: Any = None,
) -> tuple[int, int]:
    """Exercise the type-hint conversions.

    Args:
        ids: Item ids.
        weights: Weight per name.
        point: A pair.
        mode: The mode.
        extra: Optional extras. (choices: [1, 2])
        anything: Whatever.
    """


class Toolbox:
    def lookup(self, key: str, fuzzy: bool = False):
        """Look a key up.

        Args:
            key: What to look up.
            fuzzy: Allow near matches.

        Raises:
            KeyError: never really.
        """


@pytest.mark.parametrize("func", [get_weather, tool_with_collections, Toolbox().lookup])
def test_json_schema_matches_transformers(func):
    assert get_json_schema(func) == hf_get_json_schema(func)


def test_json_schema_errors():
    def undocumented(x: int):
        pass

    def untyped(x):
        """Untyped.

        Args:
            x: a value
        """

    def undescribed(x: int, y: int):
        """Only x.

        Args:
            x: a value
        """

    for func, message in [(undocumented, "no docstring"), (untyped, "no type hint"), (undescribed, "'y'")]:
        with pytest.raises(ToolSchemaError, match=message):
            get_json_schema(func)
    with pytest.raises(ValueError):
        render_chat_template("{{ tools }}", CONVERSATIONS["single"], tools=["not a tool"])
