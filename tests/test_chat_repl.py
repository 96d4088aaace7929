"""`dllama-py chat` as people use it: driven through a pseudo-terminal (history, editing keys, Ctrl-C) and
through a pipe, on a small random model with a byte-level tokenizer whose replies are compared with the
Engine's own."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest
from chat_model import make_chat_model

from dllama_py import Engine
from dllama_py.chat_repl import HISTORY_LENGTH, MORE, PROMPT, terminal_safe

UP = "\x1b[A"
ESCAPES = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|[()][A-Z0-9]|[=>])")  # readline's cursor and mode sequences


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_chat_model(tmp_path_factory.mktemp("chat_model"))


def greedy_reply(model: Path, messages: list[str], max_tokens: int) -> str:
    """The Engine's greedy answer to a conversation of user messages (each answered in turn)."""
    with Engine(model, threads=1) as eng:
        conversation = []
        for text in messages:
            conversation.append({"role": "user", "content": text})
            answer = "".join(eng.chat(conversation, temperature=0, max_tokens=max_tokens))
            conversation.append({"role": "assistant", "content": answer})
    return answer


def on_screen(reply: str) -> str:
    """A reply as the chat prints it on a terminal (whose line discipline turns "\n" into "\r\n")."""
    return terminal_safe(reply).replace("\n", "\r\n") + "\r\n"


class Chat:
    """`dllama-py chat` on a pseudo-terminal."""

    def __init__(self, model: Path, state: Path, *args: str):
        env = dict(os.environ, XDG_STATE_HOME=str(state), TERM="xterm")
        self.p = pexpect.spawn(sys.executable, ["-m", "dllama_py.cli", "chat", "-m", str(model), "-t", "1", *args],
                               env=env, encoding="utf-8", timeout=60, dimensions=(50, 250))
        self.p.expect_exact(PROMPT)

    def keys(self, keys: str) -> str:
        """Types keys ending with Enter; what was printed until the next prompt, after the echoed line."""
        self.p.send(keys + "\r")
        self.p.expect_exact(PROMPT)
        return ESCAPES.sub("", self.p.before).split("\r\n", 1)[1]

    def send(self, line: str) -> str:
        return self.keys(line)

    def leave(self, keys: str = "/bye\r") -> int:
        self.p.send(keys)
        self.p.expect(pexpect.EOF)
        self.p.close()
        return self.p.exitstatus


def context_used(show: str) -> int:
    return int(re.search(r"context +(\d+) of \d+ tokens used", show).group(1))


def test_set_temperature_clear_show_and_history(model, tmp_path):
    chat = Chat(model, tmp_path, "-n", "12")
    sampled = [chat.send("hello"), chat.send("/clear"), chat.send("hello")][::2]
    assert sampled[0] != sampled[1]  # the default temperature samples
    assert "Set temperature to 0.0." in chat.send("/set temperature 0")
    chat.send("/clear")
    greedy = on_screen(greedy_reply(model, ["hello"], 12))
    assert chat.send("hello") == greedy
    assert context_used(chat.send("/show")) > 0
    chat.send("/clear")
    assert context_used(chat.send("/show")) == 0
    # Up arrow: "/show", "/clear", "/show", "hello" -- recalled and sent again, after /clear: the same reply
    assert chat.keys(UP * 4) == greedy
    assert chat.leave() == 0

    history = [json.loads(line) for line in (tmp_path / "dllama-py" / "chat_history").read_text().splitlines()]
    assert history[-3:] == ["/show", "hello", "/bye"]
    again = Chat(model, tmp_path, "-n", "12")  # a new session recalls the last one's lines: Up, Up is "hello"
    assert context_used(again.keys(UP * 3)) == 0  # "/show" from the last session
    assert again.leave(UP * 2 + "\r") == 0  # "/bye" from the last session

    saved = (tmp_path / "dllama-py" / "chat_history").read_text()
    private = Chat(model, tmp_path, "--no-history")
    assert private.keys(UP) == ""  # no history to recall: an empty line
    assert private.leave() == 0
    assert (tmp_path / "dllama-py" / "chat_history").read_text() == saved


def test_multiline_message_is_sent_and_recalled_whole(model, tmp_path):
    chat = Chat(model, tmp_path, "-n", "12", "--temperature", "0")
    greedy = on_screen(greedy_reply(model, ["line one\nline two"], 12))
    chat.p.send('"""line one\r')
    chat.p.expect_exact(MORE)
    assert chat.keys('line two"""') == greedy
    chat.send("/clear")
    recalled = chat.keys(UP * 2)  # one history entry: both lines come back and are sent together
    assert recalled.endswith(greedy) and "line two" in recalled
    assert chat.send('"""one line"""') == on_screen(greedy_reply(model, ["line one\nline two", "one line"], 12))
    assert chat.leave("\x04") == 0  # Ctrl-D


