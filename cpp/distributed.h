// Running one model across machines (tensor parallelism over TCP).
//
// The root (node 0) holds the .m file. It connects to the workers (net::Mesh), sends each a SETUP
// frame (the model config, the split's weights and the tensor table), then answers the weight
// requests each worker makes while it builds its share of the graph, so workers need no model file
// (or read a local copy, checked against the root's by identity, or slices they cached from an earlier
// session). A worker checks everything SETUP says before it sizes anything from it, and reports its
// progress every second. When every worker is READY the root builds its own share, and each forward
// step runs on all nodes with partial sums exchanged after attention and after the feed-forward
// (Collective); between steps the mesh's heartbeats keep an idle session. See docs/distributed.md.
#pragma once
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "model.h"
#include "net/mesh.h"
#include "net/socket.h"

namespace dllama {

struct ClusterOptions {
    std::vector<std::string> workers;  // "host:port"
    std::string secret;                // shared secret; empty: none
    net::Exchange exchange = net::Exchange::Q80;
    std::vector<float> split;          // each node's relative share, root first (--split); empty: equal
    int timeout_ms = net::kDefaultTimeoutMs;      // I/O timeout while a step (or the setup) is in flight
    int heartbeat_ms = net::kDefaultHeartbeatMs;  // pings to idle workers
    // While the workers load their shares: called every 200 ms with (bytes loaded, bytes expected) per
    // worker, in node order from node 1 (expected is an estimate until the worker is done).
    std::function<void(const std::vector<std::pair<uint64_t, uint64_t>>&)> progress;
};

// The sustained read bandwidth (bytes/s) of this machine with n_threads: what a worker reports to probes
// and the root measures of itself, so that --split auto compares like with like.
double node_read_bandwidth(int n_threads);

// The identity a worker's local model copy must share with the root's: a hash of the header and the size.
std::string model_identity(const std::string& path);

// Node 0 of a model split across `options.workers`.
std::unique_ptr<Model> build_root_model(const ModelConfig& config, const std::string& path,
                                        const std::vector<TensorInfo>& tensors, int n_threads,
                                        const ClusterOptions& options);

// Where a worker keeps the slices it received (slice_cache.h); an empty dir: nowhere.
struct CacheOptions {
    std::string dir;
    uint64_t max_bytes = 0;
};

// A worker: listens for roots and serves one session at a time.
class Worker {
public:
    Worker(const std::string& host, int port, int n_threads, std::string secret, std::string local_model = "",
           int timeout_ms = net::kDefaultTimeoutMs, CacheOptions cache = {});
    // Waits up to wait_ms (< 0: forever) for a root and serves its whole session; false if none came.
    // Errors of a session are logged to stderr; the worker stays usable.
    bool serve_one(int wait_ms);
    int port() const { return listener_.port(); }

private:
    net::WorkerInfo describe();  // for probes

    net::Listener listener_;
    int n_threads_;
    std::string local_model_;
    int timeout_ms_;
    CacheOptions cache_;
    std::once_flag bandwidth_measured_;
    uint64_t read_bandwidth_ = 0;
    net::Lobby lobby_;  // last: its probe threads use the members above
};

}  // namespace dllama
