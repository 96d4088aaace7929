#include "model.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

#include "models/builders.h"
#include "quants.h"

namespace dllama {

TensorStore::TensorStore(const std::string& path, const std::vector<TensorInfo>& tensors) : path_(path) {
    const int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) throw std::runtime_error(path + ": cannot open: " + std::strerror(errno));
    struct stat st;
    if (::fstat(fd, &st) != 0) {
        ::close(fd);
        throw std::runtime_error(path + ": cannot stat: " + std::strerror(errno));
    }
    size_ = (size_t)st.st_size;
    void* p = size_ ? ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0) : nullptr;
    ::close(fd);
    if (p == MAP_FAILED) throw std::runtime_error(path + ": cannot map: " + std::strerror(errno));
    base_ = static_cast<const uint8_t*>(p);
    for (const auto& t : tensors) {
        const size_t n = bytes_of(t.type, (size_t)t.rows * t.cols);
        if (t.offset + n > size_)
            throw std::runtime_error(path + ": tensor " + t.name + " ends at byte " + std::to_string(t.offset + n) +
                                     " but the file has " + std::to_string(size_) + " bytes (truncated?)");
        tensors_[t.name] = t;
    }
}

TensorStore::~TensorStore() {
    if (base_) ::munmap(const_cast<uint8_t*>(base_), size_);
}

const TensorInfo& TensorStore::info(const std::string& name) const {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) throw std::runtime_error(path_ + ": missing tensor " + name);
    return it->second;
}

const void* TensorStore::data(const std::string& name) const { return base_ + info(name).offset; }

Matrix TensorStore::matrix(const std::string& name) const {
    const TensorInfo& t = info(name);
    return Matrix(t.type, t.rows, t.cols, base_ + t.offset);
}

std::vector<float> TensorStore::vector(const std::string& name) const {
    const TensorInfo& t = info(name);
    std::vector<float> v((size_t)t.rows * t.cols);
    dequantize(t.type, base_ + t.offset, v.size(), v.data());
    return v;
}

Model::Model(const ModelConfig& config, std::shared_ptr<TensorStore> store, int n_threads)
    : cfg_(config), store_(std::move(store)), pool_(n_threads) {
    const TensorInfo& emb = store_->info("embedding");
    if (emb.rows != cfg_.vocab_size || emb.cols != cfg_.dim)
        throw std::runtime_error(store_->path() + ": embedding is " + std::to_string(emb.rows) + "x" +
                                 std::to_string(emb.cols) + ", expected vocab x dim");
    embedding_ = store_->data("embedding");
    embedding_type_ = emb.type;
    final_norm_ = store_->vector("final_norm");
    lm_head_ = store_->matrix("lm_head");
    scratch_.x.resize((size_t)kMaxChunk * cfg_.dim);
    scratch_.xn.resize((size_t)kMaxChunk * cfg_.dim);
    scratch_.y.resize((size_t)kMaxChunk * cfg_.dim);
    scratch_.per_thread.assign(pool_.size(), std::vector<float>(cfg_.seq_len));
}

void Model::set_position(int pos) {
    if (pos < 0 || pos > pos_) throw std::invalid_argument("position can only move back, to 0.." + std::to_string(pos_));
    pos_ = pos;
}

void Model::embed(const int32_t* tokens, int n, float* x) {
    const size_t row_bytes = bytes_of(embedding_type_, cfg_.dim);
    for (int t = 0; t < n; t++) {
        if (tokens[t] < 0 || tokens[t] >= cfg_.vocab_size)
            throw std::out_of_range("token id " + std::to_string(tokens[t]) + " is outside the vocabulary (0.." +
                                    std::to_string(cfg_.vocab_size - 1) + ")");
        const uint8_t* row = static_cast<const uint8_t*>(embedding_) + (size_t)tokens[t] * row_bytes;
        dequantize(embedding_type_, row, cfg_.dim, x + (size_t)t * cfg_.dim);
    }
}

void Model::forward(const int32_t* tokens, int n, bool all_logits, float* logits) {
    if (n <= 0) throw std::invalid_argument("forward needs at least one token");
    if (pos_ + n > cfg_.seq_len)
        throw std::length_error("context is full: " + std::to_string(pos_) + " + " + std::to_string(n) +
                                " tokens exceed the context of " + std::to_string(cfg_.seq_len));
    for (int t = 0; t < n; t++)
        if (tokens[t] < 0 || tokens[t] >= cfg_.vocab_size)
            throw std::out_of_range("token id " + std::to_string(tokens[t]) + " is outside the vocabulary (0.." +
                                    std::to_string(cfg_.vocab_size - 1) + ")");
    const int dim = cfg_.dim;
    for (int done = 0; done < n; done += kMaxChunk) {
        const int chunk = std::min(kMaxChunk, n - done);
        float* x = scratch_.x.data();
        embed(tokens + done, chunk, x);
        run_layers(x, chunk, pos_);
        pos_ += chunk;
        // The output head runs on every row when all logits are wanted, else on the last row only.
        const bool last_chunk = done + chunk == n;
        if (!all_logits && !last_chunk) continue;
        const int first = all_logits ? 0 : chunk - 1;
        const int rows = chunk - first;
        rms_norm_rows_for_head(x + (size_t)first * dim, rows);
        head_in_.set(scratch_.xn.data(), rows, dim);
        matmul(lm_head_, head_in_, all_logits ? logits + (size_t)done * cfg_.vocab_size : logits, pool_);
    }
}

void Model::rms_norm_rows_for_head(const float* x, int rows) {
    for (int t = 0; t < rows; t++)
        rms_norm(x + (size_t)t * cfg_.dim, final_norm_.data(), cfg_.dim, cfg_.norm_eps, scratch_.xn.data() + (size_t)t * cfg_.dim);
}

size_t Model::kv_cache_bytes() const { return kv_bytes_per_position() * (size_t)cfg_.seq_len; }

size_t Model::weight_bytes_per_token() const {
    return layer_weight_bytes_per_token() + lm_head_.bytes() + bytes_of(embedding_type_, cfg_.dim);
}

std::unique_ptr<Model> build_model(const ModelConfig& config, std::shared_ptr<TensorStore> store, int n_threads) {
    for (const auto& b : graph_builders())
        if (b.name == config.arch) return b.build(config, std::move(store), n_threads);
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
