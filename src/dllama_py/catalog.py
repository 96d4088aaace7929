"""Known models: their Hugging Face repo ids and the config.json fields our converter reads, so that
`dllama-py list` can size them (through the converter's own file plan) before anything is downloaded,
and `-m NAME` can find a pulled copy or say how to pull it.

Config values are those of the published config.json files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .engine import DEFAULT_CONTEXT

from .default_model import cache_dir

DTYPE_PREFERENCE = ("q40", "q80", "f16", "f32")  # which pulled copy `-m NAME` runs when there are several


@dataclass(frozen=True)
class KnownModel:
    name: str
    repo: str
    config: dict


def _glm4(hidden, ffn, layers, heads, **extra) -> dict:
    return dict(model_type="glm4", hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=2, head_dim=128, vocab_size=151552,
                partial_rotary_factor=0.5, attention_bias=True, rms_norm_eps=1e-5, rope_theta=10000.0,
                max_position_embeddings=32768, tie_word_embeddings=False) | extra


def _glm4_moe(hidden, ffn, layers, experts, moe_ffn, dense, scaling, qk_norm, **extra) -> dict:
    return dict(model_type="glm4_moe", hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
                num_attention_heads=96, num_key_value_heads=8, head_dim=128, vocab_size=151552,
                partial_rotary_factor=0.5, attention_bias=True, use_qk_norm=qk_norm, rms_norm_eps=1e-5,
                rope_theta=1e6, max_position_embeddings=131072, n_routed_experts=experts, n_shared_experts=1,
                num_experts_per_tok=8, moe_intermediate_size=moe_ffn, first_k_dense_replace=dense, n_group=1,
                topk_group=1, routed_scaling_factor=scaling, norm_topk_prob=True, num_nextn_predict_layers=1,
                tie_word_embeddings=False) | extra


def _qwen3(hidden, ffn, layers, heads, tie, **extra) -> dict:
    return dict(model_type="qwen3", hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                rms_norm_eps=1e-6, rope_theta=1e6, max_position_embeddings=40960, tie_word_embeddings=tie) | extra


def _qwen3_moe(hidden, ffn, layers, heads, moe_ffn) -> dict:
    return _qwen3(hidden, ffn, layers, heads, False, model_type="qwen3_moe", num_key_value_heads=4, num_experts=128,
                  num_experts_per_tok=8, moe_intermediate_size=moe_ffn, norm_topk_prob=True)


def _llama3(hidden, ffn, layers, heads, tie, factor, head_dim=None) -> dict:
    return dict(model_type="llama", hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=8, head_dim=head_dim or hidden // heads,
                vocab_size=128256, rms_norm_eps=1e-5, max_position_embeddings=131072, tie_word_embeddings=tie,
                rope_scaling=dict(rope_type="llama3", factor=factor, low_freq_factor=1.0, high_freq_factor=4.0,
                                  original_max_position_embeddings=8192), rope_theta=500000.0)


_GLM45_AIR = _glm4_moe(4096, 10944, 46, 128, 1408, 1, 1.0, False)
_GLM45 = _glm4_moe(5120, 12288, 92, 160, 1536, 3, 2.5, True)
_GLM46 = _GLM45 | dict(max_position_embeddings=202752)
_GLM47_FLASH = dict(model_type="glm4_moe_lite", hidden_size=2048, intermediate_size=10240, num_hidden_layers=47,
                    num_attention_heads=20, num_key_value_heads=20, q_lora_rank=768, kv_lora_rank=512,
                    qk_nope_head_dim=192, qk_rope_head_dim=64, v_head_dim=256, vocab_size=154880,
                    n_routed_experts=64, n_shared_experts=1, num_experts_per_tok=4, moe_intermediate_size=1536,
                    mlp_layer_types=["dense"] + ["sparse"] * 46, n_group=1, topk_group=1, routed_scaling_factor=1.8,
                    norm_topk_prob=True, rms_norm_eps=1e-5, rope_theta=1e6, max_position_embeddings=202752,
                    attention_bias=False, num_nextn_predict_layers=1, tie_word_embeddings=False)
_FP8 = {"quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}}

KNOWN_MODELS: tuple[KnownModel, ...] = (
    KnownModel("GLM-4-9B-0414", "zai-org/GLM-4-9B-0414", _glm4(4096, 13696, 40, 32)),
    KnownModel("GLM-Z1-9B-0414", "zai-org/GLM-Z1-9B-0414", _glm4(4096, 13696, 40, 32)),
    KnownModel("glm-4-9b-chat-hf", "zai-org/glm-4-9b-chat-hf",
               _glm4(4096, 13696, 40, 32, model_type="glm", rms_norm_eps=1.5625e-07, max_position_embeddings=131072)),
    KnownModel("GLM-4-32B-0414", "zai-org/GLM-4-32B-0414", _glm4(6144, 23040, 61, 48)),
    KnownModel("GLM-4.5-Air", "zai-org/GLM-4.5-Air", _GLM45_AIR),
    KnownModel("GLM-4.5-Air-FP8", "zai-org/GLM-4.5-Air-FP8", _GLM45_AIR | _FP8),
    KnownModel("GLM-4.5-Air-Base", "zai-org/GLM-4.5-Air-Base", _GLM45_AIR),
    KnownModel("GLM-4.5", "zai-org/GLM-4.5", _GLM45),
    KnownModel("GLM-4.5-FP8", "zai-org/GLM-4.5-FP8", _GLM45 | _FP8),
    KnownModel("GLM-4.6", "zai-org/GLM-4.6", _GLM46),
    KnownModel("GLM-4.6-FP8", "zai-org/GLM-4.6-FP8", _GLM46 | _FP8),
    KnownModel("INTELLECT-3", "PrimeIntellect/INTELLECT-3", _GLM45_AIR),
    KnownModel("INTELLECT-3-FP8", "PrimeIntellect/INTELLECT-3-FP8", _GLM45_AIR | _FP8),
    KnownModel("GLM-4.7-Flash", "zai-org/GLM-4.7-Flash", _GLM47_FLASH),
    KnownModel("Qwen3-0.6B", "Qwen/Qwen3-0.6B", _qwen3(1024, 3072, 28, 16, True)),
    KnownModel("Qwen3-1.7B", "Qwen/Qwen3-1.7B", _qwen3(2048, 6144, 28, 16, True)),
    KnownModel("Qwen3-4B", "Qwen/Qwen3-4B", _qwen3(2560, 9728, 36, 32, True)),
    KnownModel("Qwen3-8B", "Qwen/Qwen3-8B", _qwen3(4096, 12288, 36, 32, False)),
    KnownModel("Qwen3-14B", "Qwen/Qwen3-14B", _qwen3(5120, 17408, 40, 40, False)),
    KnownModel("Qwen3-32B", "Qwen/Qwen3-32B", _qwen3(5120, 25600, 64, 64, False)),
    KnownModel("Qwen3-30B-A3B", "Qwen/Qwen3-30B-A3B", _qwen3_moe(2048, 6144, 48, 32, 768)),
    KnownModel("Qwen3-235B-A22B", "Qwen/Qwen3-235B-A22B", _qwen3_moe(4096, 12288, 94, 64, 1536)),
    KnownModel("Llama-3.2-1B-Instruct", "meta-llama/Llama-3.2-1B-Instruct", _llama3(2048, 8192, 16, 32, True, 32.0)),
    KnownModel("Llama-3.2-3B-Instruct", "meta-llama/Llama-3.2-3B-Instruct", _llama3(3072, 8192, 28, 24, True, 32.0)),
    KnownModel("Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-8B-Instruct", _llama3(4096, 14336, 32, 32, False, 8.0)),
    KnownModel("Llama-3.1-70B-Instruct", "meta-llama/Llama-3.1-70B-Instruct",
               _llama3(8192, 28672, 80, 64, False, 8.0)),
    KnownModel("Llama-3.3-70B-Instruct", "meta-llama/Llama-3.3-70B-Instruct",
               _llama3(8192, 28672, 80, 64, False, 8.0)),
    KnownModel("Llama-3.1-405B-Instruct", "meta-llama/Llama-3.1-405B-Instruct",
               _llama3(16384, 53248, 126, 128, False, 8.0)),
)


def models_dir() -> Path:
    """Where `pull` puts models by default."""
    return cache_dir() / "models"


def pulled_path(repo: str, dtype: str) -> Path:
    """The default output of `dllama-py pull REPO --dtype DTYPE`."""
    return models_dir() / f"{repo.rstrip('/').split('/')[-1]}-{dtype}.m"


def find(name_or_repo: str) -> KnownModel | None:
    key = name_or_repo.strip().lower()
    return next((m for m in KNOWN_MODELS if key in (m.name.lower(), m.repo.lower())), None)


def pulled_copies(repo: str) -> list[Path]:
    """The pulled .m files of a repo, in DTYPE_PREFERENCE order."""
    return [p for dtype in DTYPE_PREFERENCE if (p := pulled_path(repo, dtype)).is_file()]


def looks_like_repo_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.endswith(".m") and not text.startswith((".", "~"))


def resolve_model(arg: str | None, notice=print) -> Path:
    """What `-m` names: nothing (the default model), a .m file, or a known model's name or a repo id
    (its pulled copy; if there is none, the error says the exact `pull` command)."""
    from .default_model import default_model

    if arg is None:
        return default_model(notice)
    if Path(arg).expanduser().exists():
        return Path(arg).expanduser()
    known = find(arg)
    repo = known.repo if known else arg if looks_like_repo_id(arg) else None
    if repo is None:
        return Path(arg)  # not found: loading says so, naming the path
    copies = pulled_copies(repo)
    if copies:
        return copies[0]
    raise FileNotFoundError(f"{arg} is not downloaded yet; get it with: dllama-py pull {repo}")


@dataclass
class ModelSizes:
    total_params: int
    active_params: int  # read per token: MoE models use n_active of their n_experts
    file_bytes: dict[str, int]  # dtype -> .m file size
    ram_per_node: list[int]  # 1..4 nodes at ram_dtype: the largest node's weights, mapped bytes and KV cache


def model_sizes(config: dict, dtypes=("q40", "q80"), ram_dtype: str = "q40", max_nodes: int = 4) -> ModelSizes:
    """Sizes by the converter's own file plan and the engine's split rules (node_memory)."""
    from .convert import plan_file
    from .node_memory import node_memory

    plans = {dtype: plan_file(config, dtype) for dtype in set(dtypes) | {ram_dtype}}
    plan = plans[ram_dtype]
    p = plan.conversion.params
    total = experts = 0
    mtp_layer = f"layers.{p['n_layers']}."
    for pt in plan.placed:
        n = pt.spec.rows * pt.spec.cols
        if pt.spec.name == "lm_head" and config.get("tie_word_embeddings"):
            continue  # the embedding again
        if pt.spec.name.startswith((mtp_layer, "mtp.")):
            continue  # the multi-token-prediction layer (in the file, for drafting): not counted, as published
        total += n
        experts += n if ".moe.experts." in pt.spec.name else 0
    active = total - experts + experts * p.get("n_active_experts", 0) // max(p.get("n_experts", 0), 1)
    layout = plan.layout()
    context = min(p.get("max_seq_len") or DEFAULT_CONTEXT, DEFAULT_CONTEXT)
    ram = []
    for n_nodes in range(1, max_nodes + 1):
        try:
            ram.append(max(node_memory(layout, node, n_nodes, context, kv_f16=True).total for node in range(n_nodes)))
        except ValueError:
            ram.append(0)  # cannot be split that many ways
    return ModelSizes(total, active, {dtype: plans[dtype].size for dtype in dtypes}, ram)
