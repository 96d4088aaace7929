// What every architecture's graph shares: the configuration, where the weights come from, the
// KV-cache position, the embedding lookup, the final norm and the output head, and the per-step
// exchanges when the model is split across machines.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/matmul.h"
#include "kernels/ops.h"
#include "partition.h"
#include "tensor.h"
#include "thread_pool.h"
#include "weights.h"

namespace dllama {

// Filled by the Python side from the .m header and the architecture table.
struct ModelConfig {
    std::string arch;  // graph builder name ("llama", "qwen3", ...)
    FloatType weight_type = FloatType::F32;
    int dim = 0, hidden_dim = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0;
    int vocab_size = 0;
    int seq_len = 0;  // positions the KV cache holds
    bool kv_f16 = false;  // keep the KV cache in f16
    float norm_eps = 1e-5f;
    float rope_theta = 10000.0f;
    int rope_dim = 0;  // leading dims of each head that RoPE rotates (partial rotary when < head_dim)
    RopeStyle rope_style = RopeStyle::Interleaved;
    std::vector<float> rope_inv_freq;  // rope_dim / 2 frequencies, scaling applied
    float rope_attention_factor = 1.0f;
    bool attention_bias = false;
    bool qk_norm = false;
    // Mixture of experts
    int n_experts = 0, n_active_experts = 0, moe_hidden_dim = 0;
    int n_shared_experts = 0;   // always-on experts of width moe_hidden_dim * n_shared_experts
    int n_dense_layers = 0;     // the first layers use a dense FFN of width hidden_dim
    int n_expert_groups = 1, topk_groups = 1;
    float routed_scaling = 1.0f;
    bool norm_topk_prob = true;
    // Multi-head latent attention (GLM-4.7-Flash): ranks of the compressed q and kv, per-head dims.
    int q_lora_rank = 0;  // 0: q comes from a plain projection
    int kv_lora_rank = 0, qk_nope_dim = 0, qk_rope_dim = 0, v_head_dim = 0;
    float latent_norm_eps = 1e-6f;
    float attention_scale = 0.0f;  // softmax scale; 0: 1/sqrt(head_dim)
    bool attention_out_bias = false;
};

// Throws std::invalid_argument naming the field when a config is inconsistent or beyond what any model
// has (sizes 0 or huge, more KV heads than heads, rope_dim > head_dim, non-finite constants...), before
// anything is sized from it.
void validate_config(const ModelConfig& config);
// Throws std::invalid_argument when the buffers the config sizes (KV cache, RoPE table, attention scores
// for n_threads) plus weight_bytes exceed this machine's memory and swap.
void check_memory(const ModelConfig& config, int n_threads, uint64_t weight_bytes);

// Buffers the forward pass reuses between calls, sized for the largest chunk of tokens.
struct Scratch {
    std::vector<float> x, xn, y;  // residual stream, normed input, block output: [chunk x dim]
    std::vector<std::vector<float>> per_thread;  // attention scores: [group][seq_len] per thread
};

class Model {
public:
    Model(const ModelConfig& config, std::shared_ptr<const WeightSource> weights, int n_threads, Partition partition,
          std::shared_ptr<Collective> collective);
    virtual ~Model() = default;

    const ModelConfig& config() const { return cfg_; }
    const Partition& partition() const { return part_; }
    const WeightSource& weights() const { return *weights_; }
    int position() const { return pos_; }
    // Moves the KV-cache position back (to reuse a shared prefix) or to 0.
    void set_position(int pos);
    int n_threads() const { return pool_.size(); }

    // On node 0: runs n tokens at the current position, appending them to the KV cache, and writes
    // logits: n x vocab when all_logits, else only the last token's vocab values.
    void forward(const int32_t* tokens, int n, bool all_logits, float* logits);
    // On a worker: runs the steps node 0 starts until it sends stop (returns) or the link fails (throws).
    void serve();
    // On node 0 of a split model: tells the workers the session is over.
    void stop_workers();
    // The exchanges between nodes (nullptr on one machine).
    Collective* collective() const { return collective_.get(); }

    size_t kv_cache_bytes() const { return kv_bytes_per_position() * (size_t)cfg_.seq_len; }
    // Weight bytes one decoded token reads on this node (matmuls, embedding row, norms), without the KV cache.
    size_t weight_bytes_per_token() const;
    // KV-cache bytes one decoded token reads at position pos.
    size_t kv_bytes_read_at(int pos) const { return kv_bytes_per_position() * (size_t)(pos + 1); }

    static constexpr int kMaxChunk = 64;  // tokens per matrix-matrix pass

protected:
    // Runs every layer over x [n x dim] (the residual stream) in place, for tokens at pos..pos+n-1.
    virtual void run_layers(float* x, int n, int pos) = 0;
    virtual size_t kv_bytes_per_position() const = 0;
    virtual size_t layer_weight_bytes_per_token() const = 0;
    // After a block's partial output: sums the nodes' partials (a no-op on one node).
    void all_reduce(float* y, int n_rows) {
        if (collective_) collective_->all_reduce_sum(y, (size_t)n_rows * cfg_.dim);
    }

    ModelConfig cfg_;
    std::shared_ptr<const WeightSource> weights_;
    Partition part_;
    std::shared_ptr<Collective> collective_;
    ThreadPool pool_;
    Scratch scratch_;

private:
    // What node 0 tells the workers before each step, sent as four little-endian int32.
    struct Step {
        int32_t n = 0, pos = 0, head_first = 0, head_rows = 0;  // n == 0: stop
    };
    void broadcast_step(Step& step);
    void run_step(const Step& step, const int32_t* tokens, float* logits);
    Range vocab_share_ = {};
    int pos_ = 0;
    std::vector<float> final_norm_, head_out_, head_all_;
    Matrix lm_head_;
    Activations head_in_;
};

// Builds the graph the config's arch names; throws std::invalid_argument for an unknown arch.
std::unique_ptr<Model> build_model(const ModelConfig& config, std::shared_ptr<const WeightSource> weights,
                                   int n_threads, Partition partition = {},
                                   std::shared_ptr<Collective> collective = nullptr);
std::vector<std::string> builder_names();

// Throws std::invalid_argument when some block of the model cannot be split across n_nodes, naming
// the tightest constraint and the node counts that work (checked before any worker is contacted).
void check_split(const ModelConfig& config, const WeightSource& weights, int n_nodes);

}  // namespace dllama
