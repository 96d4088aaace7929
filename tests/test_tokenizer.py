"""Tokenizer bundles encode, decode and build chat prompts exactly like transformers' tokenizers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as HFBackend
from transformers import AutoTokenizer

from dllama_py.tokenizer import Tokenizer, build_bundle, bundle_path, write_bundle

SPECIAL = [
    "<|endoftext|>", "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>",
    "<|im_start|>", "<|im_end|>", "<|begin_of_text|>",
]  # fmt: skip
IDS = {token: i for i, token in enumerate(SPECIAL)}
CORPUS = [
    "héllo 世界 🙂",
    "The quick brown fox jumps over the lazy dog.",
    "hello world, hello there! Hello again.",
    "def double(x):\n    return x * 2\n",
]
GLM_TEMPLATE = (
    "[gMASK]<sop>{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CHATML_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TEXTS = [
    "hello world",
    "  The lazy fox, 世界 and 🙂 said héllo\n\nagain\t!",
    "<|user|>\nhi<|assistant|><think>hmm</think>ok<|extra|>",
    "unseen: 𝔘ñícødé 🚀 中文 ✓",
    "",
]
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "héllo 世界"}]


def train_backend() -> HFBackend:
    backend = HFBackend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS * 3, trainer)
    backend.add_tokens([AddedToken("<think>", normalized=False), AddedToken("</think>", normalized=False)])
    return backend


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def write_glm_dir(root: Path, backend: HFBackend) -> Path:
    """tokenizer.json prepends `[gMASK]<sop>`; a token exists only in tokenizer_config; template in .jinja."""
    directory = root / "glm"
    directory.mkdir()
    backend.post_processor = processors.TemplateProcessing(
        single="[gMASK] <sop> $A", pair="[gMASK] <sop> $A $B", special_tokens=[("[gMASK]", 1), ("<sop>", 2)]
    )
    backend.save(str(directory / "tokenizer.json"))
    extra_id = backend.get_vocab_size(with_added_tokens=True)
    write_json(directory / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "chat_template": "overridden by chat_template.jinja",
        "added_tokens_decoder": {
            "0": {"content": "<|endoftext|>", "special": True},
            str(extra_id): {"content": "<|extra|>", "special": True, "normalized": False},
        },
    })  # fmt: skip
    (directory / "chat_template.jinja").write_text(GLM_TEMPLATE, encoding="utf-8")
    glm_eos = [IDS["<|endoftext|>"], IDS["<|user|>"], IDS["<|observation|>"]]
    write_json(directory / "generation_config.json", {"eos_token_id": glm_eos})
    write_json(directory / "config.json", {"eos_token_id": IDS["<|endoftext|>"]})
    return directory


def write_llama_dir(root: Path, backend: HFBackend) -> Path:
    """tokenizer.json prepends BOS (as Llama 3's does); named templates in tokenizer_config."""
    directory = root / "llama"
    directory.mkdir()
    backend.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B", special_tokens=[("<|begin_of_text|>", IDS["<|begin_of_text|>"])]
    )
    backend.save(str(directory / "tokenizer.json"))
    write_json(directory / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": True,
        "bos_token": {"__type": "AddedToken", "content": "<|begin_of_text|>", "special": True},
        "eos_token": "<|im_end|>",
        "chat_template": [
            {"name": "default", "template": CHATML_TEMPLATE},
            {"name": "tool_use", "template": "unused"},
        ],
    })  # fmt: skip
    write_json(directory / "config.json", {"eos_token_id": [IDS["<|endoftext|>"], IDS["<|im_end|>"]]})
    return directory


def write_flagged_dir(root: Path, backend: HFBackend) -> Path:
    """No post-processor in tokenizer.json: transformers 5 then ignores add_bos_token/add_eos_token."""
    directory = root / "flagged"
    directory.mkdir()
    backend.post_processor = None
    backend.save(str(directory / "tokenizer.json"))
    write_json(directory / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": True,
        "add_eos_token": True,
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|im_end|>",
        "chat_template": CHATML_TEMPLATE,
    })  # fmt: skip
    return directory


@pytest.fixture(scope="session")
def hf_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tokenizers")
    backend = train_backend()
    return {
        "glm": write_glm_dir(root, backend),
        "llama": write_llama_dir(root, backend),
        "flagged": write_flagged_dir(root, backend),
    }


@pytest.fixture(scope="session")
def loaded(hf_dirs) -> dict[str, tuple[Tokenizer, object]]:
    """Per directory: (our tokenizer, read back from a written bundle; the transformers oracle)."""
    pairs = {}
    for name, directory in hf_dirs.items():
        path = bundle_path(directory / "model.m")
        write_bundle(build_bundle(directory), path)
        pairs[name] = (Tokenizer.load(path), AutoTokenizer.from_pretrained(directory))
    return pairs


