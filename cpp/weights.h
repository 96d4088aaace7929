// Where a model's weights come from: the .m file (mapped), or — on a worker — the root over the
// network. The graph asks for tensors by name and for the slice its partition needs.
#pragma once
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kernels/matmul.h"
#include "partition.h"
#include "tensor.h"

namespace dllama {

// Where one tensor lies in the model file.
struct TensorInfo {
    std::string name;
    FloatType type;
    int64_t rows, cols;  // a vector has rows == 1
    uint64_t offset;
};

// Throws std::invalid_argument unless t has a known type and a shape whose byte size fits 64 bits
// (and, quantized, whole blocks per row): a tensor table may come from a corrupt file or a root.
void validate_tensor(const TensorInfo& t);
constexpr int64_t kMaxTensorSide = int64_t(1) << 32, kMaxTensorValues = int64_t(1) << 44;
uint64_t tensor_bytes(const TensorInfo& t);
// Throws std::out_of_range unless rows x cols is a non-empty part of t (`source` names where t is).
void check_slice(const TensorInfo& t, Range rows, Range cols, const std::string& source);

class WeightSource {
public:
    virtual ~WeightSource() = default;
    virtual const TensorInfo& info(const std::string& name) const = 0;
    virtual bool has(const std::string& name) const = 0;
    // Rows x columns of a tensor in its stored type (quantized column ranges on 32-value blocks).
    virtual std::vector<uint8_t> read(const std::string& name, Range rows, Range cols) const = 0;
    // Names this source in error messages (the file path, or the root's address).
    virtual std::string describe() const = 0;

    // Callers name the rows and columns they use, so a tensor of another shape is refused, never overrun.
    Matrix matrix(const std::string& name, Range rows, Range cols) const;
    // Several matrices with the same columns and type stacked row-wise into one (one product, one pass
    // over memory, instead of several: q/k/v, gate/up).
    Matrix stacked(const std::vector<std::pair<std::string, Range>>& parts, Range cols) const;
    // Part of a vector (norm weights, biases) as f32.
    std::vector<float> vector(const std::string& name, Range part) const;
    // Row r of a table (the embedding) as f32.
    void row(const std::string& name, int64_t r, float* out) const;
};

// Copies rows x cols out of a row-major tensor of type `type` with `total_cols` columns at `base`.
std::vector<uint8_t> copy_slice(const uint8_t* base, FloatType type, int64_t total_cols, Range rows, Range cols,
                                const std::string& what);

// The model file mapped read-only.
class TensorStore : public WeightSource {
public:
    TensorStore(const std::string& path, const std::vector<TensorInfo>& tensors);
    ~TensorStore() override;
    TensorStore(const TensorStore&) = delete;
    TensorStore& operator=(const TensorStore&) = delete;

    const TensorInfo& info(const std::string& name) const override;
    bool has(const std::string& name) const override { return tensors_.count(name) != 0; }
    std::vector<uint8_t> read(const std::string& name, Range rows, Range cols) const override;
    std::string describe() const override { return path_; }

private:
    std::string path_;
    const uint8_t* base_ = nullptr;
    size_t size_ = 0;
    std::map<std::string, TensorInfo> tensors_;
};

// Another source's reads, counted: bytes of weight slices read so far, and a report of them at most every
// `interval_ms` while a callback is set (model loading progress).
class CountingSource : public WeightSource {
public:
    using Report = std::function<void(uint64_t bytes_read)>;
    explicit CountingSource(std::shared_ptr<const WeightSource> source, Report report = nullptr, int interval_ms = 100)
        : source_(std::move(source)), report_(std::move(report)), interval_ms_(interval_ms) {}

    const TensorInfo& info(const std::string& name) const override { return source_->info(name); }
    bool has(const std::string& name) const override { return source_->has(name); }
    std::vector<uint8_t> read(const std::string& name, Range rows, Range cols) const override;
    std::string describe() const override { return source_->describe(); }

    uint64_t bytes_read() const { return bytes_read_; }
    void stop_reporting() { report_ = nullptr; }

private:
    std::shared_ptr<const WeightSource> source_;
    Report report_;
    int interval_ms_;
    mutable std::atomic<uint64_t> bytes_read_{0};
    mutable std::chrono::steady_clock::time_point last_report_{};
};

}  // namespace dllama
