#include "model.h"

#include <cstring>
#include <stdexcept>

#include "models/builders.h"
#include "quants.h"

namespace dllama {

Model::Model(const ModelConfig& config, std::shared_ptr<const WeightSource> weights, int n_threads, Partition partition,
             std::shared_ptr<Collective> collective)
    : cfg_(config), weights_(std::move(weights)), part_(partition), collective_(std::move(collective)), pool_(n_threads) {
    validate_config(cfg_);
    check_memory(cfg_, pool_.size(), 0);
    if (part_.node == 0) {
        const TensorInfo& emb = weights_->info("embedding");
        if (emb.rows != cfg_.vocab_size || emb.cols != cfg_.dim)
            throw std::runtime_error(weights_->describe() + ": embedding is " + std::to_string(emb.rows) + "x" +
                                     std::to_string(emb.cols) + ", expected vocab x dim");
    }
    final_norm_ = weights_->vector("final_norm", Range::all(cfg_.dim));
    vocab_share_ = part_.share(cfg_.vocab_size);
    lm_head_ = weights_->matrix("lm_head", vocab_share_, Range::all(cfg_.dim));
    scratch_.x.resize((size_t)kMaxChunk * cfg_.dim);
    scratch_.xn.resize((size_t)kMaxChunk * cfg_.dim);
    scratch_.y.resize((size_t)kMaxChunk * cfg_.dim);
    // Attention scores: one row of the context per query head sharing a KV head.
    const int group = cfg_.n_kv_heads > 0 ? std::max(1, cfg_.n_heads / cfg_.n_kv_heads) : 1;
    scratch_.per_thread.assign(pool_.size(), std::vector<float>((size_t)cfg_.seq_len * group));
}

void Model::set_position(int pos) {
    if (pos < 0 || pos > pos_) throw std::invalid_argument("position can only move back, to 0.." + std::to_string(pos_));
    pos_ = pos;
}

void Model::forward(const int32_t* tokens, int n, bool all_logits, float* logits) {
    if (part_.node != 0) throw std::logic_error("forward runs on node 0; workers serve()");
    if (n <= 0) throw std::invalid_argument("forward needs at least one token");
    if (pos_ + n > cfg_.seq_len)
        throw std::length_error("context is full: " + std::to_string(pos_) + " + " + std::to_string(n) +
                                " tokens exceed the context of " + std::to_string(cfg_.seq_len));
    for (int t = 0; t < n; t++)
        if (tokens[t] < 0 || tokens[t] >= cfg_.vocab_size)
            throw std::out_of_range("token id " + std::to_string(tokens[t]) + " is outside the vocabulary (0.." +
                                    std::to_string(cfg_.vocab_size - 1) + ")");
    for (int done = 0; done < n; done += kMaxChunk) {
        Step step;
        step.n = std::min(kMaxChunk, n - done);
        step.pos = pos_;
        // The output head runs on every row when all logits are wanted, else on the last row only.
        const bool last_chunk = done + step.n == n;
        step.head_first = all_logits ? 0 : step.n - 1;
        step.head_rows = all_logits || last_chunk ? step.n - step.head_first : 0;
        StepScope scope(collective_.get());
        run_step(step, tokens + done, all_logits ? logits + (size_t)done * cfg_.vocab_size : logits);
        pos_ += step.n;
    }
}

void Model::broadcast_step(Step& step) {
    int32_t msg[4] = {step.n, step.pos, step.head_first, step.head_rows};
    static_assert(sizeof(msg) == 16, "four int32");
    collective_->broadcast(msg, sizeof(msg));  // int32 in memory order: little-endian targets only
    step = Step{msg[0], msg[1], msg[2], msg[3]};
}

void Model::serve() {
    for (;;) {
        StepScope scope(collective_.get());  // waits, idle, for the root's next step
        Step step;
        broadcast_step(step);
        if (step.n == 0) return;
        // The header comes from the network: check it before it sizes or indexes anything.
        if (step.n < 0 || step.n > kMaxChunk || step.pos < 0 || step.pos > cfg_.seq_len - step.n ||
            step.head_rows < 0 || step.head_first < 0 || step.head_first > step.n - step.head_rows)
            throw std::runtime_error("bad step from the root: " + std::to_string(step.n) + " tokens at position " +
                                     std::to_string(step.pos) + ", output rows " + std::to_string(step.head_first) +
                                     "+" + std::to_string(step.head_rows) + " (at most " + std::to_string(kMaxChunk) +
                                     " tokens per step in a context of " + std::to_string(cfg_.seq_len) + ")");
        run_step(step, nullptr, nullptr);
    }
}

void Model::stop_workers() {
    if (!collective_) return;
    StepScope scope(collective_.get());
    Step stop;
    broadcast_step(stop);
}

void Model::run_step(const Step& step, const int32_t* tokens, float* logits) {
    const int dim = cfg_.dim, n = step.n;
    float* x = scratch_.x.data();
    if (part_.node == 0)
        for (int t = 0; t < n; t++) weights_->row("embedding", tokens[t], x + (size_t)t * dim);
    if (collective_) {
        if (part_.node == 0) {
            Step copy = step;
            broadcast_step(copy);
        }
        collective_->broadcast(x, sizeof(float) * n * dim);
    }
    run_layers(x, n, step.pos);
    if (step.head_rows == 0) return;

    const int rows = step.head_rows, vocab = cfg_.vocab_size;
    float* xn = scratch_.xn.data();
    for (int t = 0; t < rows; t++)
        rms_norm(x + (size_t)(step.head_first + t) * dim, final_norm_.data(), dim, cfg_.norm_eps, xn + (size_t)t * dim);
    head_in_.set(xn, rows, dim);
    if (!collective_) {
        matmul(lm_head_, head_in_, logits, pool_);
        return;
    }
    // Each node has a slice of the vocabulary: gather the slices on node 0, then interleave them per row.
    const size_t mine = (size_t)rows * vocab_share_.size();
    head_out_.resize(mine);
    matmul(lm_head_, head_in_, head_out_.data(), pool_);
    std::vector<size_t> bytes_per_node(part_.n_nodes);
    for (int i = 0; i < part_.n_nodes; i++)
        bytes_per_node[i] = sizeof(float) * rows * Partition{i, part_.n_nodes}.share(vocab).size();
    head_all_.resize((size_t)rows * vocab);
    collective_->gather_to_root(head_out_.data(), mine * sizeof(float), head_all_.data(), bytes_per_node);
    if (part_.node != 0) return;
    const float* src = head_all_.data();
    for (int i = 0; i < part_.n_nodes; i++) {
        const Range share = Partition{i, part_.n_nodes}.share(vocab);
        for (int t = 0; t < rows; t++, src += share.size())
            std::memcpy(logits + (size_t)t * vocab + share.begin, src, sizeof(float) * share.size());
    }
}

size_t Model::weight_bytes_per_token() const {
    const size_t embedding_row = part_.node == 0 ? bytes_of(weights_->info("embedding").type, cfg_.dim) : 0;
    return layer_weight_bytes_per_token() + lm_head_.bytes() + embedding_row + final_norm_.size() * sizeof(float);
}

std::unique_ptr<Model> build_model(const ModelConfig& config, std::shared_ptr<const WeightSource> weights,
                                   int n_threads, Partition partition, std::shared_ptr<Collective> collective) {
    for (const auto& b : graph_builders())
        if (b.name == config.arch) return b.build(config, std::move(weights), n_threads, partition, collective);
    std::string known;
    for (const auto& b : graph_builders()) known += (known.empty() ? "" : ", ") + b.name;
    throw std::invalid_argument("no graph builder named '" + config.arch + "' (known: " + known + ")");
}

std::vector<std::string> builder_names() {
    std::vector<std::string> names;
    for (const auto& b : graph_builders()) names.push_back(b.name);
    return names;
}

}  // namespace dllama
