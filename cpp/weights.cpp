#include "weights.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

#include "quants.h"

namespace dllama {

std::vector<uint8_t> copy_slice(const uint8_t* base, FloatType type, int64_t total_cols, Range rows, Range cols,
                                const std::string& what) {
    if (is_quantized(type) && (cols.begin % kBlockSize || cols.end % kBlockSize))
        throw std::invalid_argument("cannot split " + what + " there: columns " + std::to_string(cols.begin) + ".." +
                                    std::to_string(cols.end) + " would cut " + float_type_name(type) +
                                    " blocks of 32 values (use fewer nodes, or F32/F16 weights)");
    const size_t row_bytes = bytes_of(type, total_cols);
    const size_t offset = bytes_of(type, cols.begin), n = bytes_of(type, cols.size());
    std::vector<uint8_t> out(n * rows.size());
    for (int64_t r = rows.begin; r < rows.end; r++)
        std::memcpy(out.data() + (r - rows.begin) * n, base + r * row_bytes + offset, n);
    return out;
}

void validate_tensor(const TensorInfo& t) {
    const std::string what = "tensor " + t.name + ": ";
    if ((int)t.type < 0 || (int)t.type > 3) throw std::invalid_argument(what + "unknown type " + std::to_string((int)t.type));
    if (t.rows < 1 || t.cols < 1 || t.rows > kMaxTensorSide || t.cols > kMaxTensorSide ||
        t.rows > kMaxTensorValues / t.cols)
        throw std::invalid_argument(what + "impossible shape " + std::to_string(t.rows) + " x " + std::to_string(t.cols));
    if (is_quantized(t.type) && t.cols % kBlockSize != 0)
        throw std::invalid_argument(what + std::to_string(t.cols) + " columns of " + float_type_name(t.type) +
                                    " are not whole blocks of 32");
}

uint64_t tensor_bytes(const TensorInfo& t) { return (uint64_t)t.rows * bytes_of(t.type, (size_t)t.cols); }

void check_slice(const TensorInfo& t, Range rows, Range cols, const std::string& source) {
    if (rows.begin < 0 || rows.end > t.rows || cols.begin < 0 || cols.end > t.cols || rows.empty() || cols.empty())
        throw std::out_of_range(source + ": tensor " + t.name + " (" + std::to_string(t.rows) + " x " +
                                std::to_string(t.cols) + ") has no rows " + std::to_string(rows.begin) + ".." +
                                std::to_string(rows.end) + ", columns " + std::to_string(cols.begin) + ".." +
                                std::to_string(cols.end));
}

Matrix WeightSource::matrix(const std::string& name, Range rows, Range cols) const {
    const std::vector<uint8_t> bytes = read(name, rows, cols);
    return Matrix(info(name).type, rows.size(), cols.size(), bytes.data());
}

Matrix WeightSource::stacked(const std::vector<std::pair<std::string, Range>>& parts, Range cols) const {
    std::vector<uint8_t> bytes;
    int64_t rows = 0;
    const FloatType type = info(parts.at(0).first).type;
    for (const auto& [name, range] : parts) {
        if (info(name).type != type)
            throw std::runtime_error(describe() + ": tensor " + name + " is " + float_type_name(info(name).type) +
                                     ", not " + float_type_name(type) + " like " + parts[0].first);
        const std::vector<uint8_t> part = read(name, range, cols);
        bytes.insert(bytes.end(), part.begin(), part.end());
        rows += range.size();
    }
    return Matrix(type, rows, cols.size(), bytes.data());
}

std::vector<float> WeightSource::vector(const std::string& name, Range part) const {
    const TensorInfo& t = info(name);
    if (t.rows != 1) throw std::runtime_error(describe() + ": tensor " + name + " is a matrix, expected a vector");
    const std::vector<uint8_t> bytes = read(name, Range::all(1), part);
    std::vector<float> v(part.size());
    dequantize(t.type, bytes.data(), v.size(), v.data());
    return v;
}

void WeightSource::row(const std::string& name, int64_t r, float* out) const {
    const TensorInfo& t = info(name);
    const std::vector<uint8_t> bytes = read(name, Range{r, r + 1}, Range::all(t.cols));
    dequantize(t.type, bytes.data(), t.cols, out);
}

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
        validate_tensor(t);
        const uint64_t n = tensor_bytes(t);
        if (t.offset > size_ || n > size_ - t.offset)
            throw std::runtime_error(path + ": tensor " + t.name + " at byte " + std::to_string(t.offset) + " with " +
                                     std::to_string(n) + " bytes ends past the end of the file (" +
                                     std::to_string(size_) + " bytes; truncated?)");
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

std::vector<uint8_t> TensorStore::read(const std::string& name, Range rows, Range cols) const {
    const TensorInfo& t = info(name);
    check_slice(t, rows, cols, path_);
    return copy_slice(base_ + t.offset, t.type, t.cols, rows, cols, path_ + ": tensor " + name);
}

std::vector<uint8_t> CountingSource::read(const std::string& name, Range rows, Range cols) const {
    std::vector<uint8_t> bytes = source_->read(name, rows, cols);
    bytes_read_ += bytes.size();
    if (report_) {
        const auto now = std::chrono::steady_clock::now();
        if (now - last_report_ >= std::chrono::milliseconds(interval_ms_)) {
            last_report_ = now;
            report_(bytes_read_);
        }
    }
    return bytes;
}

}  // namespace dllama
