"""`dllama-py chat`: the interactive conversation loop.

Line editing and history come from the standard library's readline (GNU readline, or libedit on macOS),
which input() uses once it is imported; the history is kept in the user's state directory. A line
starting with "/" is a command (/help lists them); a line starting with \"\"\" begins a message of several
lines, ended by a line that ends with \"\"\". Ctrl-C while the model answers stops the reply and keeps the
conversation.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

PROMPT, MORE = ">>> ", "... "
QUOTES = '"""'
HISTORY_LENGTH = 1000
DIM, RESET = "\x1b[2m", "\x1b[0m"  # reasoning is shown dimmed on a terminal

HELP = """\
Commands:
  /help                  this list
  /show                  the model, how much of the context the conversation uses, the settings
  /clear                 start a new conversation (keeps the system prompt)
  /set temperature 0.2   sampling temperature (0: always the most likely token)
  /set top_p 0.9         nucleus sampling mass;  /set top_k 40  (0: off)
  /set max_tokens 512    longest reply, in tokens
  /set seed 42           reproducible sampling ("none" for a random one)
  /set think on|off      ask for reasoning or a direct answer ("default": the template's own)
  /set system TEXT       the system prompt (nothing after "system" removes it)
  /set verbose on|off    speed after each reply
  /bye, /exit            leave (so does Ctrl-D)
Start a message with \"\"\" to write several lines; end it with \"\"\".
Ctrl-C stops a reply; the up and down arrows recall earlier messages."""


def history_path() -> Path:
    import platformdirs

    return Path(platformdirs.user_state_dir("dllama-py")) / "chat_history"


# Control characters a model may print that would move the cursor, clear the screen or start an escape
# sequence on a terminal; newlines and tabs stay.
_UNSAFE = {c: "\N{REPLACEMENT CHARACTER}" for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)] if c not in (9, 10)}
_UNSAFE[0x0D] = None  # "\r\n" -> "\n"


def terminal_safe(text: str) -> str:
    return text.translate(_UNSAFE)


@dataclass
class Settings:
    temperature: float = 0.8
    top_p: float = 0.9
    top_k: int = 0
    max_tokens: int = 1024
    seed: int | None = None
    stop: list[str] | None = None
    think: bool | None = None  # None: the chat template's default
    system: str | None = None
    verbose: bool = False
    hide_reasoning: bool = False


def _number(kind, low, high=None):
    def parse(text: str):
        value = kind(text)
        if not math.isfinite(value) or value < low or (high is not None and value > high):
            raise ValueError(f"{text} is outside {low}..{'' if high is None else high}")
        return value
    return parse


