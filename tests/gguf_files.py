"""GGUF files written from tiny HF models the way llama.cpp's converter lays them out (its metadata keys,
tensor names from the gguf package's own table, Llama q/k rows permuted, experts stacked, MLA's kv_b
split), so the importer is tested on files shaped like the community's."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

Q = gguf.GGMLQuantizationType
ARCHS = {"llama": "LLAMA", "qwen3": "QWEN3", "qwen3_moe": "QWEN3MOE", "glm4": "GLM4", "glm4_moe": "GLM4_MOE",
         "glm4_moe_lite": "DEEPSEEK2"}
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
USER_DEFINED = ["<think>", "</think>"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
WORDS = ("the quick brown fox jumps over lazy dog capital France Paris river mountain 2024 12345 hello world "
         "über café naïve 東京 मौसम code def return if else while print ( ) [ ] { } : ; , . ! ? ' \" - + = * / "
         "it's don't we'll they're I've").split()


def tiny_tokenizer(vocab_size: int) -> Tokenizer:
    """A byte-level BPE tokenizer of exactly vocab_size tokens (the GGUF's token list)."""
    rng = np.random.default_rng(0)
    corpus = [" ".join(rng.choice(WORDS, 40)) + "\n" for _ in range(400)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(USER_DEFINED), special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    assert tok.get_vocab_size() == vocab_size - len(USER_DEFINED), "corpus too small for the vocabulary"
    return tok


def add_tokenizer(writer: gguf.GGUFWriter, vocab_size: int, pre: str, add_bos: bool):
    tok = tiny_tokenizer(vocab_size)
    model = json.loads(tok.to_str())["model"]
    tokens = [tok.id_to_token(i) for i in range(tok.get_vocab_size())] + USER_DEFINED
    types = [3 if t in SPECIAL else 1 for t in tokens[:-len(USER_DEFINED)]] + [4] * len(USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index("<|im_start|>"))
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_eot_token_id(tokens.index("<|endoftext|>"))
    writer.add_add_bos_token(add_bos)
    writer.add_chat_template(CHAT_TEMPLATE)


def _llama_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _encode(w: np.ndarray, qtype) -> tuple[np.ndarray, object]:
    """(data, raw type) for GGUFWriter.add_tensor: vectors stay F32; a matrix whose rows are not whole
    blocks of qtype falls back to F16, as llama.cpp does."""
    if w.ndim == 1 or qtype == Q.F32:
        return w.astype(np.float32), None
    if qtype == Q.F16:
        return w.astype(np.float16), None
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if w.shape[-1] % block:
        return w.astype(np.float16), None
    if qtype in (Q.Q4_K, Q.Q6_K, Q.Q5_K, Q.Q3_K, Q.Q2_K):  # gguf can read these but not write them
        return random_blocks(w.shape, qtype), qtype
    return gguf.quants.quantize(w.astype(np.float32), qtype), qtype


def random_blocks(shape: tuple[int, ...], qtype) -> np.ndarray:
    """Random K-quant blocks with small f16 scales (values of a few hundredths): stand-ins for weights."""
    rng = np.random.default_rng(int(np.prod(shape)) % 1000 + int(qtype))
    block, nbytes = gguf.GGML_QUANT_SIZES[qtype]
    data = rng.integers(0, 256, (*shape[:-1], shape[-1] // block, nbytes), dtype=np.uint8)
    scales = {Q.Q4_K: [(0, 1e-4), (2, 3e-4)], Q.Q5_K: [(0, 5e-5), (2, 2e-4)], Q.Q6_K: [(208, 2e-5)],
              Q.Q3_K: [(108, 1e-3)], Q.Q2_K: [(80, 1e-3), (82, 1e-3)]}[qtype]
    for offset, scale in scales:
        data[..., offset:offset + 2] = np.full(data.shape[:-1], scale, np.float16)[..., None].view(np.uint8)
    return data.reshape(*shape[:-1], -1)


def write_gguf(path: Path, hf_dir: Path, qtypes=(Q.F32,), pre: str = "gpt-2", add_bos: bool = False,
               tokenizer: bool = True, mtp_layer: bool = False) -> Path:
    """Writes the tiny HF model saved in hf_dir as a GGUF file; 2-D weights take the types in qtypes in turn.
    mtp_layer: a multi-token-prediction layer after the last, counted into block_count as llama.cpp does."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(hf_dir)
    model_type = cfg.model_type
    arch = getattr(gguf.MODEL_ARCH, ARCHS[model_type])
    arch_name = gguf.MODEL_ARCH_NAMES[arch]
    state = load_file(str(hf_dir / "model.safetensors"))
    n_layers, n_heads = cfg.num_hidden_layers, cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", n_heads)
    rope = dict(cfg.rope_parameters or {})
    w = gguf.GGUFWriter(str(path), arch_name)
    w.add_block_count(n_layers + mtp_layer)
    if mtp_layer:
        w.add_nextn_predict_layers(1)
        w.add_tensor(f"blk.{n_layers}.nextn.eh_proj.weight", np.zeros((cfg.hidden_size, 2 * cfg.hidden_size), np.float32))
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(n_heads)
    w.add_head_count_kv(1 if model_type == "glm4_moe_lite" else n_kv)
    w.add_rope_freq_base(rope.get("rope_theta", 10000.0))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    if model_type == "glm4_moe_lite":
        w.add_rope_dimension_count(cfg.qk_rope_head_dim)
        if cfg.q_lora_rank:
            w.add_q_lora_rank(cfg.q_lora_rank)
        w.add_kv_lora_rank(cfg.kv_lora_rank)
        w.add_key_length(cfg.kv_lora_rank + cfg.qk_rope_head_dim)
        w.add_value_length(cfg.kv_lora_rank)
        w.add_key_length_mla(cfg.qk_nope_head_dim + cfg.qk_rope_head_dim)
        w.add_value_length_mla(cfg.v_head_dim)
    else:
        w.add_rope_dimension_count(int(head_dim * rope.get("partial_rotary_factor", 1.0)))
        if model_type != "llama":
            w.add_key_length(head_dim)
            w.add_value_length(head_dim)
    if model_type in ("qwen3_moe", "glm4_moe", "glm4_moe_lite"):
        w.add_expert_count(getattr(cfg, "num_experts", None) or cfg.n_routed_experts)
        w.add_expert_used_count(cfg.num_experts_per_tok)
        w.add_expert_feed_forward_length(cfg.moe_intermediate_size)
    if model_type in ("glm4_moe", "glm4_moe_lite"):
        dense = (cfg.mlp_layer_types.count("dense") if model_type == "glm4_moe_lite" else cfg.first_k_dense_replace)
        w.add_leading_dense_block_count(dense)
        w.add_expert_shared_count(cfg.n_shared_experts)
        w.add_expert_weights_scale(cfg.routed_scaling_factor)
        w.add_expert_weights_norm(cfg.norm_topk_prob)
        w.add_expert_group_count(cfg.n_group)
        w.add_expert_group_used_count(cfg.topk_group)
        if model_type == "glm4_moe":  # llama.cpp writes the gating function for glm4moe only
            w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
    if rope.get("rope_type") == "llama3":
        w.add_tensor("rope_freqs.weight", llama3_rope_factors(rope, head_dim))
    if tokenizer:
        add_tokenizer(w, cfg.vocab_size, pre, add_bos)

    names = gguf.get_tensor_name_map(arch, n_layers)
    stacks: dict[str, list] = {}
    i = 0
    for name in sorted(state):
        t = state[name].astype(np.float32)
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        if model_type == "llama" and name.endswith("q_proj.weight"):
            t = _llama_permute(t, n_heads)
        if model_type == "llama" and name.endswith("k_proj.weight"):
            t = _llama_permute(t, n_kv)
        parts = name.split(".")
        if ".mlp.experts." in name:  # stacked once all of a layer's experts are seen
            key = ".".join(parts[:5] + parts[6:])
            stacks.setdefault(key, []).append((int(parts[5]), t))
            continue
        if name.endswith("kv_b_proj.weight"):
            nope, v = cfg.qk_nope_head_dim, cfg.v_head_dim
            per_head = t.reshape(n_heads, nope + v, -1)
            split = {"k_b_proj": per_head[:, :nope].transpose(0, 2, 1), "v_b_proj": per_head[:, nope:]}
            for part, value in split.items():
                data, raw = _encode(np.ascontiguousarray(value), qtypes[i % len(qtypes)])
                w.add_tensor(names.get_name(name.replace("kv_b_proj", part), (".weight",)), data, raw_dtype=raw)
            i += 1
            continue
        lookup = name.replace("e_score_correction_bias", "e_score_correction.bias")
        data, raw = _encode(t, qtypes[i % len(qtypes)])
        i += data.ndim > 1
        w.add_tensor(names.get_name(lookup, (".weight", ".bias")), data, raw_dtype=raw)
    for key, experts in sorted(stacks.items()):
        stacked = np.stack([t for _, t in sorted(experts, key=lambda e: e[0])])
        data, raw = _encode(stacked, qtypes[i % len(qtypes)])
        i += 1
        w.add_tensor(names.get_name(key, (".weight",)), data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def llama3_rope_factors(rope: dict, head_dim: int) -> np.ndarray:
    """llama.cpp's rope_freqs table for Llama 3.1 scaling: each frequency's wavelength divisor."""
    freqs = 1.0 / rope["rope_theta"] ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * np.pi / freqs
    context, low, high, factor = (rope["original_max_position_embeddings"], rope["low_freq_factor"],
                                  rope["high_freq_factor"], rope["factor"])
    smooth = (context / wavelen - low) / (high - low)
    return np.where(wavelen < context / high, 1.0, np.where(wavelen > context / low, factor,
                                                             1 / ((1 - smooth) / factor + smooth))).astype(np.float32)
