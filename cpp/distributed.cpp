#include "distributed.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <map>
#include <mutex>
#include <thread>

#include <sys/sysinfo.h>

#include "kernels/bandwidth.h"
#include "net/auth.h"
#include "net/errors.h"
#include "net/wire.h"
#include "slice_cache.h"

namespace dllama {

namespace {

enum Frame : uint8_t { kSetup = 1, kRequest = 2, kReady = 3, kFailed = 4, kProgress = 5 };
constexpr uint32_t kMaxSetupBytes = 64u << 20;
constexpr uint32_t kMaxTensors = 1u << 20;
constexpr uint32_t kMaxRopeFrequencies = 2048;  // head_dim / 2 at most
constexpr int kProgressMs = 1000;  // a loading worker reports this often (and so shows it is alive)

// --- the exchanges of a step, over the mesh ---------------------------------------------------

class MeshCollective : public Collective {
public:
    MeshCollective(std::unique_ptr<net::Mesh> mesh, net::Exchange exchange) : mesh_(std::move(mesh)), exchange_(exchange) {}
    void all_reduce_sum(float* data, size_t n) override { mesh_->all_reduce_sum(data, n, exchange_); }
    void broadcast(void* data, size_t bytes) override { mesh_->broadcast(data, bytes); }
    void gather_to_root(const void* mine, size_t my_bytes, void* all, const std::vector<size_t>& sizes) override {
        mesh_->gather_to_root(mine, my_bytes, all, sizes);
    }
    Stats stats() const override {
        const net::Mesh::Stats s = mesh_->stats();
        return Stats{s.bytes_sent, s.bytes_received, s.seconds_in_sync, s.syncs};
    }
    void reset_stats() override { mesh_->reset_stats(); }
    void begin_step() override { mesh_->begin_step(); }
    void end_step() override { mesh_->end_step(); }
    net::Mesh& mesh() { return *mesh_; }

private:
    std::unique_ptr<net::Mesh> mesh_;
    net::Exchange exchange_;
};

// --- SETUP: the split, every field of the config (config.h's table, in order), the tensor table ------

void put(net::Writer& w, int v) { w.i32(v); }
void put(net::Writer& w, bool v) { w.i32(v ? 1 : 0); }
void put(net::Writer& w, float v) { w.f32(v); }
void put(net::Writer& w, FloatType v) { w.i32((int32_t)v); }
void put(net::Writer& w, RopeStyle v) { w.i32((int32_t)v); }
void put(net::Writer& w, const std::string& v) { w.string(v); }
void put(net::Writer& w, const std::vector<float>& v) {
    w.u32((uint32_t)v.size());
    for (float f : v) w.f32(f);
}

void get(net::Reader& r, const char* name, int& v) { v = r.i32(name); }
void get(net::Reader& r, const char* name, bool& v) { v = r.i32(name) != 0; }
void get(net::Reader& r, const char* name, float& v) { v = r.f32(name); }
void get(net::Reader& r, const char* name, FloatType& v) { v = (FloatType)r.i32(name); }
void get(net::Reader& r, const char* name, RopeStyle& v) { v = (RopeStyle)r.i32(name); }
void get(net::Reader& r, const char* name, std::string& v) { v = r.name(name, 64); }
void get(net::Reader& r, const char* name, std::vector<float>& v) {
    v.resize(r.count(name, sizeof(float), kMaxRopeFrequencies));
    for (float& f : v) f = r.f32(name);
}

void write_config(net::Writer& w, const ModelConfig& c) {
#define DLLAMA_WRITE_FIELD(type, name, default_value, header_key) put(w, c.name);
    DLLAMA_CONFIG_FIELDS(DLLAMA_WRITE_FIELD)
#undef DLLAMA_WRITE_FIELD
}

ModelConfig read_config(net::Reader& r) {
    ModelConfig c;
#define DLLAMA_READ_FIELD(type, name, default_value, header_key) get(r, #name, c.name);
    DLLAMA_CONFIG_FIELDS(DLLAMA_READ_FIELD)
#undef DLLAMA_READ_FIELD
    return c;
}

std::vector<uint8_t> setup_frame(const ModelConfig& cfg, const std::string& identity, net::Exchange exchange,
                                 const Partition& split, const std::vector<TensorInfo>& tensors) {
    net::Writer w;
    w.u8(kSetup);
    w.string(identity);
    w.u8((uint8_t)exchange);
    w.u32((uint32_t)split.weights.size());
    for (float weight : split.weights) w.f32(weight);
    write_config(w, cfg);
    w.u32((uint32_t)tensors.size());
    for (const TensorInfo& t : tensors) {
        w.string(t.name);
        w.i32((int32_t)t.type);
        w.u64((uint64_t)t.rows);
        w.u64((uint64_t)t.cols);
        w.u64(t.offset);
    }
    return w.data();
}

// --- a worker's weights: asked for slice by slice from the root ---------------------------------

class RemoteWeights : public WeightSource {
public:
    RemoteWeights(net::Socket& root, std::mutex& send_mutex, const std::vector<TensorInfo>& tensors)
        : root_(root), send_mutex_(send_mutex) {
        for (const auto& t : tensors) tensors_[t.name] = t;
    }
    const TensorInfo& info(const std::string& name) const override {
        auto it = tensors_.find(name);
        if (it == tensors_.end()) throw std::runtime_error(describe() + ": missing tensor " + name);
        return it->second;
    }
    bool has(const std::string& name) const override { return tensors_.count(name) != 0; }
    std::vector<uint8_t> read(const std::string& name, Range rows, Range cols) const override {
        const TensorInfo& t = info(name);
        check_slice(t, rows, cols, describe());
        net::Writer w;
        w.u8(kRequest);
        w.string(name);
        for (int64_t v : {rows.begin, rows.end, cols.begin, cols.end}) w.u64((uint64_t)v);
        {
            std::lock_guard<std::mutex> lock(send_mutex_);
            root_.send_frame(w.data());
        }
        uint64_t n = 0;
        root_.recv_all(&n, sizeof(n));
        const uint64_t expected = bytes_of(t.type, (size_t)cols.size()) * (uint64_t)rows.size();
        if (n != expected)
            throw net::ProtocolError(describe() + ": got " + std::to_string(n) + " bytes of " + name + ", expected " +
                                     std::to_string(expected));
        std::vector<uint8_t> out(n);
        root_.recv_all(out.data(), n);
        return out;
    }
    std::string describe() const override { return "the root (" + root_.label() + ")"; }

private:
    net::Socket& root_;
    std::mutex& send_mutex_;  // shared with the progress reports
    std::map<std::string, TensorInfo> tensors_;
};

// Slices from the cache when it has them, else from the root (and into the cache).
class CachedWeights : public WeightSource {
public:
    CachedWeights(std::shared_ptr<const WeightSource> root, std::unique_ptr<SliceCache> cache)
        : root_(std::move(root)), cache_(std::move(cache)) {}
    const TensorInfo& info(const std::string& name) const override { return root_->info(name); }
    bool has(const std::string& name) const override { return root_->has(name); }
    std::vector<uint8_t> read(const std::string& name, Range rows, Range cols) const override {
        const TensorInfo& t = info(name);
        check_slice(t, rows, cols, describe());
        const uint64_t length = bytes_of(t.type, (size_t)cols.size()) * (uint64_t)rows.size();
        if (auto bytes = cache_->get(name, rows, cols, length)) return std::move(*bytes);
        std::vector<uint8_t> bytes = root_->read(name, rows, cols);
        cache_->put(name, rows, cols, bytes);
        return bytes;
    }
    std::string describe() const override { return root_->describe(); }
    uint64_t hit_bytes() const { return cache_->hit_bytes(); }

private:
    std::shared_ptr<const WeightSource> root_;
    std::unique_ptr<SliceCache> cache_;
};

// While a worker loads its share, tells the root every kProgressMs how far it got (so that the root
// sees it alive however long one tensor takes) and shows the same on stderr.
class ProgressReports {
public:
    ProgressReports(net::Socket& root, std::mutex& send_mutex, const CountingSource& loaded, uint64_t expected)
        : thread_([this, &root, &send_mutex, &loaded, expected] {
              const auto start = std::chrono::steady_clock::now();
              std::unique_lock<std::mutex> lock(mutex_);
              while (!wake_.wait_for(lock, std::chrono::milliseconds(kProgressMs), [this] { return done_; })) {
                  const uint64_t now = loaded.bytes_read();
                  net::Writer w;
                  w.u8(kProgress);
                  w.u64(now);
                  w.u64(expected);
                  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
                  const double rate = now / seconds;
                  std::fprintf(stderr, "\rworker: loaded %.0f of ~%.0f MB, %.1f MB/s, about %.0f s left   ",
                               now / 1e6, expected / 1e6, rate / 1e6,
                               rate > 0 && expected > now ? (expected - now) / rate : 0.0);
                  shown_ = true;
                  try {
                      std::lock_guard<std::mutex> send_lock(send_mutex);
                      root.send_frame(w.data());
                  } catch (const std::exception&) {
                      return;  // the loading thread meets the same error and reports it
                  }
              }
          }) {}
    ~ProgressReports() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            done_ = true;
        }
        wake_.notify_all();
        thread_.join();
        if (shown_) std::fprintf(stderr, "\n");
    }

private:
    std::mutex mutex_;
    std::condition_variable wake_;
    bool done_ = false, shown_ = false;
    std::thread thread_;
};

