// What every architecture's graph shares: the configuration, where the weights come from, the KV
// cache and each sequence slot's length, the embedding lookup, the final norm and the output head, and
// the per-step exchanges when the model is split across machines.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "config.h"
#include "kernels/matmul.h"
#include "kernels/ops.h"
#include "kv_cache.h"
#include "partition.h"
#include "tensor.h"
#include "thread_pool.h"
#include "weights.h"

namespace dllama {

// One row of a forward step: a token of the sequence in KV-cache slot `slot`, at position `pos`;
// `logits` (0 or 1) asks for the output head on this row. Sent to workers as three little-endian int32.
struct StepRow {
    int32_t slot = 0, pos = 0, logits = 0;
};
static_assert(sizeof(StepRow) == 12, "three int32");

// The rows of a step, as the layers see them.
struct Batch {
    int n = 0;
    const StepRow* rows = nullptr;
    const StepRow& operator[](int r) const { return rows[r]; }
};

// Throws std::invalid_argument naming the field when a config is inconsistent or beyond what any model
// has (sizes 0 or huge, more KV heads than heads, rope_dim > head_dim, non-finite constants...), before
// anything is sized from it.
void validate_config(const ModelConfig& config);
// Throws std::invalid_argument when the buffers the config sizes (KV cache, RoPE table, attention scores
// for n_threads) plus weight_bytes exceed this machine's memory and swap.
void check_memory(const ModelConfig& config, int n_threads, uint64_t weight_bytes);

// Buffers the forward pass reuses between calls, sized for the largest chunk of rows.
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
    int n_threads() const { return pool_.size(); }
    int n_slots() const { return cfg_.max_sequences; }

    // The positions of slot's sequence held in the KV cache (the next token's position).
    int length(int slot) const;
    // Keeps only the first n positions of slot's sequence (0 empties the slot).
    void truncate(int slot, int n);
    // Makes slot dst hold the first n positions of slot src's sequence, so that a prompt both share
    // is computed once.
    void copy_prefix(int src, int dst, int n);

    // Multi-token prediction (GLM's "nextn" layer), when the config loads it: one more decoder layer,
    // fed at position i with eh_proj([enorm(embedding(token i+1)); hnorm(h_i)]), h_i being the final
    // hidden state the main layers gave position i; its head (head_norm, then the output head) guesses
    // token i+2. It keeps its own KV cache in every slot, with its own length.
    bool has_mtp() const { return cfg_.n_mtp_layers > 0; }
    int mtp_length(int slot) const;
    // Keeps only the first n positions of slot's MTP sequence (truncate() also cuts it to at most n).
    void truncate_mtp(int slot, int n);

    // On node 0: one forward step over n rows, rows[r] running tokens[r]. Each row appends its keys and
    // values to its slot, so a slot's rows must continue its sequence in order (pos = its length, then
    // +1 per row); a row attends to its own slot's positions up to its own. Rows are run in chunks of
    // at most kMaxChunk. Writes the logits of the rows that ask for them, in row order: k x vocab, and,
    // when `hidden` is given, every row's final hidden state after the final norm (n x dim), which is
    // what the MTP layer takes.
    void step(const int32_t* tokens, const StepRow* rows, int n, float* logits, float* hidden = nullptr);
    // On node 0: the MTP layer over n rows, row r pairing tokens[r] with hidden[r] (n x dim: the main
    // model's hidden state at the row's position, or the MTP layer's own output there when it drafts
    // further ahead); rows continue each slot's MTP sequence. Writes the logits of the rows that ask,
    // and when `hidden_out` is given every row's output after head_norm (n x dim).
    void mtp_step(const int32_t* tokens, const float* hidden, const StepRow* rows, int n, float* logits,
                  float* hidden_out = nullptr);
    // One sequence: n tokens appended to slot's sequence, with logits for every token (all_logits)
    // or only the last.
    void forward(const int32_t* tokens, int n, bool all_logits, float* logits, int slot = 0);
    // On a worker: runs the steps node 0 starts until it sends stop (returns) or the link fails (throws).
    void serve();
    // On node 0 of a split model: tells the workers the session is over.
    void stop_workers();
    // The exchanges between nodes (nullptr on one machine).
    Collective* collective() const { return collective_.get(); }

