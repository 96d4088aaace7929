#include "model.h"

#include <algorithm>
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
    const Range dim = Range::all(cfg_.dim);
    final_norm_ = weights_->vector("final_norm", dim);
    vocab_share_ = part_.share(cfg_.vocab_size);
    lm_head_ = weights_->matrix("lm_head", vocab_share_, Range::all(cfg_.dim));
    scratch_.x.resize((size_t)kMaxChunk * cfg_.dim);
    scratch_.xn.resize((size_t)kMaxChunk * cfg_.dim);
    scratch_.y.resize((size_t)kMaxChunk * cfg_.dim);
    // Attention scores: one row of the context per query head sharing a KV head.
    const int group = cfg_.n_kv_heads > 0 ? std::max(1, cfg_.n_heads / cfg_.n_kv_heads) : 1;
    scratch_.per_thread.assign(pool_.size(), std::vector<float>((size_t)cfg_.seq_len * group));
    lengths_.assign(cfg_.max_sequences, 0);
    mtp_lengths_.assign(cfg_.max_sequences, 0);
    if (cfg_.n_mtp_layers < 0 || cfg_.n_mtp_layers > 1)
        throw std::invalid_argument("n_mtp_layers must be 0 or 1, not " + std::to_string(cfg_.n_mtp_layers));
    if (has_mtp()) {
        const std::string p = "layers." + std::to_string(cfg_.n_layers) + ".mtp.";
        mtp_head_norm_ = weights_->vector(p + "head_norm", dim);
        if (part_.node == 0) {
            mtp_enorm_ = weights_->vector(p + "enorm", dim);
            mtp_hnorm_ = weights_->vector(p + "hnorm", dim);
            mtp_proj_ = weights_->matrix(p + "eh_proj", Range::all(cfg_.dim), Range::all(2 * (int64_t)cfg_.dim));
        }
    }
}

void Model::check_slot(int slot, const char* what) const {
    if (slot < 0 || slot >= n_slots())
        throw std::out_of_range(std::string(what) + " " + std::to_string(slot) + " is not a sequence slot (0.." +
                                std::to_string(n_slots() - 1) + ")");
}

int Model::length(int slot) const {
    check_slot(slot, "slot");
    return lengths_[slot];
}

// Cutting a sequence of `length` positions back to n: only 0..length is possible.
static void check_cut_back(const std::string& what, int length, int n) {
    if (n < 0 || n > length)
        throw std::invalid_argument(what + " can only be cut back, to 0.." + std::to_string(length) +
                                    " positions, not " + std::to_string(n));
}

void Model::truncate(int slot, int n) {
    check_slot(slot, "slot");
    check_cut_back("slot " + std::to_string(slot), lengths_[slot], n);
    lengths_[slot] = n;
    mtp_lengths_[slot] = std::min(mtp_lengths_[slot], n);
}

int Model::mtp_length(int slot) const {
    check_slot(slot, "slot");
    return mtp_lengths_[slot];
}

void Model::truncate_mtp(int slot, int n) {
    check_slot(slot, "slot");
    check_cut_back("the MTP sequence of slot " + std::to_string(slot), mtp_lengths_[slot], n);
    mtp_lengths_[slot] = n;
}

void Model::copy_prefix(int src, int dst, int n) {
    check_slot(src, "source slot");
    check_slot(dst, "destination slot");
    if (n < 0 || n > lengths_[src])
        throw std::invalid_argument("slot " + std::to_string(src) + " holds " + std::to_string(lengths_[src]) +
                                    " positions, cannot copy " + std::to_string(n));
    if (collective_) {
        StepScope scope(collective_.get());
        StepHeader header{kCopyPrefix, src, dst, n};
        broadcast_header(header);
    }
    cache_.copy_prefix(src, dst, n);
    lengths_[dst] = n;
    mtp_lengths_[dst] = std::min(mtp_lengths_[src], n);
}

void Model::check_rows(const StepRow* rows, int n) const {
    for (int r = 0; r < n; r++) {
        if (rows[r].slot < 0 || rows[r].slot >= n_slots())
            throw std::out_of_range("row " + std::to_string(r) + ": slot " + std::to_string(rows[r].slot) +
                                    " is not a sequence slot (0.." + std::to_string(n_slots() - 1) + ")");
        if (rows[r].pos < 0 || rows[r].pos >= cfg_.seq_len)
            throw std::out_of_range("row " + std::to_string(r) + ": position " + std::to_string(rows[r].pos) +
                                    " is outside the context of " + std::to_string(cfg_.seq_len));
        if (rows[r].logits != 0 && rows[r].logits != 1)
            throw std::invalid_argument("row " + std::to_string(r) + ": logits flag must be 0 or 1");
    }
}