// How far one worker got with its share: the root's view (bytes it sent, or that the worker reported).
struct LoadProgress {
    std::atomic<uint64_t> loaded{0}, expected{0};
    void add_sent(uint64_t n) { loaded += n; }
    void reported(uint64_t done, uint64_t total) {
        uint64_t now = loaded;
        while (done > now && !loaded.compare_exchange_weak(now, done)) {
        }
        expected = total;
    }
};

// On the root: answers one worker's requests until it is READY (or FAILED, which throws).
void serve_weights(net::Socket& worker, int node, const TensorStore& store, LoadProgress& progress) {
    for (;;) {
        const std::vector<uint8_t> frame = worker.recv_frame(net::kMaxStringBytes + 64);
        net::Reader r(frame);
        const uint8_t type = r.u8("frame type");
        if (type == kReady) return;
        if (type == kProgress) {
            const uint64_t done = r.u64("bytes loaded");
            progress.reported(done, r.u64("bytes expected"));
            continue;
        }
        if (type == kFailed) throw std::runtime_error("worker node " + std::to_string(node) + " (" + worker.label() +
                                                      ") could not load its share: " + r.string("message"));
        if (type != kRequest) throw net::ProtocolError("unexpected frame " + std::to_string(type) + " from " + worker.label());
        const std::string name = r.name("tensor name", 256);
        int64_t v[4];
        for (int64_t& x : v) x = (int64_t)r.u64("range");
        const std::vector<uint8_t> bytes = store.read(name, Range{v[0], v[1]}, Range{v[2], v[3]});
        const uint64_t n = bytes.size();
        worker.send_all(&n, sizeof(n));
        worker.send_all(bytes.data(), bytes.size());
        progress.add_sent(n);
    }
}

