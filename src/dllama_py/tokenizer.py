"""Tokenizer bundles: one JSON file next to a converted model with everything needed to encode, decode and
build chat prompts, read from a Hugging Face checkpoint directory.

Encoding follows transformers 5: `encode_prompt(text)` matches `tokenizer(text)`, where tokenizer.json's own
post-processor adds BOS or a prefix such as GLM's `[gMASK]<sop>` (tokenizer_config's add_bos_token/add_eos_token
are ignored when a tokenizer.json exists), while `encode_chat(rendered)` matches
`apply_chat_template(tokenize=True)`, which encodes the rendered template without special tokens because the
template already wrote them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import AddedToken

from .chat_template import render_chat_template
from .json_files import read_json_object

TOKENIZER_SUFFIX = ".tokenizer.json"
BUNDLE_FORMAT = "dllama_py-tokenizer"
BUNDLE_VERSION = 1
# The named special tokens transformers passes to chat templates (its `special_tokens_map`).
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class TokenizerError(ValueError):
    """A tokenizer bundle or checkpoint tokenizer that cannot be used; the message names the file."""


def bundle_path(model_path: str | Path) -> Path:
    """Where the tokenizer bundle of a converted model lives: `qwen3.m` -> `qwen3.m.tokenizer.json`."""
    return Path(str(model_path) + TOKENIZER_SUFFIX)


# --------------------------------------------------------------------------------------------------- building


def build_bundle(hf_dir: str | Path) -> dict[str, Any]:
    """Collect the tokenizer, chat template and stop tokens of a Hugging Face checkpoint directory."""
    hf_dir = Path(hf_dir)
    tokenizer_file = hf_dir / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise FileNotFoundError(f"no tokenizer.json in {hf_dir} (expected {tokenizer_file})")
    tokenizer_config = _read_json(hf_dir / "tokenizer_config.json")
    special_tokens = _special_tokens(tokenizer_config, _read_json(hf_dir / "special_tokens_map.json"))
    try:
        backend = tokenizers.Tokenizer.from_file(str(tokenizer_file))
    except Exception as error:  # the tokenizers library raises a bare Exception for a bad tokenizer.json
        raise TokenizerError(f"{tokenizer_file}: cannot be loaded: {error}") from None
    try:
        added = _add_missing_tokens(backend, tokenizer_config, special_tokens)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise TokenizerError(f"{hf_dir / 'tokenizer_config.json'}: unusable added tokens: {error!r}") from None
    tokenizer_json = json.loads(backend.to_str()) if added else _read_json(tokenizer_file)

    model_configs = [_read_json(hf_dir / "generation_config.json"), _text_config(_read_json(hf_dir / "config.json"))]
    bos_token, eos_token = special_tokens.get("bos_token"), special_tokens.get("eos_token")
    bundle = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "tokenizer": tokenizer_json,
        "chat_template": _chat_template(hf_dir, tokenizer_config),
        "bos_token": bos_token,
        "eos_token": eos_token,
        "bos_token_id": _bos_token_id(backend, bos_token, model_configs),
        "eos_token_ids": _eos_token_ids(backend, eos_token, model_configs),
        # Informational: with a tokenizer.json, transformers 5 ignores this flag and so does encode_prompt.
        "add_bos_token": bool(tokenizer_config.get("add_bos_token", False)),
        "special_tokens": special_tokens,
    }
    try:
        _check_bundle(bundle)  # what the engine will check when it loads the bundle
    except TokenizerError as error:
        raise TokenizerError(f"{hf_dir}: the tokenizer files give an unusable bundle: {error}") from None
    return bundle


def write_bundle(bundle: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(bundle, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")


def _read_json(path: Path) -> dict[str, Any]:
    return read_json_object(path, TokenizerError) if path.is_file() else {}


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    """Multimodal checkpoints keep the language model's settings under `text_config`."""
    text_config = config.get("text_config")
    return {**(text_config if isinstance(text_config, dict) else {}), **config}


def _token_content(token: Any) -> str | None:
    """A special token from tokenizer_config: a string or a serialized AddedToken ({"content": ...})."""
    if isinstance(token, dict):
        token = token.get("content")
    return token if isinstance(token, str) and token else None


