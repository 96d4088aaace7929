"""GGUF import: files laid out as llama.cpp writes them convert to the same model. The oracle is
transformers' own GGUF loading (from_pretrained(..., gguf_file=...)) for the architectures it reads
(llama, qwen3, qwen3moe), and the HF model the file was written from for the others (glm4, glm4moe,
deepseek2 = GLM-4.7-Flash)."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from gguf_files import Q, write_gguf
from hf_models import reference_logits, sequence, with_clear_routing, random_model

from dllama_py import Engine, _core
from dllama_py.architectures import read_layout
from dllama_py.convert import convert
from dllama_py.hf_config import UnsupportedModelError
from dllama_py.tokenizer import Tokenizer, bundle_path

TEXTS = ["the quick brown fox jumps over the lazy dog", "Paris 2024: 12345 cafés, naïve 東京!",
         "  two spaces\n\nnewlines\tand tabs ", "<|im_start|>user\nit's <think>fine</think><|im_end|>", "x = f(y) + [1, 2]"]


def logits(path, ids, threads=2):
    with Engine(path, threads=threads) as eng:
        return eng.forward(ids)


def transformers_gguf(directory, name="m.gguf"):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(directory), gguf_file=name, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(str(directory), gguf_file=name)


# (model name in hf_models, config overrides, GGUF tensor types in turn, tokenizer pre, add_bos)
TRANSFORMERS_CASES = {
    "llama": ("llama", {}, (Q.Q4_0, Q.Q8_0, Q.F16, Q.Q4_0), "llama-bpe", True),
    # transformers reads no head_dim from a qwen3 GGUF and assumes 128
    "qwen3": ("qwen3", dict(head_dim=128, num_attention_heads=2, num_key_value_heads=1), (Q.Q8_0, Q.BF16, Q.Q4_1, Q.Q5_0),
              "qwen2", False),
    # ... nor an expert width (its default is 768)
    "qwen3_moe": ("qwen3_moe", dict(moe_intermediate_size=768), (Q.Q4_0, Q.F16, Q.Q5_1, Q.Q8_0), "qwen2", False),
    # K-quants need rows of 256 values
    "llama_kquants": ("llama", dict(hidden_size=256, intermediate_size=512),
                      (Q.Q4_K, Q.Q6_K, Q.Q5_K, Q.Q3_K, Q.Q2_K, Q.Q4_1), "gpt-2", False),
}


@pytest.fixture(scope="module", params=list(TRANSFORMERS_CASES))
def transformers_case(request, tmp_path_factory):
    name, overrides, qtypes, pre, add_bos = TRANSFORMERS_CASES[request.param]
    directory = tmp_path_factory.mktemp(request.param)
    ids = sequence(384)
    model = with_clear_routing(lambda seed: random_model(name, seed, **overrides), ids)
    model.save_pretrained(directory / "hf")
    path = write_gguf(directory / "m.gguf", directory / "hf", qtypes, pre=pre, add_bos=add_bos)
    reference, hf_tokenizer = transformers_gguf(directory)
    return request.param, path, ids, reference_logits(reference, ids), hf_tokenizer


def test_f32_matches_transformers_gguf_loading(transformers_case, tmp_path):
    name, path, ids, ref, _ = transformers_case
    convert(path, tmp_path / "m.m", dtype="f32", progress=False, log=lambda *a: None)
    ours = logits(tmp_path / "m.m", ids)
    assert np.abs(ours - ref).max() <= 1e-3 * ref.std()


def test_tokenizer_matches_transformers_gguf_loading(transformers_case, tmp_path):
    _, path, _, _, hf_tokenizer = transformers_case
    convert(path, tmp_path / "m.m", dtype="f32", progress=False, log=lambda *a: None)
    ours = Tokenizer.load(bundle_path(tmp_path / "m.m"))
    for text in TEXTS:
        assert ours.encode_prompt(text) == hf_tokenizer(text).input_ids, text
        assert ours.decode(ours.encode_prompt(text), skip_special_tokens=True) == hf_tokenizer.decode(
            hf_tokenizer(text).input_ids, skip_special_tokens=True)
    messages = [{"role": "user", "content": "Hi there"}]
    assert ours.render_chat(messages) == hf_tokenizer.apply_chat_template(messages, tokenize=False,
                                                                          add_generation_prompt=True)
    assert ours.eos_token_ids == [ours.token_to_id("<|im_end|>"), ours.token_to_id("<|endoftext|>")]


def test_q4_0_and_q8_0_blocks_are_copied_as_they_are(transformers_case, tmp_path):
    name, path, ids, ref, _ = transformers_case
    out = tmp_path / "m.m"
    convert(path, out, dtype="q40", progress=False, log=lambda *a: None)
    reader = gguf.GGUFReader(path)
    stored = {t.name: t for t in reader.tensors}
    data = out.read_bytes()
    ours_type = {Q.Q4_0: "Q40", Q.Q8_0: "Q80"}
    copied = 0
    for t in read_layout(out).tensors:
        name_parts = t.spec.name.split(".")
        gguf_name = {"attn.q": "attn_q", "attn.k": "attn_k", "attn.v": "attn_v", "attn.o": "attn_output",
                     "ffn.gate": "ffn_gate", "ffn.up": "ffn_up", "ffn.down": "ffn_down"}.get(".".join(name_parts[2:]))
        if gguf_name is None:
            continue
        src = stored[f"blk.{name_parts[1]}.{gguf_name}.weight"]
        if ours_type.get(src.tensor_type) == t.dtype.name:
            # Llama's q/k: llama.cpp's row order is ours, so undoing it and redoing it leaves the bytes.
            assert data[t.offset:t.offset + t.nbytes] == src.data.tobytes(), t.spec.name
            copied += 1
    if name in ("llama", "qwen3_moe"):
        assert copied > 0
    ours = logits(out, ids)  # the parity tests' Q40 criterion: near, and mostly the same top token
    assert np.abs(ours - ref).max() < ref.std() and np.mean(ours.argmax(-1) == ref.argmax(-1)) >= 0.5


def test_gguf_q4_0_and_q8_0_blocks_are_ours():
    """GGUF's Q4_0/Q8_0 read our Q40/Q80 bytes as the values our format defines (docs/model-format.md)."""
    x = np.random.default_rng(3).standard_normal(32 * 64).astype(np.float32)
    for quantize, qtype in ((_core.quantize_q40, Q.Q4_0), (_core.quantize_q80, Q.Q8_0)):
        blocks = np.frombuffer(quantize(x), np.uint8).reshape(64, -1)
        d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
        if qtype == Q.Q4_0:
            q = np.concatenate([blocks[:, 2:] & 15, blocks[:, 2:] >> 4], axis=1).astype(np.float32) - 8
        else:
            q = blocks[:, 2:].view(np.int8).astype(np.float32)
        assert np.array_equal(gguf.quants.dequantize(blocks, qtype).reshape(64, 32), q * d)