void Model::check_sequences(const int32_t* tokens, const StepRow* rows, int n, const std::vector<int>& lengths) const {
    if (part_.node != 0) throw std::logic_error("steps run on node 0; workers serve()");
    if (n <= 0) throw std::invalid_argument("a step needs at least one row");
    check_rows(rows, n);
    std::vector<int> next(lengths);
    for (int r = 0; r < n; r++) {
        if (tokens[r] < 0 || tokens[r] >= cfg_.vocab_size)
            throw std::out_of_range("token id " + std::to_string(tokens[r]) + " is outside the vocabulary (0.." +
                                    std::to_string(cfg_.vocab_size - 1) + ")");
        int& len = next[rows[r].slot];
        if (rows[r].pos != len)
            throw std::invalid_argument("row " + std::to_string(r) + ": slot " + std::to_string(rows[r].slot) +
                                        " continues at position " + std::to_string(len) + ", not " +
                                        std::to_string(rows[r].pos));
        len++;
    }
}

void Model::step(const int32_t* tokens, const StepRow* rows, int n, float* logits, float* hidden) {
    check_sequences(tokens, rows, n, lengths_);
    for (int done = 0; done < n;) {
        const int chunk = std::min(kMaxChunk, n - done);
        float* x = scratch_.x.data();
        for (int t = 0; t < chunk; t++) weights_->row("embedding", tokens[done + t], x + (size_t)t * cfg_.dim);
        run_chunk(Pass::Main, x, rows + done, chunk, logits, hidden ? hidden + (size_t)done * cfg_.dim : nullptr);
        for (int r = done; r < done + chunk; r++) {
            lengths_[rows[r].slot] = rows[r].pos + 1;
            if (rows[r].logits) logits += cfg_.vocab_size;
        }
        done += chunk;
    }
}

void Model::mtp_step(const int32_t* tokens, const float* hidden, const StepRow* rows, int n, float* logits,
                     float* hidden_out) {
    if (!has_mtp()) throw std::logic_error("this model was loaded without its MTP layer");
    check_sequences(tokens, rows, n, mtp_lengths_);
    for (int done = 0; done < n;) {
        const int chunk = std::min(kMaxChunk, n - done);
        float* x = scratch_.x.data();
        mtp_input(tokens + done, hidden + (size_t)done * cfg_.dim, chunk, x);
        run_chunk(Pass::Mtp, x, rows + done, chunk, logits, hidden_out ? hidden_out + (size_t)done * cfg_.dim : nullptr);
        for (int r = done; r < done + chunk; r++) {
            mtp_lengths_[rows[r].slot] = rows[r].pos + 1;
            if (rows[r].logits) logits += cfg_.vocab_size;
        }
        done += chunk;
    }
}

void Model::mtp_input(const int32_t* tokens, const float* hidden, int n, float* x) {
    const int dim = cfg_.dim;
    mtp_cat_.resize((size_t)kMaxChunk * 2 * dim);
    float* e = scratch_.xn.data();
    for (int t = 0; t < n; t++) {
        float* cat = mtp_cat_.data() + (size_t)t * 2 * dim;
        weights_->row("embedding", tokens[t], e);
        rms_norm(e, mtp_enorm_.data(), dim, cfg_.norm_eps, cat);
        rms_norm(hidden + (size_t)t * dim, mtp_hnorm_.data(), dim, cfg_.norm_eps, cat + dim);
    }
    mtp_in_.set(mtp_cat_.data(), n, 2 * dim);
    matmul(mtp_proj_, mtp_in_, x, pool_);
}

void Model::forward(const int32_t* tokens, int n, bool all_logits, float* logits, int slot) {
    check_slot(slot, "slot");
    if (n <= 0) throw std::invalid_argument("forward needs at least one token");
    if (lengths_[slot] + n > cfg_.seq_len)
        throw std::length_error("context is full: " + std::to_string(lengths_[slot]) + " + " + std::to_string(n) +
                                " tokens exceed the context of " + std::to_string(cfg_.seq_len));
    std::vector<StepRow> rows(n);
    for (int t = 0; t < n; t++) rows[t] = StepRow{slot, lengths_[slot] + t, all_logits || t == n - 1};
    step(tokens, rows.data(), n, logits);
}