def _special_tokens(tokenizer_config: dict[str, Any], special_tokens_map: dict[str, Any]) -> dict[str, str]:
    tokens = {}
    for name in SPECIAL_TOKEN_NAMES:
        value = tokenizer_config[name] if name in tokenizer_config else special_tokens_map.get(name)
        if (content := _token_content(value)) is not None:
            tokens[name] = content
    return tokens


def _chat_template(hf_dir: Path, tokenizer_config: dict[str, Any]) -> str | None:
    """chat_template.jinja (transformers 5) wins over tokenizer_config's `chat_template` (a string or named list)."""
    jinja_file = hf_dir / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):
        if not all(isinstance(entry, dict) and isinstance(entry.get("name"), str) for entry in template):
            raise TokenizerError(f"{hf_dir / 'tokenizer_config.json'}: chat_template is a list without names")
        template = {entry["name"]: entry.get("template") for entry in template}.get("default")
    if template is not None and not isinstance(template, str):
        raise TokenizerError(f"{hf_dir / 'tokenizer_config.json'}: chat_template is {type(template).__name__}, "
                             "not a string")
    return template


def _add_missing_tokens(backend: tokenizers.Tokenizer, config: dict[str, Any], special: dict[str, str]) -> bool:
    """Add the tokens tokenizer_config declares (added_tokens_decoder, special tokens) that tokenizer.json lacks."""
    present = {token.content for token in backend.get_added_tokens_decoder().values()}
    declared = sorted(config.get("added_tokens_decoder", {}).items(), key=lambda item: int(item[0]))
    missing = [_added_token(spec) for _, spec in declared if spec["content"] not in present]
    extra = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
    if isinstance(extra, dict):  # named model-specific tokens, e.g. {"image_token": "<image>"}
        extra = list(extra.values())
    for content in [*special.values(), *(_token_content(token) for token in extra)]:
        if content and content not in present and all(token.content != content for token in missing):
            missing.append(AddedToken(content, special=True, normalized=False))
    for token in missing:
        if token.special:
            backend.add_special_tokens([token])
        else:
            backend.add_tokens([token])
    return bool(missing)


def _added_token(spec: dict[str, Any]) -> AddedToken:
    flags = ("single_word", "lstrip", "rstrip", "normalized", "special")
    return AddedToken(spec["content"], **{flag: spec[flag] for flag in flags if flag in spec})


def _bos_token_id(backend: tokenizers.Tokenizer, bos_token: str | None, model_configs: list[dict]) -> int | None:
    """The tokenizer's BOS token, else the model config's `bos_token_id` (whether a prompt gets it is up to
    tokenizer.json's post-processor)."""
    if bos_token is not None and (token_id := backend.token_to_id(bos_token)) is not None:
        return token_id
    return next((ids[0] for c in model_configs if (ids := _as_id_list(c.get("bos_token_id")))), None)


def _eos_token_ids(backend: tokenizers.Tokenizer, eos_token: str | None, model_configs: list[dict]) -> list[int]:
    """Every id that ends generation: generation_config's, then config.json's, then the tokenizer's EOS token."""
    ids = [token_id for config in model_configs for token_id in _as_id_list(config.get("eos_token_id"))]
    if eos_token is not None and (token_id := backend.token_to_id(eos_token)) is not None:
        ids.append(token_id)
    return list(dict.fromkeys(ids))


def _as_id_list(value: Any) -> list[int]:
    values = value if isinstance(value, list) else [value]
    return [v for v in values if type(v) is int and 0 <= v < 2**31]


# ---------------------------------------------------------------------------------------------------- loading


