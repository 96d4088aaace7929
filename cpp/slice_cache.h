// The weight slices a worker received from roots, kept on disk so that the next session with the same
// model and split needs none of them again (a model of tens of GB takes minutes to stream).
//
// One folder per session key under the cache directory, named by the SHA-256 of (model identity,
// tensor table and --split weights, node, node count): a changed model has another identity
// (model_identity covers the header, the size and samples of the content) and a changed split another
// key, so neither ever meets a stale slice. In the
// folder, `data` holds the slices back to back and `index` one line per slice, appended as slices arrive:
//     <tensor name> <row begin> <row end> <column begin> <column end> <offset in data> <bytes>
// A line that does not parse, or points past the end of `data`, is ignored (a session that died while
// writing). Folders are dropped, least recently used first, to keep the whole under its size limit.
// The cache trusts its roots as the worker does: with --secret, only roots that know it write to it.
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "partition.h"

namespace dllama {

class SliceCache {
public:
    // Opens (or starts) the folder of this key, first dropping other folders until `expected_bytes`
    // more fit under max_bytes. Throws std::runtime_error if the directory cannot be used.
    SliceCache(const std::string& dir, uint64_t max_bytes, const std::string& model_key, int node, int n_nodes,
               uint64_t expected_bytes);
    ~SliceCache();
    SliceCache(const SliceCache&) = delete;
    SliceCache& operator=(const SliceCache&) = delete;

    // The cached bytes of exactly these rows and columns, if they are there with this length.
    std::optional<std::vector<uint8_t>> get(const std::string& name, Range rows, Range cols, uint64_t length);
    void put(const std::string& name, Range rows, Range cols, const std::vector<uint8_t>& bytes);

    uint64_t hit_bytes() const { return hit_bytes_; }
    const std::string& folder() const { return folder_; }

private:
    using Key = std::tuple<std::string, int64_t, int64_t, int64_t, int64_t>;
    std::string folder_;
    int data_fd_ = -1;
    FILE* index_ = nullptr;
    uint64_t data_size_ = 0;
    uint64_t max_bytes_;
    bool writable_ = true;  // false once the folder would outgrow the limit
    std::map<Key, std::pair<uint64_t, uint64_t>> slices_;  // -> (offset, length)
    uint64_t hit_bytes_ = 0;
};

}  // namespace dllama