// The SETUP frame's tensor table, each entry checked.
std::vector<TensorInfo> read_tensors(net::Reader& r) {
    std::vector<TensorInfo> tensors(r.count("tensor count", 4 + 4 + 3 * 8, kMaxTensors));
    for (TensorInfo& t : tensors) {
        t.name = r.name("tensor name", 256);
        t.type = (FloatType)r.i32("tensor type");
        t.rows = (int64_t)std::min<uint64_t>(r.u64("rows"), INT64_MAX);
        t.cols = (int64_t)std::min<uint64_t>(r.u64("cols"), INT64_MAX);
        t.offset = r.u64("offset");
        validate_tensor(t);
    }
    return tensors;
}

// What a worker's cached slices are keyed by besides its node: the model file's identity, the tensor
// table (a root that sends another table for the same file gets its own folder) and the split.
std::string cache_key(const std::string& identity, const std::vector<TensorInfo>& tensors, const Partition& split) {
    net::Writer table;
    for (const TensorInfo& t : tensors) {
        table.string(t.name);
        table.i32((int32_t)t.type);
        for (uint64_t v : {(uint64_t)t.rows, (uint64_t)t.cols, t.offset}) table.u64(v);
    }
    const std::string weights = split.split_text();
    return identity + " " + net::hex(net::sha256(table.data().data(), table.data().size())) +
           (weights.empty() ? "" : " split " + weights);
}

}  // namespace

double node_read_bandwidth(int n_threads) {
    ThreadPool pool(n_threads);
    return measure_sustained_read_bandwidth(size_t(256) << 20, 0.5, pool);
}

std::string model_identity(const std::string& path) {
    std::ifstream f(path, std::ios::binary | std::ios::ate);
    if (!f) throw std::runtime_error(path + ": cannot open");
    const uint64_t size = (uint64_t)f.tellg();
    f.seekg(0);
    int32_t head[2] = {0, 0};
    f.read(reinterpret_cast<char*>(head), sizeof(head));
    if (!f || head[1] < 8 || (uint64_t)head[1] > std::min<uint64_t>(size, 1 << 20))
        throw std::runtime_error(path + ": not a .m model file");
    // The header, then 64 blocks of 4 KiB spread over the weights: a model converted again, or another
    // fine-tune with the same shapes, differs there (reading all of a 60 GB file would take minutes).
    net::Sha256 h;
    std::vector<char> buf(head[1]);
    f.seekg(0);
    f.read(buf.data(), buf.size());
    h.update(buf.data(), buf.size());
    constexpr int kSamples = 64;
    constexpr uint64_t kBlock = 4096;
    buf.resize(kBlock);
    const uint64_t data = (uint64_t)head[1], span = size - data;
    for (int i = 0; i < kSamples && span > 0; i++) {
        const uint64_t at = data + span / kSamples * i;
        f.seekg((std::streamoff)at);
        f.read(buf.data(), (std::streamsize)std::min(kBlock, size - at));
        h.update(buf.data(), (size_t)f.gcount());
        f.clear();
    }
    return net::hex(h.finish()) + "-" + std::to_string(size);
}

