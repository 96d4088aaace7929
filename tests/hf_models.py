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
    # GLM-4.5-Air's shape in small: 1 dense layer, no q/k norm, scaling 1, one shared expert,
    # head_dim independent of hidden/heads.
    "glm4_moe_air": ("glm4_moe", dict(COMMON, num_hidden_layers=3, num_key_value_heads=2, head_dim=48,
                                      partial_rotary_factor=0.5, rope_theta=1000000.0, attention_bias=True,
                                      use_qk_norm=False, moe_intermediate_size=64, n_routed_experts=8,
                                      n_shared_experts=1, num_experts_per_tok=2, first_k_dense_replace=1, n_group=1,
                                      topk_group=1, routed_scaling_factor=1.0, norm_topk_prob=True)),
    # GLM-4.6's: q/k norm, scaling 2.5, several dense layers, group-limited routing (n_group > 1).
    "glm4_moe_46": ("glm4_moe", dict(COMMON, num_hidden_layers=4, num_key_value_heads=2, head_dim=32,
                                     partial_rotary_factor=0.5, rope_theta=1000000.0, attention_bias=True,
                                     use_qk_norm=True, moe_intermediate_size=64, n_routed_experts=8,
                                     n_shared_experts=1, num_experts_per_tok=3, first_k_dense_replace=2, n_group=4,
                                     topk_group=2, routed_scaling_factor=2.5, norm_topk_prob=True)),
    # GLM-4.7-Flash's shape in small: multi-head latent attention (q-LoRA and plain q), 1 dense layer.
    "glm4_moe_lite": ("glm4_moe_lite", dict(COMMON, num_hidden_layers=3, num_key_value_heads=4, q_lora_rank=64,
                                            kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32,
                                            moe_intermediate_size=64, n_routed_experts=8, n_shared_experts=1,
                                            num_experts_per_tok=2, mlp_layer_types=["dense", "sparse", "sparse"],
                                            n_group=1, topk_group=1, routed_scaling_factor=1.8, norm_topk_prob=True,
                                            rope_theta=1000000.0, topk_method="noaux_tc")),
    "glm4_moe_lite_noqlora": ("glm4_moe_lite", dict(COMMON, num_hidden_layers=2, num_key_value_heads=4,
                                                    q_lora_rank=None, kv_lora_rank=64, qk_nope_head_dim=32,
                                                    qk_rope_head_dim=32, v_head_dim=64, attention_bias=True,
                                                    moe_intermediate_size=64, n_routed_experts=8, n_shared_experts=1,
                                                    num_experts_per_tok=2, mlp_layer_types=["dense", "sparse"],
                                                    n_group=2, topk_group=1, routed_scaling_factor=1.8,
                                                    norm_topk_prob=True, rope_theta=10000.0)),
    "qwen3_moe": ("qwen3_moe", dict(COMMON, num_key_value_heads=2, head_dim=32, rope_theta=1000000.0,
                                    num_experts=8, num_experts_per_tok=2, moe_intermediate_size=64,
                                    norm_topk_prob=True)),
}


def sequence(vocab_size: int) -> list[int]:
    rng = np.random.default_rng(SEQUENCE_SEED)
    return rng.integers(0, vocab_size, N_PREFILL + N_DECODE).tolist()


# An MoE model's router decisions on the test sequence must be at least this far from a tie (in
# router scores), so that quantization noise measures numerical error rather than flipping an expert.
MIN_ROUTING_MARGIN = 0.005


