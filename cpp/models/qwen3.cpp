// Qwen3: Llama's graph with a per-head RMSNorm on q and k before RoPE (rotating head halves).
#include "models/builders.h"
#include "models/decoder.h"

namespace dllama {

DLLAMA_BUILDER(build_qwen3) {
    return build_decoder(cfg, std::move(weights), n_threads, part, collective, [&](Decoder& d, int l) {
        return gqa_layer(d, l, {cfg.attention_bias, true}, false, dense_ffn(d, l));
    });
}

}  // namespace dllama
