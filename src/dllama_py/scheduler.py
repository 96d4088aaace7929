"""Many generations at once over one model: continuous batching.

Each forward step runs one row per decoding request (its last sampled token) plus chunks of waiting
prompts, so every weight matrix is read once per step for all of them. Requests join and leave
between steps; a long prompt is prefilled a chunk per step, between the others' decode steps.

    sched = engine.scheduler                    # or Scheduler(engine.model)
    req = sched.submit(prompt_ids, Sampler(temperature=0), max_tokens=64, stop_tokens=tokenizer.eos_token_ids)
    for token_id in req:                        # blocks until the next token; thread-safe
        ...
    req.cancel()                                # from any thread; the slot is free at the next step

Whoever waits for a token drives the steps: the first waiting thread runs a step for everyone while
the others wait for its result, so no background thread is needed and a single caller runs at the
speed of a plain loop. Each finished sequence's tokens stay in its KV-cache slot; a new request takes
the free slot sharing the longest prefix with its prompt, or copies that prefix from another slot, so
a shared system prompt or the previous turn of a conversation is computed once.

A request may decode speculatively (draft="ngram" or "mtp", see speculative.py): its step rows are the
fed token and up to draft_tokens guesses of the next ones, all with logits; the guesses the model agrees
with are kept (the KV cache drops the rest), so one step can give several tokens.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from .sampling import Sampler
from .speculative import NgramDrafter, check_draft, is_drafter, verified_tokens

ROWS_PER_STEP = 64  # the C++ core's matrix-matrix chunk: prompt rows beyond the decode rows fill it


class NonFiniteLogitsError(RuntimeError):
    """The model produced NaN or infinite logits: corrupt weights or header values, not a prompt problem."""


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens reused from the KV cache
    generated_tokens: int = 0
    prefill_seconds: float = 0.0  # from the first step the request took part in to its first token
    decode_seconds: float = 0.0  # from its first token to its last
    finish_reason: str = ""  # "stop", "length", "context", "cancelled" or "error"
    draft: str = ""  # how it guessed ahead: "ngram", "mtp", "custom" or "" (it did not)
    decode_steps: int = 0  # forward steps that gave tokens after the first
    drafted_tokens: int = 0  # speculative guesses the model checked
    accepted_tokens: int = 0  # guesses it kept

    @property
    def decode_tokens_per_second(self) -> float:
        """Tokens after the first, per second of decoding."""
        return (self.generated_tokens - 1) / self.decode_seconds if self.decode_seconds else 0.0

    @property
    def acceptance_rate(self) -> float:
        """Share of the speculative guesses the model kept."""
        return self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else 0.0

    @property
    def tokens_per_step(self) -> float:
        """Tokens after the first per decode step: 1 without speculation, up to draft_tokens + 1 with it."""
        return (self.generated_tokens - 1) / self.decode_steps if self.decode_steps else 0.0

    def completion_tokens_details(self) -> dict:
        """The guesses in OpenAI's usage fields (those of its predicted outputs); {} without speculation."""
        if not self.drafted_tokens:
            return {}
        return {"accepted_prediction_tokens": self.accepted_tokens,
                "rejected_prediction_tokens": self.drafted_tokens - self.accepted_tokens}


@dataclass
class StepInfo:
    """What the last step ran: its rows, how many of them were prompt rows, its wall time."""

    rows: int = 0
    prompt_rows: int = 0
    seconds: float = 0.0