def test_bundle_round_trip(hf_dirs, tmp_path):
    bundle = build_bundle(hf_dirs["glm"])
    path = bundle_path(tmp_path / "glm.m")
    assert path == tmp_path / "glm.m.tokenizer.json"
    write_bundle(bundle, path)
    assert json.loads(path.read_text(encoding="utf-8")) == bundle
    assert bundle["format"] == "dllama_py-tokenizer" and bundle["version"] == 1
    assert bundle["chat_template"] == GLM_TEMPLATE
    assert bundle["eos_token_ids"] == [IDS["<|endoftext|>"], IDS["<|user|>"], IDS["<|observation|>"]]
    assert bundle["bos_token"] is None and bundle["bos_token_id"] is None
    tokenizer = Tokenizer.load(path)
    assert tokenizer.eos_token_ids == bundle["eos_token_ids"]
    assert tokenizer.decode(tokenizer.encode("héllo 世界")) == "héllo 世界"


def test_bundle_fields_from_config(hf_dirs):
    bundle = build_bundle(hf_dirs["llama"])
    assert bundle["chat_template"] == CHATML_TEMPLATE  # "default" of the named templates
    assert bundle["bos_token"] == "<|begin_of_text|>" and bundle["bos_token_id"] == IDS["<|begin_of_text|>"]
    assert bundle["add_bos_token"] is True
    assert bundle["eos_token_ids"] == [IDS["<|endoftext|>"], IDS["<|im_end|>"]]  # config, then the tokenizer's


def test_missing_files_and_bad_bundles(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        build_bundle(tmp_path)
    with pytest.raises(FileNotFoundError, match="nothing.tokenizer.json"):
        Tokenizer.load(tmp_path / "nothing.tokenizer.json")
    not_bundle = tmp_path / "other.json"
    not_bundle.write_text('{"model": {}}')
    with pytest.raises(ValueError, match="not a valid tokenizer bundle"):
        Tokenizer.load(not_bundle)


@pytest.mark.parametrize("name", ["glm", "llama", "flagged"])
def test_encode_decode_match_transformers(loaded, name):
    ours, hf = loaded[name]
    assert ours.vocab_size == len(hf)
    for text in TEXTS:
        assert ours.encode(text) == hf.encode(text, add_special_tokens=False), text
        expected = hf(text)["input_ids"]
        assert ours.encode_prompt(text) == expected, text
        assert ours.decode(expected) == hf.decode(expected)
        assert ours.decode(expected, skip_special_tokens=True) == hf.decode(expected, skip_special_tokens=True)


def test_special_tokens_and_prompt_prefixes(loaded):
    glm, llama, flagged = (loaded[name][0] for name in ("glm", "llama", "flagged"))
    extra_id = loaded["glm"][1].convert_tokens_to_ids("<|extra|>")  # declared only in tokenizer_config
    assert glm.token_to_id("<|extra|>") == extra_id == glm.vocab_size - 1
    assert glm.encode("a<|extra|>b")[1] == extra_id and llama.token_to_id("<|extra|>") is None
    assert glm.encode_prompt("hi")[:2] == [IDS["[gMASK]"], IDS["<sop>"]]
    assert llama.encode_prompt("hi")[0] == IDS["<|begin_of_text|>"]
    assert flagged.encode_prompt("hi") == flagged.encode("hi")
    assert glm.id_to_token(IDS["<sop>"]) == "<sop>"


@pytest.mark.parametrize("name", ["glm", "llama"])
def test_chat_prompt_has_its_prefix_once(loaded, name):
    ours, hf = loaded[name]
    rendered = ours.render_chat(MESSAGES)
    assert rendered == hf.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    ids = ours.encode_chat(rendered)
    assert ids == hf.apply_chat_template(MESSAGES, add_generation_prompt=True)["input_ids"]
    prefix = IDS["[gMASK]"] if name == "glm" else IDS["<|begin_of_text|>"]
    assert ids.count(prefix) == 1 and ids[0] == prefix
    assert ours.encode_prompt(rendered).count(prefix) == 2  # why templated text must skip special tokens


@pytest.mark.parametrize("name", ["glm", "llama"])
def test_stream_decoder_never_splits_characters(loaded, name):
    ours, _ = loaded[name]
    text = "unseen: 𝔘ñícødé 🚀 中文 ✓ <|user|> héllo 世界 🙂"
    ids = ours.encode(text)
    decoder = ours.stream_decoder()
    pieces = [decoder.push(token_id) for token_id in ids]
    pieces.append(decoder.flush())
    assert "".join(pieces) == text == ours.decode(ids)
    assert not any("\ufffd" in piece for piece in pieces)
    assert pieces.count("") >= 3  # the unseen characters arrive as several byte tokens each
    assert len(ids) > len(set(pieces))


def test_stream_decoder_skips_special_tokens_and_flushes_partial_bytes(loaded):
    ours, _ = loaded["glm"]
    decoder = ours.stream_decoder(skip_special_tokens=True)
    streamed = "".join(decoder.push(i) for i in ours.encode("a<|user|>b 世界")) + decoder.flush()
    assert streamed == "ab 世界"
    lead_byte = ours.token_to_id("ä")  # byte 0xE4 alone: the start of a 3-byte character
    assert decoder.push(lead_byte) == ""
    assert decoder.flush() == "\ufffd"
    assert decoder.push(ours.token_to_id("hello")) == "hello"  # flush reset the decoder