@pytest.mark.parametrize("name", ["glm4", "glm4_moe_46", "glm4_moe_lite", "glm4_moe_lite_noqlora", "llama3_rope"])
def test_architectures_transformers_cannot_load_match_the_source_model(tiny_models, tmp_path, name):
    hf_dir, ids, ref = tiny_models.hf(name)
    path = write_gguf(tmp_path / "m.gguf", hf_dir, (Q.F32,), pre="glm4")
    convert(path, tmp_path / "m.m", dtype="f32", progress=False, log=lambda *a: None)
    direct = tmp_path / "direct.m"
    convert(hf_dir, direct, dtype="f32", progress=False, log=lambda *a: None)
    # The same header as converting the checkpoint itself (but for Llama 3 RoPE scaling, whose GGUF table
    # fixes only the parameters' ratios), and the same logits as transformers.
    if name != "llama3_rope":
        assert read_layout(tmp_path / "m.m").params == read_layout(direct).params
    ours = logits(tmp_path / "m.m", ids)
    assert np.abs(ours - ref).max() <= 1e-3 * ref.std()


def test_mtp_layers_counted_as_blocks_are_skipped(tiny_models, tmp_path):
    """llama.cpp counts GLM's multi-token-prediction layer into block_count and says so in nextn_predict_layers."""
    hf_dir, ids, ref = tiny_models.hf("glm4_moe_air")
    path = write_gguf(tmp_path / "m.gguf", hf_dir, (Q.F32,), mtp_layer=True)
    messages = []
    convert(path, tmp_path / "m.m", dtype="f32", progress=False, log=messages.append)
    assert any("Skipping layer(s) 3" in m for m in messages)
    assert np.abs(logits(tmp_path / "m.m", ids) - ref).max() <= 1e-3 * ref.std()


def test_llama_3_rope_table_gives_back_its_parameters(tmp_path):
    """Llama 3.2's RoPE scaling (factor 32, frequency factors 1 and 4 over 8192 positions) comes back
    exactly from llama.cpp's rope_freqs table, so the header equals a conversion of the checkpoint."""
    rope = dict(rope_type="llama3", rope_theta=500000.0, factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                original_max_position_embeddings=8192)
    model = random_model("llama", 0, hidden_size=256, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=131072, rope_parameters=rope)
    model.save_pretrained(tmp_path / "hf")
    write_gguf(tmp_path / "m.gguf", tmp_path / "hf")
    for source, out in ((tmp_path / "m.gguf", tmp_path / "a.m"), (tmp_path / "hf", tmp_path / "b.m")):
        convert(source, out, dtype="f32", progress=False, log=lambda *a: None)
    assert read_layout(tmp_path / "a.m").params == read_layout(tmp_path / "b.m").params
    assert read_layout(tmp_path / "a.m").params["rope_scaling_factor"] == 32


def test_unsupported_gguf_is_named(tmp_path):
    path = tmp_path / "phi.gguf"
    w = gguf.GGUFWriter(str(path), "phi3")
    w.add_block_count(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UnsupportedModelError, match=r"phi.gguf: GGUF architecture 'phi3' is not supported"):
        convert(path, tmp_path / "out.m", progress=False, log=lambda *a: None)
    assert not (tmp_path / "out.m").exists()
