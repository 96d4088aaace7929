"""GLM-specific conversion: the legacy ChatGLM checkpoint layout (THUDM glm-4-9b-chat)."""

from __future__ import annotations

import json

import numpy as np
from safetensors.numpy import save_file

from dllama_py import Engine
from dllama_py.convert import convert
from dllama_py.safetensors_reader import Checkpoint


def chatglm_from_glm(glm_dir, out_dir):
    """Rewrites a tiny HF `glm` checkpoint in the remote-code ChatGLM layout: fused query_key_value
    (+bias) rows [q | k | v], dense, dense_h_to_4h = gate_up_proj, transformer.* names, ChatGLM config."""
    cfg = json.loads((glm_dir / "config.json").read_text())
    out_dir.mkdir()
    tensors = {}
    with Checkpoint(glm_dir) as ck:
        tensors["transformer.embedding.word_embeddings.weight"] = ck.read("model.embed_tokens.weight")
        tensors["transformer.rotary_pos_emb.inv_freq"] = np.ones(8, np.float32)  # a buffer converters drop
        for l in range(cfg["num_hidden_layers"]):
            hf, cg = f"model.layers.{l}.", f"transformer.encoder.layers.{l}."
            for kind in ("weight", "bias"):
                tensors[cg + f"self_attention.query_key_value.{kind}"] = np.concatenate(
                    [ck.read(hf + f"self_attn.{p}_proj.{kind}") for p in "qkv"])
            tensors[cg + "self_attention.dense.weight"] = ck.read(hf + "self_attn.o_proj.weight")
            tensors[cg + "mlp.dense_h_to_4h.weight"] = ck.read(hf + "mlp.gate_up_proj.weight")
            tensors[cg + "mlp.dense_4h_to_h.weight"] = ck.read(hf + "mlp.down_proj.weight")
            tensors[cg + "input_layernorm.weight"] = ck.read(hf + "input_layernorm.weight")
            tensors[cg + "post_attention_layernorm.weight"] = ck.read(hf + "post_attention_layernorm.weight")
        tensors["transformer.encoder.final_layernorm.weight"] = ck.read("model.norm.weight")
        tensors["transformer.output_layer.weight"] = ck.read("lm_head.weight")
    save_file(tensors, str(out_dir / "model.safetensors"))
    rope = cfg.get("rope_parameters") or {}
    (out_dir / "config.json").write_text(json.dumps({
        "model_type": "chatglm", "hidden_size": cfg["hidden_size"], "ffn_hidden_size": cfg["intermediate_size"],
        "num_layers": cfg["num_hidden_layers"], "num_attention_heads": cfg["num_attention_heads"],
        "multi_query_attention": True, "multi_query_group_num": cfg["num_key_value_heads"],
        "kv_channels": cfg["head_dim"], "padded_vocab_size": cfg["vocab_size"],
        "seq_length": cfg["max_position_embeddings"], "layernorm_epsilon": cfg["rms_norm_eps"],
        "rope_ratio": rope.get("rope_theta", 10000.0) / 10000.0, "add_qkv_bias": True, "add_bias_linear": False,
        "rmsnorm": True, "apply_residual_connection_post_layernorm": False, "post_layer_norm": True,
        "original_rope": True,
    }))


def test_chatglm_layout_converts_to_the_same_model(tiny_models, tmp_path):
    glm_dir, ids, ref = tiny_models.hf("glm")
    chatglm_dir = tmp_path / "chatglm"
    chatglm_from_glm(glm_dir, chatglm_dir)
    out = tmp_path / "chatglm-f32.m"
    report = convert(chatglm_dir, out, dtype="f32", progress=False, log=lambda *a: None)
    assert report.skipped == ["transformer.rotary_pos_emb.inv_freq"]
    # Same header and tensors as the HF glm conversion, byte for byte...
    assert out.read_bytes() == tiny_models.converted("glm", "f32").read_bytes()
    # ...and so the same logits as transformers' GlmForCausalLM.
    with Engine(out) as eng:
        ours = eng.forward(ids)
    assert np.abs(ours - ref).max() <= 1e-3 * ref.std()
