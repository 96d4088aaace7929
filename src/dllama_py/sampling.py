"""Choosing the next token from logits: greedy, or temperature + top-k + top-p (nucleus) sampling."""

from __future__ import annotations

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
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k
        self._rng = np.random.default_rng(seed)

    def sample(self, logits: np.ndarray) -> int:
        logits = np.asarray(logits).reshape(-1)
        if self.temperature == 0:
            return int(np.argmax(logits))
        candidates = None  # all of the vocabulary
        if 0 < self.top_k < logits.size:
            candidates = np.argpartition(logits, -self.top_k)[-self.top_k :]
            logits = logits[candidates]
        scaled = logits.astype(np.float32) * np.float32(1 / self.temperature)
        probs = np.exp(scaled - scaled.max())
        probs /= probs.sum(dtype=np.float64)
        kept, kept_probs = self._nucleus(probs)
        cumulative = np.cumsum(kept_probs, dtype=np.float64)
        choice = kept[min(int(np.searchsorted(cumulative, self._rng.random() * cumulative[-1], side="right")),
                          kept.size - 1)]
        return int(candidates[choice] if candidates is not None else choice)

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
