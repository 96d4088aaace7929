"""JSON output by constrained decoding (OpenAI's `response_format`), with llguidance.

Before each token the grammar's mask of allowed tokens is applied to the logits (tokens it forbids get
-inf), and the chosen token is then fed to the grammar. Chosen over xgrammar and outlines-core by
measurement on a 151k vocabulary (benchmarks/constrained_decoding.py, docs/benchmarks.md): ~0.07 ms per
token and ~5 ms to compile a schema, with no dependencies.
"""

from __future__ import annotations

import threading

import numpy as np

from .tokenizer import Tokenizer


class ConstraintError(ValueError):
    """A schema the grammar library refuses."""


def _llguidance():
    try:
        import llguidance
        import llguidance.numpy
    except ImportError:
        raise RuntimeError("response_format needs llguidance: pip install 'dllama_py[server]'") from None
    return llguidance


_tokenizers: dict[tuple[int, int], object] = {}
_tokenizers_lock = threading.Lock()


def _grammar_tokenizer(tokenizer: Tokenizer, vocab_size: int):
    """llguidance's view of a tokenizer (about a second to build for 150k tokens: cached per tokenizer)."""
    key = (id(tokenizer), vocab_size)
    with _tokenizers_lock:
        if key not in _tokenizers:
            llg = _llguidance()
            eos = tokenizer.eos_token_ids[0] if tokenizer.eos_token_ids else None
            _tokenizers[key] = llg.LLTokenizer(tokenizer._backend.to_str(), n_vocab=vocab_size, eos_token=eos)
        return _tokenizers[key]


def json_grammar(schema: dict | None) -> str:
    """The grammar for `response_format`: a JSON value matching `schema`, or any JSON object when None.
    Raises ConstraintError for a schema the library cannot compile."""
    llg = _llguidance()
    grammar = llg.LLMatcher.grammar_from_json_schema(schema if schema is not None else {"type": "object"},
                                                     defaults={"whitespace_flexible": False})
    is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise ConstraintError("; ".join(messages) or "invalid schema")
    return grammar


class JsonConstraint:
    """The allowed-token mask of one generation's JSON grammar."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, grammar: str):
        llg = _llguidance()
        self._matcher = llg.LLMatcher(_grammar_tokenizer(tokenizer, vocab_size), grammar)
        if self._matcher.is_error():
            raise ConstraintError(self._matcher.get_error())
        self._mask = llg.numpy.allocate_token_bitmask(1, vocab_size)
        self._vocab_size = vocab_size

    @property
    def done(self) -> bool:
        """The value is complete (only end-of-sequence is allowed now)."""
        return self._matcher.is_stopped()

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """A float32 copy of `logits` with every token the grammar forbids set to -inf."""
        import llguidance.numpy as lln

        out = np.array(logits, dtype=np.float32).reshape(1, -1)
        lln.fill_next_token_bitmask(self._matcher, self._mask, 0)
        lln.apply_token_bitmask_inplace(out, self._mask)
        return out[0]

    def accept(self, token: int) -> None:
        if not self._matcher.consume_token(token):
            raise RuntimeError(f"constrained decoding: token {token} was refused: {self._matcher.get_error()}")

