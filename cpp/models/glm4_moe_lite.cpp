// GLM-4.7-Flash (HF `glm4_moe_lite`): multi-head latent attention with a compressed KV cache, and
// GLM-4.5's feed-forward (dense first layers, then sigmoid-routed experts plus a shared expert).
#include "models/builders.h"
#include "models/decoder.h"

namespace dllama {

DLLAMA_BUILDER(build_glm4_moe_lite) {
    return build_decoder(cfg, std::move(weights), n_threads, part, collective, [&](Decoder& d, int l) {
        DecoderLayer layer = d.layer_norms(l, false);
        layer.attention = std::make_unique<LatentAttention>(d.weights(), "layers." + std::to_string(l) + ".attn.", cfg,
                                                            part, d.rope());
        layer.ffn = l < cfg.n_dense_layers ? dense_ffn(d, l) : moe_ffn(d, l, MoeFeedForward::Scoring::Sigmoid);
        return layer;
    });
}

}  // namespace dllama
