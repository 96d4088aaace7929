// The decoder every architecture here shares: a residual stream through layers of
// norm -> attention -> [post-norm] -> add, norm -> feed-forward -> [post-norm] -> add. The builders in
// this directory choose the blocks (dense or MoE feed-forward, GQA or latent attention) and options.
// A block whose output is a partial sum (split across nodes) is summed across the nodes before its
// post-norm and the residual add.
#pragma once
#include <functional>
#include <memory>
#include <vector>

#include "blocks.h"

namespace dllama {

struct DecoderLayer {
    std::vector<float> attn_norm, ffn_norm;
    std::vector<float> post_attn_norm, post_ffn_norm;  // GLM-4's sandwich norms; empty when absent
    std::unique_ptr<AttentionBlock> attention;
    std::unique_ptr<FeedForwardBlock> ffn;
};

class Decoder : public Model {
public:
    using Model::Model;
    // Called by builders once the layers are made. `rope` is shared by the attention blocks.
    void add_layer(DecoderLayer layer) { layers_.push_back(std::move(layer)); }
    // The multi-token-prediction layer, when the config loads it (its KV cache follows the layers').
    void set_mtp_layer(DecoderLayer layer) { mtp_layer_ = std::make_unique<DecoderLayer>(std::move(layer)); }
    // Reserves the KV cache for every slot, as the layers' attention blocks declare it.
    void allocate_cache();
    RopeTable& rope() { return rope_; }

    // The norms of layer l ("layers.l.attn_norm", "ffn_norm", and the sandwich norms when asked).
    DecoderLayer layer_norms(int l, bool sandwich) const;

protected:
    void run_layers(float* x, const Batch& batch) override;
    void run_mtp_layer(float* x, const Batch& batch) override;
    size_t layer_weight_bytes_per_token() const override;

private:
    void run_layer(DecoderLayer& layer, KvCache::Layer& cache, float* x, BlockContext& ctx);
    std::vector<DecoderLayer> layers_;
    std::unique_ptr<DecoderLayer> mtp_layer_;
    RopeTable rope_;
};

// The common layer: layer l's norms, grouped-query attention "layers.l.attn." with these options, and ffn.
DecoderLayer gqa_layer(Decoder& d, int l, Attention::Options attention, bool sandwich,
                       std::unique_ptr<FeedForwardBlock> ffn);
// Layer l's dense SwiGLU "layers.l.ffn." of width hidden_dim.
std::unique_ptr<FeedForwardBlock> dense_ffn(Decoder& d, int l);
// Layer l's mixture of experts "layers.l.moe.".
std::unique_ptr<FeedForwardBlock> moe_ffn(Decoder& d, int l, MoeFeedForward::Scoring scoring);

// A decoder with RoPE from the config, and layers made by `make_layer(decoder, l)`.
std::unique_ptr<Model> build_decoder(const ModelConfig& cfg, std::shared_ptr<const WeightSource> weights, int n_threads,
                                     Partition part, std::shared_ptr<Collective> collective,
                                     const std::function<DecoderLayer(Decoder&, int)>& make_layer);

}  // namespace dllama
