"""Choosing the next token from logits: greedy, or temperature + top-k + top-p (nucleus) sampling; OpenAI's
penalties and logit bias; log-probabilities of the chosen tokens."""

from __future__ import annotations

import math

import numpy as np


class Sampler:
    """`temperature` 0 picks the argmax. Otherwise the logits are scaled by 1/temperature, cut to the
    `top_k` largest (0 = no limit), then to the smallest set whose probability reaches `top_p` (1 = no
    limit), and a token is drawn from what remains. A `seed` makes the draws reproducible."""

    def __init__(self, temperature: float = 0.8, top_p: float = 0.9, top_k: int = 0, seed: int | None = None):
        if temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if top_k < 0:
            raise ValueError("top_k must be >= 0")
        # Below ~1e-4 the distribution is the argmax anyway, and 1/temperature would overflow.
        self.temperature = temperature if temperature >= 1e-4 else 0.0
        self.top_p = top_p
        self.top_k = top_k
        self._rng = np.random.default_rng(seed)

    def sample(self, logits: np.ndarray) -> int:
        logits = np.asarray(logits).reshape(-1)
        if self.temperature == 0:
            return int(np.argmax(logits))
        return self.draw(*self.distribution(logits))

    def distribution(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """What `sample` draws from: (token ids, their probabilities), the probabilities summing to 1;
        greedy: the argmax with probability 1."""
        logits = np.asarray(logits).reshape(-1)
        if self.temperature == 0:
            return np.array([int(np.argmax(logits))]), np.ones(1)
        candidates = None  # all of the vocabulary
        if 0 < self.top_k < logits.size:
            candidates = np.argpartition(logits, -self.top_k)[-self.top_k :]
            logits = logits[candidates]
        scaled = logits.astype(np.float32) * np.float32(1 / self.temperature)
        probs = np.exp(scaled - scaled.max())
        probs /= probs.sum(dtype=np.float64)
        kept, kept_probs = self._nucleus(probs)
        ids = candidates[kept] if candidates is not None else kept
        return ids, kept_probs.astype(np.float64) / kept_probs.sum(dtype=np.float64)

    def verify(self, logits: np.ndarray, draft: int,
               draft_distribution: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[int, bool]:
        """Speculative sampling of one position whose token a drafter guessed: (the token, whether it is
        the draft). The draft is kept with probability min(1, p(draft) / q(draft)), else a token is drawn
        from the normalized residual max(0, p - q); p is `distribution(logits)`, q the distribution the
        draft was drawn from (None: a deterministic guess, q = 1 on the draft). The token is then
        distributed exactly as `sample(logits)` (Leviathan et al., 2023; Chen et al., 2023)."""
        if self.temperature == 0:
            best = int(np.argmax(np.asarray(logits).reshape(-1)))
            return best, best == draft
        ids, p = self.distribution(logits)
        q_ids, q = draft_distribution if draft_distribution is not None else (np.array([draft]), np.ones(1))
        p_draft = float(p[ids == draft].sum())
        q_draft = float(q[q_ids == draft].sum())
        if q_draft <= 0:
            raise ValueError(f"draft token {draft} has probability 0 under the distribution it was drawn from")
        if self._rng.random() * q_draft < p_draft:
            return int(draft), True
        q_on_p = np.zeros_like(p)
        _, in_p, in_q = np.intersect1d(ids, q_ids, assume_unique=True, return_indices=True)
        q_on_p[in_p] = q[in_q]
        residual = np.maximum(p - q_on_p, 0)
        total = residual.sum()
        if total <= 0:  # p <= q everywhere yet the draft was refused: only rounding can get here
            return self.draw(ids, p), False
        return self.draw(ids, residual / total), False

    def draw(self, ids: np.ndarray, probs: np.ndarray) -> int:
        """One of ids, drawn with probabilities probs."""
        cumulative = np.cumsum(probs, dtype=np.float64)
        choice = min(int(np.searchsorted(cumulative, self._rng.random() * cumulative[-1], side="right")), ids.size - 1)
        return int(ids[choice])

    def _nucleus(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Indexes of the most probable entries, in descending order, until their total reaches top_p,
        and their probabilities.

        Only the head of the distribution is sorted: the k most probable (argpartition, k = 256, 1024, ...)
        until they hold top_p of the mass, so a 150k vocabulary costs a partition, not a full sort."""
        n = probs.size
        if self.top_p >= 1:
            return np.arange(n), probs
        k = 256
        while True:
            k = min(k, n)
            head = np.argpartition(-probs, k - 1)[:k] if k < n else np.arange(n)
            order = head[np.argsort(-probs[head], kind="stable")]
            cumulative = np.cumsum(probs[order], dtype=np.float64)
            if cumulative[-1] >= self.top_p or k == n:
                keep = int(np.searchsorted(cumulative, self.top_p)) + 1
                return order[:keep], probs[order[:keep]]
            k *= 4


class LogitAdjustments:
    """OpenAI's `presence_penalty`, `frequency_penalty` and `logit_bias`, applied to raw logits before
    sampling: logit[t] += bias[t] - count[t] * frequency - (count[t] > 0) * presence, where count[t] is
    how often t was generated so far in this completion (the prompt does not count)."""

    def __init__(self, vocab_size: int, presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                 logit_bias: dict[int, float] | None = None):
        for name, value in (("presence_penalty", presence_penalty), ("frequency_penalty", frequency_penalty)):
            if not -2 <= value <= 2:
                raise ValueError(f"{name} must be in [-2, 2]")
        self.presence = float(presence_penalty)
        self.frequency = float(frequency_penalty)
        self._bias = np.zeros(vocab_size, dtype=np.float32)
        for token, bias in (logit_bias or {}).items():
            if not 0 <= token < vocab_size:
                raise ValueError(f"logit_bias: token {token} is outside the vocabulary of {vocab_size}")
            if not -100 <= bias <= 100:
                raise ValueError(f"logit_bias: the bias of token {token} must be in [-100, 100]")
            self._bias[token] = bias
        self._has_bias = bool(logit_bias)
        self._counts: dict[int, int] = {}

    @property
    def active(self) -> bool:
        return self._has_bias or (bool(self._counts) and (self.presence != 0 or self.frequency != 0))

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """Adjusted float32 copy of one row of logits (the row itself when nothing applies)."""
        if not self.active:
            return logits
        out = logits.astype(np.float32) + self._bias
        if self._counts and (self.presence or self.frequency):
            tokens = np.fromiter(self._counts.keys(), dtype=np.int64, count=len(self._counts))
            counts = np.fromiter(self._counts.values(), dtype=np.float32, count=len(self._counts))
            out[tokens] -= counts * self.frequency + self.presence
        return out

    def accept(self, token: int) -> None:
        self._counts[token] = self._counts.get(token, 0) + 1


def token_logprobs(logits: np.ndarray, token: int, top_n: int = 0) -> tuple[float, list[tuple[int, float]]]:
    """The log-probability of `token` under softmax(logits) and the `top_n` most likely tokens with theirs.

    Only the normalizer is computed over the vocabulary, in float32 (a float64 log-softmax of every entry
    cost ~0.5 ms per token on a 32k vocabulary: a fifth of a batched decode step of 8 streams)."""
    x = np.asarray(logits, dtype=np.float32).reshape(-1)
    top = float(x.max())
    if not math.isfinite(top):  # every logit -inf (masked): log-probabilities NaN, not an error
        top = 0.0
    normalizer = top + math.log(float(np.exp(x - np.float32(top)).sum(dtype=np.float64)))
    if top_n <= 0:
        return float(x[token]) - normalizer, []
    top_n = min(top_n, x.size)
    best = np.argpartition(-x, top_n - 1)[:top_n]
    best = best[np.argsort(-x[best], kind="stable")]
    return float(x[token]) - normalizer, [(int(t), float(x[t]) - normalizer) for t in best]