std::unique_ptr<Model> build_root_model(const ModelConfig& config, const std::string& path,
                                        const std::vector<TensorInfo>& tensors, int n_threads,
                                        const ClusterOptions& options) {
    auto store = std::make_shared<TensorStore>(path, tensors);
    const Partition partition = make_partition(0, (int)options.workers.size() + 1, options.split);
    check_split(config, *store, partition);
    auto mesh = net::Mesh::connect_root(options.workers, options.secret, options.timeout_ms, options.heartbeat_ms);
    const int n_nodes = mesh->n_nodes();
    const std::vector<uint8_t> setup = setup_frame(config, model_identity(path), options.exchange, partition, tensors);

    // Each worker loads its share at once, asking for slices; one thread per worker answers.
    std::vector<LoadProgress> progress(n_nodes);
    std::vector<std::string> errors(n_nodes);
    std::vector<std::thread> threads;
    std::atomic<int> done{0};
    std::mutex loaded_mutex;
    std::condition_variable all_loaded;
    int loaded = 0;  // workers READY or failed, under loaded_mutex
    for (int node = 1; node < n_nodes; node++) {
        threads.emplace_back([&, node] {
            try {
                mesh->peer(node).send_frame(setup);
                serve_weights(mesh->peer(node), node, *store, progress[node]);
                // A worker that is READY waits for its first step, giving up on a root silent for 3
                // heartbeats: keep it company while the others load (a large share takes minutes).
                std::unique_lock<std::mutex> lock(loaded_mutex);
                loaded++;
                all_loaded.notify_all();
                while (!all_loaded.wait_for(lock, std::chrono::milliseconds(options.heartbeat_ms),
                                            [&] { return loaded >= n_nodes - 1; })) {
                    lock.unlock();
                    mesh->heartbeat(node);
                    lock.lock();
                }
            } catch (const std::exception& e) {
                errors[node] = e.what();
                std::lock_guard<std::mutex> lock(loaded_mutex);
                loaded = n_nodes - 1;  // the session fails: nobody waits any more
                all_loaded.notify_all();
            }
            done++;
        });
    }
    std::exception_ptr callback_error;  // rethrown once the threads are joined
    while (done < n_nodes - 1) {
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        if (!options.progress || callback_error) continue;
        std::vector<std::pair<uint64_t, uint64_t>> status;
        for (int node = 1; node < n_nodes; node++) status.emplace_back(progress[node].loaded, progress[node].expected);
        try {
            options.progress(status);
        } catch (...) {
            callback_error = std::current_exception();
        }
    }
    for (auto& t : threads) t.join();
    if (callback_error) std::rethrow_exception(callback_error);
    for (const std::string& e : errors)
        if (!e.empty()) throw std::runtime_error(e);
    mesh->start_heartbeats();  // the workers now wait for steps, however long the root takes

    auto collective = std::make_shared<MeshCollective>(std::move(mesh), options.exchange);
    return build_model(config, store, n_threads, partition, collective);
}

Worker::Worker(const std::string& host, int port, int n_threads, std::string secret, std::string local_model,
               int timeout_ms, CacheOptions cache)
    : listener_(host, port), n_threads_(n_threads), local_model_(std::move(local_model)), timeout_ms_(timeout_ms),
      cache_(std::move(cache)), lobby_(listener_, std::move(secret), [this] { return describe(); }) {}

net::WorkerInfo Worker::describe() {
    net::WorkerInfo info;
    info.cores = std::thread::hardware_concurrency();
    struct sysinfo si {};
    if (sysinfo(&si) == 0) {
        info.ram_bytes = (uint64_t)si.totalram * si.mem_unit;
        info.available_ram_bytes = ((uint64_t)si.freeram + si.bufferram) * si.mem_unit;
    }
    std::ifstream meminfo("/proc/meminfo");  // MemAvailable counts the page cache that can be dropped
    for (std::string key; meminfo >> key;) {
        uint64_t kb = 0;
        if (key == "MemAvailable:" && meminfo >> kb) info.available_ram_bytes = kb * 1024;
        meminfo.ignore(1 << 10, '\n');
    }
    std::call_once(bandwidth_measured_, [this] { read_bandwidth_ = (uint64_t)node_read_bandwidth(n_threads_); });
    info.read_bandwidth = read_bandwidth_;
    if (!local_model_.empty()) info.model_identity = model_identity(local_model_);
    return info;
}