def _optional_int(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def _switch(values: dict):
    def parse(text: str):
        if text.lower() not in values:
            raise ValueError(f"expected {' or '.join(values)}")
        return values[text.lower()]
    return parse


# /set NAME VALUE: NAME -> how to read VALUE into the Settings field of that name.
SETTABLE = {
    "temperature": _number(float, 0.0),
    "top_p": _number(float, 0.0, 1.0),
    "top_k": _number(int, 0),
    "max_tokens": _number(int, 1),
    "seed": _optional_int,
    "think": _switch({"on": True, "off": False, "default": None}),
    "system": lambda text: text or None,
    "verbose": _switch({"on": True, "off": False}),
}
COMMANDS = ["/help", "/show", "/clear", "/set", "/bye", "/exit"] + [f"/set {name}" for name in SETTABLE]


class LineReader:
    """The user's input: a line, or several between triple quotes. On a terminal, with line editing and a
    persistent history (one entry per message, so that a multi-line message comes back whole)."""

    def __init__(self, interactive: bool, history: Path | None):
        self.interactive, self.history = interactive, history
        self.readline = None
        if not interactive:
            return
        try:
            import readline
        except ImportError:  # no readline on this platform: plain input()
            return
        self.readline = readline
        if history is not None and history.is_file():
            try:
                lines = history.read_text(encoding="utf-8", errors="replace").splitlines()[-HISTORY_LENGTH:]
            except OSError as e:
                print(f"warning: cannot read the chat history {history}: {e}", file=sys.stderr)
                lines = []
            bad = 0
            for line in lines:
                try:
                    readline.add_history(json.loads(line))
                except (ValueError, TypeError):
                    bad += 1
            if bad:
                print(f"warning: {history}: skipped {bad} line(s) that are not JSON strings", file=sys.stderr)
        readline.set_completer(self._complete)
        readline.set_completer_delims("")
        libedit = "libedit" in (readline.__doc__ or "")
        readline.parse_and_bind("bind ^I rl_complete" if libedit else "tab: complete")

    def _complete(self, text: str, state: int) -> str | None:
        matches = [c for c in COMMANDS if text.startswith("/") and c.startswith(text)]
        return matches[state] if state < len(matches) else None

    def _input(self, prompt: str) -> str:
        return input(prompt if self.interactive else "")

    def read(self) -> tuple[str, bool] | None:
        """The next line, or the message between triple quotes (then True); None at the end of input."""
        try:
            lines = [self._input(PROMPT)]
            if not lines[0].startswith(QUOTES):
                return lines[0], False
            while not "\n".join(lines)[len(QUOTES):].endswith(QUOTES):  # a recalled message comes back whole
                lines.append(self._input(MORE))
        except EOFError:
            return None
        if self.readline is not None and len(lines) > 1:  # one history entry for the whole message
            for _ in lines:
                self.readline.remove_history_item(self.readline.get_current_history_length() - 1)
            self.readline.add_history("\n".join(lines))
        inner = "\n".join(lines)[len(QUOTES):-len(QUOTES)]
        return inner.removeprefix("\n").removesuffix("\n"), True

    def close(self):
        if self.readline is None or self.history is None:
            return
        # One JSON string per line, not readline's own file: that one splits multi-line entries (GNU) or
        # has another format (libedit).
        n = self.readline.get_current_history_length()
        entries = [self.readline.get_history_item(i) for i in range(max(1, n - HISTORY_LENGTH + 1), n + 1)]
        try:
            self.history.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.history, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # private: what was said
            with open(fd, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(e) + "\n" for e in entries if e)
        except OSError as e:
            print(f"warning: cannot save the chat history to {self.history}: {e}", file=sys.stderr)


class _StopOnInterrupt:
    """While a reply streams: the first Ctrl-C asks it to stop after the current token; a second one
    raises KeyboardInterrupt at once. Outside the main thread, Ctrl-C keeps Python's behaviour."""

    def __enter__(self):
        self.requested, self._old = False, None
        try:
            self._old = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread
            pass
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def print_stats(eng, out=None):
    out = out or sys.stderr
    s = eng.last_stats
    prefill_tps = (s.prompt_tokens - s.cached_tokens) / s.prefill_seconds if s.prefill_seconds else 0.0
    print(f"\n[{s.prompt_tokens} prompt tokens ({s.cached_tokens} cached) at {prefill_tps:.1f} tok/s, "
          f"{s.generated_tokens} generated at {s.decode_tokens_per_second:.1f} tok/s, finish: {s.finish_reason}]",
          file=out)
    if s.drafted_tokens:
        print(f"[speculative ({s.draft}): {s.accepted_tokens} of {s.drafted_tokens} guesses kept "
              f"({s.acceptance_rate:.0%}), {s.tokens_per_step:.2f} tokens per step]", file=out)
    if eng.n_nodes > 1:
        net = eng.net_stats()
        steps = max(s.prompt_tokens - s.cached_tokens + s.generated_tokens, 1)
        print(f"[{eng.n_nodes} nodes: sent {net['bytes_sent'] / 1e3:,.0f} kB, received {net['bytes_received'] / 1e3:,.0f} kB, "
              f"{net['seconds_in_sync']:.2f} s in sync; {net['bytes_sent'] / steps / 1e3:,.1f} kB sent per token]", file=out)


@dataclass
class ChatSession:
    """A conversation with an Engine, driven by the user's lines."""

    engine: object
    settings: Settings
    out: object = None  # default: sys.stdout and sys.stderr as they are when the session starts
    err: object = None
    messages: list[dict] = field(default_factory=list)

    def __post_init__(self):
        self.out, self.err = self.out or sys.stdout, self.err or sys.stderr
        self.terminal = self.out.isatty()
        self.clear()

    # -- commands -----------------------------------------------------------------------------
    def command(self, line: str) -> bool:
        """Runs a /command; False when it ends the chat."""
        name, _, rest = line.strip().partition(" ")
        rest = rest.strip()
        if name in ("/bye", "/exit", "/quit"):
            return False
        if name == "/help":
            print(HELP, file=self.err)
        elif name in ("/clear", "/reset"):
            self.clear()
            print("Cleared the conversation.", file=self.err)
        elif name == "/show":
            self.show()
        elif name == "/set":
            self.set(rest)
        else:
            print(f"Unknown command {name} (/help lists the commands).", file=self.err)
        return True

    def clear(self):
        self.messages = [{"role": "system", "content": self.settings.system}] if self.settings.system else []
        self.engine.reset()

    def set(self, text: str):
        name, _, value = text.partition(" ")
        name, value = name.lower().replace("-", "_"), value.strip()
        if name in ("think", "nothink") and not value:  # Ollama's /set think, /set nothink
            name, value = "think", "on" if name == "think" else "off"
        if name not in SETTABLE:
            print(f"/set what? One of: {', '.join(SETTABLE)} (/help shows examples).", file=self.err)
            return
        if not value and name != "system":
            print(f"/set {name} needs a value (/help shows examples).", file=self.err)
            return
        try:
            setattr(self.settings, name, SETTABLE[name](value))
        except ValueError as e:
            print(f"/set {name}: {value!r} is not valid: {e}", file=self.err)
            return
        if name == "system":
            self.messages = [m for m in self.messages if m["role"] != "system"]
            if self.settings.system:
                self.messages.insert(0, {"role": "system", "content": self.settings.system})
        print(f"Set {name} to {self._describe(name)}.", file=self.err)

    def _describe(self, name: str) -> str:
        value = getattr(self.settings, name)
        if name == "think":
            return {None: "default", True: "on", False: "off"}[value]
        if name == "verbose":
            return "on" if value else "off"
        return "none" if value is None else repr(value) if name == "system" else str(value)

    def show(self):
        eng = self.engine
        layout, ctx = eng.layout, eng.context_length
        used = eng.position
        print(f"model        {eng.path} ({layout.arch.builder}, {layout.weight_type.name}, "
              f"{layout.params['n_layers']} layers, vocabulary {layout.params['vocab_size']})", file=self.err)
        print(f"running on   {eng.n_nodes} node(s), {eng.threads} thread(s) on this one", file=self.err)
        print(f"context      {used} of {ctx} tokens used ({used / ctx:.0%})", file=self.err)
        print(f"conversation {len(self.messages)} message(s), system prompt {self._describe('system')}", file=self.err)
        print("settings     " + ", ".join(f"{n} {self._describe(n)}" for n in SETTABLE if n != "system"), file=self.err)

    # -- replies ------------------------------------------------------------------------------
    def _template_kwargs(self) -> dict:
        return {} if self.settings.think is None else {"enable_thinking": self.settings.think}

    def _room(self, messages: list[dict]) -> bool:
        """Whether the conversation still fits the context, with a warning when the reply may not."""
        eng = self.engine
        n = len(eng.tokenizer.encode_chat(eng.apply_chat_template(messages, **self._template_kwargs())))
        ctx = eng.context_length
        if n >= ctx:
            print(f"The conversation no longer fits: it takes {n} tokens and the context holds {ctx}. "
                  "/clear starts a new one (or restart with a larger --max-seq-len).", file=self.err)
            return False
        if ctx - n < self.settings.max_tokens:
            print(f"This reply can have at most {ctx - n} tokens ({n} of the context's {ctx} are used).", file=self.err)
        return True

    def reply(self, text: str):
        """Streams the reply to a message; the conversation takes both once the reply is over."""
        messages = self.messages + [{"role": "user", "content": text}]
        if not self._room(messages):
            return
        s, answer, last_kind = self.settings, "", None
        pieces = self.engine.chat(messages, max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p,
                                  top_k=s.top_k, seed=s.seed, stop=s.stop, **self._template_kwargs())
        stopped = False
        with _StopOnInterrupt() as interrupt:
            try:
                for piece in pieces:
                    if interrupt.requested:
                        stopped = True
                        break
                    if piece.kind == "reasoning" and s.hide_reasoning:
                        continue
                    if last_kind == "reasoning" and piece.kind == "answer":
                        print("\n", file=self.out)
                    last_kind = piece.kind
                    if piece.kind == "answer":
                        answer += piece
                    shown = terminal_safe(piece) if self.terminal else piece
                    print(f"{DIM}{shown}{RESET}" if self.terminal and piece.kind == "reasoning" else shown,
                          end="", flush=True, file=self.out)
                stopped = stopped or interrupt.requested
            except KeyboardInterrupt:  # a second Ctrl-C, anywhere: the cache may not hold what it claims
                stopped = True
                self.engine.reset()
            finally:
                pieces.close()
        print(file=self.out)
        self.messages = messages + [{"role": "assistant", "content": answer}]
        if stopped:
            print("[stopped]", file=self.err)
        elif self.engine.last_stats.finish_reason == "context":
            print("[the context is full: /clear starts a new conversation]", file=self.err)
        if s.verbose and not stopped:
            print_stats(self.engine, self.err)
        used, ctx = self.engine.position, self.engine.context_length
        if ctx - used < s.max_tokens and self.engine.last_stats.finish_reason != "context":
            print(f"warning: the context is nearly full ({used} of {ctx} tokens used): the next reply may be cut "
                  "short. /clear starts a new conversation.", file=self.err)


def run_chat(engine, settings: Settings, keep_history: bool = True) -> int:
    """The chat loop on stdin/stdout; returns the exit code. keep_history: read and save the history file."""
    engine.apply_chat_template([{"role": "user", "content": "Hi"}])  # no tokenizer or template: fail now
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    session = ChatSession(engine, settings)
    reader = LineReader(interactive, history_path() if keep_history and interactive else None)
    print(f"Chatting with {engine.path} ({engine.context_length} tokens of context). "
          "/help for commands, /bye or Ctrl-D to leave.", file=sys.stderr)
    try:
        while True:
            try:
                read = reader.read()
            except KeyboardInterrupt:  # at the prompt: drop the line, as a shell does
                print("\n(Ctrl-D or /bye leaves)", file=sys.stderr)
                continue
            if read is None:
                print(file=sys.stderr)
                return 0
            text, quoted = read
            if text.startswith("/") and not quoted:
                if not session.command(text):
                    return 0
            elif text.strip():
                try:
                    session.reply(text)
                except KeyboardInterrupt:  # before or after the reply streamed: the message is dropped
                    engine.reset()
                    print("\n[stopped]", file=sys.stderr)
    finally:
        reader.close()
