"""Splitting `<think>` reasoning from the answer while streaming."""

from __future__ import annotations

import pytest

from dllama_py.reasoning import ThinkingSplitter, prompt_starts_in_thinking, split_reasoning


def stream(text: str, chunk_size: int, starts_in_thinking: bool = False) -> list[tuple[str, str]]:
    """Push `text` in chunks of `chunk_size` characters; merge consecutive pieces of the same kind."""
    splitter = ThinkingSplitter(starts_in_thinking)
    pieces = []
    for start in range(0, len(text), chunk_size):
        pieces += splitter.push(text[start : start + chunk_size])
    pieces += splitter.flush()
    merged: list[tuple[str, str]] = []
    for kind, piece in pieces:
        assert piece, "empty pieces are never emitted"
        if merged and merged[-1][0] == kind:
            merged[-1] = (kind, merged[-1][1] + piece)
        else:
            merged.append((kind, piece))
    return merged


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 7, 100])
def test_glm45_output_with_tags_split_across_chunks(chunk_size):
    text = "\n<think>Let me think: 2 < 3, so <b>yes</b>.\n</think>\nThe answer is **yes** 🙂\n"
    assert stream(text, chunk_size) == [
        ("reasoning", "Let me think: 2 < 3, so <b>yes</b>."),
        ("answer", "The answer is **yes** 🙂"),
    ]


@pytest.mark.parametrize("chunk_size", [1, 4, 100])
def test_glm47_generation_starts_inside_reasoning(chunk_size):
    text = "The user greets me.</think>Hello! I mention <think> tags and </think> tags."
    assert stream(text, chunk_size, starts_in_thinking=True) == [
        ("reasoning", "The user greets me."),
        ("answer", "Hello! I mention <think> tags and </think> tags."),
    ]


def test_answer_only_and_late_open_tag():
    assert stream("Plain answer <think>not reasoning</think>", 3) == [
        ("answer", "Plain answer <think>not reasoning</think>")
    ]
    assert stream("\n\n", 1) == []


def test_pieces_arrive_early_and_partial_tags_wait():
    splitter = ThinkingSplitter(starts_in_thinking=True)
    assert splitter.push("abc") == [("reasoning", "abc")]
    assert splitter.push(" def</thi") == [("reasoning", " def")]
    assert splitter.push("nk>\nxyz") == [("answer", "xyz")]
    assert splitter.push("<") == [("answer", "<")]  # after </think>, no tag is special


def test_unfinished_tag_is_flushed_as_text():
    splitter = ThinkingSplitter(starts_in_thinking=True)
    assert splitter.push("thinking </thi") == [("reasoning", "thinking")]
    assert splitter.flush() == [("reasoning", " </thi")]


def test_split_reasoning_and_prompt_detection():
    assert split_reasoning("<think>\nhmm\n</think>\n\nok") == ("hmm", "ok")
    assert split_reasoning("hmm</think>ok", starts_in_thinking=True) == ("hmm", "ok")
    assert split_reasoning("just text") == ("", "just text")
    assert prompt_starts_in_thinking("[gMASK]<sop><|user|>Hi<|assistant|><think>\n")
    assert not prompt_starts_in_thinking("<|assistant|></think>")
    assert not prompt_starts_in_thinking("<|im_start|>assistant\n<think>\n\n</think>\n\n")
