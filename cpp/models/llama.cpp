// Llama (and Mistral): pre-norm GQA attention and SwiGLU. q/k are stored permuted (as distributed-llama
// does) so RoPE rotates interleaved pairs.
#include "models/builders.h"
#include "models/decoder.h"

namespace dllama {

DLLAMA_BUILDER(build_llama) {
    return build_decoder(cfg, std::move(weights), n_threads, part, collective, [&](Decoder& d, int l) {
        return gqa_layer(d, l, {cfg.attention_bias, false}, false, dense_ffn(d, l));
    });
}

}  // namespace dllama
