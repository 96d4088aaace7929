// The Python module dllama_py._core: model loading and the forward step, and the quantizers.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <thread>

#include "blocks/block.h"
#include "distributed.h"
#include "kernels/bandwidth.h"
#include "model.h"
#include "quants.h"

namespace py = pybind11;
using namespace dllama;

static std::string cpu_features() {
    std::string f;
#if defined(__AVX512F__)
    f += " avx512f";
#endif
#if defined(__AVX512VNNI__)
    f += " avx512vnni";
#endif
#if defined(__AVX2__)
    f += " avx2";
#endif
#if defined(__FMA__)
    f += " fma";
#endif
#if defined(__F16C__)
    f += " f16c";
#endif
#if defined(__ARM_NEON)
    f += " neon";
#endif
#if defined(__ARM_FEATURE_DOTPROD)
    f += " dotprod";
#endif
    return f.empty() ? "scalar" : f.substr(1);
}

template <typename Block, void (*Quantize)(const float*, size_t, Block*)>
static py::bytes quantize_to_bytes(py::array_t<float, py::array::c_style | py::array::forcecast> x) {
    const size_t n = (size_t)x.size();
    if (n % kBlockSize != 0) throw std::invalid_argument("quantization needs a multiple of 32 values, got " + std::to_string(n));
    std::string out(n / kBlockSize * sizeof(Block), '\0');
    {
        py::gil_scoped_release release;
        // Blocks are independent: split them across the cores.
        const size_t n_blocks = n / kBlockSize;
        const size_t n_threads = std::max<size_t>(1, std::min<size_t>(std::thread::hardware_concurrency(), n_blocks / 4096));
        std::vector<std::thread> threads;
        for (size_t t = 0; t < n_threads; t++) {
            const size_t b0 = n_blocks * t / n_threads, b1 = n_blocks * (t + 1) / n_threads;
            threads.emplace_back([&, b0, b1] {
                Quantize(x.data() + b0 * kBlockSize, (b1 - b0) * kBlockSize, reinterpret_cast<Block*>(&out[0]) + b0);
            });
        }
        for (auto& th : threads) th.join();
    }
    return py::bytes(out);
}

using IdArray = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;
using FlagArray = py::array_t<bool, py::array::c_style | py::array::forcecast>;

// The rows of a step from its per-row arrays.
static std::vector<StepRow> step_rows(const IdArray& tokens, const IdArray& slots, const IdArray& positions,
                                      const FlagArray& logits) {
    const py::ssize_t n = tokens.size();
    if (slots.size() != n || positions.size() != n || logits.size() != n)
        throw std::invalid_argument("step: tokens, slots, positions and logits must have one entry per row");
    std::vector<StepRow> rows(n);
    for (py::ssize_t r = 0; r < n; r++) rows[r] = StepRow{slots.data()[r], positions.data()[r], logits.data()[r] ? 1 : 0};
    return rows;
}

// What a step returns: the logits of the rows that want them, and optionally every row's hidden state.
struct StepOutput {
    py::array_t<float> logits, hidden;
    bool with_hidden;
    StepOutput(const Model& model, const std::vector<StepRow>& rows, bool with_hidden) : with_hidden(with_hidden) {
        py::ssize_t n_logits = 0;
        for (const StepRow& r : rows) n_logits += r.logits;
        logits = py::array_t<float>(std::vector<py::ssize_t>{n_logits, model.config().vocab_size});
        if (with_hidden) hidden = py::array_t<float>(std::vector<py::ssize_t>{(py::ssize_t)rows.size(), model.config().dim});
    }
    float* logits_data() { return logits.mutable_data(); }
    float* hidden_data() { return with_hidden ? hidden.mutable_data() : nullptr; }
    py::object result() const { return with_hidden ? py::object(py::make_tuple(logits, hidden)) : py::object(logits); }
};

