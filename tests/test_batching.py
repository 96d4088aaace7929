"""Many sequences per step: batched logits against each sequence run alone, for every architecture; the
scheduler's greedy outputs against one-at-a-time runs; requests joining, leaving, cancelled, sharing
prefixes; bad rows refused."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from batch_schedules import alone, make_sequences, max_error, run_batched
from hf_models import CONFIGS

from dllama_py import Engine


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_batched_logits_equal_each_sequence_alone(tiny_models, name, threads):
    path = tiny_models.converted(name, "f32")
    with Engine(path, threads=threads, max_sequences=3, max_seq_len=128) as eng:
        seqs = make_sequences(eng.config.vocab_size, seed=len(name))
        references = [alone(eng.model, s) for s in seqs]
        batched = run_batched(eng.model, seqs, seed=threads)
    assert len(batched) >= sum(map(len, seqs)) - 40  # most rows ran batched (the rest were copied prefixes)
    assert max_error(batched, references) <= 1e-4


def test_slots_hold_their_own_sequences_across_position_blocks(tiny_models):
    """Two sequences decoded in lockstep past several 16-position blocks, an f16 cache, a quantized model."""
    with Engine(tiny_models.converted("glm4_moe_lite", "q40"), threads=2, max_sequences=2, max_seq_len=128) as eng:
        seqs = make_sequences(eng.config.vocab_size, seed=3, n=2)
        seqs = [s + s[::-1] for s in seqs]  # up to 80 positions
        references = [alone(eng.model, s) for s in seqs]
        batched = run_batched(eng.model, seqs, seed=5)
    assert max_error(batched, references) <= 1e-4


@pytest.mark.parametrize("name", list(CONFIGS))
def test_greedy_generations_together_equal_one_at_a_time(tiny_models, name):
    path = tiny_models.converted(name, "q40")
    prompts = make_sequences(384, seed=11, n=6)
    with Engine(path, threads=2, max_sequences=4, max_seq_len=128) as eng:
        one_at_a_time = [list(eng.scheduler.submit(p, max_tokens=12)) for p in prompts]
        requests = [eng.scheduler.submit(p, max_tokens=12) for p in prompts]  # 6 requests, 4 slots
        eng.scheduler.run()
        together = [list(r) for r in requests]
    assert together == one_at_a_time
    assert all(len(t) == 12 for t in together)
    assert all(r.finish_reason == "length" for r in requests)


def test_requests_from_many_threads_share_steps(tiny_models):
    path = tiny_models.converted("qwen3", "f32")
    prompts = make_sequences(384, seed=12, n=5)
    with Engine(path, threads=1, max_sequences=5) as eng:
        expected = [list(eng.scheduler.submit(p, max_tokens=10)) for p in prompts]
        steps_before = eng.scheduler._steps
        results: dict[int, list[int]] = {}
        barrier = threading.Barrier(len(prompts))

        def consume(i):
            req = eng.scheduler.submit(prompts[i], max_tokens=10)
            barrier.wait()
            results[i] = list(req)

        threads = [threading.Thread(target=consume, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        steps = eng.scheduler._steps - steps_before
    assert [results[i] for i in range(len(prompts))] == expected
    # Alone each needs 10 steps (prefill, then 9 decode steps); sharing, far fewer than 5 x 10 in all.
    assert steps < 30


def test_cancel_frees_the_slot_for_a_waiting_request(tiny_models):
    with Engine(tiny_models.converted("llama", "f32"), threads=1, max_sequences=1) as eng:
        first = eng.scheduler.submit([1, 2, 3], max_tokens=100)
        second = eng.scheduler.submit([4, 5, 6], max_tokens=3)
        taken = [next(first), next(first)]
        first.cancel()
        assert first.finish_reason == "cancelled" and first.done
        assert len(list(second)) == 3 and second.finish_reason == "length"
        assert len(taken) == 2 and list(first) == []


def test_prompt_prefix_is_reused_from_another_slot(tiny_models):
    system = list(range(10, 40))
    with Engine(tiny_models.converted("glm4", "f32"), threads=1, max_sequences=3) as eng:
        alone_tokens = list(eng.scheduler.submit(system + [7, 8], max_tokens=5))
        eng.reset()
        a = eng.scheduler.submit(system + [1, 2], max_tokens=50)
        next(a)  # a's slot now holds the system prompt
        b = eng.scheduler.submit(system + [7, 8], max_tokens=5)
        assert list(b) == alone_tokens
        assert b.stats.cached_tokens == len(system)
        a.cancel()
        assert eng.scheduler.slot_tokens(b._slot.index)[:len(system) + 2] == system + [7, 8]
        # A finished sequence's slot keeps its tokens: the same prompt again reuses all but the last token.
        c = eng.scheduler.submit(system + [7, 8], max_tokens=5)
        assert list(c) == alone_tokens and c.stats.cached_tokens == len(system) + 1


def test_long_prompt_is_prefilled_between_decode_steps(tiny_models):
    with Engine(tiny_models.converted("llama", "f32"), threads=1, max_sequences=2, max_seq_len=512) as eng:
        decoding = eng.scheduler.submit([1, 2, 3], max_tokens=8)
        next(decoding)
        long_prompt = eng.scheduler.submit(list(range(300)), max_tokens=2)
        before = decoding.stats.generated_tokens
        next(decoding)
        # One step later the decoder has its next token while the 300-token prompt is still in chunks.
        assert decoding.stats.generated_tokens == before + 1
        assert long_prompt.stats.generated_tokens == 0
        assert len(list(decoding)) + before + 1 == 8
        assert len(list(long_prompt)) == 2


def test_bad_rows_are_refused(tiny_models):
    with Engine(tiny_models.converted("llama", "f32"), threads=1, max_sequences=2) as eng:
        m = eng.model
        one = np.ones(1, dtype=bool)
        with pytest.raises(IndexError, match="slot 2 is not a sequence slot"):
            m.step(np.array([5], np.int32), np.array([2], np.int32), np.array([0], np.int32), one)
        with pytest.raises(ValueError, match="slot 1 continues at position 0, not 3"):
            m.step(np.array([5], np.int32), np.array([1], np.int32), np.array([3], np.int32), one)
        with pytest.raises(ValueError, match="one entry per row"):
            m.step(np.array([5, 6], np.int32), np.array([1], np.int32), np.array([0], np.int32), one)
        with pytest.raises(ValueError, match="cannot copy 4"):
            m.copy_prefix(0, 1, 4)
        with pytest.raises(ValueError, match="outside the vocabulary"):
            eng.scheduler.submit([1, 384])
        with pytest.raises(ValueError, match="max_sequences is 0, expected 1\.\.1024"):
            Engine(tiny_models.converted("llama", "f32"), max_sequences=0)
        eng.forward([1, 2, 3])
        assert eng.position == 3 and m.length(1) == 0
        with pytest.raises(ValueError, match="can only be cut back"):
            eng.scheduler.truncate(0, 4)
        eng.scheduler.truncate(0, 2)
        assert eng.position == 2 and eng.scheduler.slot_tokens(0) == [1, 2]


def test_cache_memory_is_committed_as_positions_are_written(tiny_models):
    """64 slots of 512 positions reserve 64x one slot's cache; only the positions written take memory."""
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    path = tiny_models.converted("llama", "f32")
    before = rss()
    with Engine(path, threads=1, max_sequences=64, max_seq_len=512) as eng:
        loaded = rss()
        for slot in range(4):
            eng.model.forward(np.arange(100, dtype=np.int32), False, slot)
        used = rss()
        reserved = eng.kv_cache_bytes
        assert reserved == 64 * 512 * 2 * 2 * (2 * 32) * 4  # slots x positions x layers x (k, v) x kv values x f32
    assert loaded - before < reserved / 4
    assert used - loaded < reserved / 4


