"""Writes a random Hugging Face checkpoint with the widths of a real model, for benchmarks.

    python benchmarks/make_model.py llama-1b /tmp/llama-1b
    dllama-py convert /tmp/llama-1b -o /tmp/llama-1b-q40.m --dtype q40
    dllama-py bench -m /tmp/llama-1b-q40.m

bf16 safetensors shards with a model.safetensors.index.json, like published checkpoints. The
weights are random (std 0.02), so the text is noise, but every byte is read as in the real model.
"""

from __future__ import annotations

import argparse
import json
import struct
from pathlib import Path

import numpy as np

PRESETS = {
    # A small model for demos and smoke tests (with a byte-level tokenizer and a ChatML template).
    "tiny": dict(model_type="llama", hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                 num_attention_heads=8, num_key_value_heads=4, vocab_size=320, rope_theta=10000.0),
    # Llama-3.2-1B's widths with a 32k vocabulary.
    "llama-1b": dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8, vocab_size=32000, rope_theta=500000.0),
    # GLM-4.5-Air's widths (106B-A12B): 1 dense layer then MoE layers; 3 layers instead of 46 by default.
    "glm45-air": dict(model_type="glm4_moe", hidden_size=4096, intermediate_size=10944, num_hidden_layers=3,
                      num_attention_heads=96, num_key_value_heads=8, head_dim=128, vocab_size=151552,
                      partial_rotary_factor=0.5, rope_theta=1000000.0, attention_bias=True, use_qk_norm=False,
                      moe_intermediate_size=1408, n_routed_experts=128, n_shared_experts=1, num_experts_per_tok=8,
                      first_k_dense_replace=1, n_group=1, topk_group=1, routed_scaling_factor=1.0,
                      norm_topk_prob=True, num_nextn_predict_layers=1),
    # GLM-4.7-Flash's widths (30B-A3B, multi-head latent attention): 1 dense layer then MoE layers.
    "glm47-flash": dict(model_type="glm4_moe_lite", hidden_size=2048, intermediate_size=10240, num_hidden_layers=3,
                        num_attention_heads=20, num_key_value_heads=20, q_lora_rank=768, kv_lora_rank=512,
                        qk_nope_head_dim=192, qk_rope_head_dim=64, v_head_dim=256, vocab_size=154880,
                        rope_theta=1000000.0, moe_intermediate_size=1536, n_routed_experts=64, n_shared_experts=1,
                        num_experts_per_tok=4, first_k_dense_replace=1, n_group=1, topk_group=1,
                        routed_scaling_factor=1.8, norm_topk_prob=True, num_nextn_predict_layers=1),
    # Qwen3-0.6B's widths.
    "qwen3-0.6b": dict(model_type="qwen3", hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                       rope_theta=1000000.0, tie_word_embeddings=True),
}


def mlp_shapes(prefix: str, h: int, ff: int) -> dict[str, tuple[int, ...]]:
    return {prefix + "gate_proj.weight": (ff, h), prefix + "up_proj.weight": (ff, h), prefix + "down_proj.weight": (h, ff)}


