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
