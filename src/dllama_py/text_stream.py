"""Generated token ids to text pieces, ending at a stop string."""

from __future__ import annotations

from .tokenizer import Tokenizer


class TextStream:
    """Turns tokens into text as it becomes final (whole characters), holding back the end while it might
    still become one of the stop strings; at a stop string, `stopped` turns True and the string and all
    after it are dropped."""

    def __init__(self, tokenizer: Tokenizer, stop: list[str] | str | None = None):
        self.stops = [s for s in ([stop] if isinstance(stop, str) else list(stop or [])) if s]
        self._decoder = tokenizer.stream_decoder()
        self._pending = ""  # decoded, not yet returned
        self._hold = max((len(s) for s in self.stops), default=1) - 1
        self.stopped = False

    def push(self, token: int) -> str:
        """The text that became final with this token (possibly "")."""
        self._pending += self._decoder.push(token)
        hit = min((i for i in (self._pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if hit >= 0:
            text, self._pending, self.stopped = self._pending[:hit], "", True
            return text
        cut = len(self._pending) - self._hold
        if cut <= 0:
            return ""
        text, self._pending = self._pending[:cut], self._pending[cut:]
        return text

    def flush(self) -> str:
        """What is still held back, at the end of the generation."""
        if not self.stopped:
            self._pending += self._decoder.flush()
        text, self._pending = self._pending, ""
        return text