def test_ctrl_c_stops_the_reply_and_keeps_the_chat(model, tmp_path):
    chat = Chat(model, tmp_path, "-n", "4000", "--temperature", "0")  # greedy: no end of text for 4000 tokens
    chat.p.send("hello\r")
    chat.p.expect_exact("hello\r\n")
    chat.p.expect(".")  # the reply has started
    chat.p.sendcontrol("c")
    chat.p.expect_exact("[stopped]")
    chat.p.expect_exact(PROMPT)
    used = context_used(chat.send("/show"))
    assert 0 < used < 4000
    assert context_used(chat.send("/set max_tokens 5") + chat.send("next") + chat.send("/show")) > used
    chat.p.sendcontrol("c")  # at the prompt: a new prompt, not the end
    chat.p.expect_exact("/bye leaves")
    chat.p.expect_exact(PROMPT)
    assert chat.leave() == 0


def run_piped(model: Path, lines: list[str], *args: str) -> subprocess.CompletedProcess:
    """The chat with its input from a pipe (no terminal: no prompts, no history)."""
    return subprocess.run([sys.executable, "-m", "dllama_py.cli", "chat", "-m", str(model), "-t", "1", *args],
                          input="".join(line + "\n" for line in lines), capture_output=True, text=True, timeout=120)


def test_context_full_warning_comes_before_the_context_is_full(model):
    lines = ["/set max_tokens 80", "hello", "/show", "/clear", "/set max_tokens 40", "hello", "hello", "/show"]
    r = run_piped(model, lines, "--max-seq-len", "96", "--temperature", "0")
    assert r.returncode == 0, r.stderr
    room, used = map(int, re.search(r"This reply can have at most (\d+) tokens \((\d+) of the context's 96", r.stderr).groups())
    assert room + used == 96
    cut = r.stderr.index("[the context is full: /clear starts a new conversation]")
    assert context_used(r.stderr[cut:]) == 96  # the reply ran to the end of the context, and no further
    warning = r.stderr.index("warning: the context is nearly full")  # after a reply that leaves too little room
    refused = r.stderr.index("The conversation no longer fits")  # the next message is not sent
    assert cut < warning < refused
    assert 0 < context_used(r.stderr[refused:]) < 96


def test_commands_check_their_values(model):
    r = run_piped(model, ["/set temperature -1", "/set temperature nan", "/set top_p 2", "/set colour blue", "/set max_tokens", "/frobnicate",
                          "/set seed 7", "/set think off", "/set system be brief", "/help", "/show"])
    assert r.returncode == 0, r.stderr
    for message in ["/set temperature: '-1' is not valid", "/set temperature: 'nan' is not valid", "/set top_p: '2' is not valid", "/set what? One of:",
                    "/set max_tokens needs a value", "Unknown command /frobnicate", "Set seed to 7.",
                    "Set think to off.", "Set system to 'be brief'.", "/set temperature 0.2", "seed 7, think off",
                    "1 message(s), system prompt 'be brief'"]:
        assert message in r.stderr
    assert r.stdout == ""  # nothing reached the model


def test_thinking_switch_reaches_the_template(model):
    """/set think off renders Qwen3's empty reasoning block into the prompt: 19 more prompt tokens."""
    r = run_piped(model, ["/set verbose on", "hi", "/clear", "/set think off", "hi"], "-n", "2", "--temperature", "0")
    assert r.returncode == 0, r.stderr
    default, off = map(int, re.findall(r"\[(\d+) prompt tokens", r.stderr))
    assert off - default == len("<think>\n\n</think>\n\n")  # one token per byte


def test_history_keeps_the_last_entries(model, tmp_path):
    history = tmp_path / "dllama-py" / "chat_history"
    history.parent.mkdir(parents=True)
    history.write_text("".join(json.dumps(f"old {i}") + "\n" for i in range(HISTORY_LENGTH + 50)) + "not json\n")
    chat = Chat(model, tmp_path)  # a broken line: a warning, and the chat goes on
    assert "skipped 1 line(s) that are not JSON strings" in chat.p.before
    assert chat.leave() == 0
    kept = [json.loads(line) for line in history.read_text().splitlines()]
    assert len(kept) == HISTORY_LENGTH and kept[-1] == "/bye"
