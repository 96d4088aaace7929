#include "distributed.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <mutex>
#include <thread>

#include "net/auth.h"
#include "net/errors.h"
#include "net/wire.h"

namespace dllama {

namespace {

enum Frame : uint8_t { kSetup = 1, kRequest = 2, kReady = 3, kFailed = 4 };
constexpr uint32_t kMaxSetupBytes = 64u << 20;

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
    net::Mesh& mesh() { return *mesh_; }

private:
    std::unique_ptr<net::Mesh> mesh_;
    net::Exchange exchange_;
};

// --- SETUP: every field of the config (config.h's table, in order), the tensor table ---------------

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
void get(net::Reader& r, const char* name, std::string& v) { v = r.string(name, 64); }
void get(net::Reader& r, const char* name, std::vector<float>& v) {
    const uint32_t n = r.u32(name);
    if (n > r.remaining() / sizeof(float))
        throw net::ProtocolError(std::string("SETUP frame: ") + name + " claims " + std::to_string(n) +
                                 " values, more than the frame holds");
    v.resize(n);
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
                                 const std::vector<TensorInfo>& tensors) {
    net::Writer w;
    w.u8(kSetup);
    w.string(identity);
    w.u8((uint8_t)exchange);
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
    RemoteWeights(net::Socket& root, std::vector<TensorInfo> tensors) : root_(root) {
        for (auto& t : tensors) tensors_[t.name] = std::move(t);
    }
    const TensorInfo& info(const std::string& name) const override {
        auto it = tensors_.find(name);
        if (it == tensors_.end()) throw std::runtime_error(describe() + ": missing tensor " + name);
        return it->second;
    }
    bool has(const std::string& name) const override { return tensors_.count(name) != 0; }
    std::vector<uint8_t> read(const std::string& name, Range rows, Range cols) const override {
        const TensorInfo& t = info(name);
        net::Writer w;
        w.u8(kRequest);
        w.string(name);
        for (int64_t v : {rows.begin, rows.end, cols.begin, cols.end}) w.u64((uint64_t)v);
        root_.send_frame(w.data());
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
    std::map<std::string, TensorInfo> tensors_;
};

// On the root: answers one worker's requests until it is READY (or FAILED, which throws).
void serve_weights(net::Socket& worker, int node, const TensorStore& store, std::atomic<uint64_t>& sent) {
    for (;;) {
        const std::vector<uint8_t> frame = worker.recv_frame(net::kMaxStringBytes + 64);
        net::Reader r(frame);
        const uint8_t type = r.u8("frame type");
        if (type == kReady) return;
        if (type == kFailed) throw std::runtime_error("worker node " + std::to_string(node) + " (" + worker.label() +
                                                      ") could not load its share: " + r.string("message"));
        if (type != kRequest) throw net::ProtocolError("unexpected frame " + std::to_string(type) + " from " + worker.label());
        const std::string name = r.string("tensor name");
        int64_t v[4];
        for (int64_t& x : v) x = (int64_t)r.u64("range");
        const std::vector<uint8_t> bytes = store.read(name, Range{v[0], v[1]}, Range{v[2], v[3]});
        const uint64_t n = bytes.size();
        worker.send_all(&n, sizeof(n));
        worker.send_all(bytes.data(), bytes.size());
        sent += n;
    }
}

std::string hex(const net::Digest& d) {
    static const char* digits = "0123456789abcdef";
    std::string s;
    for (uint8_t b : d) s += {digits[b >> 4], digits[b & 15]};
    return s;
}

}  // namespace

std::string model_identity(const std::string& path) {
    std::ifstream f(path, std::ios::binary | std::ios::ate);
    if (!f) throw std::runtime_error(path + ": cannot open");
    const uint64_t size = (uint64_t)f.tellg();
    f.seekg(0);
    int32_t head[2] = {0, 0};
    f.read(reinterpret_cast<char*>(head), sizeof(head));
    if (!f || head[1] < 8 || head[1] > (1 << 20)) throw std::runtime_error(path + ": not a .m model file");
    std::vector<char> header(head[1]);
    f.seekg(0);
    f.read(header.data(), header.size());
    return hex(net::sha256(header.data(), header.size())) + "-" + std::to_string(size);
}

std::unique_ptr<Model> build_root_model(const ModelConfig& config, const std::string& path,
                                        const std::vector<TensorInfo>& tensors, int n_threads,
                                        const ClusterOptions& options) {
    auto store = std::make_shared<TensorStore>(path, tensors);
    check_split(config, *store, (int)options.workers.size() + 1);
    auto mesh = net::Mesh::connect_root(options.workers, options.secret, options.timeout_ms);
    const int n_nodes = mesh->n_nodes();
    const std::vector<uint8_t> setup = setup_frame(config, model_identity(path), options.exchange, tensors);

    // Each worker loads its share at once, asking for slices; one thread per worker answers.
    std::vector<std::atomic<uint64_t>> sent(n_nodes);
    std::vector<std::string> errors(n_nodes);
    std::vector<std::thread> threads;
    std::atomic<int> done{0};
    for (int node = 1; node < n_nodes; node++) {
        threads.emplace_back([&, node] {
            try {
                mesh->peer(node).send_frame(setup);
                serve_weights(mesh->peer(node), node, *store, sent[node]);
            } catch (const std::exception& e) {
                errors[node] = e.what();
            }
            done++;
        });
    }
    while (done < n_nodes - 1) {
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        if (!options.show_progress) continue;
        std::string line = "\rsending weights:";
        for (int node = 1; node < n_nodes; node++)
            line += "  node " + std::to_string(node) + " " + std::to_string(sent[node] / 1000000) + " MB";
        std::fprintf(stderr, "%s", line.c_str());
    }
    for (auto& t : threads) t.join();
    if (options.show_progress) std::fprintf(stderr, "\n");
    for (const std::string& e : errors)
        if (!e.empty()) throw std::runtime_error(e);

    auto collective = std::make_shared<MeshCollective>(std::move(mesh), options.exchange);
    return build_model(config, store, n_threads, Partition{0, n_nodes}, collective);
}

Worker::Worker(const std::string& host, int port, int n_threads, std::string secret, std::string local_model,
               int timeout_ms)
    : listener_(host, port), n_threads_(n_threads), secret_(std::move(secret)), local_model_(std::move(local_model)),
      timeout_ms_(timeout_ms) {}

bool Worker::serve_one(int wait_ms) {
    std::unique_ptr<net::Mesh> mesh = net::Mesh::accept_worker(listener_, secret_, timeout_ms_, wait_ms);
    if (!mesh) return false;
    const int node = mesh->node(), n_nodes = mesh->n_nodes();
    net::Socket& root = mesh->peer(0);
    std::shared_ptr<MeshCollective> collective;  // owns the mesh (and `root`) until the session is over
    bool ready = false;
    try {
        const std::vector<uint8_t> frame = root.recv_frame(kMaxSetupBytes);
        net::Reader r(frame);
        if (r.u8("frame type") != kSetup) throw net::ProtocolError("expected the SETUP frame from " + root.label());
        const std::string identity = r.string("model identity");
        const auto exchange = (net::Exchange)r.u8("exchange");
        collective = std::make_shared<MeshCollective>(std::move(mesh), exchange);
        const ModelConfig cfg = read_config(r);
        std::vector<TensorInfo> tensors(r.u32("tensor count"));
        for (TensorInfo& t : tensors) {
            t.name = r.string("tensor name");
            t.type = (FloatType)r.i32("tensor type");
            t.rows = (int64_t)r.u64("rows");
            t.cols = (int64_t)r.u64("cols");
            t.offset = r.u64("offset");
        }
        std::shared_ptr<const WeightSource> weights;
        if (!local_model_.empty()) {
            if (model_identity(local_model_) != identity)
                throw std::runtime_error(local_model_ + " is not the root's model file (different header or size)");
            weights = std::make_shared<TensorStore>(local_model_, tensors);
        } else {
            weights = std::make_shared<RemoteWeights>(root, tensors);
        }
        std::fprintf(stderr, "worker: node %d of %d, loading %s (%s)\n", node, n_nodes, cfg.arch.c_str(),
                     local_model_.empty() ? "weights from the root" : local_model_.c_str());
        auto model = build_model(cfg, weights, n_threads_, Partition{node, n_nodes}, collective);
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
