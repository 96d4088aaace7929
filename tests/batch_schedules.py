"""Random batched schedules for the batching tests: sequences at different positions join and leave the
KV-cache slots between steps, some start from a prefix copied from another slot, and every row's logits
are compared with those of the same sequence run alone."""

from __future__ import annotations

import numpy as np


def make_sequences(vocab: int, seed: int, n: int = 7) -> list[list[int]]:
    """n token sequences of 3..40 tokens; every third one starts with a prefix of an earlier one."""
    rng = np.random.default_rng(seed)
    seqs = []
    for i in range(n):
        own = rng.integers(0, vocab, int(rng.integers(3, 41))).tolist()
        if i % 3 == 2:
            donor = seqs[int(rng.integers(0, i))]
            own = donor[:int(rng.integers(1, len(donor) + 1))] + own
        seqs.append(own)
    return seqs


def alone(model, seq: list[int]) -> np.ndarray:
    """Every position's logits of one sequence run alone in slot 0 (one prefill pass)."""
    model.truncate(0, 0)
    logits = model.forward(np.asarray(seq, dtype=np.int32), True, 0)
    model.truncate(0, 0)
    return logits


def run_batched(model, seqs: list[list[int]], seed: int) -> dict[tuple[int, int], np.ndarray]:
    """Runs the sequences through model.step in a random schedule over all of the model's slots; returns
    each (sequence, position)'s logits. A sequence joins when a slot is free, starting from the longest
    prefix it shares with a sequence already in a slot (copied with copy_prefix), advances 1-9 rows per
    step, its rows interleaved with the other slots', and leaves when it is done."""
    rng = np.random.default_rng(seed)
    n_slots = model.n_slots
    in_slot: list[tuple[int, int] | None] = [None] * n_slots  # (sequence, positions done)
    waiting = list(range(len(seqs)))
    out: dict[tuple[int, int], np.ndarray] = {}
    while waiting or any(in_slot):
        for slot in range(n_slots):
            if in_slot[slot] is None and waiting:
                i = waiting.pop(0)
                start, source = 0, slot
                for other, held in enumerate(in_slot):
                    if held is None:
                        continue
                    j, done = held
                    shared = 0
                    while shared < min(done, len(seqs[i]) - 1) and seqs[j][shared] == seqs[i][shared]:
                        shared += 1
                    if shared > start:
                        start, source = shared, other
                if start:
                    model.copy_prefix(source, slot, start)
                else:
                    model.truncate(slot, 0)
                in_slot[slot] = (i, start)
        # Each slot's next rows, merged in a random order that keeps each slot's rows in order.
        queues = []
        for slot, held in enumerate(in_slot):
            if held is None:
                continue
            i, done = held
            k = min(int(rng.choice([1, 1, 1, 2, 5, 9])), len(seqs[i]) - done)
            queues.append([(slot, i, done + t) for t in range(k)])
            in_slot[slot] = (i, done + k)
        rows = []
        while queues:
            q = queues[int(rng.integers(0, len(queues)))]
            rows.append(q.pop(0))
            queues = [q for q in queues if q]
        tokens = np.array([seqs[i][pos] for _, i, pos in rows], dtype=np.int32)
        slots = np.array([slot for slot, _, _ in rows], dtype=np.int32)
        positions = np.array([pos for _, _, pos in rows], dtype=np.int32)
        logits = model.step(tokens, slots, positions, np.ones(len(rows), dtype=bool))
        for (_, i, pos), row in zip(rows, logits):
            out[i, pos] = row
        for slot, held in enumerate(in_slot):
            if held is not None and held[1] == len(seqs[held[0]]):
                in_slot[slot] = None  # leaves; its cache stays until another sequence takes the slot
    return out


def max_error(batched: dict[tuple[int, int], np.ndarray], references: list[np.ndarray]) -> float:
    """The largest |batched - alone| over every row, relative to the std of the references."""
    std = float(np.concatenate(references).std())
    return max(float(np.abs(row - references[i][pos]).max()) for (i, pos), row in batched.items()) / std
