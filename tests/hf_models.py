"""Tiny random Hugging Face models for the parity tests, saved as safetensors checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Every tiny model runs this 24-token sequence: 16 as one prefill chunk, then 8 single tokens.
SEQUENCE_SEED = 1234
N_PREFILL, N_DECODE = 16, 8

COMMON = dict(vocab_size=384, hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
              max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=False)

CONFIGS: dict[str, tuple[str, dict]] = {
    "llama": ("llama", dict(COMMON, num_key_value_heads=2, rope_theta=10000.0)),
    "llama_tied": ("llama", dict(COMMON, num_key_value_heads=4, tie_word_embeddings=True, rope_theta=500000.0)),
    "llama3_rope": ("llama", dict(COMMON, num_key_value_heads=2, rope_parameters=dict(
        rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=32))),
    "mistral": ("mistral", dict(COMMON, num_key_value_heads=1, sliding_window=None, rope_theta=1000000.0)),
    "qwen3": ("qwen3", dict(COMMON, num_key_value_heads=2, head_dim=32, rope_theta=1000000.0)),
    # glm-4-9b-chat-hf's shape in small: q/k/v biases, half rotary (interleaved), its tiny eps.
    "glm": ("glm", dict(COMMON, num_key_value_heads=2, head_dim=32, partial_rotary_factor=0.5, rope_theta=10000.0,
                        attention_bias=True, rms_norm_eps=1.5625e-07, pad_token_id=0, eos_token_id=[1, 2])),
    # GLM-4-0414: the same plus sandwich norms; head_dim 64 so q is wider than the hidden size.
    "glm4": ("glm4", dict(COMMON, num_key_value_heads=1, head_dim=64, partial_rotary_factor=0.5, rope_theta=10000.0,
                          attention_bias=True, pad_token_id=0, eos_token_id=[1, 2])),
}


def sequence(vocab_size: int) -> list[int]:
    rng = np.random.default_rng(SEQUENCE_SEED)
    return rng.integers(0, vocab_size, N_PREFILL + N_DECODE).tolist()


def build(name: str, directory: Path):
    """Creates the named tiny model with random weights (norm weights and biases randomized too, so
    that a missing or misplaced one changes the logits), saves it, returns (model, token ids)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    model_type, kwargs = CONFIGS[name]
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, **kwargs)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "post_self_attn_layernorm" in pname or "post_mlp_layernorm" in pname:
                # GLM-4's sandwich norms set each block's output scale: keep it below the residual
                # stream's, as in trained models, so that quantization noise is not amplified.
                p.copy_(0.3 * (1.0 + 0.2 * torch.randn_like(p)))
            elif pname.endswith("norm.weight") or "layernorm" in pname:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif "embed_tokens" in pname:
                p.copy_(torch.randn_like(p))
            elif pname.endswith(".bias"):
                p.copy_(0.06 * torch.randn_like(p))
            else:
                p.copy_(0.06 * torch.randn_like(p))
    model.save_pretrained(directory, safe_serialization=True)
    return model, sequence(config.vocab_size)


def reference_logits(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()
