#include "models/dense_decoder.h"

namespace dllama {

DenseDecoder::DenseDecoder(const ModelConfig& cfg, std::shared_ptr<TensorStore> store, int n_threads,
                           DenseDecoderOptions options)
    : Model(cfg, std::move(store), n_threads),
      rope_(cfg.rope_dim, cfg.rope_theta, cfg.rope_scaling, cfg.seq_len, cfg.rope_style) {
    for (int l = 0; l < cfg.n_layers; l++) {
        const std::string p = "layers." + std::to_string(l) + ".";
        Layer layer{store_->vector(p + "attn_norm"), store_->vector(p + "ffn_norm"), {}, {},
                    Attention(*store_, p + "attn.", cfg, options.attention), FeedForward(*store_, p + "ffn.")};
        if (options.sandwich_norms) {
            layer.post_attn_norm = store_->vector(p + "post_attn_norm");
            layer.post_ffn_norm = store_->vector(p + "post_ffn_norm");
        }
        layers_.push_back(std::move(layer));
    }
}

void DenseDecoder::run_layers(float* x, int n, int pos) {
    BlockContext ctx{cfg_, pool_, scratch_};
    float* xn = scratch_.xn.data();
    float* y = scratch_.y.data();
    const int dim = cfg_.dim;
    const float eps = cfg_.norm_eps;
    for (Layer& layer : layers_) {
        rms_norm_rows(pool_, x, layer.attn_norm.data(), n, dim, eps, xn);
        layer.attention.forward(ctx, rope_, xn, n, pos, y);
        if (!layer.post_attn_norm.empty()) rms_norm_rows(pool_, y, layer.post_attn_norm.data(), n, dim, eps, y);
        add_rows(x, y, n, dim);
        rms_norm_rows(pool_, x, layer.ffn_norm.data(), n, dim, eps, xn);
        layer.ffn.forward(ctx, xn, n, y);
        if (!layer.post_ffn_norm.empty()) rms_norm_rows(pool_, y, layer.post_ffn_norm.data(), n, dim, eps, y);
        add_rows(x, y, n, dim);
    }
}

size_t DenseDecoder::kv_bytes_per_position() const {
    size_t total = 0;
    for (const Layer& l : layers_) total += l.attention.kv_bytes_per_position();
    return total;
}

size_t DenseDecoder::layer_weight_bytes_per_token() const {
    size_t total = 0;
    for (const Layer& l : layers_) {
        const size_t norms = l.attn_norm.size() + l.ffn_norm.size() + l.post_attn_norm.size() + l.post_ffn_norm.size();
        total += l.attention.weight_bytes() + l.ffn.weight_bytes() + norms * sizeof(float);
    }
    return total;
}

}  // namespace dllama
