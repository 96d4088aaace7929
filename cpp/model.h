// What every architecture's graph shares: the configuration, the weights of a .m file, the KV-cache
// position, the embedding lookup, the final norm and the output head.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kernels/matmul.h"
#include "kernels/ops.h"
#include "tensor.h"
#include "thread_pool.h"

namespace dllama {

// Filled by the Python side from the .m header and the architecture table.
struct ModelConfig {
    std::string arch;  // graph builder name ("llama", "qwen3", ...)
    FloatType weight_type = FloatType::F32;
    int dim = 0, hidden_dim = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0;
    int vocab_size = 0;
    int seq_len = 0;  // positions the KV cache holds
    float norm_eps = 1e-5f;
    float rope_theta = 10000.0f;
    int rope_dim = 0;  // leading dims of each head that RoPE rotates (partial rotary when < head_dim)
    RopeStyle rope_style = RopeStyle::Interleaved;
    RopeScaling rope_scaling;
    bool attention_bias = false;
    int n_experts = 0, n_active_experts = 0, moe_hidden_dim = 0;
};

// Where one tensor lies in the model file.
struct TensorInfo {
    std::string name;
    FloatType type;
    int64_t rows, cols;  // a vector has rows == 1
    uint64_t offset;
};

// The model file mapped read-only, with its tensors looked up by name.
class TensorStore {
public:
    TensorStore(const std::string& path, const std::vector<TensorInfo>& tensors);
    ~TensorStore();
    TensorStore(const TensorStore&) = delete;
    TensorStore& operator=(const TensorStore&) = delete;

    bool has(const std::string& name) const { return tensors_.count(name) != 0; }
    const TensorInfo& info(const std::string& name) const;
    const void* data(const std::string& name) const;
    Matrix matrix(const std::string& name) const;
    // A vector stored as F32 (norm weights, biases), copied.
    std::vector<float> vector(const std::string& name) const;
    const std::string& path() const { return path_; }

private:
    std::string path_;
    const uint8_t* base_ = nullptr;
    size_t size_ = 0;
    std::map<std::string, TensorInfo> tensors_;
};

// Buffers the forward pass reuses between calls, sized for the largest chunk of tokens.
struct Scratch {
    std::vector<float> x, xn, y;  // residual stream, normed input, block output: [chunk x dim]
    std::vector<std::vector<float>> per_thread;  // attention scores: [seq_len] per thread
};

class Model {
public:
    Model(const ModelConfig& config, std::shared_ptr<TensorStore> store, int n_threads);
    virtual ~Model() = default;

    const ModelConfig& config() const { return cfg_; }
    int position() const { return pos_; }
    // Moves the KV-cache position back (to reuse a shared prefix) or to 0.
    void set_position(int pos);
    int n_threads() const { return pool_.size(); }

    // Runs n tokens at the current position, appending them to the KV cache, and writes logits:
    // n x vocab when all_logits, else only the last token's vocab values.
    void forward(const int32_t* tokens, int n, bool all_logits, float* logits);

    size_t kv_cache_bytes() const;
    // Weight bytes one decoded token reads (matmuls, embedding row, norms), without the KV cache.
    virtual size_t weight_bytes_per_token() const;
    // KV-cache bytes one decoded token reads at position pos.
    size_t kv_bytes_read_at(int pos) const { return kv_bytes_per_position() * (size_t)(pos + 1); }

    static constexpr int kMaxChunk = 64;  // tokens per matrix-matrix pass

protected:
    // Runs every layer over x [n x dim] (the residual stream) in place, for tokens at pos..pos+n-1.
    virtual void run_layers(float* x, int n, int pos) = 0;
    virtual size_t kv_bytes_per_position() const = 0;
    virtual size_t layer_weight_bytes_per_token() const = 0;

    ModelConfig cfg_;
    std::shared_ptr<TensorStore> store_;
    ThreadPool pool_;
    Scratch scratch_;

private:
    void embed(const int32_t* tokens, int n, float* x);
    void rms_norm_rows_for_head(const float* x, int rows);
    int pos_ = 0;
    const void* embedding_ = nullptr;
    FloatType embedding_type_ = FloatType::F32;
    std::vector<float> final_norm_;
    Matrix lm_head_;
    Activations head_in_;
};

// Builds the graph the config's arch names; throws std::invalid_argument for an unknown arch.
std::unique_ptr<Model> build_model(const ModelConfig& config, std::shared_ptr<TensorStore> store, int n_threads);
std::vector<std::string> builder_names();

}  // namespace dllama
