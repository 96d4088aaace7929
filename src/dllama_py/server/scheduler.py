"""Runs the server's generations on the engine: `submit` a request, read its tokens as an async stream,
`cancel` it. Requests take one of `parallel` sequence slots; the rest wait in a bounded queue.

One thread owns the engine and loops: admit waiting requests into free slots, advance the decoding ones
by one token and the oldest prompt still being read by one chunk, hand the tokens to their requests'
asyncio queues. A step's tokens are handed over together, just before the next forward pass, by a
second thread that wakes each event loop once per step (not per token): the loop streams them while
the forward pass runs without the GIL. The backend is the Engine's KV-cache slots (`engine.scheduler`,
an Engine made with max_sequences = the server's slots): its `decode` runs one token of every decoding
sequence in a single forward step.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import AsyncIterator, Protocol

import numpy as np

from ..constrained import JsonConstraint
from ..engine import Engine
from ..sampling import LogitAdjustments, Sampler, token_logprobs
from ..speculative import NgramDrafter
from ..text_stream import TextStream

PREFILL_CHUNK = 256  # prompt tokens per step, so a cancelled long prompt stops within one chunk


class QueueFull(Exception):
    def __init__(self, retry_after: int):
        super().__init__(f"the server is busy; retry in {retry_after} s")
        self.retry_after = retry_after


class Backend(Protocol):
    max_active: int  # sequences that can advance in one step
    context_length: int
    vocab_size: int

    def reusable(self, slot: int, ids: list[int]) -> int:
        """How many leading tokens of `ids` the slot's cache already holds."""

    def extend(self, slot: int, ids: list[int]) -> np.ndarray:
        """Make the slot's sequence `ids`, computing only what its cache does not hold; the logits after
        the last token (vocab,)."""

    def decode(self, rows: list[tuple[int, int]], drafts: list[list[int]] | None = None) -> np.ndarray:
        """One token appended to each (slot, token) row's sequence; logits (rows, vocab). With drafts, each
        row's guesses follow it (and get logits)."""

    def truncate(self, slot: int, n: int) -> None:
        """Keep only the first n tokens of the slot's sequence (to drop refused guesses)."""

    def mtp_guesses(self, wanted: list[tuple[int, int, int, Sampler]]) -> list[tuple[list[int], list | None]]:
        """Guesses of the model's MTP layer for (slot, next token, k, sampler) (Scheduler.mtp_guesses)."""


@dataclass
class SamplingParams:
    max_tokens: int
    temperature: float = 0.8
    top_p: float = 0.9
    top_k: int = 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None
    top_logprobs: int | None = None  # None: no log-probabilities; 0: the chosen token's only
    grammar: str | None = None  # JSON grammar (constrained.json_grammar) the output must follow
    grammar_after: str | None = None  # ... once this text has been generated (e.g. "</think>")
    ignore_eos: bool = False  # end-of-sequence tokens do not end the generation


@dataclass
class TokenEvent:
    token: int
    text: str  # final text this token completed ("" while a character or stop string is incomplete)
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Finished:
    reason: str  # "stop" or "length"
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    text: str = ""  # text still held back at the end
    error: Exception | None = None
    drafted_tokens: int = 0  # speculative decoding (serve --draft): guesses checked
    accepted_tokens: int = 0  # and kept


class Generation:
    """One request in the scheduler: its slot, sampling state and the queue its events go to."""

    def __init__(self, prompt: list[int], params: SamplingParams, eos: set[int], tokenizer, vocab_size: int):
        self.prompt, self.params, self.eos = prompt, params, set() if params.ignore_eos else eos
        self.sampler = Sampler(params.temperature, params.top_p, params.top_k, params.seed)
        self.adjust = LogitAdjustments(vocab_size, params.presence_penalty, params.frequency_penalty,
                                       params.logit_bias)
        self.constraint: JsonConstraint | None = None
        self.text = TextStream(tokenizer, params.stop)
        self.slot: int | None = None
        self.prefilled = 0  # prompt tokens in the cache
        self.cached = 0
        self.pending: int | None = None  # the token to feed at the next step
        self.completion = 0
        self.generated_text = ""  # only kept while waiting for grammar_after
        self.submitted = time.perf_counter()
        self.first_token_at: float | None = None
        self.drafter: NgramDrafter | None = None  # serve --draft ngram
        self.guesses: list[int] = []  # the next step's guesses after `pending`
        self.guess_distributions: list | None = None
        self.drafted = self.accepted = 0
        self.cancelled = False
        self.done = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.queue: asyncio.Queue | None = None

    def cancel(self) -> None:
        """Stop generating (between two steps) and free the slot; safe to call from any thread."""
        self.cancelled = True

    async def events(self) -> AsyncIterator[TokenEvent | Finished]:
        """The request's tokens, then one Finished; cancels the generation if the reader stops early."""
        try:
            while True:
                event = await self.queue.get()
                yield event
                if isinstance(event, Finished):
                    return
        finally:
            self.cancel()