def routing_margin(model, ids: list[int]) -> float:
    """The smallest gap, over tokens and MoE layers, between the last expert (or expert group) a
    router keeps and the best one it drops; inf for dense models."""
    import torch

    margins = []

    def hook(router, inputs, _):
        logits = inputs[0].reshape(-1, router.hidden_dim).float() @ router.weight.float().T
        if hasattr(router, "e_score_correction_bias"):  # GLM-4.5: sigmoid, bias, expert groups
            score = logits.sigmoid() + router.e_score_correction_bias
            groups = score.view(len(score), router.num_group, -1)
            group_score = groups.topk(2, dim=-1)[0].sum(-1).sort(-1, descending=True)[0]
            if router.num_group > router.topk_group:
                margins.append(float((group_score[:, router.topk_group - 1] - group_score[:, router.topk_group]).min()))
            kept = groups.topk(2, dim=-1)[0].sum(-1).topk(router.topk_group, dim=-1)[1]
            mask = torch.zeros_like(groups[..., 0]).scatter_(1, kept, 1).bool()
            score = groups.masked_fill(~mask.unsqueeze(-1), -1e9).reshape(len(score), -1)
        else:  # Qwen3-MoE: softmax, which keeps the order of the logits
            score = logits
        ranked = score.sort(-1, descending=True)[0]
        margins.append(float((ranked[:, router.top_k - 1] - ranked[:, router.top_k]).min()))

    handles = [layer.mlp.gate.register_forward_hook(hook) for layer in model.model.layers if hasattr(layer.mlp, "gate")]
    with torch.no_grad():
        model(torch.tensor([ids]))
    for h in handles:
        h.remove()
    return min(margins, default=float("inf"))


def build(name: str, directory: Path):
    """Creates the named tiny model with random weights, saves it, returns (model, token ids). MoE
    models take the first seed whose routing on the test sequence has no near-tie."""
    ids = sequence(CONFIGS[name][1]["vocab_size"])
    model = with_clear_routing(lambda seed: random_model(name, seed), ids)
    model.save_pretrained(directory, safe_serialization=True)
    return model, ids


def with_clear_routing(make_model, ids: list[int]):
    """make_model(seed) for the first seed whose routing on `ids` stays MIN_ROUTING_MARGIN away from
    any tie in the transformers reference (dense models: seed 0). Tests that bound a quantized MoE
    model's logits use it, so that a failing bound means the engine, not a near-tie in the router."""
    for seed in range(50):
        model = make_model(seed)
        if routing_margin(model, ids) >= MIN_ROUTING_MARGIN:
            return model
    raise RuntimeError(f"no seed in 0..49 gives a routing margin of {MIN_ROUTING_MARGIN}")


def random_model(name: str, seed: int, **overrides):
    """The named tiny model's architecture (config fields overridden as given) with random weights."""
    model_type, kwargs = CONFIGS[name]
    return random_hf_model(model_type, dict(kwargs, **overrides), seed)


def random_hf_model(model_type: str, config: dict, seed: int):
    """A transformers model of this type and config with random weights (norm weights and biases
    randomized too, so that a missing or misplaced one changes the logits)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_type, **config)
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
            elif pname.endswith("mlp.gate.weight"):
                # Routers with well-separated scores, so that quantization noise rarely flips a choice.
                p.copy_(0.15 * torch.randn_like(p))
            elif pname.endswith(".bias"):
                p.copy_(0.06 * torch.randn_like(p))
            else:
                p.copy_(0.06 * torch.randn_like(p))
        for bname, b in model.named_buffers():
            if bname.endswith("e_score_correction_bias"):
                b.copy_(0.05 * torch.randn_like(b))
    return model


def reference_logits(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


# -- multi-token prediction (GLM's nextn layer) -------------------------------------------------------

def mtp_config_overrides(name: str) -> dict:
    """Config fields that give the named tiny model one MTP layer in transformers' MtpModel (glm4_moe has
    one by default; glm4_moe_lite's config does not declare it in transformers, real checkpoints do)."""
    if CONFIGS[name][0] == "glm4_moe_lite":
        return dict(num_nextn_predict_layers=1, num_mtp_layers=1, mtp_mlp_layer_types=["sparse"])
    return dict(num_nextn_predict_layers=1)


