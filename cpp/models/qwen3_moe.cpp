// Qwen3-MoE: Qwen3's attention; every layer's feed-forward is a mixture of experts with a softmax router.
#include "models/builders.h"
#include "models/decoder.h"

namespace dllama {

DLLAMA_BUILDER(build_qwen3_moe) {
    return build_decoder(cfg, std::move(weights), n_threads, part, collective, [&](Decoder& d, int l) {
        return gqa_layer(d, l, {cfg.attention_bias, true}, false, moe_ffn(d, l, MoeFeedForward::Scoring::Softmax));
    });
}

}  // namespace dllama
