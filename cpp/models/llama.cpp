#include "models/llama.h"

#include "models/builders.h"

namespace dllama {

LlamaModel::LlamaModel(const ModelConfig& cfg, std::shared_ptr<TensorStore> store, int n_threads,
                       Attention::Options attention)
    : Model(cfg, std::move(store), n_threads),
      rope_(cfg.rope_dim, cfg.rope_theta, cfg.rope_scaling, cfg.seq_len, cfg.rope_style) {
    for (int l = 0; l < cfg.n_layers; l++) {
        const std::string p = "layers." + std::to_string(l) + ".";
        layers_.push_back(Layer{store_->vector(p + "attn_norm"), store_->vector(p + "ffn_norm"),
                                Attention(*store_, p + "attn.", cfg, attention), FeedForward(*store_, p + "ffn.")});
    }
}

void LlamaModel::run_layers(float* x, int n, int pos) {
    BlockContext ctx{cfg_, pool_, scratch_};
    float* xn = scratch_.xn.data();
    float* y = scratch_.y.data();
    for (Layer& layer : layers_) {
        rms_norm_rows(pool_, x, layer.attn_norm.data(), n, cfg_.dim, cfg_.norm_eps, xn);
        layer.attention.forward(ctx, rope_, xn, n, pos, y);
        add_rows(x, y, n, cfg_.dim);
        rms_norm_rows(pool_, x, layer.ffn_norm.data(), n, cfg_.dim, cfg_.norm_eps, xn);
        layer.ffn.forward(ctx, xn, n, y);
        add_rows(x, y, n, cfg_.dim);
    }
}

size_t LlamaModel::kv_bytes_per_position() const {
    size_t total = 0;
    for (const Layer& l : layers_) total += l.attention.kv_bytes_per_position();
    return total;
}

size_t LlamaModel::layer_weight_bytes_per_token() const {
    size_t total = 0;
    for (const Layer& l : layers_)
        total += l.attention.weight_bytes() + l.ffn.weight_bytes() + 2 * sizeof(float) * cfg_.dim;
    return total;
}

std::unique_ptr<Model> build_llama(const ModelConfig& cfg, std::shared_ptr<TensorStore> store, int n_threads) {
    return std::make_unique<LlamaModel>(cfg, std::move(store), n_threads, Attention::Options{cfg.attention_bias, false});
}

}  // namespace dllama
