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
        candidates = self._top_k_candidates(logits)
        scaled = logits[candidates].astype(np.float64) / self.temperature
        probs = np.exp(scaled - scaled.max())
        probs /= probs.sum()
        candidates, probs = self._nucleus(candidates, probs)
        cumulative = np.cumsum(probs)
        choice = np.searchsorted(cumulative, self._rng.random() * cumulative[-1], side="right")
        return int(candidates[min(choice, len(candidates) - 1)])

    def _top_k_candidates(self, logits: np.ndarray) -> np.ndarray:
        if 0 < self.top_k < logits.size:
            return np.argpartition(logits, -self.top_k)[-self.top_k :]
        return np.arange(logits.size)

    def _nucleus(self, candidates: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The most probable candidates, in descending order, until their total reaches top_p."""
        if self.top_p >= 1:
            return candidates, probs
        order = np.argsort(-probs, kind="stable")
        sorted_probs = probs[order]
        keep = int(np.searchsorted(np.cumsum(sorted_probs), self.top_p)) + 1
        return candidates[order[:keep]], sorted_probs[:keep]