class Request:
    """One generation. Iterating it yields its token ids as they are sampled (stop tokens excluded);
    `stats` and `finish_reason` say how it went. Made by Scheduler.submit."""

    def __init__(self, scheduler: "Scheduler", prompt: list[int], sampler: Sampler, max_tokens: int,
                 stop_tokens: frozenset[int], draft: str | None = None, draft_tokens: int = 4):
        self.prompt = prompt
        self.sampler = sampler
        self.max_tokens = max_tokens
        self.stop_tokens = stop_tokens
        self.draft = draft
        self.draft_tokens = draft_tokens
        self.stats = GenerationStats(prompt_tokens=len(prompt),
                                     draft=draft if isinstance(draft, str) else "custom" if draft is not None else "")
        self._scheduler = scheduler
        self._out: deque[int] = deque()  # sampled, not yet taken by the consumer
        self._done = False
        self._error: BaseException | None = None
        self._slot: _Slot | None = None
        self._fed = 0  # prompt tokens in the slot
        self._next: int | None = None  # the last sampled token, to be fed by the next step
        self._started = 0.0
        self._first_token = 0.0
        self._drafter = NgramDrafter() if draft == "ngram" else draft if is_drafter(draft) else None
        if self._drafter is not None:
            self._drafter.extend(prompt)
        self._mtp_drafts: list[int] = []  # the MTP layer's guesses after _next
        self._mtp_distributions: list | None = None  # what each was drawn from (None: greedy)

    @property
    def finish_reason(self) -> str:
        return self.stats.finish_reason

    @property
    def done(self) -> bool:
        return self._done

    def __iter__(self) -> "Request":
        return self

    def __next__(self) -> int:
        return self._scheduler._next_token(self)

    def cancel(self):
        """Stops the generation (tokens already sampled can still be taken); harmless once it is done."""
        self._scheduler._cancel(self)


@dataclass
class _Slot:
    index: int
    tokens: list[int] = field(default_factory=list)  # what the KV cache holds for this slot, in order
    request: Request | None = None
    last_used: int = 0


@dataclass
class _Chain:
    """A slot guessing with the MTP layer: the logits of its next guess, and the hidden state and MTP
    position a further guess continues from."""

    index: int  # in the list of wanted guesses
    slot: int
    k: int
    sampler: Sampler
    position: int
    logits: np.ndarray | None = None
    hidden: np.ndarray | None = None

    def guess(self, result: tuple[list[int], list | None]):
        """One guess into result (guesses, distributions): the argmax when greedy, else drawn as the
        request samples (the verification then weighs it by the distribution it came from)."""
        guesses, distributions = result
        if self.sampler.temperature == 0:
            guesses.append(int(np.argmax(self.logits)))
            return
        ids, probs = self.sampler.distribution(self.logits)
        guesses.append(self.sampler.draw(ids, probs))
        distributions.append((ids, probs))


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n


