"""End to end: a GLM checkpoint whose next token depends only on the current one (its layers add
nothing, so the output head reads the token's own embedding), converted with a GLM tokenizer and chat
template; generation must follow the scripted chains and stop on GLM's eos tokens."""

from __future__ import annotations

import pytest
from scripted_glm import build_scripted_glm

from dllama_py import Engine

# token -> the token the model must produce after it
CHAINS = [["<|assistant|>", "<think>", "h", "m", "</think>", "O", "K", "<|user|>"],
          ["X", "Y", "é", "<|observation|>"]]


@pytest.fixture(scope="module")
def scripted_glm(tmp_path_factory):
    with Engine(build_scripted_glm(tmp_path_factory.mktemp("scripted_glm"), CHAINS)) as eng:
        yield eng


def test_chat_stops_at_user_and_returns_reasoning_apart(scripted_glm):
    prompt = scripted_glm.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert prompt == "[gMASK]<sop><|user|>\nHi<|assistant|>"
    ids = scripted_glm.tokenizer.encode_chat(prompt)
    assert ids.count(scripted_glm.tokenizer.token_to_id("[gMASK]")) == 1
    pieces = list(scripted_glm.chat([{"role": "user", "content": "Hi"}], temperature=0, max_tokens=50))
    assert "".join(p for p in pieces if p.kind == "reasoning") == "hm"
    assert "".join(p for p in pieces if p.kind == "answer") == "OK"
    assert scripted_glm.last_stats.finish_reason == "stop"
    assert scripted_glm.last_stats.generated_tokens == 6  # <think> h m </think> O K, then <|user|>
    reply = scripted_glm.chat_reply([{"role": "user", "content": "Hi"}], temperature=0)
    assert reply == {"role": "assistant", "content": "OK", "reasoning_content": "hm"}


def test_generate_stops_at_observation(scripted_glm):
    text = "".join(scripted_glm.generate("X", temperature=0, max_tokens=50))
    assert text == "Yé"  # a two-byte character decoded whole
    assert scripted_glm.last_stats.finish_reason == "stop"


def test_stop_strings_and_max_tokens(scripted_glm):
    assert "".join(scripted_glm.generate("X", temperature=0, max_tokens=1)) == "Y"
    assert scripted_glm.last_stats.finish_reason == "length"
    assert "".join(scripted_glm.generate("X", temperature=0, stop=["é"])) == "Y"
    assert scripted_glm.last_stats.finish_reason == "stop"


def test_second_turn_reuses_the_cached_prefix(scripted_glm):
    messages = [{"role": "user", "content": "Hi"}]
    list(scripted_glm.chat(messages, temperature=0))
    messages += [{"role": "assistant", "content": "OK"}, {"role": "user", "content": "Hi"}]
    list(scripted_glm.chat(messages, temperature=0))
    assert scripted_glm.last_stats.cached_tokens >= len(scripted_glm.tokenizer.encode_chat(
        scripted_glm.apply_chat_template(messages[:1])))


def test_cli_generate_and_chat(scripted_glm, capsys, monkeypatch):
    from dllama_py.cli import main

    path = str(scripted_glm.path)
    assert main(["generate", "-m", path, "X", "--temperature", "0", "-q"]) == 0
    assert capsys.readouterr().out == "Yé\n"
    lines = iter(["Hi", "/exit", "Hi", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["chat", "-m", path, "--temperature", "0"]) == 0
    assert capsys.readouterr().out == "hm\n\nOK\n"  # reasoning, then the answer (no terminal: not dimmed)
    assert main(["chat", "-m", path, "--temperature", "0", "--hide-reasoning"]) == 0
    assert capsys.readouterr().out == "OK\n"


def test_generation_stops_when_the_context_is_full(scripted_glm):
    with Engine(scripted_glm.path, max_seq_len=9) as eng:
        pieces = list(eng.chat([{"role": "user", "content": "Hi"}], temperature=0, max_tokens=50))
        assert eng.last_stats.prompt_tokens == 7
        assert eng.last_stats.finish_reason == "context"
        assert eng.position == 9
        # <think>, h and m were generated; the last one (m) is still returned but never fed back.
        assert eng.last_stats.generated_tokens == 3
        assert "".join(pieces) == "hm" and all(p.kind == "reasoning" for p in pieces)
