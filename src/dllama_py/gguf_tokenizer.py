"""A tokenizer bundle rebuilt from a GGUF file's tokenizer metadata.

GGUF keeps a byte-level BPE tokenizer as lists (tokens, token types, merges) plus the name of its
pre-tokenizer (`tokenizer.ggml.pre`), whose split rules live in llama.cpp's code rather than the file.
The rules below are those splits for the vocabularies of the architectures we read, expressed with the
`tokenizers` library's own pre-tokenizers, so that text splits exactly as the model's original
tokenizer.json split it.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from .tokenizer import BUNDLE_FORMAT, BUNDLE_VERSION

# The GPT-4 / cl100k split (Llama 3, GLM-4) and Qwen2's variant that takes digits one at a time.
_CL100K = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _split_then_bytes(*patterns: str):
    return [pre_tokenizers.Split(Regex(p), behavior="isolated") for p in patterns] + [
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]


def _gpt2(digits_one_by_one: bool = False):
    digits = [pre_tokenizers.Digits(individual_digits=True)] if digits_one_by_one else []
    return digits + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]


# tokenizer.ggml.pre -> (pre-tokenizer steps, BPE ignore_merges). ignore_merges: a whole pre-token found in
# the vocabulary is one token (tiktoken-style vocabularies: Llama 3, GLM-4.5+).
PRE_TOKENIZERS = {
    "default": (_gpt2, False),
    "gpt-2": (_gpt2, False),
    "smollm": (lambda: _gpt2(digits_one_by_one=True), False),
    "starcoder": (lambda: _gpt2(digits_one_by_one=True), False),
    "llama3": (lambda: _split_then_bytes(_CL100K), True),
    "llama-v3": (lambda: _split_then_bytes(_CL100K), True),
    "llama-bpe": (lambda: _split_then_bytes(_CL100K), True),
    "smaug-bpe": (lambda: _split_then_bytes(_CL100K), False),
    "dbrx": (lambda: _split_then_bytes(_CL100K), False),
    "chatglm-bpe": (lambda: _split_then_bytes(_CL100K), False),
    "glm4": (lambda: _split_then_bytes(_CL100K), True),
    "qwen2": (lambda: _split_then_bytes(_QWEN2), False),
    "deepseek-r1-qwen": (lambda: _split_then_bytes(_QWEN2), False),
}

CONTROL, USER_DEFINED = 3, 4  # llama.cpp's token types (1 is a normal token)


class GGUFTokenizerError(ValueError):
    pass


def _field(fields, name: str, default=None):
    field = fields.get(name)
    return default if field is None else field.contents()


def bundle_from_gguf_fields(fields, path: Path) -> dict | None:
    """The tokenizer bundle (see tokenizer.py) of a GGUF file, or None when it has no BPE tokenizer we
    can rebuild (the caller warns that the model will need token ids)."""
    kind = _field(fields, "tokenizer.ggml.model")
    if kind is None:
        return None
    if kind != "gpt2":
        raise GGUFTokenizerError(f"{path}: GGUF tokenizer model {kind!r} is not supported (only byte-level BPE, 'gpt2')")
    pre = _field(fields, "tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise GGUFTokenizerError(f"{path}: GGUF pre-tokenizer {pre!r} is not supported; supported: "
                                 f"{', '.join(sorted(PRE_TOKENIZERS))}")
    tokens: list[str] = _field(fields, "tokenizer.ggml.tokens")
    types: list[int] = _field(fields, "tokenizer.ggml.token_type") or [1] * len(tokens)
    merges = [tuple(m.split(" ", 1)) for m in _field(fields, "tokenizer.ggml.merges", [])]
    steps, ignore_merges = PRE_TOKENIZERS[pre]

    vocab = {}
    for i, token in enumerate(tokens):
        vocab.setdefault(token, i)
    backend = Tokenizer(models.BPE(vocab, merges, ignore_merges=ignore_merges))
    backend.pre_tokenizer = pre_tokenizers.Sequence(steps())
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, token_type in zip(tokens, types) if token_type == CONTROL])
    backend.add_tokens([AddedToken(t, special=False, normalized=False)
                        for t, token_type in zip(tokens, types) if token_type == USER_DEFINED])

    def token_of(key: str) -> tuple[int | None, str | None]:
        token_id = _field(fields, key)
        if token_id is None or not 0 <= token_id < len(tokens):
            return None, None
        return token_id, tokens[token_id]

    bos_id, bos = token_of("tokenizer.ggml.bos_token_id")
    eos_id, eos = token_of("tokenizer.ggml.eos_token_id")
    add_bos = bool(_field(fields, "tokenizer.ggml.add_bos_token", False)) and bos is not None
    add_eos = bool(_field(fields, "tokenizer.ggml.add_eos_token", False)) and eos is not None
    if add_bos or add_eos:
        single = ([f"{bos}:0"] if add_bos else []) + ["$A:0"] + ([f"{eos}:0"] if add_eos else [])
        pair = single + ([f"{bos}:1"] if add_bos else []) + ["$B:1"] + ([f"{eos}:1"] if add_eos else [])
        special = {t: i for t, i in ((bos, bos_id), (eos, eos_id)) if t is not None}
        backend.post_processor = processors.TemplateProcessing(single=single, pair=pair,
                                                               special_tokens=list(special.items()))
    special_tokens = {name: token for name, (_, token) in (
        ("bos_token", (bos_id, bos)), ("eos_token", (eos_id, eos)),
        ("unk_token", token_of("tokenizer.ggml.unknown_token_id")),
        ("pad_token", token_of("tokenizer.ggml.padding_token_id"))) if token is not None}
    # Generation stops at EOS and at llama.cpp's end-of-turn / end-of-message tokens.
    stop_ids = [token_of(k)[0] for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                                         "tokenizer.ggml.eom_token_id")]
    return {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "tokenizer": json.loads(backend.to_str()),
        "chat_template": _field(fields, "tokenizer.chat_template"),
        "bos_token": bos,
        "eos_token": eos,
        "bos_token_id": bos_id,
        "eos_token_ids": list(dict.fromkeys(i for i in stop_ids if i is not None)),
        "add_bos_token": add_bos,
        "special_tokens": special_tokens,
    }
