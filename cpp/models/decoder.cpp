#include "models/decoder.h"

#include <algorithm>
#include <stdexcept>

namespace dllama {

static std::string layer_prefix(int l) { return "layers." + std::to_string(l) + "."; }

DecoderLayer Decoder::layer_norms(int l, bool sandwich) const {
    const std::string p = layer_prefix(l);
    const Range dim = Range::all(cfg_.dim);
    DecoderLayer layer;
    layer.attn_norm = weights_->vector(p + "attn_norm", dim);
    layer.ffn_norm = weights_->vector(p + "ffn_norm", dim);
    if (sandwich) {
        layer.post_attn_norm = weights_->vector(p + "post_attn_norm", dim);
        layer.post_ffn_norm = weights_->vector(p + "post_ffn_norm", dim);
    }
    return layer;
}

void Decoder::allocate_cache() {
    std::vector<std::vector<KvShape>> shapes;
    for (const DecoderLayer& l : layers_) shapes.push_back(l.attention->cache_shapes());
    if (mtp_layer_) shapes.push_back(mtp_layer_->attention->cache_shapes());
    cache_ = KvCache(shapes, cfg_.max_sequences, cfg_.seq_len, cfg_.kv_f16);
}

void Decoder::run_layer(DecoderLayer& layer, KvCache::Layer& cache, float* x, BlockContext& ctx) {
    const int n = ctx.batch.n;
    float* xn = scratch_.xn.data();
    float* y = scratch_.y.data();
    const int dim = cfg_.dim;
    const float eps = cfg_.norm_eps;
    rms_norm_rows(pool_, x, layer.attn_norm.data(), n, dim, eps, xn);
    layer.attention->forward(ctx, xn, cache, y);
    if (layer.attention->output() == BlockOutput::PartialSum) all_reduce(y, n);
    if (!layer.post_attn_norm.empty()) rms_norm_rows(pool_, y, layer.post_attn_norm.data(), n, dim, eps, y);
    add(x, y, n * dim);
    rms_norm_rows(pool_, x, layer.ffn_norm.data(), n, dim, eps, xn);
    layer.ffn->forward(ctx, xn, n, y);
    if (layer.ffn->output() == BlockOutput::PartialSum) all_reduce(y, n);
    if (!layer.post_ffn_norm.empty()) rms_norm_rows(pool_, y, layer.post_ffn_norm.data(), n, dim, eps, y);
    add(x, y, n * dim);
}

void Decoder::run_layers(float* x, const Batch& batch) {
    BlockContext ctx{cfg_, pool_, scratch_, batch};
    for (size_t l = 0; l < layers_.size(); l++) run_layer(layers_[l], cache_.layer((int)l), x, ctx);
}

void Decoder::run_mtp_layer(float* x, const Batch& batch) {
    BlockContext ctx{cfg_, pool_, scratch_, batch};
    run_layer(*mtp_layer_, cache_.layer((int)layers_.size()), x, ctx);
}

size_t Decoder::layer_weight_bytes_per_token() const {
    size_t total = 0;
    for (const DecoderLayer& l : layers_) {
        const size_t norms = l.attn_norm.size() + l.ffn_norm.size() + l.post_attn_norm.size() + l.post_ffn_norm.size();
        total += l.attention->weight_bytes() + l.ffn->weight_bytes_per_token() + norms * sizeof(float);
    }
    return total;
}

DecoderLayer gqa_layer(Decoder& d, int l, Attention::Options attention, bool sandwich,
                       std::unique_ptr<FeedForwardBlock> ffn) {
    DecoderLayer layer = d.layer_norms(l, sandwich);
    layer.attention = std::make_unique<Attention>(d.weights(), layer_prefix(l) + "attn.", d.config(), attention,
                                                  d.partition(), d.rope());
    layer.ffn = std::move(ffn);
    return layer;
}

std::unique_ptr<FeedForwardBlock> dense_ffn(Decoder& d, int l) {
    return std::make_unique<FeedForward>(d.weights(), layer_prefix(l) + "ffn.", d.config().dim, d.config().hidden_dim,
                                         d.partition());
}

std::unique_ptr<FeedForwardBlock> moe_ffn(Decoder& d, int l, MoeFeedForward::Scoring scoring) {
    return std::make_unique<MoeFeedForward>(d.weights(), layer_prefix(l) + "moe.", d.config(), scoring, d.partition());
}

void check_split(const ModelConfig& cfg, const WeightSource& weights, const Partition& part) {
    if (part.n_nodes <= 1) return;
    // Every layer's attention heads and each of its feed-forward networks' hidden rows (the MTP layer's
    // too), and the output head's vocabulary rows.
    std::vector<UnitSplit> splits = {UnitSplit{"lm_head", "vocabulary rows", cfg.vocab_size, 1, FloatType::F32}};
    for (int l = 0; l < cfg.n_layers + cfg.n_mtp_layers; l++) {
        const std::string p = layer_prefix(l);
        splits.push_back(UnitSplit::of(weights, p + "attn.o", cfg.n_heads, "heads"));
        std::vector<std::string> downs = {p + "ffn.down", p + "moe.shared.down"};
        for (int e = 0; e < cfg.n_experts; e++) downs.push_back(p + "moe.experts." + std::to_string(e) + ".down");
        for (const std::string& down : downs)
            if (weights.has(down)) splits.push_back(UnitSplit::of(weights, down, weights.info(down).cols, "hidden rows"));
    }
    const UnitSplit* tightest = nullptr;  // of those that some node would get none of
    for (const UnitSplit& s : splits)
        if (!s.refusal(part).empty() && (!tightest || s.max_nodes() < tightest->max_nodes())) tightest = &s;
    if (!tightest) return;
    throw std::invalid_argument("cannot split " + weights.describe() + " across " + std::to_string(part.n_nodes) +
                                " nodes: " + tightest->refusal(part));
}

std::unique_ptr<Model> build_decoder(const ModelConfig& cfg, std::shared_ptr<const WeightSource> weights, int n_threads,
                                     Partition part, std::shared_ptr<Collective> collective,
                                     const std::function<DecoderLayer(Decoder&, int)>& make_layer) {
    auto decoder = std::make_unique<Decoder>(cfg, std::move(weights), n_threads, part, collective);
    if ((int)cfg.rope_inv_freq.size() * 2 != cfg.rope_dim)
        throw std::invalid_argument("rope_inv_freq has " + std::to_string(cfg.rope_inv_freq.size()) +
                                    " frequencies for " + std::to_string(cfg.rope_dim) + " rotary dims");
    decoder->rope() = RopeTable(cfg.rope_inv_freq, cfg.rope_attention_factor, cfg.seq_len, cfg.rope_style);
    for (int l = 0; l < cfg.n_layers; l++) decoder->add_layer(make_layer(*decoder, l));
    if (cfg.n_mtp_layers > 0) decoder->set_mtp_layer(make_layer(*decoder, cfg.n_layers));  // numbered after the last
    decoder->allocate_cache();
    return decoder;
}

}  // namespace dllama