class Tokenizer:
    """Encoder/decoder and chat-prompt builder backed by a tokenizer bundle."""

    def __init__(self, bundle: dict[str, Any]):
        _check_bundle(bundle)
        try:
            self._backend = tokenizers.Tokenizer.from_str(json.dumps(bundle["tokenizer"]))
        except Exception as error:  # the tokenizers library raises a bare Exception for a bad tokenizer.json
            raise TokenizerError(f"its tokenizer cannot be loaded: {error}") from None
        self.chat_template: str | None = bundle.get("chat_template")
        self.special_tokens: dict[str, str] = dict(bundle.get("special_tokens", {}))
        self.bos_token: str | None = bundle.get("bos_token")
        self.eos_token: str | None = bundle.get("eos_token")
        self.bos_token_id: int | None = bundle.get("bos_token_id")
        self.eos_token_ids: list[int] = list(bundle.get("eos_token_ids", []))

    @classmethod
    def from_bundle(cls, bundle: dict[str, Any]) -> Tokenizer:
        return cls(bundle)

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """From a bundle file, or from a Hugging Face checkpoint directory or the tokenizer.json in one."""
        path = Path(path)
        if path.is_dir():
            return cls(build_bundle(path))
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer not found: {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if path.name == "tokenizer.json" and isinstance(data, dict) and "model" in data and "format" not in data:
                return cls(build_bundle(path.parent))
            return cls(data)
        except (OSError, ValueError) as error:  # JSON, UTF-8 and TokenizerError are ValueErrors
            raise TokenizerError(f"{path} is not a valid tokenizer bundle or Hugging Face tokenizer.json: {error}") from None

    @property
    def vocab_size(self) -> int:
        """Number of token ids, added tokens included."""
        return self._backend.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._backend.id_to_token(token_id)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self._backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_prompt(self, text: str) -> list[int]:
        """A plain prompt, with the tokenizer's own BOS/prefix: transformers' `tokenizer(text)`."""
        return self.encode(text, add_special_tokens=True)

    def encode_chat(self, rendered: str) -> list[int]:
        """A rendered chat template, which already holds its special tokens: `apply_chat_template(tokenize=True)`."""
        return self.encode(rendered, add_special_tokens=False)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict | Callable] | None = None,
        add_generation_prompt: bool = True,
        **kwargs: Any,
    ) -> str:
        """Render the bundle's chat template, with the special tokens as template variables (as transformers)."""
        if self.chat_template is None:
            raise ValueError("this tokenizer has no chat template")
        template_vars = {**self.special_tokens, **kwargs}
        return render_chat_template(self.chat_template, messages, tools, add_generation_prompt, **template_vars)

    def stream_decoder(self, skip_special_tokens: bool = False) -> StreamDecoder:
        return StreamDecoder(self, skip_special_tokens)


def _check_bundle(bundle: Any) -> None:
    """The bundle's fields have the types the Tokenizer reads them as."""
    if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
        raise TokenizerError(f"not a {BUNDLE_FORMAT} bundle")
    if bundle.get("version") != BUNDLE_VERSION:
        raise TokenizerError(f"unsupported tokenizer bundle version {bundle.get('version')!r}")
    expected = {"tokenizer": (dict,), "chat_template": (str, type(None)), "bos_token": (str, type(None)),
                "eos_token": (str, type(None)), "bos_token_id": (int, type(None)), "eos_token_ids": (list,),
                "special_tokens": (dict,)}
    for key, types in expected.items():
        if key in bundle and not isinstance(bundle[key], types) or key == "tokenizer" and key not in bundle:
            raise TokenizerError(f"field {key!r} is {type(bundle.get(key)).__name__}, expected "
                                 f"{' or '.join(t.__name__ for t in types)}")
    ids = bundle.get("eos_token_ids", []) + [bundle.get("bos_token_id") or 0]
    if any(not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < 2**31 for i in ids):
        raise TokenizerError(f"token ids must be int32 values from 0, got {ids}")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in bundle.get("special_tokens", {}).items()):
        raise TokenizerError("special_tokens must map names to strings")


class StreamDecoder:
    """Turns generated ids into text as it becomes final, never splitting a UTF-8 character.

    The pending ids are decoded together and only their stable prefix is emitted: a trailing U+FFFD means
    the last character's bytes are still incomplete. Once the text is complete the window restarts from the
    last id, which stays as context so decoders that strip a leading space decode the next token right.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False):
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        self._ids: list[int] = []
        self._emitted = 0  # characters of decode(self._ids) already returned

    def push(self, token_id: int) -> str:
        """Add one id; return the newly completed text (possibly "")."""
        self._ids.append(token_id)
        text = self._decode(self._ids)
        stable = len(text.rstrip("\ufffd"))
        new_text = text[self._emitted : stable]
        self._emitted = max(self._emitted, stable)
        if stable == len(text):
            self._ids = self._ids[-1:]
            self._emitted = len(self._decode(self._ids))
        return new_text

    def flush(self) -> str:
        """Return whatever is still held back (e.g. an unfinished character, as U+FFFD) and reset."""
        rest = self._decode(self._ids)[self._emitted :]
        self._ids, self._emitted = [], 0
        return rest

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip_special_tokens)
