// GLM-4 (glm-4-9b-chat: HF `glm`, and the legacy `chatglm` layout): Llama's graph with q/k/v biases and
// RoPE on the first half of each head, rotating interleaved pairs.
#include "models/builders.h"
#include "models/decoder.h"

namespace dllama {

DLLAMA_BUILDER(build_glm) {
    return build_decoder(cfg, std::move(weights), n_threads, part, collective, [&](Decoder& d, int l) {
        return gqa_layer(d, l, {cfg.attention_bias, false}, false, dense_ffn(d, l));
    });
}

}  // namespace dllama
