// GLM-4.5 / 4.5-Air / 4.6 / INTELLECT-3 (HF `glm4_moe`): GQA with biases, optional q/k norms and
// half-rotary RoPE on head halves; the first n_dense_layers use a dense FFN, the rest a mixture of
// experts with a sigmoid router (bias-corrected choice, optional group limit) plus shared experts.
#include "models/builders.h"
#include "models/decoder.h"

namespace dllama {

DLLAMA_BUILDER(build_glm4_moe) {
    return build_decoder(cfg, std::move(weights), n_threads, part, collective, [&](Decoder& d, int l) {
        auto ffn = l < cfg.n_dense_layers ? dense_ffn(d, l) : moe_ffn(d, l, MoeFeedForward::Scoring::Sigmoid);
        return gqa_layer(d, l, {cfg.attention_bias, cfg.qk_norm}, false, std::move(ffn));
    });
}

}  // namespace dllama
