"""Greedy and temperature/top-k/top-p sampling."""

from __future__ import annotations

import numpy as np
import pytest

from dllama_py.sampling import Sampler

LOGITS = np.random.default_rng(0).normal(size=1000).astype(np.float32) * 3


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def draw(sampler: Sampler, logits: np.ndarray, n: int) -> np.ndarray:
    return np.array([sampler.sample(logits) for _ in range(n)])


def chi_square(observed_counts: np.ndarray, probs: np.ndarray) -> float:
    expected = probs * observed_counts.sum()
    return float(((observed_counts - expected) ** 2 / expected).sum())


def test_temperature_zero_is_argmax():
    sampler = Sampler(temperature=0)
    assert sampler.sample(LOGITS) == int(np.argmax(LOGITS))
    assert sampler.sample(-LOGITS) == int(np.argmin(LOGITS))


def test_seed_makes_draws_reproducible():
    first = draw(Sampler(temperature=1.0, top_p=0.95, seed=123), LOGITS, 50)
    again = draw(Sampler(temperature=1.0, top_p=0.95, seed=123), LOGITS, 50)
    other = draw(Sampler(temperature=1.0, top_p=0.95, seed=124), LOGITS, 50)
    assert (first == again).all()
    assert (first != other).any()
    assert len(set(first.tolist())) > 5  # it really samples


@pytest.mark.parametrize("kwargs", [{"top_k": 1, "top_p": 1.0}, {"top_p": 1e-6}, {"top_k": 5, "top_p": 1e-6}])
def test_filters_down_to_one_token_give_argmax(kwargs):
    sampler = Sampler(temperature=2.0, seed=7, **kwargs)
    assert set(draw(sampler, LOGITS, 30).tolist()) == {int(np.argmax(LOGITS))}


def test_distribution_without_filters():
    logits = np.log(np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32))
    counts = np.bincount(draw(Sampler(temperature=1.0, top_p=1.0, seed=1), logits, 20_000), minlength=4)
    assert chi_square(counts, np.array([0.1, 0.2, 0.3, 0.4])) < 16.3  # chi-square, 3 dof, p = 0.001


def test_temperature_sharpens_distribution():
    logits = np.array([0.0, 1.0, 2.0], dtype=np.float32)
    counts = np.bincount(draw(Sampler(temperature=0.5, top_p=1.0, seed=2), logits, 20_000), minlength=3)
    assert chi_square(counts, softmax(logits / 0.5)) < 13.8  # 2 dof, p = 0.001


def test_top_k_keeps_the_k_largest_renormalized():
    logits = np.log(np.array([0.05, 0.4, 0.1, 0.3, 0.15], dtype=np.float32))
    samples = draw(Sampler(temperature=1.0, top_k=2, top_p=1.0, seed=3), logits, 10_000)
    assert set(samples.tolist()) == {1, 3}
    counts = np.array([(samples == 1).sum(), (samples == 3).sum()])
    assert chi_square(counts, np.array([4 / 7, 3 / 7])) < 10.8  # 1 dof, p = 0.001


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = np.array([0.05, 0.4, 0.1, 0.3, 0.15])
    samples = draw(Sampler(temperature=1.0, top_p=0.8, seed=4), np.log(probs).astype(np.float32), 10_000)
    assert set(samples.tolist()) == {1, 3, 4}  # 0.4 + 0.3 < 0.8 <= 0.4 + 0.3 + 0.15
    counts = np.array([(samples == i).sum() for i in (1, 3, 4)])
    assert chi_square(counts, np.array([0.4, 0.3, 0.15]) / 0.85) < 13.8


def test_invalid_settings():
    for kwargs in ({"temperature": -1}, {"top_p": 0}, {"top_p": 1.5}, {"top_k": -1}):
        with pytest.raises(ValueError):
            Sampler(**kwargs)


def test_penalties_and_logit_bias_follow_openai():
    from dllama_py.sampling import LogitAdjustments

    logits = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)
    adjust = LogitAdjustments(4, presence_penalty=0.5, frequency_penalty=0.25, logit_bias={0: 10, 3: -100})
    np.testing.assert_allclose(adjust.apply(logits), [11, 2, 3, -96])
    for token in (1, 1, 2):
        adjust.accept(token)
    # logit - count * frequency - (count > 0) * presence + bias
    np.testing.assert_allclose(adjust.apply(logits), [11, 2 - 0.5 - 0.5, 3 - 0.25 - 0.5, -96])
    assert LogitAdjustments(4).apply(logits) is logits
    with pytest.raises(ValueError, match="presence_penalty"):
        LogitAdjustments(4, presence_penalty=2.5)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        LogitAdjustments(4, logit_bias={4: 1})


def test_token_logprobs():
    from dllama_py.sampling import token_logprobs

    logits = np.array([0.0, np.log(3.0), -np.inf, np.log(6.0)])
    lp, top = token_logprobs(logits, 1, top_n=2)
    assert lp == pytest.approx(np.log(0.3))
    assert [t for t, _ in top] == [3, 1] and top[0][1] == pytest.approx(np.log(0.6))
    assert token_logprobs(logits, 2)[0] == -np.inf


def test_a_vanishing_temperature_is_greedy():
    logits = np.array([0.0, 3.0, 1.0], dtype=np.float32)
    assert all(Sampler(temperature=t, seed=s).sample(logits) == 1 for t in (5e-324, 1e-9) for s in range(5))


@pytest.mark.parametrize("vocab", [1, 2, 255, 256, 257, 1024, 1025, 4097])
def test_top_p_and_top_k_match_a_full_sort_at_every_vocabulary_size(vocab):
    """The sampler sorts only the head of the distribution (256, then 1024, ... entries): the kept set
    must be the full sort's at sizes around those steps, and top_k at or beyond the vocabulary is no limit."""
    rng = np.random.default_rng(vocab)
    for scale in (0.1, 3.0, 30.0):
        logits = (rng.normal(size=vocab) * scale).astype(np.float32)
        probs = softmax(logits.astype(np.float64)).astype(np.float32)
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order], dtype=np.float64)
        for top_p in (1e-6, 0.5, 0.9, 0.999):
            kept, kept_probs = Sampler(temperature=1.0, top_p=top_p)._nucleus(probs)
            n = min(vocab, int(np.searchsorted(cumulative, top_p)) + 1)
            assert sorted(kept.tolist()) == sorted(order[:n].tolist())
            assert (kept_probs == probs[kept]).all()
        for top_k in (vocab, vocab + 7):
            samples = draw(Sampler(temperature=1.0, top_k=top_k, top_p=1.0, seed=6), logits, 50)
            assert ((samples >= 0) & (samples < vocab)).all()