void Model::broadcast_header(StepHeader& header) {
    int32_t msg[4] = {header.command, header.a, header.b, header.c};
    static_assert(sizeof(msg) == 16, "four int32");
    collective_->broadcast(msg, sizeof(msg));  // int32 in memory order: little-endian targets only
    header = StepHeader{msg[0], msg[1], msg[2], msg[3]};
}

void Model::serve() {
    for (;;) {
        StepScope scope(collective_.get());  // waits, idle, for the root's next step
        StepHeader header;
        broadcast_header(header);
        switch (header.command) {
            case kStop:
                return;
            case kForward:
            case kMtp:
                if (header.a < 1 || header.a > kMaxChunk)
                    throw std::runtime_error("node 0 sent a step of " + std::to_string(header.a) + " rows (1.." +
                                             std::to_string(kMaxChunk) + " allowed)");
                if (header.command == kMtp && !has_mtp())
                    throw std::runtime_error("node 0 sent an MTP step, but the model was loaded without its MTP layer");
                rows_.resize(header.a);
                collective_->broadcast(rows_.data(), sizeof(StepRow) * rows_.size());
                check_rows(rows_.data(), header.a);
                run_chunk(header.command == kMtp ? Pass::Mtp : Pass::Main, scratch_.x.data(), rows_.data(), header.a,
                          nullptr, nullptr);
                break;
            case kCopyPrefix:
                check_slot(header.a, "source slot");
                check_slot(header.b, "destination slot");
                if (header.c < 0 || header.c > cfg_.seq_len)
                    throw std::runtime_error("node 0 asked to copy " + std::to_string(header.c) +
                                             " positions of a context of " + std::to_string(cfg_.seq_len));
                cache_.copy_prefix(header.a, header.b, header.c);
                break;
            default:
                throw std::runtime_error("node 0 sent an unknown step command " + std::to_string(header.command));
        }
    }
}

void Model::stop_workers() {
    if (!collective_) return;
    StepScope scope(collective_.get());
    StepHeader stop;
    broadcast_header(stop);
}

void Model::run_chunk(Pass pass, float* x, const StepRow* rows, int n, float* logits, float* hidden_out) {
    const int dim = cfg_.dim;
    StepScope scope(part_.node == 0 ? collective_.get() : nullptr);  // a worker's serve() holds its own
    if (collective_) {
        if (part_.node == 0) {
            StepHeader header{pass == Pass::Mtp ? kMtp : kForward, n, 0, 0};
            broadcast_header(header);
            rows_.assign(rows, rows + n);
            collective_->broadcast(rows_.data(), sizeof(StepRow) * n);
        }
        collective_->broadcast(x, sizeof(float) * n * dim);
    }
    const Batch batch{n, rows};
    if (pass == Pass::Mtp) run_mtp_layer(x, batch);
    else run_layers(x, batch);

    // The output head runs on the rows that ask for logits.
    const std::vector<float>& norm = pass == Pass::Mtp ? mtp_head_norm_ : final_norm_;
    float* xn = scratch_.xn.data();
    int n_out = 0;
    for (int t = 0; t < n; t++) {
        float* out = hidden_out ? hidden_out + (size_t)t * dim : xn + (size_t)n_out * dim;
        if (hidden_out || rows[t].logits) rms_norm(x + (size_t)t * dim, norm.data(), dim, cfg_.norm_eps, out);
        if (rows[t].logits && hidden_out) std::memcpy(xn + (size_t)n_out * dim, out, sizeof(float) * dim);
        n_out += rows[t].logits;
    }
    if (n_out == 0) return;
    const int vocab = cfg_.vocab_size;
    head_in_.set(xn, n_out, dim);
    if (!collective_) {
        matmul(lm_head_, head_in_, logits, pool_);
        return;
    }
    // Each node has a slice of the vocabulary: gather the slices on node 0, then interleave them per row.
    const size_t mine = (size_t)n_out * vocab_share_.size();
    head_out_.resize(mine);
    matmul(lm_head_, head_in_, head_out_.data(), pool_);
    std::vector<size_t> bytes_per_node(part_.n_nodes);
    for (int i = 0; i < part_.n_nodes; i++)
        bytes_per_node[i] = sizeof(float) * n_out * part_.for_node(i).share(vocab).size();
    head_all_.resize((size_t)n_out * vocab);
    collective_->gather_to_root(head_out_.data(), mine * sizeof(float), head_all_.data(), bytes_per_node);
    if (part_.node != 0) return;
    const float* src = head_all_.data();
    for (int i = 0; i < part_.n_nodes; i++) {
        const Range share = part_.for_node(i).share(vocab);
        for (int t = 0; t < n_out; t++, src += share.size())
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