class Scheduler:
    """Runs the requests submitted to it in shared forward steps over the model's KV-cache slots
    (`max_sequences` of the Engine). Thread-safe."""

    def __init__(self, model, rows_per_step: int = ROWS_PER_STEP, name: str = "the model"):
        """name: how errors name the model (its file)."""
        self._model = model
        self._name = name
        self._vocab = model.config.vocab_size
        self._seq_len = model.config.seq_len
        self._rows_per_step = rows_per_step
        self._slots = [_Slot(i) for i in range(model.n_slots)]
        self._waiting: deque[Request] = deque()
        self._running: list[Request] = []  # in slots, in the order they were admitted
        self._cv = threading.Condition()
        self._stepping = False
        self._steps = 0
        # slot -> (position, rows): final hidden states of the slot's latest positions that the MTP layer
        # has not taken yet (kept only when the model has an MTP layer)
        self._hidden: dict[int, tuple[int, np.ndarray]] = {}
        self.last_step = StepInfo()

    # -- the public API ----------------------------------------------------------------------------
    def submit(self, prompt: Iterable[int], sampler: Sampler | None = None, max_tokens: int = 256,
               stop_tokens: Iterable[int] = (), draft: str | None = None, draft_tokens: int = 4) -> Request:
        """Queues a generation of up to max_tokens tokens after the prompt (token ids); it stops early at
        any of stop_tokens (not yielded) or when its sequence fills the context. Greedy by default.
        draft: "ngram" (prompt lookup), "mtp" (the model's multi-token-prediction layer) or a drafter object
        (speculative.is_drafter) to decode speculatively, checking up to draft_tokens guesses per step."""
        ids = [int(t) for t in prompt]
        if not ids:
            raise ValueError("the prompt is empty")
        if len(ids) > self._seq_len:
            raise ValueError(f"the prompt has {len(ids)} tokens but the context holds {self._seq_len} "
                             "(raise max_seq_len)")
        bad = [t for t in ids if not 0 <= t < self._vocab]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary (0..{self._vocab - 1})")
        if max_tokens < 0:
            raise ValueError("max_tokens must be >= 0")
        check_draft(draft, draft_tokens)
        if draft == "mtp" and not self._model.has_mtp:
            raise ValueError("draft='mtp' needs the model's multi-token-prediction layer: load the engine with "
                             "draft='mtp' (CLI: --draft mtp)")
        sampler = sampler or Sampler(temperature=0)
        if draft is not None and not hasattr(sampler, "verify"):
            raise ValueError("speculative decoding needs a sampler with verify() (a dllama_py Sampler)")
        req = Request(self, ids, sampler, max_tokens, frozenset(int(t) for t in stop_tokens), draft, draft_tokens)
        with self._cv:
            if max_tokens == 0:
                self._finish(req, "length")
            else:
                self._waiting.append(req)
            self._cv.notify_all()
        return req

    def step(self) -> bool:
        """Runs one step if there is work (and no other thread is running one); False if there was none."""
        with self._cv:
            while self._stepping:
                self._cv.wait()
            if not (self._waiting or self._running):
                return False
            self._stepping = True
        self._run_step()
        return True

    def run(self):
        """Runs steps until every submitted request is done."""
        while self.step():
            pass

    @property
    def active(self) -> int:
        """Requests waiting or running."""
        with self._cv:
            return len(self._waiting) + len(self._running)

    def forward(self, ids: list[int], all_logits: bool, slot: int = 0) -> np.ndarray:
        """The raw model on one slot (Engine.forward): logits for tokens appended to its sequence."""
        with self._holding([slot]):
            start = len(self._slots[slot].tokens)
            if self._model.has_mtp:  # keep the hidden states for the MTP layer (mtp_guesses)
                n = len(ids)
                slots, positions = np.full(n, slot, dtype=np.int32), np.arange(start, start + n, dtype=np.int32)
                wants = np.arange(n) == n - 1 if not all_logits else np.ones(n, dtype=bool)
                logits, hidden = self._model.step(np.asarray(ids, dtype=np.int32), slots, positions, wants, hidden=True)
                self._keep_hidden(slots, positions, hidden)
            else:
                logits = self._model.forward(np.asarray(ids, dtype=np.int32), all_logits, slot)
            if not np.isfinite(logits).all():  # cheap next to the forward step (one row when decoding)
                self._model.truncate(slot, start)  # the failed step is not kept in the cache
                raise self._non_finite(start + len(ids) - 1)
            self._slots[slot].tokens.extend(ids)
            return logits

    def truncate(self, slot: int, n: int = 0):
        """Keeps only the first n tokens of a slot's sequence (not of one a running generation holds)."""
        with self._holding([slot]):
            self._model.truncate(slot, n)
            del self._slots[slot].tokens[n:]

    def reset(self, slot: int = 0):
        """Empties a slot's sequence."""
        self.truncate(slot, 0)

    def slot_tokens(self, slot: int) -> list[int]:
        """The tokens whose keys and values slot's KV cache holds, in order."""
        with self._cv:
            return list(self._slots[slot].tokens)

    # -- the slots one by one, for a caller that runs its own loop (the HTTP server) ------------------
    @property
    def max_active(self) -> int:
        """Sequences that advance together in one step: the KV cache's slots."""
        return len(self._slots)

    @property
    def context_length(self) -> int:
        return self._seq_len

    @property
    def vocab_size(self) -> int:
        return self._vocab

    def reusable(self, slot: int, ids: list[int]) -> int:
        """How many leading tokens of `ids` the slot's cache already holds."""
        with self._cv:
            return _common_prefix(self._slots[slot].tokens, ids)

    def extend(self, slot: int, ids: list[int]) -> np.ndarray:
        """Makes the slot's sequence `ids`, computing only what its cache does not hold (the last token at
        least); the logits after the last token (1, vocab)."""
        shared = self.reusable(slot, ids)
        keep = min(shared, len(ids) - 1)
        if self._model.has_mtp:  # MTP position keep-1 took the token at keep, which ids may not share
            keep = max(0, min(keep, self._model.mtp_length(slot), shared - 1))
        self.truncate(slot, keep)
        return self.forward(ids[keep:], all_logits=False, slot=slot)

    def decode(self, rows: list[tuple[int, int]], drafts: list[list[int]] | None = None) -> np.ndarray:
        """One token appended to each (slot, token) row's sequence, all in one step; logits (rows, vocab).
        With drafts (a list per row, speculative decoding), each row's guesses follow it in the step and
        get logits too: (rows + guesses, vocab), each row's then its guesses'; the caller then cuts each
        slot back (truncate) to what it keeps."""
        with self._holding([slot for slot, _ in rows]):
            drafts = drafts or [[] for _ in rows]
            sequences = [(slot, [token] + list(guesses)) for (slot, token), guesses in zip(rows, drafts)]
            tokens = np.asarray([t for _, seq in sequences for t in seq], dtype=np.int32)
            slots = np.asarray([s for s, seq in sequences for _ in seq], dtype=np.int32)
            positions = np.asarray([len(self._slots[s].tokens) + i for s, seq in sequences for i in range(len(seq))],
                                   dtype=np.int32)
            logits = self._model.step(tokens, slots, positions, np.ones(len(tokens), dtype=bool),
                                      hidden=self._model.has_mtp)
            if self._model.has_mtp:
                logits, hidden = logits
                self._keep_hidden(slots, positions, hidden)
            if not np.isfinite(logits).all():
                for slot, _ in sequences:
                    self._model.truncate(slot, len(self._slots[slot].tokens))  # the failed step is not kept
                raise self._non_finite(int(positions[~np.isfinite(logits).all(axis=1)][0]))
            for slot, seq in sequences:
                self._slots[slot].tokens.extend(seq)
            return logits

    @contextmanager
    def _holding(self, slots: list[int]):
        """Runs the body as the only step, on slots that no running generation holds."""
        with self._cv:
            while self._stepping:
                self._cv.wait()
            busy = [s for s in slots if self._slots[s].request is not None]
            if busy:
                raise RuntimeError(f"sequence slot {busy[0]} is in use by a running generation")
            self._stepping = True
        try:
            yield
        finally:
            self._end_step()

    # -- driving the steps ---------------------------------------------------------------------------
    def _next_token(self, req: Request) -> int:
        while True:
            with self._cv:
                if req._out:
                    return req._out.popleft()
                if req._error is not None:
                    raise req._error
                if req._done:
                    raise StopIteration
                if self._stepping:
                    self._cv.wait()
                    continue
                self._stepping = True
            self._run_step()

    def _cancel(self, req: Request):
        with self._cv:
            if not req._done:
                self._finish(req, "cancelled")
            self._cv.notify_all()

    def _end_step(self):
        with self._cv:
            self._stepping = False
            self._cv.notify_all()

    def _run_step(self):
        """One step; the caller has set _stepping."""
        try:
            with self._cv:
                self._admit()
                plan = self._plan()
            if plan is None:
                return
            tokens, slots, positions, wants, owners, n_decode = plan
            mtp = any(r.draft == "mtp" for r in self._running)
            t0 = time.perf_counter()
            try:
                logits = self._model.step(tokens, slots, positions, wants, hidden=mtp)
                if mtp:
                    logits, hidden = logits
                    self._keep_hidden(slots, positions, hidden)
            except BaseException as e:
                with self._cv:
                    self._fail_running(e)
                raise
            with self._cv:
                self.last_step = StepInfo(len(tokens), len(tokens) - n_decode, time.perf_counter() - t0)
                self._apply(tokens, slots, owners, logits)
                wanted = self._mtp_wanted() if mtp else []
            if wanted:
                try:
                    guesses = self._mtp_guesses([w[1:] for w in wanted])
                except BaseException as e:
                    with self._cv:
                        self._fail_running(e)
                    raise
                for (req, *_), (drafts, distributions) in zip(wanted, guesses):
                    req._mtp_drafts, req._mtp_distributions = drafts, distributions
        finally:
            self._end_step()

    def _admit(self):
        """Gives waiting requests free slots, reusing the longest cached prefix of their prompts."""
        while self._waiting:
            free = [s for s in self._slots if s.request is None]
            if not free:
                return
            req = self._waiting.popleft()
            reusable = req.prompt[:-1]  # the last prompt token always runs: its logits give the first token
            shared = {s.index: _common_prefix(s.tokens, reusable) for s in self._slots}
            # The free slot sharing the most, else the one unused the longest (keeping recent histories).
            slot = max(free, key=lambda s: (shared[s.index], -s.last_used))
            source = max(self._slots, key=lambda s: shared[s.index])
            n = shared[slot.index]
            if shared[source.index] > n:
                n = shared[source.index]
                self._model.copy_prefix(source.index, slot.index, n)
                slot.tokens = source.tokens[:n]
            else:
                self._model.truncate(slot.index, n)
                del slot.tokens[n:]
            # MTP position n-1 took the token after the shared prefix, which this prompt may not share.
            mtp = min(self._model.mtp_length(slot.index), max(n - 1, 0))
            self._model.truncate_mtp(slot.index, mtp)
            if req.draft == "mtp" and mtp < n:  # its MTP layer catches up from the hidden states of the prompt
                n = mtp
                self._model.truncate(slot.index, n)
                del slot.tokens[n:]
            slot.request = req
            req._slot = slot
            req._fed = n
            req.stats.cached_tokens = n
            req._started = time.perf_counter()
            self._running.append(req)

    def _plan(self):
        """The rows of the next step: every decoding request's last token (and its drafts), then prompt
        chunks. owners: (request, its drafts, position of its first row) for each request whose rows give
        logits, in row order."""
        tokens, slots, positions, wants, owners = [], [], [], [], []
        for req in self._running:
            if req._next is not None:
                start = len(req._slot.tokens)
                drafts = self._drafts(req, start)
                tokens += [req._next] + drafts
                slots += [req._slot.index] * (1 + len(drafts))
                positions += range(start, start + 1 + len(drafts))
                wants += [True] * (1 + len(drafts))
                owners.append((req, drafts, start))
        n_decode = len(tokens)
        # Prompts fill the rest of the chunk (and always make some progress, however many decode).
        budget = max(self._rows_per_step - len(tokens), self._rows_per_step // 4)
        for req in self._running:
            if budget <= 0:
                break
            left = len(req.prompt) - req._fed
            if left == 0:
                continue
            k = min(left, budget)
            start = len(req._slot.tokens)
            tokens += req.prompt[req._fed:req._fed + k]
            slots += [req._slot.index] * k
            positions += range(start, start + k)
            wants += [False] * (k - 1) + [k == left]
            if k == left:
                owners.append((req, [], start + k - 1))
            budget -= k
        if not tokens:
            return None
        return (np.asarray(tokens, dtype=np.int32), np.asarray(slots, dtype=np.int32),
                np.asarray(positions, dtype=np.int32), np.asarray(wants, dtype=bool), owners, n_decode)

    def _room(self, req: Request, start: int) -> int:
        """How many guesses may follow the request's next token at position `start`: its draft_tokens, as
        far as the context and max_tokens leave room."""
        return min(req.draft_tokens, self._seq_len - 1 - start, req.max_tokens - req.stats.generated_tokens - 1)

    def _drafts(self, req: Request, start: int) -> list[int]:
        room = self._room(req, start)
        if room <= 0:
            return []
        if req.draft == "mtp":
            return req._mtp_drafts[:room]
        return req._drafter.propose(room) if req._drafter is not None else []

    # -- drafting with the MTP layer ------------------------------------------------------------------
    # The MTP layer's position i takes token i+1 with the main layers' final hidden state at i, so it
    # follows its slot's sequence one token behind: steps keep their rows' hidden states (_keep_hidden)
    # until it takes them. Its last position (the slot's last token, with the token after it) gives the
    # first guess, and each further guess feeds the previous one back with the layer's own output. Those
    # positions are dropped again (truncate_mtp) once the guesses are made: the tokens are not known yet.

    def mtp_guesses(self, wanted: list[tuple[int, int, int, Sampler]]) -> list[tuple[list[int], list | None]]:
        """For slots whose generations a caller runs itself (Scheduler.decode, the HTTP server): for each
        (slot, the token that follows the slot's sequence, k, sampler), k guesses of the tokens after it
        from the MTP layer, with the distributions they were drawn from when the sampler samples (None when
        greedy). A slot whose hidden states were not kept since its MTP positions end gets no guesses."""
        with self._holding([slot for slot, *_ in wanted]):
            return self._mtp_guesses(wanted)

    def _keep_hidden(self, slots: np.ndarray, positions: np.ndarray, hidden: np.ndarray):
        for slot in np.unique(slots).tolist():
            rows = np.flatnonzero(slots == slot)
            start = int(positions[rows[0]])
            held = self._hidden.get(slot)
            if held is not None and held[0] <= start <= held[0] + len(held[1]):  # continues (or rewrites) them
                self._hidden[slot] = (held[0], np.concatenate([held[1][:start - held[0]], hidden[rows]]))
            else:
                self._hidden[slot] = (start, hidden[rows])

    def _mtp_wanted(self) -> list[tuple]:
        """(request, slot, following token, guesses wanted, sampler) for the running MTP requests; the
        hidden states of the other slots are dropped."""
        wanted = []
        for req in self._running:
            slot = req._slot
            if req.draft != "mtp" or req._done:
                self._hidden.pop(slot.index, None)
                continue
            length = len(slot.tokens)
            following = req._next if req._next is not None else req.prompt[length] if length < len(req.prompt) else None
            if following is not None:
                room = self._room(req, length) if req._next is not None else 0
                wanted.append((req, slot.index, following, room, req.sampler))
        return wanted

    def _mtp_guesses(self, wanted):
        """mtp_guesses with the step lock held: one MTP call over every slot's new positions, then one per
        further guess."""
        results: list[tuple[list[int], list | None]] = [([], [] if w[3].temperature else None) for w in wanted]
        tokens, slots, positions, wants, hidden, chains = [], [], [], [], [], []
        for i, (slot, following, k, sampler) in enumerate(wanted):
            held = self._hidden.pop(slot, None)
            history = self._slots[slot].tokens
            length = len(history)
            first = min(self._model.mtp_length(slot), length - 1 if k > 0 else length)
            if held is None or not held[0] <= first or held[0] + len(held[1]) < length or first == length:
                continue  # nothing new, or the layer cannot catch up: no guesses
            self._model.truncate_mtp(slot, first)
            tokens += history[first + 1:] + [following]
            slots += [slot] * (length - first)
            positions += range(first, length)
            wants += [False] * (length - first - 1) + [k > 0]
            hidden.append(held[1][first - held[0]:length - held[0]])
            if k > 0:
                chains.append(_Chain(i, slot, k, sampler, length))
        if not tokens:
            return results
        logits, out = self._model.mtp_step(tokens, np.concatenate(hidden), slots, positions, wants)
        last_rows = np.flatnonzero(wants)
        for chain, row, last in zip(chains, logits, last_rows):
            chain.logits, chain.hidden = row, out[last]
        while chains:
            for c in chains:
                c.guess(results[c.index])
            chains = [c for c in chains if len(results[c.index][0]) < c.k]
            if not chains:
                break
            logits, out = self._model.mtp_step([results[c.index][0][-1] for c in chains], np.stack([c.hidden for c in chains]),
                                               [c.slot for c in chains], [c.position for c in chains],
                                               [True] * len(chains))
            for c, row, h in zip(chains, logits, out):
                c.logits, c.hidden, c.position = row, h, c.position + 1
        for slot, _, _, _ in wanted:
            self._model.truncate_mtp(slot, min(self._model.mtp_length(slot), len(self._slots[slot].tokens)))
        return results

    def _apply(self, tokens, slots, owners, logits: np.ndarray):
        """Records what the step put into the cache, then samples each request's next token (or checks
        its drafts, dropping from the cache the ones refused)."""
        for token, slot in zip(tokens.tolist(), slots.tolist()):
            self._slots[slot].tokens.append(token)
        for req in self._running:
            req._fed = min(len(req.prompt), len(req._slot.tokens))  # prompt tokens in the cache
            req._next = None  # fed by this step
            req._mtp_drafts = []
        now = time.perf_counter()
        self._steps += 1
        row = 0
        for req, drafts, start in owners:
            rows = logits[row:row + 1 + len(drafts)]
            row += len(rows)
            if req._done:  # cancelled while the step ran
                continue
            if not np.isfinite(rows).all():
                req._error = self._non_finite(start)
                self._finish(req, "error")
                self._model.truncate(req._slot.index, 0)  # what it computed may hold NaN too
                req._slot.tokens.clear()
                continue
            if req.stats.generated_tokens:
                req.stats.decode_steps += 1
            try:
                if drafts:
                    self._verify(req, rows, drafts, start, now)
                else:
                    self._emit(req, req.sampler.sample(rows[0]), now, start + 1)
            except Exception as e:  # e.g. a caller's own sampler: this request fails, the others go on
                req._error = e
                self._finish(req, "error")
        self._release_finished()
        self._cv.notify_all()

    def _verify(self, req: Request, rows: np.ndarray, drafts: list[int], start: int, now: float):
        """Emits the tokens a verification step gives, then cuts the slot back to the fed token and the
        drafts kept before the last emitted token (which is fed next)."""
        emitted = accepted = 0
        distributions = req._mtp_distributions[:len(drafts)] if req._mtp_distributions else None
        for token, kept in verified_tokens(req.sampler, rows, drafts, distributions):
            emitted += 1
            accepted += kept
            if not self._emit(req, token, now, start + emitted):
                break
        req.stats.drafted_tokens += len(drafts)
        req.stats.accepted_tokens += accepted
        slot = req._slot
        keep = start + emitted
        if keep < len(slot.tokens):
            self._model.truncate(slot.index, keep)
            del slot.tokens[keep:]

    def _emit(self, req: Request, token: int, now: float, cached: int) -> bool:
        """Hands a sampled token to the request, `cached` positions being in its slot before it; False
        when that ends the request."""
        if req.stats.generated_tokens == 0:
            req._first_token = now
            req.stats.prefill_seconds = now - req._started
        if token in req.stop_tokens:
            self._finish(req, "stop")
            return False
        req.stats.decode_seconds = now - req._first_token
        req._out.append(token)
        req.stats.generated_tokens += 1
        if req._drafter is not None:
            req._drafter.extend([token])
        if cached >= self._seq_len:
            self._finish(req, "context")  # no room to feed it back
        elif req.stats.generated_tokens >= req.max_tokens:
            self._finish(req, "length")
        else:
            req._next = token
            return True
        return False

    def _non_finite(self, position: int) -> NonFiniteLogitsError:
        return NonFiniteLogitsError(f"{self._name}: the model produced NaN or infinite logits at position {position}; "
                                    "its weights or header values are corrupt")

    def _finish(self, req: Request, reason: str):
        req.stats.finish_reason = reason
        req._done = True
        req._next = None
        if req in self._waiting:
            self._waiting.remove(req)
        if not self._stepping:
            self._release_finished()

    def _release_finished(self):
        for req in [r for r in self._running if r._done]:
            self._running.remove(req)
            req._slot.request = None
            req._slot.last_used = self._steps

    def _fail_running(self, error: BaseException):
        """A failed step leaves the running sequences' caches unknown: end them with the error."""
        for req in self._running:
            req._error = error
            req._done = True
            req._slot.request = None
            req._slot.tokens.clear()
            self._model_truncate_quietly(req._slot.index)
        self._running.clear()

    def _model_truncate_quietly(self, slot: int):
        try:
            self._model.truncate(slot, 0)
        except RuntimeError:
            pass