    // Bytes reserved for the KV cache of every slot (committed only as positions are written).
    size_t kv_cache_bytes() const { return cache_.bytes(); }
    // Weight bytes one decoded token reads on this node (matmuls, embedding row, norms), without the KV cache.
    size_t weight_bytes_per_token() const;
    // KV-cache bytes one decoded token reads at position pos (the main layers').
    size_t kv_bytes_read_at(int pos) const { return cache_.bytes_per_position(cfg_.n_layers) * (size_t)(pos + 1); }

    static constexpr int kMaxChunk = 64;  // rows per matrix-matrix pass
    static constexpr int kMaxSequences = 1024;  // KV-cache slots

protected:
    // Runs every layer over x [n x dim] (the residual stream) in place, for the batch's rows.
    virtual void run_layers(float* x, const Batch& batch) = 0;
    // The same through the MTP layer alone.
    virtual void run_mtp_layer(float* x, const Batch& batch) = 0;
    virtual size_t layer_weight_bytes_per_token() const = 0;
    // Sums a block's partial output across the nodes.
    void all_reduce(float* y, int n_rows) {
        if (collective_) collective_->all_reduce_sum(y, (size_t)n_rows * cfg_.dim);
    }

    ModelConfig cfg_;
    std::shared_ptr<const WeightSource> weights_;
    Partition part_;
    std::shared_ptr<Collective> collective_;
    ThreadPool pool_;
    Scratch scratch_;
    KvCache cache_;  // allocated by the decoder once its blocks have declared what they cache

private:
    // What node 0 tells the workers before each step, as four little-endian int32: a command and its
    // arguments. kForward's and kMtp's rows (StepRow) follow, then the rows' inputs (embeddings, or the
    // MTP layer's projected inputs).
    enum Command : int32_t { kStop = 0, kForward = 1, kCopyPrefix = 2, kMtp = 3 };
    struct StepHeader {
        int32_t command = kStop, a = 0, b = 0, c = 0;  // kForward, kMtp: a = rows; kCopyPrefix: a = src, b = dst, c = n
    };
    enum class Pass { Main, Mtp };
    void broadcast_header(StepHeader& header);
    // The checks every node makes on a step's rows (node 0 also checks that they continue each sequence).
    void check_rows(const StepRow* rows, int n) const;
    void check_slot(int slot, const char* what) const;
    // Node 0's checks of a step: tokens in the vocabulary, each slot's rows continuing `lengths`.
    void check_sequences(const int32_t* tokens, const StepRow* rows, int n, const std::vector<int>& lengths) const;
    // One chunk of either pass; x holds its input rows on node 0 (embeddings, or the MTP input).
    void run_chunk(Pass pass, float* x, const StepRow* rows, int n, float* logits, float* hidden_out);
    // The MTP layer's input rows from tokens and hidden states (node 0).
    void mtp_input(const int32_t* tokens, const float* hidden, int n, float* x);
    Range vocab_share_ = {};
    std::vector<int> lengths_, mtp_lengths_;  // per slot (kept on node 0)
    std::vector<StepRow> rows_;  // the rows a step message carries
    std::vector<float> final_norm_, head_out_, head_all_;
    Matrix lm_head_;
    Activations head_in_;
    std::vector<float> mtp_enorm_, mtp_hnorm_, mtp_head_norm_, mtp_cat_;
    Matrix mtp_proj_;  // eh_proj, on node 0
    Activations mtp_in_;
};

// Builds the graph the config's arch names; throws std::invalid_argument for an unknown arch.
std::unique_ptr<Model> build_model(const ModelConfig& config, std::shared_ptr<const WeightSource> weights,
                                   int n_threads, Partition partition = {},
                                   std::shared_ptr<Collective> collective = nullptr);
std::vector<std::string> builder_names();

// Throws std::invalid_argument when some node of the partition would get none of a block's units,
// naming the tightest constraint and the splits that work (checked before any worker is contacted).
void check_split(const ModelConfig& config, const WeightSource& weights, const Partition& partition);

}  // namespace dllama
