#include "slice_cache.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "net/auth.h"

namespace fs = std::filesystem;

namespace dllama {

namespace {

uint64_t folder_bytes(const fs::path& folder) {
    uint64_t total = 0;
    std::error_code ec;
    for (const auto& f : fs::directory_iterator(folder, ec))
        if (f.is_regular_file(ec)) total += f.file_size(ec);
    return total;
}

// Drops other folders under `dir`, least recently used first, until `needed` more bytes fit in max_bytes.
void make_room(const fs::path& dir, const fs::path& keep, uint64_t needed, uint64_t max_bytes) {
    std::vector<std::pair<fs::file_time_type, fs::path>> others;
    uint64_t total = 0;
    std::error_code ec;
    for (const auto& f : fs::directory_iterator(dir, ec)) {
        if (!f.is_directory(ec) || f.path() == keep) continue;
        total += folder_bytes(f.path());
        others.emplace_back(fs::last_write_time(f.path() / "index", ec), f.path());
    }
    std::sort(others.begin(), others.end());
    for (const auto& [when, folder] : others) {
        if (total + needed <= max_bytes) break;
        total -= std::min(total, folder_bytes(folder));
        fs::remove_all(folder, ec);
    }
}

}  // namespace

SliceCache::SliceCache(const std::string& dir, uint64_t max_bytes, const std::string& model_key, int node, int n_nodes,
                       uint64_t expected_bytes)
    : max_bytes_(max_bytes) {
    // The key is hashed: it comes from the root and must not choose a path.
    const std::string key = model_key + "\n" + std::to_string(node) + "/" + std::to_string(n_nodes);
    const fs::path folder = fs::path(dir) / net::hex(net::sha256(key.data(), key.size())).substr(0, 32);
    folder_ = folder.string();
    std::error_code ec;
    fs::create_directories(folder, ec);
    if (ec) throw std::runtime_error("cache directory " + folder_ + ": " + ec.message());
    const uint64_t existing = folder_bytes(folder);
    make_room(dir, folder, std::max(expected_bytes, existing) - existing, max_bytes);
    writable_ = std::max(expected_bytes, existing) <= max_bytes;

    data_fd_ = ::open((folder / "data").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (data_fd_ < 0) throw std::runtime_error(folder_ + "/data: " + std::strerror(errno));
    data_size_ = (uint64_t)::lseek(data_fd_, 0, SEEK_END);
    std::ifstream index(folder / "index");
    for (std::string line; std::getline(index, line);) {
        std::istringstream fields(line);
        std::string name;
        int64_t r0, r1, c0, c1;
        uint64_t offset, length;
        if (!(fields >> name >> r0 >> r1 >> c0 >> c1 >> offset >> length)) continue;
        if (offset > data_size_ || length > data_size_ - offset) continue;
        slices_[Key{name, r0, r1, c0, c1}] = {offset, length};
    }
    index_ = std::fopen((folder / "index").c_str(), "a");
    if (!index_) throw std::runtime_error(folder_ + "/index: " + std::strerror(errno));
    fs::last_write_time(folder / "index", fs::file_time_type::clock::now(), ec);  // used now
}

SliceCache::~SliceCache() {
    if (index_) std::fclose(index_);
    if (data_fd_ >= 0) ::close(data_fd_);
}

std::optional<std::vector<uint8_t>> SliceCache::get(const std::string& name, Range rows, Range cols, uint64_t length) {
    auto it = slices_.find(Key{name, rows.begin, rows.end, cols.begin, cols.end});
    if (it == slices_.end() || it->second.second != length) return std::nullopt;
    std::vector<uint8_t> out(length);
    for (uint64_t done = 0; done < length;) {
        const ssize_t k = ::pread(data_fd_, out.data() + done, length - done, (off_t)(it->second.first + done));
        if (k <= 0) return std::nullopt;
        done += (uint64_t)k;
    }
    hit_bytes_ += length;
    return out;
}

void SliceCache::put(const std::string& name, Range rows, Range cols, const std::vector<uint8_t>& bytes) {
    if (!writable_ || data_size_ + bytes.size() > max_bytes_) {
        writable_ = false;
        return;
    }
    for (uint64_t done = 0; done < bytes.size();) {
        const ssize_t k = ::pwrite(data_fd_, bytes.data() + done, bytes.size() - done, (off_t)(data_size_ + done));
        if (k <= 0) {  // disk full or gone: stop caching, the session goes on
            writable_ = false;
            return;
        }
        done += (uint64_t)k;
    }
    std::fprintf(index_, "%s %lld %lld %lld %lld %llu %llu\n", name.c_str(), (long long)rows.begin,
                 (long long)rows.end, (long long)cols.begin, (long long)cols.end, (unsigned long long)data_size_,
                 (unsigned long long)bytes.size());
    std::fflush(index_);
    slices_[Key{name, rows.begin, rows.end, cols.begin, cols.end}] = {data_size_, bytes.size()};
    data_size_ += bytes.size();
}

}  // namespace dllama
