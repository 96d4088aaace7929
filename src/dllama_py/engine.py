"""Engine: a loaded model with its tokenizer, KV cache and generation loop."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from . import _core
from .architectures import ModelLayout, read_layout
from .chat_template import ChatTemplateError
from .cluster import choose_auto_split, parse_split
from .model_file import NORM_EPSILON_CODES, FloatType, ModelFileError
from .node_memory import node_memory
from .reasoning import ThinkingSplitter, prompt_starts_in_thinking
from .rope import rope_frequencies
from .sampling import Sampler
from .scheduler import GenerationStats, NonFiniteLogitsError, Scheduler  # noqa: F401 (NonFiniteLogitsError: part of this module's API)
from .speculative import check_draft
from .tensor_lists import head_dim_of, rope_dim_of
from .text_stream import TextStream
from .tokenizer import Tokenizer, bundle_path
from .tool_calls import split_tool_calls

DEFAULT_CONTEXT = 4096  # positions allocated unless asked for more: 128k-context models stay small
SECRET_ENV = "DLLAMA_SECRET"  # the shared secret of root and workers, when not given
# Seconds a step may wait on a silent peer, and between heartbeats to idle workers (a worker gives up
# on a root silent for 2 intervals plus the timeout). Environment variables, so that tests can shorten them for the CLI.
NET_TIMEOUT_ENV, HEARTBEAT_ENV = "DLLAMA_NET_TIMEOUT", "DLLAMA_HEARTBEAT"


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def model_config(layout: ModelLayout, max_seq_len: int | None, kv_cache: str | None = None,
                 max_sequences: int = 1, mtp: bool = False) -> "_core.ModelConfig":
    """The C++ graph's configuration from a .m header and its architecture-table entry; mtp: load the
    file's multi-token-prediction layer.

    The fields and their order are the C++ table's (cpp/config.h): fields named after a header key are
    copied as they are; the rest are derived here."""
    p = layout.params
    c = _core.ModelConfig()
    for name, key in _core.ModelConfig.fields():
        if key and key in p:
            setattr(c, name, type(getattr(c, name))(p[key]))
    c.arch = layout.arch.builder
    c.weight_type = _core.FloatType(int(layout.weight_type))
    c.head_dim = head_dim_of(p)
    model_ctx = p.get("max_seq_len") or DEFAULT_CONTEXT
    if max_seq_len is not None and max_seq_len < 1:
        raise ValueError(f"max_seq_len must be at least 1, not {max_seq_len}")
    c.seq_len = min(model_ctx, max_seq_len if max_seq_len else DEFAULT_CONTEXT)
    c.max_sequences = max_sequences
    if kv_cache not in (None, "f16", "f32"):
        raise ValueError(f"kv_cache must be 'f16' or 'f32', not {kv_cache!r}")
    # f16 halves the cache; F32 models keep an f32 cache so they stay exact.
    c.kv_f16 = kv_cache == "f16" if kv_cache else layout.weight_type != FloatType.F32
    c.norm_eps = p.get("norm_epsilon_f32") or NORM_EPSILON_CODES[p.get("norm_epsilon", 5)]
    c.rope_theta = p.get("rope_theta_f32") or float(p.get("rope_theta", 10000))
    c.rope_dim = rope_dim_of(p)
    c.rope_style = _core.RopeStyle.INTERLEAVED if layout.arch.rope_style == "interleaved" else _core.RopeStyle.HALVES
    inv_freq, c.rope_attention_factor = rope_frequencies(p, c.rope_dim, c.rope_theta)
    c.rope_inv_freq = inv_freq.tolist()
    c.attention_out_bias = c.attention_bias and c.kv_lora_rank > 0
    if mtp and not c.n_mtp_layers:
        raise ValueError(f"{layout.path} has no multi-token-prediction layer (GLM-4.5 and later have one; "
                         "convert the checkpoint again without --no-mtp), so it cannot draft with draft='mtp'")
    c.n_mtp_layers = c.n_mtp_layers if mtp else 0
    try:  # the C++ core's rules for a config, whatever it comes from (a file here, a root on a worker)
        _core.validate_config(c)
    except ValueError as error:
        raise ModelFileError(f"{layout.path}: {error}") from None
    return c


class _WorkerLoadBar:
    """A tqdm bar of the weight bytes the workers load (total, rate, ETA; MB per worker), from the
    status the C++ core reports every 200 ms: [(bytes loaded, bytes expected) per worker]."""

    def __init__(self):
        self.bar = None

    def __call__(self, status: list[tuple[int, int]]):
        from tqdm import tqdm

        loaded = sum(done for done, _ in status)
        expected = max(sum(total for _, total in status), loaded)
        if self.bar is None:
            self.bar = tqdm(total=expected, unit="B", unit_scale=True, desc="workers loading", delay=1.0)
        self.bar.total = expected
        self.bar.set_postfix_str("  ".join(f"node {i + 1}: {done / 1e6:,.0f}/~{total / 1e6:,.0f} MB"
                                           for i, (done, total) in enumerate(status)), refresh=False)
        self.bar.update(loaded - self.bar.n)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _milliseconds(seconds: float | None, env: str, default: float) -> int:
    value = seconds if seconds is not None else float(os.environ.get(env) or default)
    if not value > 0:
        raise ValueError(f"{env.lower().removeprefix('dllama_')} must be a positive number of seconds, got {value}")
    return int(value * 1000)


class ChatPiece(str):
    """A piece of a chat reply; `kind` is "reasoning" or "answer"."""

    kind: str

    def __new__(cls, text: str, kind: str):
        piece = super().__new__(cls, text)
        piece.kind = kind
        return piece


class Engine:
    """A model ready to run: `forward` for logits, `generate`/`chat` for text.

    >>> with Engine("qwen3.m", threads=4) as eng:
    ...     for piece in eng.generate("Why is the sky blue?", max_tokens=64):
    ...         print(piece, end="", flush=True)
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None, max_seq_len: int | None = None,
                 tokenizer: str | os.PathLike | None = None, workers: list[str] | None = None,
                 secret: str | None = None, exchange: str | None = None, net_timeout: float | None = None,
                 kv_cache: str | None = None, load_progress: Callable[[int, int], None] | None = None,
                 max_sequences: int = 1, draft: str | None = None, draft_tokens: int = 4,
                 heartbeat: float | None = None, split: list[float] | str | None = None):
        """kv_cache: "f16" or "f32" (default: f32 for F32 models, else f16).
        max_sequences: sequences the KV cache holds at once (each up to the context length); generations
        running at the same time (generate/chat from several threads, or scheduler.submit) share forward
        steps, so they cost little more than one.
        workers: "host:port" of `dllama-py worker`s to split the model with (tensor parallelism);
        secret: their shared secret (default: $DLLAMA_SECRET); exchange: "q80" or "f32" for the partial
        sums sent between nodes (default: f32 for F32 models, else q80); net_timeout: seconds a step
        waits on a silent peer (default 5, or $DLLAMA_NET_TIMEOUT); heartbeat: seconds between pings to
        idle workers (default 10, or $DLLAMA_HEARTBEAT). Sessions may idle for hours. While workers
        load their shares, a progress bar shows their bytes (rate, ETA) on stderr.
        split: each node's share of every layer in proportion to these weights, one per node, root first
        (e.g. [2, 1, 1]; default: equal), or "auto": in proportion to each node's measured read bandwidth,
        within its free RAM (the choice is printed on stderr); `split` holds the weights used.
        tokenizer: a tokenizer bundle, or a Hugging Face checkpoint directory or its tokenizer.json
        (default: the bundle beside the model, `<model>.tokenizer.json`).
        load_progress: called with (bytes of weights loaded, bytes in all) every 0.1 s while the weights load
        on this machine, and once at the end; an exception it raises (KeyboardInterrupt) stops the load.
        draft: speculative decoding for generate/chat unless they say otherwise: "ngram" (prompt lookup:
        guesses copied from earlier in the prompt or output) or "mtp" (the model's multi-token-prediction
        layer, GLM-4.5 and later, which is loaded only then); draft_tokens: guesses checked per step."""
        check_draft(draft, draft_tokens)
        self.draft, self.draft_tokens = draft, draft_tokens
        self.path = Path(path)
        self.layout = read_layout(self.path)
        self.config = model_config(self.layout, max_seq_len, kv_cache, max_sequences, mtp=draft == "mtp")
        self.tokenizer_path = Path(tokenizer) if tokenizer else bundle_path(self.path)
        if tokenizer:  # given: it must load
            self.tokenizer: Tokenizer | None = Tokenizer.load(tokenizer)
        else:
            self.tokenizer = Tokenizer.load(bundle_path(self.path)) if bundle_path(self.path).exists() else None
        if self.tokenizer and self.tokenizer.vocab_size > self.config.vocab_size:
            raise ValueError(f"the tokenizer ({tokenizer or bundle_path(self.path)}) has {self.tokenizer.vocab_size} "
                             f"tokens but {self.path} has a vocabulary of {self.config.vocab_size}: not this model's")
        tensors = [
            _core.TensorInfo(t.spec.name, _core.FloatType(int(t.dtype)), t.spec.rows, t.spec.cols, t.offset)
            for t in self.layout.tensors
        ]
        if exchange is None:
            exchange = "f32" if self.layout.weight_type == FloatType.F32 else "q80"
        threads = threads or default_threads()
        secret = secret or os.environ.get(SECRET_ENV, "")
        split = parse_split(split)
        if split == "auto":
            if not workers:
                raise ValueError("split auto needs workers to weigh")
            chosen = choose_auto_split(self.layout, self.config, list(workers), secret, threads)
            print(chosen.line(["root"] + list(workers)), file=sys.stderr, flush=True)
            split = chosen.weights
        self.split: list[float] = split or []
        _core.check_split_weights(1 + len(workers or []), self.split)
        report = None
        if load_progress is not None and not workers:
            total = node_memory(self.layout, 0, 1, self.config.seq_len, self.config.kv_f16,
                                mtp=self.config.n_mtp_layers > 0).weights
            report = lambda done: load_progress(min(done, total), total)  # noqa: E731
        workers_bar = _WorkerLoadBar() if workers else None
        try:
            self._model = _core.Model(str(self.path), self.config, tensors, threads,
                                      workers=list(workers or []), secret=secret, exchange=exchange,
                                      split=self.split, timeout_ms=_milliseconds(net_timeout, NET_TIMEOUT_ENV, 5.0),
                                      heartbeat_ms=_milliseconds(heartbeat, HEARTBEAT_ENV, 10.0), progress=report,
                                      workers_progress=workers_bar)
        finally:
            if workers_bar is not None:
                workers_bar.close()
        if report is not None:
            report(total)
        # Count inference traffic, not the weights sent to the workers (those stay in load_net_stats).
        self.load_net_stats = self._model.net_stats()
        self._model.reset_net_stats()
        self.scheduler = Scheduler(self._model, name=str(self.path))
        self.last_stats = GenerationStats()

    # -- lifecycle --------------------------------------------------------------------------
    def close(self):
        if self._model is not None and self._model.n_nodes > 1:
            try:
                self._model.stop_workers()
            except RuntimeError:
                pass  # a worker is already gone; closing the connections is all that is left
        self._model = None

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def model(self) -> "_core.Model":
        if self._model is None:
            raise RuntimeError(f"engine for {self.path} is closed")
        return self._model

    # -- facts -------------------------------------------------------------------------------
    @property
    def context_length(self) -> int:
        return self.config.seq_len

    @property
    def position(self) -> int:
        """Positions of sequence slot 0 (the one `forward` runs on) in the KV cache."""
        return self.model.length(0)

    @property
    def max_sequences(self) -> int:
        return self.model.n_slots

    @property
    def kv_cache_bytes(self) -> int:
        return self.model.kv_cache_bytes

    @property
    def threads(self) -> int:
        return self.model.n_threads

    @property
    def n_nodes(self) -> int:
        return self.model.n_nodes

    def net_stats(self) -> dict:
        """Traffic and time of the exchanges between nodes since the engine was loaded (or the last
        reset_net_stats): bytes_sent, bytes_received, seconds_in_sync, syncs."""
        return self.model.net_stats()

    def reset_net_stats(self):
        self.model.reset_net_stats()

    # -- raw model ---------------------------------------------------------------------------
    def forward(self, token_ids: Iterable[int], all_logits: bool = True) -> np.ndarray:
        """Logits (n, vocab) for tokens appended at the current position of sequence slot 0 (or (1, vocab)
        for the last one only when all_logits is False)."""
        ids = [int(i) for i in token_ids]
        if not ids:
            raise ValueError("forward needs at least one token")
        if self.position + len(ids) > self.context_length:
            raise ValueError(
                f"{len(ids)} tokens at position {self.position} exceed the context of {self.context_length} "
                f"(raise max_seq_len, up to the model's {self.layout.params.get('max_seq_len')})"
            )
        return self.scheduler.forward(ids, all_logits)

    def reset(self):
        """Empties sequence slot 0."""
        self.scheduler.reset(0)

    # -- text --------------------------------------------------------------------------------
    def _require_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise RuntimeError(f"{self.path} has no tokenizer bundle ({bundle_path(self.path)}); convert it again "
                               "from a checkpoint with tokenizer.json, or pass tokenizer= (--tokenizer)")
        return self.tokenizer

    def apply_chat_template(self, messages: list[dict], tools: list | None = None, add_generation_prompt: bool = True,
                            **template_kwargs) -> str:
        """The prompt text for a conversation, rendered from the model's own chat template exactly as
        transformers' apply_chat_template(tokenize=False) renders it; template_kwargs reach the template
        (e.g. enable_thinking=False)."""
        tok = self._require_tokenizer()
        if not tok.chat_template:
            raise RuntimeError(f"{self.path}: the tokenizer has no chat template")
        try:
            return tok.render_chat(messages, tools=tools, add_generation_prompt=add_generation_prompt, **template_kwargs)
        except ChatTemplateError as error:
            raise ChatTemplateError(f"{self.tokenizer_path}: {error}") from error.__cause__

    def generate(self, prompt: str | list[int], max_tokens: int = 256, temperature: float = 0.8, top_p: float = 0.9,
                 top_k: int = 0, seed: int | None = None, stop: list[str] | str | None = None,
                 draft: str | None = None, draft_tokens: int | None = None) -> Iterator[str]:
        """Streams the continuation of a prompt (text, or token ids) as text pieces.

        draft, draft_tokens: speculative decoding ("ngram" or "mtp", up to draft_tokens guesses checked per
        step; default: the engine's `draft` and `draft_tokens`). The text is what plain decoding gives:
        the same tokens when greedy, the same distribution when sampling; `last_stats` tells how many
        guesses were kept."""
        tok = self._require_tokenizer()
        ids = tok.encode_prompt(prompt) if isinstance(prompt, str) else list(prompt)
        return self._generate_ids(ids, max_tokens, Sampler(temperature, top_p, top_k, seed), stop, draft, draft_tokens)

    def chat(self, messages: list[dict], max_tokens: int = 1024, temperature: float = 0.8, top_p: float = 0.9,
             top_k: int = 0, seed: int | None = None, stop: list[str] | str | None = None, tools: list | None = None,
             draft: str | None = None, draft_tokens: int | None = None, **template_kwargs) -> Iterator["ChatPiece"]:
        """Streams the assistant's reply to a conversation, rendered with the model's chat template.

        Pieces are strings; `piece.kind` is "reasoning" for the model's <think> text and "answer" for the
        reply itself (the tags are removed), so `"".join(p for p in eng.chat(m) if p.kind == "answer")`
        is the answer alone. Generation stops at any of the model's eos tokens (for GLM: <|user|>,
        <|observation|>, <|endoftext|>)."""
        tok = self._require_tokenizer()
        text = self.apply_chat_template(messages, tools=tools, **template_kwargs)
        splitter = ThinkingSplitter(prompt_starts_in_thinking(text))
        for piece in self._generate_ids(tok.encode_chat(text), max_tokens, Sampler(temperature, top_p, top_k, seed), stop,
                                        draft, draft_tokens):
            for kind, part in splitter.push(piece):
                yield ChatPiece(part, kind)
        for kind, part in splitter.flush():
            yield ChatPiece(part, kind)

    def chat_reply(self, messages: list[dict], **kwargs) -> dict:
        """The whole reply at once, as an assistant message: {"role": "assistant", "content": answer,
        "reasoning_content": thinking}, plus "tool_calls" (OpenAI style) when the model called tools."""
        pieces = list(self.chat(messages, **kwargs))
        content, calls = split_tool_calls("".join(p for p in pieces if p.kind == "answer"))
        reply = {"role": "assistant", "content": content,
                 "reasoning_content": "".join(p for p in pieces if p.kind == "reasoning")}
        if calls:
            reply["tool_calls"] = calls
        return reply

    def _generate_ids(self, ids: list[int], max_tokens: int, sampler: Sampler, stop, draft=None,
                      draft_tokens=None) -> Iterator[str]:
        """Text pieces of one generation, run by the scheduler (with whatever else runs at the time)."""
        tok = self._require_tokenizer()
        if len(ids) > self.context_length:
            raise ValueError(f"the prompt has {len(ids)} tokens but the context holds {self.context_length} "
                             f"(raise max_seq_len, up to the model's {self.layout.params.get('max_seq_len')})")
        request = self.scheduler.submit(ids, sampler, max_tokens, stop_tokens=tok.eos_token_ids,
                                        draft=draft or self.draft, draft_tokens=draft_tokens or self.draft_tokens)
        self.last_stats = request.stats
        stream = TextStream(tok, stop)
        try:
            for token in request:
                if text := stream.push(token):
                    yield text
                if stream.stopped:
                    request.cancel()
                    request.stats.finish_reason = "stop"
                    break
            if text := stream.flush():
                yield text
        finally:
            request.cancel()  # frees the slot when the caller stops iterating early
