// all_reduce_sum latency over loopback: one thread per node in this process, median of 1000 calls
// as seen by the root.
// Build: g++ -O2 -std=c++17 -Icpp cpp/net/*.cpp cpp/net/tests/net_bench.cpp cpp/quants.cpp -lpthread -o /tmp/net_bench
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <thread>
#include <vector>

#include "net/mesh.h"

using namespace dllama::net;

namespace {

constexpr int kWarmup = 100, kCalls = 1000;

// Workers' listeners and lobbies must outlive the meshes' setup; the caller keeps them.
struct Ports {
    std::vector<std::unique_ptr<Listener>> listeners;
    std::vector<std::unique_ptr<Lobby>> lobbies;
};

std::vector<std::unique_ptr<Mesh>> make_cluster(int n_workers, Ports& ports) {
    std::vector<std::unique_ptr<Mesh>> nodes(n_workers + 1);
    std::vector<std::string> addresses;
    std::vector<std::thread> threads;
    for (int k = 0; k < n_workers; k++) {
        ports.listeners.push_back(std::make_unique<Listener>("127.0.0.1", 0));
        ports.lobbies.push_back(std::make_unique<Lobby>(*ports.listeners.back(), ""));
        addresses.push_back("127.0.0.1:" + std::to_string(ports.listeners.back()->port()));
        threads.emplace_back([&, k] { nodes[k + 1] = Mesh::accept_worker(*ports.lobbies[k], 5000, 10000); });
    }
    nodes[0] = Mesh::connect_root(addresses, "", 5000);
    for (auto& t : threads) t.join();
    return nodes;
}

// Median and 90th percentile microseconds per call on the root.
std::pair<double, double> measure(std::vector<std::unique_ptr<Mesh>>& nodes, size_t n, Exchange type) {
    std::vector<double> us(kCalls);
    std::vector<std::thread> threads;
    for (auto& mesh : nodes) {
        threads.emplace_back([&, m = mesh.get()] {
            std::vector<float> data(n, 0.5f);
            for (int i = 0; i < kWarmup + kCalls; i++) {
                const auto t0 = std::chrono::steady_clock::now();
                m->all_reduce_sum(data.data(), n, type);
                const std::chrono::duration<double, std::micro> t = std::chrono::steady_clock::now() - t0;
                if (m->node() == 0 && i >= kWarmup) us[i - kWarmup] = t.count();
                std::fill(data.begin(), data.end(), 0.5f);
            }
        });
    }
    for (auto& t : threads) t.join();
    std::sort(us.begin(), us.end());
    return {us[kCalls / 2], us[kCalls * 9 / 10]};
}

}  // namespace

int main() {
    std::printf("%-6s %-6s %-4s %12s %12s\n", "nodes", "n", "type", "median_us", "p90_us");
    for (int n_nodes = 2; n_nodes <= 4; n_nodes++) {
        Ports ports;
        auto nodes = make_cluster(n_nodes - 1, ports);
        for (size_t n : {4096, 5120}) {
            for (Exchange type : {Exchange::F32, Exchange::Q80}) {
                const auto [median, p90] = measure(nodes, n, type);
                const char* name = type == Exchange::F32 ? "f32" : "q80";
                std::printf("%-6d %-6zu %-4s %12.1f %12.1f\n", n_nodes, n, name, median, p90);
            }
        }
    }
}