PYBIND11_MODULE(_core, m) {
    m.doc() = "dllama_py C++ core";

    py::enum_<FloatType>(m, "FloatType")
        .value("F32", FloatType::F32)
        .value("F16", FloatType::F16)
        .value("Q40", FloatType::Q40)
        .value("Q80", FloatType::Q80);
    py::enum_<RopeStyle>(m, "RopeStyle").value("INTERLEAVED", RopeStyle::Interleaved).value("HALVES", RopeStyle::Halves);

    py::class_<ModelConfig> config(m, "ModelConfig");
    config.def(py::init<>());
#define DLLAMA_BIND_FIELD(type, name, default_value, header_key) config.def_readwrite(#name, &ModelConfig::name);
    DLLAMA_CONFIG_FIELDS(DLLAMA_BIND_FIELD)
#undef DLLAMA_BIND_FIELD
    config.def_static(
        "fields",
        [] {
            std::vector<std::pair<std::string, std::string>> fields;
#define DLLAMA_LIST_FIELD(type, name, default_value, header_key) fields.emplace_back(#name, header_key);
            DLLAMA_CONFIG_FIELDS(DLLAMA_LIST_FIELD)
#undef DLLAMA_LIST_FIELD
            return fields;
        },
        "(name, header key) of every field, in order; the header key is the .m header parameter copied into "
        "the field as is, or '' when the field is derived");

    py::class_<TensorInfo>(m, "TensorInfo")
        .def(py::init([](std::string name, FloatType type, int64_t rows, int64_t cols, uint64_t offset) {
                 return TensorInfo{std::move(name), type, rows, cols, offset};
             }),
             py::arg("name"), py::arg("type"), py::arg("rows"), py::arg("cols"), py::arg("offset"));

    py::class_<Model>(m, "Model")
        .def(py::init([](const std::string& path, const ModelConfig& cfg, const std::vector<TensorInfo>& tensors,
                         int n_threads, const std::vector<std::string>& workers, const std::string& secret,
                         const std::string& exchange, const std::vector<float>& split, int timeout_ms,
                         int heartbeat_ms, py::object progress, const py::object& workers_progress) {
                 py::gil_scoped_release release;
                 if (workers.empty() && progress.is_none())
                     return build_model(cfg, std::make_shared<TensorStore>(path, tensors), n_threads);
                 if (workers.empty()) {
                     // progress(bytes read so far) while the weights load; an exception it raises (Ctrl-C) stops it.
                     auto counted = std::make_shared<CountingSource>(
                         std::make_shared<TensorStore>(path, tensors), [&progress](uint64_t bytes) {
                             py::gil_scoped_acquire gil;
                             progress(bytes);
                         });
                     auto model = build_model(cfg, counted, n_threads);
                     counted->stop_reporting();
                     return model;
                 }
                 if (exchange != "f32" && exchange != "q80")
                     throw std::invalid_argument("exchange must be f32 or q80, got " + exchange);
                 ClusterOptions options;
                 options.workers = workers;
                 options.secret = secret;
                 options.exchange = exchange == "f32" ? net::Exchange::F32 : net::Exchange::Q80;
                 options.split = split;
                 options.timeout_ms = timeout_ms;
                 options.heartbeat_ms = heartbeat_ms;
                 if (!workers_progress.is_none()) {
                     options.progress = [&workers_progress](const std::vector<std::pair<uint64_t, uint64_t>>& status) {
                         py::gil_scoped_acquire gil;
                         workers_progress(status);
                     };
                 }
                 return build_root_model(cfg, path, tensors, n_threads, options);
             }),
             py::arg("path"), py::arg("config"), py::arg("tensors"), py::arg("n_threads"),
             py::arg("workers") = std::vector<std::string>{}, py::arg("secret") = "", py::arg("exchange") = "q80",
             py::arg("split") = std::vector<float>{}, py::arg("timeout_ms") = net::kDefaultTimeoutMs, py::arg("heartbeat_ms") = net::kDefaultHeartbeatMs,
             py::arg("progress") = py::none(), py::arg("workers_progress") = py::none(),
             "progress(bytes read): while the weights load here; workers_progress(status): while workers load, "
             "status = [(bytes loaded, bytes expected) per worker]")
        .def("stop_workers", &Model::stop_workers, py::call_guard<py::gil_scoped_release>())
        .def_property_readonly("n_nodes", [](const Model& m) { return m.partition().n_nodes; })
        .def("net_stats",
             [](const Model& m) {
                 py::dict d;
                 const Collective::Stats s = m.collective() ? m.collective()->stats() : Collective::Stats{};
                 d["bytes_sent"] = s.bytes_sent;
                 d["bytes_received"] = s.bytes_received;
                 d["seconds_in_sync"] = s.seconds_in_sync;
                 d["syncs"] = s.syncs;
                 return d;
             })
        .def("reset_net_stats", [](Model& m) {
            if (m.collective()) m.collective()->reset_stats();
        })
        .def(
            "forward",
            [](Model& model, py::array_t<int32_t, py::array::c_style | py::array::forcecast> tokens, bool all_logits,
               int slot) {
                const int n = (int)tokens.size();
                const int vocab = model.config().vocab_size;
                py::array_t<float> logits(std::vector<py::ssize_t>{all_logits ? n : 1, vocab});
                std::vector<int32_t> ids(tokens.data(), tokens.data() + n);
                float* out = logits.mutable_data();
                {
                    py::gil_scoped_release release;
                    model.forward(ids.data(), n, all_logits, out, slot);
                }
                return logits;
            },
            py::arg("tokens"), py::arg("all_logits") = true, py::arg("slot") = 0,
            "Logits for tokens appended to one slot's sequence: every token's, or (1, vocab) for the last")
        .def(
            "step",
            [](Model& model, IdArray tokens, IdArray slots, IdArray positions, FlagArray logits, bool hidden) {
                const std::vector<StepRow> rows = step_rows(tokens, slots, positions, logits);
                StepOutput out(model, rows, hidden);
                {
                    py::gil_scoped_release release;
                    model.step(tokens.data(), rows.data(), (int)rows.size(), out.logits_data(), out.hidden_data());
                }
                return out.result();
            },
            py::arg("tokens"), py::arg("slots"), py::arg("positions"), py::arg("logits"), py::arg("hidden") = false,
            "One forward step over rows (token, sequence slot, position, wants logits); returns the logits of "
            "the rows that want them, in row order, or with hidden=True (logits, every row's final hidden state)")
        .def(
            "mtp_step",
            [](Model& model, IdArray tokens, py::array_t<float, py::array::c_style | py::array::forcecast> hidden,
               IdArray slots, IdArray positions, FlagArray logits) {
                const std::vector<StepRow> rows = step_rows(tokens, slots, positions, logits);
                const int dim = model.config().dim;
                if (hidden.ndim() != 2 || hidden.shape(0) != (py::ssize_t)rows.size() || hidden.shape(1) != dim)
                    throw std::invalid_argument("mtp_step: hidden must be rows x dim (" + std::to_string(rows.size()) +
                                                " x " + std::to_string(dim) + ")");
                StepOutput out(model, rows, true);
                {
                    py::gil_scoped_release release;
                    model.mtp_step(tokens.data(), hidden.data(), rows.data(), (int)rows.size(), out.logits_data(),
                                   out.hidden_data());
                }
                return out.result();
            },
            py::arg("tokens"), py::arg("hidden"), py::arg("slots"), py::arg("positions"), py::arg("logits"),
            "The MTP layer over rows (token, the hidden state it continues, slot, MTP position, wants logits); "
            "returns (logits of the rows that want them, every row's output hidden state)")
        .def_property_readonly("has_mtp", &Model::has_mtp)
        .def("mtp_length", &Model::mtp_length, py::arg("slot"), "Positions of the slot's MTP sequence")
        .def("truncate_mtp", &Model::truncate_mtp, py::arg("slot"), py::arg("n"),
             "Keeps only the first n positions of the slot's MTP sequence")
        .def_property_readonly("n_slots", &Model::n_slots)
        .def("length", &Model::length, py::arg("slot"), "Positions of the slot's sequence in the KV cache")
        .def("truncate", &Model::truncate, py::arg("slot"), py::arg("n"),
             "Keeps only the first n positions of the slot's sequence")
        .def("copy_prefix", &Model::copy_prefix, py::arg("src"), py::arg("dst"), py::arg("n"),
             py::call_guard<py::gil_scoped_release>(), "Makes slot dst hold the first n positions of slot src")
        .def_property_readonly("position", [](const Model& m) { return m.length(0); })
        .def("set_position", [](Model& m, int pos) { m.truncate(0, pos); })
        .def_property_readonly("n_threads", &Model::n_threads)
        .def_property_readonly("kv_cache_bytes", &Model::kv_cache_bytes)
        .def_property_readonly("weight_bytes_per_token", &Model::weight_bytes_per_token)
        .def("kv_bytes_read_at", &Model::kv_bytes_read_at)
        .def_property_readonly("config", &Model::config);

    py::class_<Worker>(m, "Worker")
        .def(py::init([](const std::string& host, int port, int n_threads, std::string secret, std::string local_model,
                         int timeout_ms, std::string cache_dir, uint64_t cache_max_bytes) {
                 return std::make_unique<Worker>(host, port, n_threads, std::move(secret), std::move(local_model),
                                                 timeout_ms, CacheOptions{std::move(cache_dir), cache_max_bytes});
             }),
             py::arg("host"), py::arg("port"), py::arg("n_threads"), py::arg("secret") = "", py::arg("local_model") = "",
             py::arg("timeout_ms") = net::kDefaultTimeoutMs, py::arg("cache_dir") = "",
             py::arg("cache_max_bytes") = uint64_t(0))
        .def("serve_one", &Worker::serve_one, py::arg("wait_ms"), py::call_guard<py::gil_scoped_release>(),
             "Serves one root's session if one arrives within wait_ms; False if none came")
        .def_property_readonly("port", &Worker::port);

    m.def(
        "probe_worker",
        [](const std::string& address, const std::string& secret, int timeout_ms, size_t echo_bytes) {
            net::ProbeResult r;
            {
                py::gil_scoped_release release;
                r = net::probe_worker(address, secret, timeout_ms, echo_bytes);
            }
            py::dict d;
            d["cores"] = r.info.cores;
            d["ram_bytes"] = r.info.ram_bytes;
            d["available_ram_bytes"] = r.info.available_ram_bytes;
            d["read_bandwidth"] = r.info.read_bandwidth;
            d["model_identity"] = r.info.model_identity;
            d["round_trip_ms"] = r.round_trip_ms;
            d["bytes_per_second"] = r.bytes_per_second;
            return d;
        },
        py::arg("address"), py::arg("secret") = "", py::arg("timeout_ms") = net::kDefaultTimeoutMs,
        py::arg("echo_bytes") = size_t(4) << 20,
        "Asks a waiting worker about itself without starting a session; RuntimeError if it cannot");
    m.def("protocol_version", [] { return net::kProtocolVersion; });
    m.def("validate_config", &validate_config, py::arg("config"),
          "ValueError naming the field when a config is inconsistent or beyond any model (what every build checks)");
    m.def("quantize_q40", &quantize_to_bytes<BlockQ40, quantize_q40>, "Quantize float32 values to Q40 blocks (bytes)");
    m.def(
        "quantize_q40_best_fit",
        [](py::array_t<float, py::array::c_style | py::array::forcecast> x) {
            if (x.ndim() != 2) throw std::invalid_argument("quantize_q40_best_fit takes a 2-D array of rows");
            const size_t rows = (size_t)x.shape(0), cols = (size_t)x.shape(1);
            if (cols % kBlockSize != 0) throw std::invalid_argument("rows must be whole 32-value blocks, got " + std::to_string(cols));
            std::string out(rows * cols / kBlockSize * sizeof(BlockQ40), '\0');
            py::gil_scoped_release release;
            // Rows are independent: split them across the cores.
            const size_t n_threads = std::max<size_t>(1, std::min<size_t>(std::thread::hardware_concurrency(), rows * cols / (4096 * kBlockSize)));
            std::vector<std::thread> threads;
            for (size_t t = 0; t < n_threads; t++) {
                const size_t r0 = rows * t / n_threads, r1 = rows * (t + 1) / n_threads;
                threads.emplace_back([&, r0, r1] {
                    quantize_q40_best_fit(x.data() + r0 * cols, (r1 - r0) * cols, cols,
                                          reinterpret_cast<BlockQ40*>(&out[0]) + r0 * cols / kBlockSize);
                });
            }
            for (auto& th : threads) th.join();
            py::gil_scoped_acquire acquire;
            return py::bytes(out);
        },
        "Quantize rows of float32 values (a 2-D array) to Q40 blocks (bytes), each block's scale chosen to minimise "
        "its error weighted by sqrt(row mean square + value^2)");
    m.def("quantize_q80", &quantize_to_bytes<BlockQ80, quantize_q80>, "Quantize float32 values to Q80 blocks (bytes)");
    m.def("builder_names", &builder_names);
    m.def(
        "read_bandwidth",
        [](size_t n_bytes, int n_threads, int repeats) {
            py::gil_scoped_release release;
            ThreadPool pool(n_threads);
            return measure_read_bandwidth(n_bytes, repeats, pool);
        },
        py::arg("n_bytes") = size_t(1) << 30, py::arg("n_threads") = 1, py::arg("repeats") = 3,
        "Best read bandwidth (bytes/s) over a buffer of n_bytes streamed by n_threads threads");
    m.def(
        "node_read_bandwidth",
        [](int n_threads) {
            py::gil_scoped_release release;
            return node_read_bandwidth(n_threads);
        },
        py::arg("n_threads"),
        "Sustained read bandwidth (bytes/s) with n_threads, measured as workers measure theirs for probes");
    m.def("cpu_features", &cpu_features);
    // The split rule (partition.h), for node_memory.py and the CLI. `split`: the --split weights, root first
    // ([]: equal shares); ValueError naming the split when they are not one valid weight per node.
    m.def(
        "check_split_weights", [](int n_nodes, const std::vector<float>& split) { make_partition(0, n_nodes, split); },
        py::arg("n_nodes"), py::arg("split"));
    // Node `node`'s contiguous share [begin, end) of n units (the output head's vocabulary rows).
    m.def(
        "node_share",
        [](int64_t n_units, int node, int n_nodes, const std::vector<float>& split) {
            const Range r = make_partition(node, n_nodes, split).share(n_units);
            return std::make_pair(r.begin, r.end);
        },
        py::arg("n_units"), py::arg("node"), py::arg("n_nodes"), py::arg("split") = std::vector<float>{});
    // Node `node`'s share [begin, end) of a block's units by the graph's own rule (UnitSplit in
    // blocks/block.h); ValueError naming the constraint when some node would get none.
    m.def(
        "unit_share",
        [](const std::string& tensor, const std::string& unit, int64_t units, int64_t width, FloatType type, int node,
           int n_nodes, const std::vector<float>& split) {
            const Range r = UnitSplit{tensor, unit, units, width, type}.share(make_partition(node, n_nodes, split));
            return std::make_pair(r.begin, r.end);
        },
        py::arg("tensor"), py::arg("unit"), py::arg("units"), py::arg("width"), py::arg("type"), py::arg("node"),
        py::arg("n_nodes"), py::arg("split") = std::vector<float>{});
    // What node `node` of `n_nodes` really takes: the bytes of weights it reads from the file as it builds its
    // share of the graph, and its KV cache. It builds the share (the memory is taken for a moment): for checking
    // the estimates of node_memory.py on small models.
    m.def(
        "measure_node_share",
        [](const std::string& path, const ModelConfig& cfg, const std::vector<TensorInfo>& tensors, int node,
           int n_nodes, const std::vector<float>& split) {
            py::gil_scoped_release release;
            auto counted = std::make_shared<CountingSource>(std::make_shared<TensorStore>(path, tensors));
            auto model = build_model(cfg, counted, 1, make_partition(node, n_nodes, split));
            return std::make_pair(counted->bytes_read(), (uint64_t)model->kv_cache_bytes());
        },
        py::arg("path"), py::arg("config"), py::arg("tensors"), py::arg("node"), py::arg("n_nodes"),
        py::arg("split") = std::vector<float>{});
}
