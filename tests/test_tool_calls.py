import json

from dllama_py.tool_calls import split_tool_calls


def calls_of(text):
    content, calls = split_tool_calls(text)
    return content, [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]


def test_glm45_style_with_newlines():
    text = ("Let me check.<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n"
            "<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n</tool_call>")
    assert calls_of(text) == ("Let me check.", [("get_weather", {"city": "Paris", "days": 3})])


def test_glm47_compact_style_and_two_calls():
    text = ("<tool_call>a<arg_key>x</arg_key><arg_value>{\"k\": [1, 2]}</arg_value></tool_call>"
            "<tool_call>b</tool_call>")
    assert calls_of(text) == ("", [("a", {"x": {"k": [1, 2]}}), ("b", {})])


def test_hermes_json_style():
    text = '<tool_call>\n{"name": "search", "arguments": {"q": "héllo"}}\n</tool_call>'
    content, calls = split_tool_calls(text)
    assert content == "" and calls[0]["type"] == "function" and calls[0]["id"].startswith("call_")
    assert calls[0]["function"] == {"name": "search", "arguments": '{"q": "héllo"}'}


def test_qwen3_coder_xml_style():
    text = ("<tool_call>\n<function=run>\n<parameter=cmd>\nls -l\n</parameter>\n<parameter=n>\n2\n</parameter>\n"
            "</function>\n</tool_call>")
    assert calls_of(text) == ("", [("run", {"cmd": "ls -l", "n": 2})])


def test_text_without_calls_is_unchanged():
    assert split_tool_calls("  Just an answer <b>. ") == ("  Just an answer <b>. ", [])


def streamed(text, prefix="", piece=3):
    """ToolCallStream fed `text` a few characters at a time: (content, [(name, args)])."""
    from dllama_py.tool_calls import ToolCallStream

    stream, items = ToolCallStream(prefix), []
    for i in range(0, len(text), piece):
        items += stream.push(text[i:i + piece])
    items += stream.flush()
    content = "".join(v for k, v in items if k == "content")
    return content, [(v["function"]["name"], json.loads(v["function"]["arguments"])) for k, v in items if k == "tool_call"]


def test_streamed_calls_in_every_format():
    glm = "Checking.<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n</tool_call>"
    hermes = 'Checking.<tool_call>\n{"name": "search", "arguments": {"q": "x"}}\n</tool_call>\n<tool_call>{"name": "b"}</tool_call>'
    coder = "Checking.<tool_call>\n<function=run>\n<parameter=cmd>\nls\n</parameter>\n</function>\n</tool_call>"
    for piece in (1, 2, 5, 1000):
        assert streamed(glm, piece=piece) == ("Checking.", [("get_weather", {"city": "Paris"})])
        assert streamed(hermes, piece=piece) == ("Checking.", [("search", {"q": "x"}), ("b", {})])
        assert streamed(coder, piece=piece) == ("Checking.", [("run", {"cmd": "ls"})])


def test_streamed_text_that_only_looks_like_a_call_stays_content():
    text = 'a <tool b <tool_call>{"name": </tool_call>'  # a JSON call that does not parse
    assert streamed(text) == (text, [])
    assert streamed("x <tool_c") == ("x <tool_c", [])


def test_forced_prefix_and_unclosed_call():
    from dllama_py.tool_calls import forced_call_prefix, tool_call_format

    assert tool_call_format("... <arg_key>{{ k }}</arg_key> ...") == "glm"
    assert tool_call_format("... <function={{ name }}> ...") == "xml"
    assert tool_call_format("{{ tools | tojson }}") == "json"
    assert streamed(' {"q": 1}}', prefix=forced_call_prefix("json", "s")) == ("", [("s", {"q": 1})])
    assert streamed("<arg_key>a</arg_key><arg_value>1</arg_value>", prefix=forced_call_prefix("glm", "f")) == ("", [("f", {"a": 1})])
    assert streamed("\n<parameter=a>\nz\n</parameter>\n</function>", prefix=forced_call_prefix("xml", "g")) == ("", [("g", {"a": "z"})])