bool Worker::serve_one(int wait_ms) {
    std::unique_ptr<net::Mesh> mesh = net::Mesh::accept_worker(lobby_, timeout_ms_, wait_ms);
    if (!mesh) return false;
    const int node = mesh->node(), n_nodes = mesh->n_nodes();
    net::Socket& root = mesh->peer(0);
    std::shared_ptr<MeshCollective> collective;  // owns the mesh (and `root`) until the session is over
    bool ready = false;
    try {
        const std::vector<uint8_t> frame = root.recv_frame(kMaxSetupBytes);
        net::Reader r(frame);
        if (r.u8("frame type") != kSetup) throw net::ProtocolError("expected the SETUP frame from " + root.label());
        const std::string identity = r.name("model identity", 256);
        const uint8_t exchange = r.u8("exchange");
        if (exchange > (uint8_t)net::Exchange::Q80) throw net::ProtocolError("unknown exchange type " + std::to_string(exchange));
        collective = std::make_shared<MeshCollective>(std::move(mesh), (net::Exchange)exchange);
        std::vector<float> split(r.count("split weight count", sizeof(float), n_nodes));
        for (float& w : split) w = r.f32("split weight");
        Partition partition;
        try {
            partition = make_partition(node, n_nodes, std::move(split));
        } catch (const std::invalid_argument& e) {
            throw net::ProtocolError(std::string("bad SETUP: ") + e.what());
        }
        const ModelConfig cfg = read_config(r);
        validate_config(cfg);
        const std::vector<TensorInfo> tensors = read_tensors(r);
        if (r.remaining() != 0)
            throw net::ProtocolError(std::to_string(r.remaining()) + " bytes after the end of the SETUP frame");
        uint64_t total = 0;
        for (const TensorInfo& t : tensors)
            if (t.name != "embedding") total += tensor_bytes(t);  // the embedding stays on the root
        const uint64_t share = (uint64_t)(total * partition.fraction());  // about: some tensors are replicated
        check_memory(cfg, n_threads_, share);

        std::mutex send_mutex;  // the loading thread's requests and the progress reports
        std::shared_ptr<const WeightSource> weights;
        std::shared_ptr<const CachedWeights> cached;
        std::string from = "weights from the root";
        if (!local_model_.empty()) {
            if (model_identity(local_model_) != identity)
                throw std::runtime_error(local_model_ + " is not the root's model file (different header, size or content)");
            weights = std::make_shared<TensorStore>(local_model_, tensors);
            from = local_model_;
        } else {
            weights = std::make_shared<RemoteWeights>(root, send_mutex, tensors);
            if (!cache_.dir.empty()) {
                auto cache = std::make_unique<SliceCache>(cache_.dir, cache_.max_bytes,
                                                          cache_key(identity, tensors, partition), node, n_nodes, share);
                from += ", cached in " + cache->folder();
                weights = cached = std::make_shared<CachedWeights>(weights, std::move(cache));
            }
        }
        std::fprintf(stderr, "worker: node %d of %d, loading %s (%s)\n", node, n_nodes, cfg.arch.c_str(), from.c_str());
        auto counted = std::make_shared<CountingSource>(weights);
        std::unique_ptr<Model> model;
        {
            ProgressReports progress(root, send_mutex, *counted, share);
            model = build_model(cfg, counted, n_threads_, partition, collective);
        }
        const uint64_t loaded = counted->bytes_read();
        std::fprintf(stderr, "worker: this node's share takes %.1f MB of weights (%.1f MB of them from the cache) "
                     "and %.1f MB of KV cache\n", loaded / 1e6, cached ? cached->hit_bytes() / 1e6 : 0.0,
                     model->kv_cache_bytes() / 1e6);
        net::Writer ok;
        ok.u8(kReady);
        root.send_frame(ok.data());
        ready = true;
        std::fprintf(stderr, "worker: serving node %d of %d\n", node, n_nodes);
        model->serve();
        std::fprintf(stderr, "worker: session ended\n");
    } catch (const std::exception& e) {
        std::fprintf(stderr, "worker: session failed: %s\n", e.what());
        if (!ready) {
            try {
                net::Writer failed;
                failed.u8(kFailed);
                failed.string(std::string(e.what()).substr(0, 4096));
                root.send_frame(failed.data());
            } catch (const std::exception&) {
            }
        }
    }
    return true;
}

}  // namespace dllama
