"""Speculative decoding: greedy output is the plain greedy output token for token on every tiny
architecture (prompt lookup, and replayed drafts with planted mistakes so that every acceptance length
and the KV-cache rollback are exercised, several requests at once); with sampling, the speculative-
sampling rule leaves the distribution of whole sequences unchanged (tested on a tiny vocabulary)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hf_models import CONFIGS

from dllama_py import Engine
from dllama_py.sampling import Sampler
from dllama_py.speculative import NgramDrafter, verified_tokens


class ReplayDrafter:
    """Guesses from a known continuation (a previous greedy run), with a wrong token planted at every
    `wrong_every`-th position, so that verification keeps 0..k guesses at different steps."""

    def __init__(self, prompt_len: int, continuation: list[int], wrong_every: int = 0, vocab: int = 384):
        self.prompt_len, self.continuation = prompt_len, continuation
        self.wrong_every, self.vocab = wrong_every, vocab
        self.seen = 0

    def extend(self, tokens):
        self.seen += len(tokens)

    def propose(self, k: int) -> list[int]:
        start = self.seen - self.prompt_len  # tokens of the continuation already produced
        guesses = list(self.continuation[start:start + k])
        for i in range(len(guesses)):
            if self.wrong_every and (start + i) % self.wrong_every == self.wrong_every - 1:
                guesses[i] = (guesses[i] + 1) % self.vocab
        return guesses


def test_ngram_drafter_follows_the_latest_longest_match():
    d = NgramDrafter(max_ngram=3, min_ngram=1)
    d.extend([5, 6, 7, 8, 9, 1, 6, 7, 2, 3])
    assert d.propose(4) == []  # 3 never occurred before its last position
    d.extend([6, 7])  # "6 7" occurred twice: the latest is followed by 2, 3
    assert d.propose(3) == [2, 3, 6]
    d.extend([8])  # "6 7 8" as a 3-gram beats the 2-gram "7 8" and the 1-gram "8"
    assert d.propose(2) == [9, 1]
    d.extend([4])
    assert d.propose(2) == []


def plain_greedy(eng: Engine, prompt: list[int], n: int) -> list[int]:
    return list(eng.scheduler.submit(prompt, max_tokens=n))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_greedy_speculation_gives_the_plain_greedy_tokens(tiny_models, name):
    """Every architecture (GQA, sandwich norms, MoE, latent attention): prompt lookup and replayed drafts
    with planted mistakes, alone and three requests at once sharing steps."""
    path = tiny_models.converted(name, "f32")
    rng = np.random.default_rng(len(name))
    # Prompts that repeat a phrase, so that prompt lookup finds matches.
    phrase = rng.integers(0, 384, 12).tolist()
    prompts = [phrase + rng.integers(0, 384, 5).tolist() + phrase[:4] for _ in range(3)]
    n = 40
    with Engine(path, threads=2, max_sequences=3, max_seq_len=128) as eng:
        expected = [plain_greedy(eng, p, n) for p in prompts]
        sched = eng.scheduler
        ngram = [sched.submit(p, max_tokens=n, draft="ngram", draft_tokens=4) for p in prompts]
        assert [list(r) for r in ngram] == expected
        replays = [sched.submit(p, max_tokens=n, draft=ReplayDrafter(len(p), e, wrong_every=w), draft_tokens=k)
                   for p, e, w, k in zip(prompts, expected, (0, 3, 5), (1, 4, 7))]
        assert [list(r) for r in replays] == expected
        # The planted mistakes refuse some guesses and the rest are kept: each run checks many.
        perfect, mixed, sparse = (r.stats for r in replays)
        assert perfect.accepted_tokens == perfect.drafted_tokens > 0
        assert 0 < mixed.accepted_tokens < mixed.drafted_tokens
        assert 0 < sparse.accepted_tokens < sparse.drafted_tokens
        assert mixed.tokens_per_step > 1.5 and perfect.tokens_per_step == pytest.approx((n - 1) / 20, abs=0.05)
        # Alone, with a stop token inside a run of kept guesses: the same prefix, cut there.
        stop = expected[0][9]
        cut = expected[0][:expected[0].index(stop)]
        req = sched.submit(prompts[0], max_tokens=n, stop_tokens=[stop], draft=ReplayDrafter(len(prompts[0]), expected[0]),
                           draft_tokens=6)
        assert list(req) == cut and req.finish_reason == "stop"


def test_drafts_stop_at_max_tokens_and_the_context(tiny_models):
    path = tiny_models.converted("llama", "f32")
    prompt = list(range(10, 30))
    with Engine(path, threads=1, max_seq_len=40) as eng:
        expected = plain_greedy(eng, prompt, 100)  # runs into the context: 40 - 20 positions
        for max_tokens in (1, 2, 7, 19, 20, 21):
            req = eng.scheduler.submit(prompt, max_tokens=max_tokens, draft=ReplayDrafter(20, expected), draft_tokens=8)
            assert list(req) == expected[:max_tokens]
        assert req.finish_reason == "context" and len(expected) == 21


def test_engine_generate_with_prompt_lookup(tmp_path_factory):
    """Through Engine.generate and chat (text in, text out): the same text, and stats on the guesses."""
    from chat_model import make_chat_model

    path = make_chat_model(tmp_path_factory.mktemp("spec_chat"))
    prompt = "The quick brown fox jumps over the lazy dog. " * 3
    with Engine(path, threads=1) as eng:
        plain = "".join(eng.generate(prompt, max_tokens=40, temperature=0))
        assert eng.last_stats.drafted_tokens == 0 and eng.last_stats.tokens_per_step == 1
        fast = "".join(eng.generate(prompt, max_tokens=40, temperature=0, draft="ngram", draft_tokens=5))
        assert fast == plain
        stats = eng.last_stats
        assert stats.drafted_tokens > 0 and stats.decode_steps < stats.generated_tokens - 1
        eng.draft = "ngram"  # the engine's default for every call
        chat = [{"role": "user", "content": prompt}]
        assert "".join(eng.chat(chat, max_tokens=30, temperature=0)) == "".join(
            eng.chat(chat, max_tokens=30, temperature=0, draft_tokens=2))
        assert eng.last_stats.drafted_tokens > 0
    with pytest.raises(ValueError, match="draft must be one of"):
        Engine(path, draft="lookahead")
    with pytest.raises(ValueError, match="draft_tokens must be in 1..16"):
        Engine(path, draft="ngram", draft_tokens=0)


# -- the sampling rule, on a tiny vocabulary ---------------------------------------------------------

VOCAB = 5
BIGRAM = np.random.default_rng(3).normal(size=(VOCAB, VOCAB)).astype(np.float32) * 1.5  # logits after each token


def sequence_probabilities(sampler: Sampler, first: int, length: int) -> dict[tuple[int, ...], float]:
    """Exact probabilities of every continuation of `length` tokens of the bigram model under `sampler`."""
    out = {}
    for seq in itertools.product(range(VOCAB), repeat=length):
        prob, prev = 1.0, first
        for t in seq:
            ids, p = sampler.distribution(BIGRAM[prev])
            prob *= float(p[ids == t].sum())
            prev = t
        out[seq] = prob
    return out


def chi_square_quantile_999(dof: int) -> float:
    """The 0.999 quantile of the chi-square distribution (Wilson-Hilferty; within 1% for dof >= 3)."""
    z = 3.0902  # the standard normal's 0.999 quantile
    return dof * (1 - 2 / (9 * dof) + z * np.sqrt(2 / (9 * dof))) ** 3


def speculative_sequence(sampler: Sampler, first: int, length: int, draft_sampler: Sampler | None,
                         drafter_rng: np.random.Generator) -> tuple[int, ...]:
    """Decodes `length` tokens of the bigram model speculatively: each step guesses 2 tokens (a fixed
    guess, or drawn from draft_sampler over a distorted bigram) and verifies them."""
    seq = [first]
    while len(seq) <= length:
        drafts, dists, prev = [], [], seq[-1]
        for _ in range(2):
            if draft_sampler is None:
                drafts.append(int(drafter_rng.integers(0, VOCAB)))  # a blind guess: q = 1 on it
            else:
                ids, q = draft_sampler.distribution(BIGRAM[prev][::-1].copy())  # a poor drafter
                drafts.append(int(drafter_rng.choice(ids, p=q)))
                dists.append((ids, q))
            prev = drafts[-1]
        rows = np.stack([BIGRAM[t] for t in [seq[-1]] + drafts])
        for token, _ in verified_tokens(sampler, rows, drafts, dists or None):
            seq.append(token)
    return tuple(seq[1:length + 1])


@pytest.mark.parametrize("drafts, settings", [
    ("deterministic", dict(temperature=1.0, top_p=1.0)), ("deterministic", dict(temperature=1.3, top_p=0.8)),
    ("sampled", dict(temperature=0.7, top_k=3, top_p=1.0)), ("sampled", dict(temperature=1.3, top_p=0.8))])
def test_speculative_sampling_keeps_the_sequence_distribution(settings, drafts):
    """3-token continuations (125 outcomes) drawn 10,000 times: a chi-square test against the exact
    distribution at p = 0.001, and a total-variation distance within twice what sampling noise gives."""
    sampler = Sampler(seed=11, **settings)
    draft_sampler = Sampler(seed=12, **settings) if drafts == "sampled" else None
    exact = sequence_probabilities(Sampler(**settings), first=0, length=3)
    n = 10_000
    rng = np.random.default_rng(13)
    counts: dict[tuple[int, ...], int] = {}
    for _ in range(n):
        seq = speculative_sequence(sampler, 0, 3, draft_sampler, rng)
        counts[seq] = counts.get(seq, 0) + 1
    assert set(counts) <= {s for s, p in exact.items() if p > 0}  # nothing outside top-k/top-p
    support = [s for s, p in exact.items() if p > 0]
    observed = np.array([counts.get(s, 0) for s in support], dtype=np.float64)
    expected = np.array([exact[s] for s in support]) * n
    # Pool rare outcomes so that every chi-square cell expects at least 5.
    rare = expected < 5
    observed = np.append(observed[~rare], observed[rare].sum())
    expected = np.append(expected[~rare], expected[rare].sum())
    if expected[-1] == 0:
        observed, expected = observed[:-1], expected[:-1]
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < chi_square_quantile_999(len(expected) - 1)
    tv = 0.5 * np.abs(observed - expected).sum() / n
    p = expected / n
    noise = 0.5 * (np.sqrt(2 / np.pi) * np.sqrt(p * (1 - p) / n)).sum()  # E[TV] of n exact draws
    assert tv < 2 * noise


def test_verify_when_greedy_is_the_argmax():
    rows = np.array([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0], [0.0, 0.0, 5.0]], dtype=np.float32)
    sampler = Sampler(temperature=0)
    assert list(verified_tokens(sampler, rows, [1, 0])) == [(1, True), (0, True), (2, False)]
    assert list(verified_tokens(sampler, rows, [1, 2])) == [(1, True), (0, False)]
    assert list(verified_tokens(sampler, rows, [2, 0])) == [(1, False)]
