"""Per-token cost of JSON-constrained decoding on a 151k vocabulary: llguidance, xgrammar, outlines-core.

    pip install llguidance xgrammar outlines-core
    python benchmarks/constrained_decoding.py [--vocab 151552] [--corpus-mb 40]

Trains a byte-level BPE tokenizer of Qwen/GLM size with `tokenizers` (on the Python sources installed
here, cached in /tmp), then for a JSON schema and for plain json_object walks one valid document token by
token: at each step the library computes the mask of allowed tokens and then accepts the token. Prints
the time to build the grammar and per-token mask+accept time (mean, p50, p99, max) for each library.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "email": {"type": "string", "pattern": "^[a-z.]+@[a-z]+\\.[a-z]{2,}$"},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 8},
        "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
                    "required": ["city", "zip"], "additionalProperties": False},
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "email", "tags", "address", "active"],
    "additionalProperties": False,
}
DOCUMENT = json.dumps({"name": "Ada Lovelace, Countess of Lovelace", "age": 36, "email": "ada.lovelace@example.org",
                       "tags": ["mathematics", "analytical engine", "poetry", "notes on the engine"],
                       "address": {"city": "London", "zip": "W1 2AB"}, "active": True})


def build_tokenizer(vocab_size: int, corpus_mb: int) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    path = Path(f"/tmp/dllama-bench-bpe-{vocab_size}.json")
    if path.exists():
        return path
    def corpus():
        total = 0
        for f in sorted(Path(sys.prefix).rglob("*.py")):
            text = f.read_bytes().decode("utf-8", "replace")
            total += len(text)
            yield text
            if total > corpus_mb << 20:
                return

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 2, special_tokens=["<|endoftext|>", "<|user|>"],
                                  max_token_length=24,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    tok.save(str(path))
    return path


def measure(step, tokens: list[int]) -> list[float]:
    times = []
    for t in tokens:
        t0 = time.perf_counter()
        step(t)
        times.append(time.perf_counter() - t0)
    return times


def run_llguidance(tok_json: str, vocab: int, eos: int, schema: dict | None, tokens: list[int]):
    import llguidance
    import llguidance.numpy as lln

    t0 = time.perf_counter()
    lltok = llguidance.LLTokenizer(tok_json, n_vocab=vocab, eos_token=eos)
    tokenizer_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    grammar = llguidance.LLMatcher.grammar_from_json_schema(schema or {"type": "object"})
    matcher = llguidance.LLMatcher(lltok, grammar)
    compile_s = time.perf_counter() - t0
    mask = lln.allocate_token_bitmask(1, vocab)

    def step(t):
        lln.fill_next_token_bitmask(matcher, mask, 0)
        assert (mask[0, t // 32] >> (t % 32)) & 1, "document token refused"
        assert matcher.consume_token(t), matcher.get_error()

    return tokenizer_s, compile_s, measure(step, tokens)


def run_xgrammar(tok_json: str, vocab: int, eos: int, schema: dict | None, tokens: list[int]):
    import xgrammar as xgr
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tok_json)
    t0 = time.perf_counter()
    decoded = [backend.id_to_token(i) for i in range(vocab)]
    info = xgr.TokenizerInfo(decoded, vocab_type=xgr.VocabType.BYTE_LEVEL, vocab_size=vocab, stop_token_ids=[eos])
    compiler = xgr.GrammarCompiler(info, max_threads=2)
    tokenizer_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = compiler.compile_json_schema(json.dumps(schema)) if schema else compiler.compile_builtin_json_grammar()
    matcher = xgr.GrammarMatcher(compiled)
    compile_s = time.perf_counter() - t0
    mask = xgr.allocate_token_bitmask(1, vocab)

    def step(t):
        matcher.fill_next_token_bitmask(mask, 0)
        assert (int(mask[0, t // 32]) >> (t % 32)) & 1, "document token refused"
        assert matcher.accept_token(t)

    return tokenizer_s, compile_s, measure(step, tokens)


def run_outlines(tok_json: str, vocab: int, eos: int, schema: dict | None, tokens: list[int]):
    import outlines_core as oc
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tok_json)
    t0 = time.perf_counter()
    byte_decoder = {c: b for b, c in zip(range(256), _bytes_to_unicode())}
    token_map: dict[bytes, list[int]] = {}
    for i in range(vocab):
        if i == eos:
            continue
        s = backend.id_to_token(i)
        if s is None or s.startswith("<|"):
            continue
        token_map.setdefault(bytes(byte_decoder[c] for c in s), []).append(i)
    vocabulary = oc.Vocabulary(eos, token_map)
    tokenizer_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    regex = oc.json_schema.build_regex_from_schema(json.dumps(schema or {"type": "object"}))
    index = oc.Index(regex, vocabulary)
    guide = oc.Guide(index)
    compile_s = time.perf_counter() - t0
    mask = np.zeros((vocab + 31) // 32, dtype=np.int32)

    def step(t):
        guide.write_mask_into(mask.ctypes.data, mask.size, mask.itemsize)
        assert (int(mask[t // 32]) >> (t % 32)) & 1, "document token refused"
        guide.advance(t)

    return tokenizer_s, compile_s, measure(step, tokens)


def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte-level alphabet, in byte order (the mapping ByteLevel pre-tokenizers use)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=151552)
    ap.add_argument("--corpus-mb", type=int, default=120)
    ap.add_argument("--libraries", default="llguidance,xgrammar,outlines-core")
    args = ap.parse_args()
    from tokenizers import Tokenizer

    path = build_tokenizer(args.vocab, args.corpus_mb)
    tok_json = path.read_text()
    backend = Tokenizer.from_str(tok_json)
    vocab, eos = backend.get_vocab_size(), backend.token_to_id("<|endoftext|>")
    tokens = backend.encode(DOCUMENT).ids
    print(f"tokenizer: {vocab} tokens; document: {len(tokens)} tokens")
    runners = {"llguidance": run_llguidance, "xgrammar": run_xgrammar, "outlines-core": run_outlines}
    print(f"{'library':14s} {'grammar':12s} {'tokenizer s':>11s} {'compile s':>10s} {'mean ms':>8s} {'p50 ms':>7s} "
          f"{'p99 ms':>7s} {'max ms':>7s}")
    for name in args.libraries.split(","):
        for label, schema in (("json_schema", SCHEMA), ("json_object", None)):
            try:
                tok_s, compile_s, times = runners[name](tok_json, vocab, eos, schema, tokens)
            except Exception as e:  # a library that cannot run here is reported, not fatal
                print(f"{name:14s} {label:12s} failed: {type(e).__name__}: {e}")
                continue
            ms = np.array(times) * 1e3
            print(f"{name:14s} {label:12s} {tok_s:11.2f} {compile_s:10.3f} {ms.mean():8.3f} {np.median(ms):7.3f} "
                  f"{np.percentile(ms, 99):7.3f} {ms.max():7.3f}", flush=True)


if __name__ == "__main__":
    main()
