"""Separating a model's `<think>…</think>` reasoning from its answer, incrementally while streaming.

GLM-4.5/4.6 and Qwen3 prompts end with the assistant header and the model writes `<think>…</think>` itself;
GLM-4.7 prompts end with `<think>`, so generation starts inside the reasoning and only `</think>` appears.
An opening tag counts only before any answer text; after `</think>` everything is answer, tags included.
Whitespace around the tags (e.g. `<think>\\n` or `</think>\\n\\n`) and at the very end is dropped.
"""

from __future__ import annotations

from typing import Literal

THINK_START = "<think>"
THINK_END = "</think>"

Kind = Literal["reasoning", "answer"]


def prompt_starts_in_thinking(prompt: str) -> bool:
    """True when a rendered prompt leaves the model inside its reasoning (it ends with `<think>`)."""
    return prompt.rstrip().endswith(THINK_START)


class ThinkingSplitter:
    """Feed generated text with `push`; get back ("reasoning" | "answer", text) pieces in order."""

    def __init__(self, starts_in_thinking: bool = False):
        self._kind: Kind = "reasoning" if starts_in_thinking else "answer"
        self._reasoning_done = False
        self._answer_started = False
        self._at_segment_start = True  # leading whitespace of a part is dropped
        self._buffer = ""

    def push(self, text: str) -> list[tuple[Kind, str]]:
        self._buffer += text
        out: list[tuple[Kind, str]] = []
        while (tag := self._expected_tag()) is not None and tag in self._buffer:
            before, self._buffer = self._buffer.split(tag, 1)
            self._emit(out, before.rstrip())
            self._switch()
        # Hold back what might still become a tag, and trailing whitespace that might precede one.
        tag = self._expected_tag()
        ready = self._buffer[: len(self._buffer) - partial_tag_length(self._buffer, tag)].rstrip()
        self._emit(out, ready)
        self._buffer = self._buffer[len(ready) :]
        return out

    def flush(self) -> list[tuple[Kind, str]]:
        """Emit what is still held back (an unfinished tag is plain text by now); call at the end."""
        out: list[tuple[Kind, str]] = []
        self._emit(out, self._buffer.rstrip())
        self._buffer = ""
        return out

    @property
    def in_reasoning(self) -> bool:
        return self._kind == "reasoning"

    def _expected_tag(self) -> str | None:
        if self._kind == "reasoning":
            return THINK_END
        return None if self._reasoning_done or self._answer_started else THINK_START

    def _switch(self) -> None:
        if self._kind == "reasoning":
            self._reasoning_done = True
        self._kind = "answer" if self._kind == "reasoning" else "reasoning"
        self._at_segment_start = True

    def _emit(self, out: list[tuple[Kind, str]], text: str) -> None:
        if self._at_segment_start:
            text = text.lstrip()
        if not text:
            return
        self._at_segment_start = False
        if self._kind == "answer":
            self._answer_started = True
        if out and out[-1][0] == self._kind:
            out[-1] = (self._kind, out[-1][1] + text)
        else:
            out.append((self._kind, text))


def partial_tag_length(text: str, tag: str | None) -> int:
    """Length of the longest end of `text` that is a proper beginning of `tag`."""
    if tag is None:
        return 0
    for length in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:length]):
            return length
    return 0


def split_reasoning(text: str, starts_in_thinking: bool = False) -> tuple[str, str]:
    """(reasoning, answer) of a complete generation."""
    splitter = ThinkingSplitter(starts_in_thinking)
    parts = {"reasoning": "", "answer": ""}
    for kind, piece in [*splitter.push(text), *splitter.flush()]:
        parts[kind] += piece
    return parts["reasoning"], parts["answer"]
