"""Multi-head latent attention (GLM-4.7-Flash): a long decode against transformers, and the size of
the compressed KV cache."""

from __future__ import annotations

import numpy as np
import torch
from hf_models import CONFIGS, random_model

from dllama_py import Engine
from dllama_py.architectures import kv_cache_values_per_token, plan_conversion
from dllama_py.convert import convert

# GLM-4.7-Flash's published config (the fields that shape the cache).
GLM_4_7_FLASH = dict(model_type="glm4_moe_lite", vocab_size=154880, hidden_size=2048, intermediate_size=10240,
                     num_hidden_layers=47, num_attention_heads=20, num_key_value_heads=20, q_lora_rank=768,
                     kv_lora_rank=512, qk_nope_head_dim=192, qk_rope_head_dim=64, v_head_dim=256,
                     moe_intermediate_size=1536, n_routed_experts=64, n_shared_experts=1, num_experts_per_tok=4,
                     first_k_dense_replace=1, n_group=1, topk_group=1, routed_scaling_factor=1.8,
                     norm_topk_prob=True, rope_theta=1000000.0, max_position_embeddings=202752,
                     rms_norm_eps=1e-5, eos_token_id=[154820, 154827, 154829])


def test_cache_holds_the_compressed_latent_only():
    params = plan_conversion(GLM_4_7_FLASH).params
    assert kv_cache_values_per_token(params) == 47 * 576  # 512 latent + 64 rope key per layer
    naive = 47 * 20 * (256 + 256)  # keys and values of 20 heads
    assert naive / 576 / 47 > 17


def test_thousand_token_decode_stays_within_f32_bound(tmp_path):
    model = random_model("glm4_moe_lite", 0, max_position_embeddings=2048)
    model.save_pretrained(tmp_path / "hf")
    ids = np.random.default_rng(5).integers(0, CONFIGS["glm4_moe_lite"][1]["vocab_size"], 1040).tolist()
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].float().numpy()
    convert(tmp_path / "hf", tmp_path / "m.m", dtype="f32", progress=False, log=lambda *a: None)
    with Engine(tmp_path / "m.m", max_seq_len=2048) as eng:
        assert eng.kv_cache_bytes == 3 * (64 + 16) * 4 * 2048  # f32: 80 values per token and layer
        ours = [eng.forward(ids[:16])] + [eng.forward([t]) for t in ids[16:]]
    ours = np.concatenate(ours)
    err = np.abs(ours - ref).max(axis=1) / ref.std()
    assert err.max() <= 1e-3, f"max error {err.max():.2e} x std (at position {err.argmax()})"
    assert err[-8:].max() <= 1e-3


def test_yarn_scaling_matches(tmp_path):
    """DeepSeek-style YaRN: scaled frequencies, cos/sin attention factor and mscale^2 in the softmax."""
    yarn = dict(rope_type="yarn", rope_theta=1000000.0, factor=4.0, original_max_position_embeddings=64,
                mscale=1.0, mscale_all_dim=0.707, beta_fast=32.0, beta_slow=1.0)
    model = random_model("glm4_moe_lite", 0, rope_parameters=yarn)
    model.save_pretrained(tmp_path / "hf")
    ids = np.random.default_rng(6).integers(0, 384, 200).tolist()  # well past the original 64 positions
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].float().numpy()
    convert(tmp_path / "hf", tmp_path / "m.m", dtype="f32", progress=False, log=lambda *a: None)
    with Engine(tmp_path / "m.m") as eng:
        ours = np.concatenate([eng.forward(ids[:64])] + [eng.forward(ids[i:i + 17]) for i in range(64, 200, 17)])
    assert np.abs(ours - ref).max() <= 1e-3 * ref.std()