def _deliver(events: list[tuple[Generation, TokenEvent | Finished]]) -> None:
    for gen, event in events:
        gen.queue.put_nowait(event)


class Scheduler:
    def __init__(self, backend: Backend, tokenizer, parallel: int = 1, max_queue: int = 64, draft: str | None = None,
                 draft_tokens: int = 4):
        """draft: speculative decoding for every request, "ngram" or "mtp" (the Engine loaded with it)."""
        if parallel < 1 or max_queue < 0:
            raise ValueError("parallel must be >= 1 and the queue size >= 0")
        self.backend, self.tokenizer = backend, tokenizer
        self.draft, self.draft_tokens = draft, draft_tokens
        self.parallel, self.max_queue = parallel, max_queue
        self._waiting: deque[Generation] = deque()
        self._slots: list[Generation | None] = [None] * parallel
        self._cond = threading.Condition()
        self._stopping = False
        self._mean_request_s = 5.0
        self.tokens_generated = 0
        self.prompt_tokens = 0
        self.drafted_tokens = self.accepted_tokens = 0  # speculative guesses checked and kept
        self.requests_finished = 0
        self._recent: deque[tuple[float, int]] = deque()  # (time, tokens) of recent steps, for tokens/s
        self._outbox: list[tuple[Generation, TokenEvent | Finished]] = []  # events of the step being made
        self._handoff: list[tuple[Generation, TokenEvent | Finished] | None] = []  # to the loops; None: the end
        self._handoff_cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="dllama-scheduler", daemon=True)
        self._thread.start()
        self._handoff_thread = threading.Thread(target=self._hand_over, name="dllama-handoff", daemon=True)
        self._handoff_thread.start()

    # -- the asyncio side -------------------------------------------------------------------------
    def submit(self, prompt: list[int], params: SamplingParams) -> Generation:
        """Queue a generation (raises QueueFull); read it with `gen.events()` from the calling loop."""
        if not prompt:
            raise ValueError("the prompt is empty")
        gen = Generation(prompt, params, set(self.tokenizer.eos_token_ids), self.tokenizer, self.backend.vocab_size)
        if self.draft == "ngram":
            gen.drafter = NgramDrafter()
            gen.drafter.extend(prompt)
        gen.loop, gen.queue = asyncio.get_running_loop(), asyncio.Queue()
        with self._cond:
            if self._stopping:
                raise RuntimeError("the server is shutting down")
            self._waiting = deque(g for g in self._waiting if not g.cancelled)
            if len(self._waiting) >= self.max_queue and None not in self._slots:
                raise QueueFull(self.retry_after())
            self._waiting.append(gen)
            self._cond.notify()
        return gen

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the queue ahead times the mean request time."""
        ahead = len(self._waiting) / max(1, min(self.parallel, self.backend.max_active)) + 1
        return max(1, min(3600, math.ceil(ahead * self._mean_request_s)))

    @property
    def queue_length(self) -> int:
        return len(self._waiting)

    @property
    def slots_busy(self) -> int:
        return sum(g is not None for g in self._slots)

    def tokens_per_second(self, window: float = 10.0) -> float:
        """Generated tokens per second over the last `window` seconds."""
        now = time.perf_counter()
        with self._cond:
            recent = [(t, n) for t, n in self._recent if now - t <= window]
        return sum(n for _, n in recent) / window if recent else 0.0

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join()
        with self._handoff_cond:
            self._handoff.append(None)  # the end, after the last events
            self._handoff_cond.notify()
        self._handoff_thread.join()

    # -- the engine thread ------------------------------------------------------------------------
    def _emit(self, gen: Generation, event) -> None:
        self._outbox.append((gen, event))

    def _flush(self) -> None:
        """Passes the events emitted so far to the handoff thread, which wakes their event loops. Waking a
        loop from this thread (a socket write releases the GIL) let the loop take the GIL while this
        thread, about to start the next forward pass, waited for it; the handoff thread waits instead,
        until the forward pass releases the GIL. (Time between two forward passes of 8 streams, quiet
        machine: mean 0.76 -> 0.52 ms, p90 1.17 -> 0.55 ms.)"""
        if self._outbox:
            with self._handoff_cond:
                self._handoff += self._outbox
                self._handoff_cond.notify()
            self._outbox = []

    def _hand_over(self) -> None:
        while True:
            with self._handoff_cond:
                while not self._handoff:
                    self._handoff_cond.wait()
                events, self._handoff = self._handoff, []
            by_loop: dict[asyncio.AbstractEventLoop, list] = {}
            for item in events:
                if item is None:
                    continue
                by_loop.setdefault(item[0].loop, []).append(item)
            for loop, items in by_loop.items():  # one wake-up per event loop
                try:
                    loop.call_soon_threadsafe(_deliver, items)
                except RuntimeError:  # the requests' event loop is gone
                    for gen, _ in items:
                        gen.cancelled = True
            if events[-1] is None:
                return

    def _finish(self, gen: Generation, reason: str, error: Exception | None = None) -> None:
        gen.done = True
        tail = gen.text.flush() if error is None else ""
        self._emit(gen, Finished(reason, len(gen.prompt), gen.cached, gen.completion, tail, error, gen.drafted,
                                 gen.accepted))
        with self._cond:
            if gen.slot is not None and self._slots[gen.slot] is gen:
                self._slots[gen.slot] = None
            self.requests_finished += 1
            self._mean_request_s = 0.8 * self._mean_request_s + 0.2 * (time.perf_counter() - gen.submitted)

    def _admit(self) -> None:
        """Waiting requests into free slots: each to the free slot whose cache shares the longest prefix
        with its prompt (else the first free one)."""
        while self._waiting and None in self._slots:
            gen = self._waiting.popleft()
            if gen.cancelled:
                self._emit(gen, Finished("cancelled", len(gen.prompt), 0, 0))
                continue
            free = [i for i, g in enumerate(self._slots) if g is None]
            gen.slot = max(free, key=lambda i: self.backend.reusable(i, gen.prompt))
            self._slots[gen.slot] = gen

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._stopping and not self._waiting and self.slots_busy == 0:
                    self._flush()
                while not self._stopping and not self._waiting and self.slots_busy == 0:
                    self._cond.wait()
                if self._stopping:
                    break
                self._admit()
                running = sorted((g for g in self._slots if g is not None), key=lambda g: g.submitted)
            for gen in running:
                if gen.cancelled:
                    self._finish(gen, "cancelled")
            running = [g for g in running if not g.done][: self.backend.max_active]
            try:
                self._step(running)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as error:  # an engine or network fault: every request of this step gets it
                for gen in running:
                    if not gen.done:
                        self._finish(gen, "error", error)
        for gen in [*self._waiting, *(g for g in self._slots if g is not None)]:
            self._finish(gen, "error", RuntimeError("the server is shutting down"))
        self._flush()

    def _step(self, running: list[Generation]) -> None:
        """Advance each decoding generation by one token (or, speculating, by the guesses the model keeps
        and one more), and the oldest prompt still being read by one chunk: the streams get a token
        between every two chunks, however many requests arrive."""
        decoding = [g for g in running if g.pending is not None]
        if decoding:
            guesses = [self._guesses(g) for g in decoding]
            rows = [(g.slot, g.pending) for g in decoding]
            self._flush()
            logits = self.backend.decode(rows, guesses) if any(guesses) else self.backend.decode(rows)
            row = 0
            for gen, drafts in zip(decoding, guesses):
                rows = logits[row:row + 1 + len(drafts)]
                row += len(rows)
                if drafts:
                    self._verify(gen, rows, drafts)
                else:
                    self._next_token(gen, rows[0])
        for gen in running:
            if gen.pending is not None or gen.done:
                continue
            if gen.prefilled == 0:  # start after what the cache holds (one token at least is computed)
                gen.prefilled = gen.cached = min(self.backend.reusable(gen.slot, gen.prompt), len(gen.prompt) - 1)
                with self._cond:
                    self.prompt_tokens += len(gen.prompt) - gen.cached
            end = min(len(gen.prompt), gen.prefilled + PREFILL_CHUNK)
            self._flush()
            logits = self.backend.extend(gen.slot, gen.prompt[:end])
            gen.prefilled = end
            if end == len(gen.prompt):
                self._next_token(gen, logits.reshape(-1))
            break
        if self.draft == "mtp":
            self._guess_with_mtp([g for g in running if g.pending is not None and not g.done])

    # -- speculative decoding (serve --draft) ------------------------------------------------------
    def _room(self, gen: Generation) -> int:
        """Guesses that may follow gen.pending: as many as max_tokens and the context leave room for."""
        position = len(gen.prompt) + gen.completion - 1  # of gen.pending
        return min(self.draft_tokens, gen.params.max_tokens - gen.completion - 1,
                   self.backend.context_length - 1 - position)

    def _guesses(self, gen: Generation) -> list[int]:
        if gen.drafter is not None:
            return gen.drafter.propose(self._room(gen)) if self._room(gen) > 0 else []
        return gen.guesses[:max(0, self._room(gen))]

    def _guess_with_mtp(self, decoding: list[Generation]) -> None:
        wanted = [(g.slot, g.pending, max(0, self._room(g)), g.sampler) for g in decoding]
        for gen, (guesses, distributions) in zip(decoding, self.backend.mtp_guesses(wanted) if wanted else []):
            gen.guesses, gen.guess_distributions = guesses, distributions

    def _verify(self, gen: Generation, rows: np.ndarray, drafts: list[int]) -> None:
        """Checks the guesses in turn (speculative sampling, through the request's penalties and grammar),
        then drops the refused ones from the slot."""
        start = len(gen.prompt) + gen.completion - 1  # position of the fed token
        distributions = gen.guess_distributions if gen.drafter is None else None
        gen.drafted += len(drafts)  # counted before any token: one may end the request (and report them)
        with self._cond:
            self.drafted_tokens += len(drafts)
        emitted = 0
        for j in range(len(drafts) + 1):
            draft = drafts[j] if j < len(drafts) else None
            kept = self._next_token(gen, rows[j], draft, distributions[j] if distributions else None)
            emitted += 1
            if not kept or gen.done:
                break
        self.backend.truncate(gen.slot, start + emitted)  # the fed token and the guesses kept before the last

    def _next_token(self, gen: Generation, logits: np.ndarray, draft: int | None = None,
                    draft_distribution=None) -> bool:
        """Chooses and hands out the next token (checking a guess, when given); whether it was the guess."""
        try:
            return self._choose(gen, logits, draft, draft_distribution)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as error:  # e.g. a grammar fault (llguidance's panics are BaseExceptions):
            self._finish(gen, "error", error)  # this request fails, the others go on
            return False

    def _choose(self, gen: Generation, logits: np.ndarray, draft: int | None = None, draft_distribution=None) -> bool:
        p = gen.params
        if p.grammar is not None and gen.constraint is None and (p.grammar_after is None or p.grammar_after in gen.generated_text):
            gen.constraint = JsonConstraint(self.tokenizer, logits.size, p.grammar)
        logits = gen.adjust.apply(logits)
        if gen.constraint is not None:
            logits = gen.constraint.mask(logits)
        token, kept = gen.sampler.verify(logits, draft, draft_distribution) if draft is not None else (
            gen.sampler.sample(logits), False)
        gen.accepted += kept
        now = time.perf_counter()
        if gen.first_token_at is None:
            gen.first_token_at = now
        with self._cond:
            self.accepted_tokens += kept
            self._recent.append((now, 1))
            while self._recent and now - self._recent[0][0] > 60:
                self._recent.popleft()
        if token in gen.eos:
            self._finish(gen, "stop")
            return kept
        gen.completion += 1
        with self._cond:
            self.tokens_generated += 1
        gen.adjust.accept(token)
        if gen.constraint is not None:
            gen.constraint.accept(token)
        if gen.drafter is not None:
            gen.drafter.extend([token])
        event = TokenEvent(token, gen.text.push(token))
        if p.top_logprobs is not None:
            event.logprob, event.top_logprobs = token_logprobs(logits, token, p.top_logprobs)
        if p.grammar_after is not None and gen.constraint is None:
            gen.generated_text += event.text
        self._emit(gen, event)
        position = len(gen.prompt) + gen.completion
        if gen.text.stopped or (gen.constraint is not None and gen.constraint.done):
            self._finish(gen, "stop")
        elif gen.completion >= p.max_tokens or position >= self.backend.context_length:
            self._finish(gen, "length")
        else:
            gen.pending = token
        return kept