def test_a_failing_sampler_ends_only_its_request(tiny_models):
    class Broken:
        calls = 0

        def sample(self, logits):
            Broken.calls += 1
            if Broken.calls == 3:
                raise ArithmeticError("broken sampler")
            return int(np.argmax(logits))

    with Engine(tiny_models.converted("llama", "f32"), threads=1, max_sequences=2) as eng:
        broken = eng.scheduler.submit([1, 2, 3], Broken(), max_tokens=10)
        fine = eng.scheduler.submit([4, 5, 6], max_tokens=10)
        with pytest.raises(ArithmeticError, match="broken sampler"):
            list(broken)
        assert broken.finish_reason == "error"
        assert len(list(fine)) == 10 and fine.finish_reason == "length"
        assert eng.scheduler.active == 0


def test_slot_api_for_callers_with_their_own_loop(tiny_models):
    """reusable/extend/decode (the HTTP server's backend): the same logits as one sequence run alone."""
    seqs = make_sequences(384, seed=4, n=2)
    with Engine(tiny_models.converted("glm4", "f32"), threads=1, max_sequences=2) as eng:
        references = [alone(eng.model, s) for s in seqs]
        sched = eng.scheduler
        first = [sched.extend(slot, s[:-1]) for slot, s in enumerate(seqs)]
        assert all(np.abs(f[0] - r[len(s) - 2]).max() <= 1e-4 * r.std() for f, r, s in zip(first, references, seqs))
        last = sched.decode([(slot, s[-1]) for slot, s in enumerate(seqs)])
        assert all(np.abs(row - r[-1]).max() <= 1e-4 * r.std() for row, r in zip(last, references))
        assert sched.reusable(1, seqs[1] + [5]) == len(seqs[1])
        sched.extend(1, seqs[1][:3] + [9, 9])  # keeps the 3 shared tokens, computes the rest
        assert sched.slot_tokens(1) == seqs[1][:3] + [9, 9]
        held = sched.submit([1, 2, 3], max_tokens=5)
        next(held)
        with pytest.raises(RuntimeError, match="in use by a running generation"):
            sched.decode([(held._slot.index, 4)])
        held.cancel()


def test_nan_logits_end_the_request_and_empty_its_slot(tiny_models, tmp_path):
    import math
    import struct

    from dllama_py.architectures import read_layout
    from dllama_py.engine import NonFiniteLogitsError

    good = tiny_models.converted("llama", "f32")
    norm = next(t for t in read_layout(good).tensors if t.spec.name == "final_norm")
    data = bytearray(good.read_bytes())
    struct.pack_into("<f", data, norm.offset, math.nan)
    path = tmp_path / "nan.m"
    path.write_bytes(bytes(data))
    with Engine(path, threads=1, max_sequences=2) as eng:
        req = eng.scheduler.submit([1, 2, 3], max_tokens=4)
        with pytest.raises(NonFiniteLogitsError, match=r"nan\.m: the model produced NaN or infinite logits at position 2"):
            list(req)
        assert req.finish_reason == "error" and eng.scheduler.active == 0
        assert all(eng.model.length(s) == 0 and eng.scheduler.slot_tokens(s) == [] for s in range(2))
        with pytest.raises(NonFiniteLogitsError, match="at position 0"):
            eng.scheduler.decode([(0, 7), (1, 8)])
        assert eng.model.length(0) == 0 and eng.model.length(1) == 0