def tensor_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    h, ff, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    shapes = {"model.embed_tokens.weight": (v, h)}
    n_layers = cfg["num_hidden_layers"]
    # Published GLM-4.5 checkpoints carry a multi-token-prediction layer after the last: a full MoE layer
    # plus its input norms, input projection and head norm.
    for l in range(n_layers + cfg.get("num_nextn_predict_layers", 0)):
        p = f"model.layers.{l}."
        shapes |= {p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,)}
        if cfg.get("kv_lora_rank"):  # multi-head latent attention
            n, ql, kl = cfg["num_attention_heads"], cfg["q_lora_rank"], cfg["kv_lora_rank"]
            nope, rope, vd = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
            shapes |= {p + "self_attn.q_a_proj.weight": (ql, h), p + "self_attn.q_a_layernorm.weight": (ql,),
                       p + "self_attn.q_b_proj.weight": (n * (nope + rope), ql),
                       p + "self_attn.kv_a_proj_with_mqa.weight": (kl + rope, h),
                       p + "self_attn.kv_a_layernorm.weight": (kl,),
                       p + "self_attn.kv_b_proj.weight": (n * (nope + vd), kl),
                       p + "self_attn.o_proj.weight": (h, n * vd)}
        else:
            shapes |= {p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
                       p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q)}
        if cfg.get("attention_bias"):
            shapes |= {p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                       p + "self_attn.v_proj.bias": (kv,)}
        if cfg["model_type"] == "qwen3":
            shapes |= {p + "self_attn.q_norm.weight": (hd,), p + "self_attn.k_norm.weight": (hd,)}
        if l >= n_layers:
            shapes |= {p + "eh_proj.weight": (h, 2 * h), p + "enorm.weight": (h,), p + "hnorm.weight": (h,),
                       p + "shared_head.norm.weight": (h,)}
        if l < cfg.get("first_k_dense_replace", n_layers):
            shapes |= mlp_shapes(p + "mlp.", h, ff)
            continue
        e, mff = cfg["n_routed_experts"], cfg["moe_intermediate_size"]
        shapes |= {p + "mlp.gate.weight": (e, h), p + "mlp.gate.e_score_correction_bias": (e,)}
        for i in range(e):
            shapes |= mlp_shapes(f"{p}mlp.experts.{i}.", h, mff)
        shapes |= mlp_shapes(p + "mlp.shared_experts.", h, mff * cfg["n_shared_experts"])
    shapes["model.norm.weight"] = (h,)
    if not cfg.get("tie_word_embeddings"):
        shapes["lm_head.weight"] = (v, h)
    return shapes


def random_tensor(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> tuple[str, bytes]:
    """(safetensors dtype, bytes): norms are ones, the router's correction bias F32 as published, the
    rest bf16 with std 0.02."""
    if name.endswith("e_score_correction_bias"):
        return "F32", (0.01 * rng.standard_normal(shape, dtype=np.float32)).tobytes()
    x = np.ones(shape, np.float32) if name.endswith("norm.weight") else rng.standard_normal(shape, dtype=np.float32) * 0.02
    return "BF16", (x.view(np.uint32) >> 16).astype(np.uint16).tobytes()


def write_shard(path: Path, tensors: dict[str, tuple[tuple[int, ...], str, bytes]]):
    header, offset = {}, 0
    for name, (shape, dtype, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for _, _, data in tensors.values():
            f.write(data)


def write_checkpoint(cfg: dict, out: Path, shard_bytes: int = 2 << 30, seed: int = 0):
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    config = dict(cfg, architectures=[], rms_norm_eps=1e-5, max_position_embeddings=32768, hidden_act="silu",
                  torch_dtype="bfloat16")
    (out / "config.json").write_text(json.dumps(config, indent=2))
    shapes = tensor_shapes(cfg)
    shards: list[dict] = [{}]
    size = 0
    for name, shape in shapes.items():
        n = 2 * int(np.prod(shape))
        if size and size + n > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = shape
        size += n
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        write_shard(out / fname, {n: (s, *random_tensor(n, s, rng)) for n, s in shard.items()})
        weight_map |= {n: fname for n in shard}
        print(f"wrote {fname}")
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1))


CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_byte_tokenizer(out: Path, vocab_size: int):
    """A byte-level tokenizer (one token per byte, no merges) with ChatML special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok.add_special_tokens(specials)
    assert tok.get_vocab_size() <= vocab_size
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "chat_template": CHATML_TEMPLATE}, indent=1))
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": [tok.token_to_id(t) for t in specials[::2]]}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("preset", choices=sorted(PRESETS))
    ap.add_argument("output", type=Path)
    ap.add_argument("--layers", type=int, default=None, help="override the number of layers")
    args = ap.parse_args()
    cfg = dict(PRESETS[args.preset])
    if args.layers:
        cfg["num_hidden_layers"] = args.layers
    write_checkpoint(cfg, args.output)
    write_byte_tokenizer(args.output, cfg["vocab_size"])


if __name__ == "__main__":
    main()