def mtp_checkpoint_tensors(mtp, n_layers: int) -> dict:
    """The MTP layer's tensors under a GLM checkpoint's names (model.layers.N.*, N = num_hidden_layers:
    the decoder block's tensors as in any layer, experts one by one, plus enorm, hnorm, eh_proj and
    shared_head.norm), from transformers' MtpModel state."""
    prefix = f"model.layers.{n_layers}."
    out = {}
    for key, value in mtp.state_dict().items():
        if not key.startswith("layers.0."):
            continue  # embed_tokens and shared_head are the main model's
        key = key[len("layers.0."):]
        if key == "post_norm.weight":
            out[prefix + "shared_head.norm.weight"] = value
        elif key.startswith("mtp_block.mlp.experts.gate_up_proj"):
            half = value.shape[1] // 2
            for e in range(value.shape[0]):
                out[f"{prefix}mlp.experts.{e}.gate_proj.weight"] = value[e, :half]
                out[f"{prefix}mlp.experts.{e}.up_proj.weight"] = value[e, half:]
        elif key.startswith("mtp_block.mlp.experts.down_proj"):
            for e in range(value.shape[0]):
                out[f"{prefix}mlp.experts.{e}.down_proj.weight"] = value[e]
        else:
            out[prefix + key.removeprefix("mtp_block.")] = value
    return {k: v.contiguous() for k, v in out.items()}


def build_with_mtp(name: str, directory: Path, bigram: bool = False):
    """The named tiny GLM model (glm4_moe or glm4_moe_lite) with a random MTP layer, saved as a GLM
    checkpoint holds it; returns (main model, transformers' MtpModel loaded back from that checkpoint
    by its own MTP loading path, token ids).

    bigram: the layers' outputs are zeroed, so that the next token depends on the current one only
    (through the output head and the embedding), and the MTP layer hands the embedding of the token it
    is given to the same head: its guesses are then always right."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers.modeling_layers import MtpModel

    ids = sequence(CONFIGS[name][1]["vocab_size"])
    model = random_model(name, 0, **mtp_config_overrides(name))
    torch.manual_seed(1)
    mtp = MtpModel(model, 1)
    with torch.no_grad():
        for pname, p in mtp.layers.named_parameters():
            if "norm" in pname:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif pname.endswith("mlp.gate.weight"):
                p.copy_(0.15 * torch.randn_like(p))
            else:
                p.copy_(0.06 * torch.randn_like(p))
        for bname, b in mtp.layers.named_buffers():
            if bname.endswith("e_score_correction_bias"):
                b.copy_(0.05 * torch.randn_like(b))
        if bigram:
            dim = model.config.hidden_size
            for layer in list(model.model.layers) + [mtp.layers[0].mtp_block]:
                layer.self_attn.o_proj.weight.zero_()
                for pname, p in layer.mlp.named_parameters():
                    if "down_proj" in pname:
                        p.zero_()
            mtp.layers[0].eh_proj.weight.copy_(torch.cat([torch.eye(dim), torch.zeros(dim, dim)], 1))
            mtp.layers[0].enorm.weight.fill_(1.0)
            mtp.layers[0].post_norm.weight.copy_(model.model.norm.weight)
    model.save_pretrained(directory, safe_serialization=True)
    n_layers = model.config.num_hidden_layers
    tensors = load_file(directory / "model.safetensors")
    tensors.update(mtp_checkpoint_tensors(mtp, n_layers))
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    # transformers finds MTP weights by the layer numbers of the released checkpoints: point it at ours.
    model._keys_to_ignore_on_load_unexpected = [rf"model\.layers\.{n_layers}\..*"]
    model.config.name_or_path = str(directory)
    model.config.dtype = torch.float32
    loaded = MtpModel.from_pretrained(model).eval()
    for (k, a), b in zip(mtp.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), f"{k} did not survive the checkpoint"
    return model, loaded, ids
