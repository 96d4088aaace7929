"""Speculative decoding: guess the next few tokens cheaply, then let the model check all the guesses
in one forward step (one pass over the weights for k + 1 rows instead of k + 1 passes).

Drafts come from prompt lookup (`NgramDrafter`: the tokens that followed the latest earlier occurrence
of the sequence's last n tokens, in the prompt or the output so far) or from the model's own
multi-token-prediction layer (GLM's MTP, run by the scheduler). The scheduler verifies them with
`verified_tokens`, which keeps the output distribution exactly that of plain decoding: greedy output is
the plain greedy output token for token.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

DRAFT_KINDS = ("ngram", "mtp")
MAX_DRAFT_TOKENS = 16  # drafts per step; a step holds at most 64 rows


def is_drafter(draft) -> bool:
    """A drafter object: it is shown every token of the sequence (the prompt first) through
    extend(tokens), and propose(k) returns up to k guesses of the next ones."""
    return hasattr(draft, "propose") and hasattr(draft, "extend")


def check_draft(draft, draft_tokens: int):
    if draft is not None and draft not in DRAFT_KINDS and not is_drafter(draft):
        raise ValueError(f"draft must be one of {', '.join(DRAFT_KINDS)}, a drafter object or None, not {draft!r}")
    if not 1 <= draft_tokens <= MAX_DRAFT_TOKENS:
        raise ValueError(f"draft_tokens must be in 1..{MAX_DRAFT_TOKENS}, not {draft_tokens}")


class NgramDrafter:
    """Prompt lookup: drafts are the tokens that followed the latest earlier occurrence of the last n
    tokens of the sequence, trying n = max_ngram first, down to min_ngram. An index from each n-gram
    to where it last ended is kept up to date as tokens arrive, so a proposal costs a few dict lookups
    however long the sequence."""

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1):
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError("n-gram sizes need 1 <= min_ngram <= max_ngram")
        self.sizes = range(max_ngram, min_ngram - 1, -1)
        self.tokens: list[int] = []
        self._ends: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in self.sizes}

    def extend(self, tokens: list[int]):
        for t in tokens:
            self.tokens.append(int(t))
            end = len(self.tokens) - 1  # the n-grams ending just before the new token now have a follower
            for n in self.sizes:
                if end >= n:
                    self._ends[n][tuple(self.tokens[end - n:end])] = end

    def propose(self, k: int) -> list[int]:
        """Up to k tokens to follow the sequence ([] when no n-gram of it occurred before)."""
        for n in self.sizes:
            if len(self.tokens) < n:
                continue
            follower = self._ends[n].get(tuple(self.tokens[-n:]))
            if follower is not None:
                return self.tokens[follower:follower + k]
        return []


def verified_tokens(sampler, rows: np.ndarray, drafts: list[int],
                    draft_distributions: list | None = None) -> Iterator[tuple[int, bool]]:
    """The tokens a verification step yields, one at a time: row j of `rows` holds the model's logits
    after the fed token and drafts[:j]. Each draft is checked by the speculative-sampling rule
    (Sampler.verify) in turn; the first refused one is replaced by the token drawn in its place and ends
    the run, and when every draft is kept the last row gives one more token. Yields (token, is the draft).
    A caller may stop early (a stop token, max_tokens): nothing is drawn for rows it does not reach."""
    for j, draft in enumerate(drafts):
        token, kept = sampler.verify(rows[j], draft, draft_distributions[j] if draft_distributions else None)
        yield token, kept
        if not kept:
            return
    yield sampler.sample(rows[len(drafts)]), False
