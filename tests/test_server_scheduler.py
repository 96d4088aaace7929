"""The server's scheduler on a recording backend: the order of forward steps it asks for."""

from __future__ import annotations

import asyncio

import numpy as np

from dllama_py.server.scheduler import PREFILL_CHUNK, Finished, SamplingParams, Scheduler, TokenEvent

VOCAB = 8


class RecordingBackend:
    """Logits that always pick token 1; remembers every step (decode: its slots, extend: slot and length)."""

    max_active, context_length, vocab_size = 4, 4096, VOCAB

    def __init__(self):
        self.steps: list[tuple] = []

    def reusable(self, slot, ids):
        return 0

    def extend(self, slot, ids):
        self.steps.append(("extend", slot, len(ids)))
        return np.eye(VOCAB, dtype=np.float32)[1]

    def decode(self, rows, drafts=None):
        self.steps.append(("decode", tuple(slot for slot, _ in rows)))
        return np.tile(np.eye(VOCAB, dtype=np.float32)[1], (len(rows), 1))


class LetterTokenizer:
    eos_token_ids = [0]

    def stream_decoder(self):
        class Decoder:
            def push(self, token):
                return "ab"[token % 2]

            def flush(self):
                return ""

        return Decoder()


def test_streams_get_a_token_between_any_two_prompt_chunks():
    backend = RecordingBackend()
    scheduler = Scheduler(backend, LetterTokenizer(), parallel=3)

    async def run():
        streaming = scheduler.submit([1, 2, 3], SamplingParams(max_tokens=10_000, temperature=0))
        stream = streaming.events()  # (kept: a reader that goes away cancels its generation)
        assert isinstance(await anext(stream), TokenEvent)
        longs = [scheduler.submit([1] * (2 * PREFILL_CHUNK), SamplingParams(max_tokens=2, temperature=0))
                 for _ in range(2)]

        async def read(gen):
            return [event async for event in gen.events()]

        events = await asyncio.gather(*(read(g) for g in longs))
        streaming.cancel()
        return streaming.slot, events

    try:
        streaming_slot, events = asyncio.run(run())
    finally:
        scheduler.close()
    for long_events in events:
        assert [e.text for e in long_events[:-1]] == ["b", "b"]
        assert isinstance(long_events[-1], Finished) and long_events[-1].reason == "length"
    chunks = [i for i, step in enumerate(backend.steps) if step[0] == "extend" and step[1] != streaming_slot]
    assert sorted(backend.steps[i][2] for i in chunks) == [PREFILL_CHUNK] * 2 + [2 * PREFILL_CHUNK] * 2
    for before, after in zip(chunks, chunks[1:]):  # the stream got a token between every two chunks
        assert any(step[0] == "decode" and streaming_slot in step[1] for step in backend.steps[before + 1:after])
