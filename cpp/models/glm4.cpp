// GLM-4-0414 / GLM-Z1 (HF `glm4`): GLM's graph plus "sandwich" norms on each block's output.
#include "models/builders.h"
#include "models/decoder.h"

namespace dllama {

DLLAMA_BUILDER(build_glm4) {
    return build_decoder(cfg, std::move(weights), n_threads, part, collective, [&](Decoder& d, int l) {
        return gqa_layer(d, l, {cfg.attention_bias, false}, true, dense_ffn(d, l));
    });
}

}  // namespace dllama
