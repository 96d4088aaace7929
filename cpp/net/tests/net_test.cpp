// Tests of the TCP transport (wire encoding, SHA-256/HMAC, handshake, mesh and collectives), all
// in one process on 127.0.0.1 with one thread per node.
// Build: g++ -O2 -std=c++17 -Icpp cpp/net/*.cpp cpp/net/tests/net_test.cpp cpp/quants.cpp -lpthread -o /tmp/net_test
#include <poll.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "net/auth.h"
#include "net/handshake.h"
#include "net/mesh.h"
#include "net/wire.h"
#include "quants.h"

using namespace dllama::net;

namespace {

int g_passed = 0, g_failed = 0;

void check(bool ok, const std::string& what) {
    if (ok) {
        g_passed++;
    } else {
        g_failed++;
        std::printf("FAIL: %s\n", what.c_str());
    }
}

// Runs f, which must throw E with a message containing `needle`.
template <class E>
void check_throws(const std::function<void()>& f, const std::string& needle, const std::string& what) {
    try {
        f();
        check(false, what + ": no exception");
    } catch (const E& e) {
        const bool ok = std::string(e.what()).find(needle) != std::string::npos;
        check(ok, what + ": message '" + e.what() + "' lacks '" + needle + "'");
    } catch (const std::exception& e) {
        check(false, what + ": wrong exception type: " + e.what());
    }
}

double seconds_since(std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

std::vector<float> random_floats(size_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    std::vector<float> v(n);
    for (float& x : v) x = dist(rng);
    return v;
}

// ---- wire ----

void test_wire() {
    Writer w;
    w.u8(0xab);
    w.u32(0x01020304);
    w.u64(0x0102030405060708ull);
    w.i32(-5);
    w.f32(1.5f);
    w.string("héllo");
    w.bytes("xyz", 3);
    const std::vector<uint8_t>& d = w.data();
    check(d[1] == 0x04 && d[4] == 0x01, "u32 is little-endian");
    check(d[5] == 0x08 && d[12] == 0x01, "u64 is little-endian");
    Reader r(d);
    check(r.u8("a") == 0xab, "u8 round trip");
    check(r.u32("b") == 0x01020304, "u32 round trip");
    check(r.u64("c") == 0x0102030405060708ull, "u64 round trip");
    check(r.i32("d") == -5, "i32 round trip");
    check(r.f32("e") == 1.5f, "f32 round trip");
    check(r.string("f") == "héllo", "string round trip");
    char xyz[3];
    r.bytes(xyz, 3, "g");
    check(std::memcmp(xyz, "xyz", 3) == 0 && r.remaining() == 0, "bytes round trip");
    check_throws<ProtocolError>([&] { r.u32("port"); }, "port needs 4 bytes but only 0 are left", "truncated u32");

    Writer big;
    big.u32(kMaxStringBytes + 1);
    Reader rb(big.data());
    check_throws<ProtocolError>([&] { rb.string("host"); }, "host is 1048577 bytes long", "oversized string");
    Writer lying;
    lying.u32(10);
    lying.bytes("abc", 3);
    Reader rl(lying.data());
    check_throws<ProtocolError>([&] { rl.string("name"); }, "name needs 10 bytes but only 3", "truncated string");
}

// ---- SHA-256 / HMAC ----

void test_auth() {
    check(hex(sha256("abc", 3)) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", "SHA-256(abc)");
    check(hex(sha256("", 0)) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "SHA-256('')");
    const char* m448 = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    check(hex(sha256(m448, std::strlen(m448))) == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
          "SHA-256(448-bit message)");
    Sha256 million;
    const std::string a1000(1000, 'a');
    for (int i = 0; i < 1000; i++) million.update(a1000.data(), a1000.size());
    check(hex(million.finish()) == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0",
          "SHA-256(one million 'a') in pieces");

    check(hex(hmac_sha256(std::string(20, '\x0b'), "Hi There", 8)) ==
              "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
          "HMAC RFC 4231 test case 1");
    const char* tc2 = "what do ya want for nothing?";
    check(hex(hmac_sha256("Jefe", tc2, std::strlen(tc2))) ==
              "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
          "HMAC RFC 4231 test case 2");
    const char* tc6 = "Test Using Larger Than Block-Size Key - Hash Key First";
    check(hex(hmac_sha256(std::string(131, '\xaa'), tc6, std::strlen(tc6))) ==
              "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
          "HMAC RFC 4231 test case 6 (key longer than a block)");

    check(constant_time_equal("abcd", "abcd", 4) && !constant_time_equal("abcd", "abce", 4), "constant_time_equal");
    uint8_t r1[32], r2[32];
    random_bytes(r1, 32);
    random_bytes(r2, 32);
    check(std::memcmp(r1, r2, 32) != 0, "random_bytes differ");
}

// ---- handshake ----

struct HandshakeResult {
    std::string client_error, server_error;  // empty: succeeded
};

// One client and one server handshake over loopback.
HandshakeResult handshake_pair(const std::string& client_secret, const std::string& server_secret,
                               uint32_t version = kProtocolVersion, Role role = Role::Root) {
    Listener listener("127.0.0.1", 0);
    HandshakeResult r;
    std::thread server([&] {
        try {
            Socket s = listener.accept(2000);
            server_handshake(s, Role::Root, server_secret);
        } catch (const NetError& e) {
            r.server_error = e.what();
        }
    });
    try {
        Socket c = Socket::connect("127.0.0.1", listener.port(), 2000);
        client_handshake(c, role, client_secret, version);
    } catch (const NetError& e) {
        r.client_error = e.what();
    }
    server.join();
    return r;
}

bool contains(const std::string& s, const std::string& needle) { return s.find(needle) != std::string::npos; }

void check_contains(const std::string& message, const std::string& needle, const std::string& what) {
    check(contains(message, needle), what + ": '" + message + "' lacks '" + needle + "'");
}

void test_handshake() {
    HandshakeResult r = handshake_pair("", "");
    check(r.client_error.empty() && r.server_error.empty(), "no secret: " + r.client_error + r.server_error);
    r = handshake_pair("s3cret", "s3cret");
    check(r.client_error.empty() && r.server_error.empty(), "same secret: " + r.client_error + r.server_error);

    r = handshake_pair("", "", kProtocolVersion + 1);
    const std::string version_message = "protocol version " + std::to_string(kProtocolVersion + 1) +
                                        " is not supported by this worker (speaks " + std::to_string(kProtocolVersion) + ")";
    check_contains(r.client_error, version_message, "wrong version, client");
    check_contains(r.server_error, version_message, "wrong version, server");

    r = handshake_pair("a", "b");
    check_contains(r.client_error, "authentication failed: wrong secret", "wrong secret, client");
    check_contains(r.server_error, "authentication failed: wrong secret", "wrong secret, server");

    r = handshake_pair("", "b");
    check_contains(r.client_error, "requires a secret and none was given", "missing secret, client");
    check_contains(r.server_error, "gave no secret but this worker requires one", "missing secret, server");

    r = handshake_pair("a", "");
    check_contains(r.client_error, "the worker has no secret configured", "unexpected secret, client");
    check_contains(r.server_error, "has a secret but this worker has none", "unexpected secret, server");

    r = handshake_pair("", "", kProtocolVersion, Role::Peer);
    check_contains(r.client_error, "does not accept a peer connection now", "role refused, client");
    check_contains(r.server_error, "expected a root connection", "role refused, server");

    // HTTP instead of a HELLO.
    Listener listener("127.0.0.1", 0);
    std::string server_error;
    std::thread server([&] {
        try {
            Socket s = listener.accept(2000);
            server_handshake(s, Role::Root, "");
        } catch (const NetError& e) {
            server_error = e.what();
        }
    });
    Socket c = Socket::connect("127.0.0.1", listener.port(), 2000);
    const char* http = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    c.send_all(http, std::strlen(http));
    server.join();
    check_contains(server_error, "not a dllama_py peer (got bytes 47 45 54 20 2f 20 48 54)", "garbage");
}

// ---- mesh helpers ----

struct Cluster {
    std::vector<std::unique_ptr<Listener>> listeners;  // index k-1 for worker node k
    std::vector<std::unique_ptr<Lobby>> lobbies;       // one per listener
    std::vector<std::unique_ptr<Mesh>> nodes;          // index = node
};

std::vector<std::string> worker_addresses(const Cluster& c) {
    std::vector<std::string> a;
    for (const auto& l : c.listeners) a.push_back("127.0.0.1:" + std::to_string(l->port()));
    return a;
}

// Starts n_workers workers (each waiting for a root in its own thread) and a root, returns the
// connected meshes. Throws what the root threw.
Cluster make_cluster(int n_workers, const std::string& secret = "", int timeout_ms = 5000) {
    Cluster c;
    for (int k = 0; k < n_workers; k++) {
        c.listeners.push_back(std::make_unique<Listener>("127.0.0.1", 0));
        c.lobbies.push_back(std::make_unique<Lobby>(*c.listeners.back(), secret));
    }
    c.nodes.resize(n_workers + 1);
    std::vector<std::thread> workers;
    for (int k = 0; k < n_workers; k++) {
        workers.emplace_back([&, k] {
            c.nodes[k + 1] = Mesh::accept_worker(*c.lobbies[k], timeout_ms, 10000);
        });
    }
    try {
        c.nodes[0] = Mesh::connect_root(worker_addresses(c), secret, timeout_ms);
    } catch (...) {
        for (auto& t : workers) t.join();
        throw;
    }
    for (auto& t : workers) t.join();
    return c;
}

// Runs f(mesh) on every node at once; returns the error messages (empty: succeeded) by node.
std::vector<std::string> on_all_nodes(Cluster& c, const std::function<void(Mesh&)>& f) {
    std::vector<std::string> errors(c.nodes.size());
    std::vector<std::thread> threads;
    for (size_t k = 0; k < c.nodes.size(); k++) {
        threads.emplace_back([&, k] {
            try {
                f(*c.nodes[k]);
            } catch (const std::exception& e) {
                errors[k] = e.what();
            }
        });
    }
    for (auto& t : threads) t.join();
    return errors;
}

bool all_empty(const std::vector<std::string>& errors) {
    for (const auto& e : errors) {
        if (!e.empty()) {
            std::printf("  node error: %s\n", e.c_str());
            return false;
        }
    }
    return true;
}

// Node k's partial: random_floats(n, seed + k) with an all-zero block (a Q80 scale of 0).
std::vector<float> partial(size_t n, uint32_t seed) {
    std::vector<float> p = random_floats(n, seed);
    std::fill(p.begin() + 64, p.begin() + 96, 0.0f);
    return p;
}

// The Q80 reference uses dllama::quantize_q80, so an exact match also shows that the mesh's own
// quantizer produces the same bytes.
void test_all_reduce(Cluster& c, size_t n, Exchange type, uint32_t seed) {
    const int N = (int)c.nodes.size();
    const std::string name = std::string(type == Exchange::F32 ? "F32" : "Q80") + " all_reduce N=" + std::to_string(N) +
                             " n=" + std::to_string(n);
    std::vector<std::vector<float>> results(N);
    for (int k = 0; k < N; k++) results[k] = partial(n, seed + k);
    const auto errors = on_all_nodes(c, [&](Mesh& m) { m.all_reduce_sum(results[m.node()].data(), n, type); });
    if (!all_empty(errors)) return check(false, name + " raised");

    // The reference: the same partials (dequantized for Q80), added in node order.
    std::vector<float> ref(n, 0.0f), exact(n, 0.0f), part(n);
    std::vector<dllama::BlockQ80> blocks(n / 32);
    for (int k = 0; k < N; k++) {
        const std::vector<float> p = partial(n, seed + k);
        part = p;
        if (type == Exchange::Q80) {
            dllama::quantize_q80(p.data(), n, blocks.data());
            dllama::dequantize(dllama::FloatType::Q80, blocks.data(), n, part.data());
        }
        for (size_t i = 0; i < n; i++) ref[i] = k == 0 ? part[i] : ref[i] + part[i];
        for (size_t i = 0; i < n; i++) exact[i] += p[i];
    }
    bool identical = true;
    for (int k = 1; k < N; k++) identical &= std::memcmp(results[k].data(), results[0].data(), n * 4) == 0;
    check(identical, name + ": bit-identical on every node");
    check(std::memcmp(results[0].data(), ref.data(), n * 4) == 0, name + ": equals the node-order sum");
    double max_err = 0;
    for (size_t i = 0; i < n; i++) max_err = std::max(max_err, (double)std::fabs(results[0][i] - exact[i]));
    // Q80: each partial is off by at most half a step (amax/254 <= ~5/254 for N(0,1) data) plus f16 scale error.
    const double bound = type == Exchange::F32 ? 1e-5 : N * 0.03;
    check(max_err <= bound, name + ": max error " + std::to_string(max_err));
}

void test_broadcast_gather(Cluster& c) {
    const int N = (int)c.nodes.size();
    const std::string name = "N=" + std::to_string(N);
    const size_t bytes = 3 << 20;  // larger than the socket buffers
    std::vector<std::vector<uint8_t>> data(N, std::vector<uint8_t>(bytes, 0));
    for (size_t i = 0; i < bytes; i++) data[0][i] = (uint8_t)(i * 7 + 3);
    auto errors = on_all_nodes(c, [&](Mesh& m) { m.broadcast(data[m.node()].data(), bytes); });
    bool same = all_empty(errors);
    for (int k = 1; k < N; k++) same &= data[k] == data[0];
    check(same, "broadcast " + name);

    // Equal sizes, then one size per node.
    std::vector<int32_t> all(N * 2, -1);
    errors = on_all_nodes(c, [&](Mesh& m) {
        const int32_t mine[2] = {m.node() * 10, m.node() * 10 + 1};
        m.gather_to_root(mine, sizeof(mine), m.node() == 0 ? all.data() : nullptr);
    });
    bool ok = all_empty(errors);
    for (int k = 0; k < N; k++) ok &= all[2 * k] == k * 10 && all[2 * k + 1] == k * 10 + 1;
    check(ok, "gather_to_root " + name);

    std::vector<size_t> sizes;
    size_t total = 0;
    for (int k = 0; k < N; k++) sizes.push_back(1000 + 13 * k), total += sizes.back();
    std::vector<uint8_t> gathered(total, 0);
    errors = on_all_nodes(c, [&](Mesh& m) {
        std::vector<uint8_t> mine(sizes[m.node()], (uint8_t)(m.node() + 1));
        m.gather_to_root(mine.data(), mine.size(), m.node() == 0 ? gathered.data() : nullptr, sizes);
    });
    ok = all_empty(errors);
    size_t at = 0;
    for (int k = 0; k < N; k++) {
        for (size_t i = 0; i < sizes[k]; i++) ok &= gathered[at + i] == k + 1;
        at += sizes[k];
    }
    check(ok, "gather_to_root with sizes per node " + name);
}

void test_stats_and_peer(Cluster& c) {
    const int N = (int)c.nodes.size();
    const size_t n = 4096;
    std::vector<std::vector<float>> data(N, std::vector<float>(n, 1.0f));
    for (auto& m : c.nodes) m->reset_stats();
    on_all_nodes(c, [&](Mesh& m) { m.all_reduce_sum(data[m.node()].data(), n, Exchange::F32); });
    bool ok = true;
    for (auto& m : c.nodes) {
        const Mesh::Stats s = m->stats();
        ok &= s.bytes_sent == (uint64_t)(N - 1) * n * 4 && s.bytes_received == s.bytes_sent && s.syncs == 1 &&
              s.seconds_in_sync > 0;
    }
    check(ok && data[N - 1][0] == (float)N, "stats count an F32 all_reduce N=" + std::to_string(N));
    for (auto& m : c.nodes) m->reset_stats();
    on_all_nodes(c, [&](Mesh& m) { m.all_reduce_sum(data[m.node()].data(), n, Exchange::Q80); });
    check(c.nodes[0]->stats().bytes_sent == (uint64_t)(N - 1) * (n / 32) * 34, "stats count a Q80 all_reduce");

    // Direct peer traffic, as the root streams weights.
    const auto errors = on_all_nodes(c, [&](Mesh& m) {
        if (m.node() == 0) {
            for (int k = 1; k < N; k++) {
                const uint32_t v = 1000 + k;
                m.peer(k).send_all(&v, 4);
            }
        } else {
            uint32_t v = 0;
            m.peer(0).recv_all(&v, 4);
            if (v != 1000u + m.node()) throw std::runtime_error("wrong value");
        }
    });
    check(all_empty(errors), "peer() streams root -> worker N=" + std::to_string(N));
    check_throws<std::out_of_range>([&] { c.nodes[0]->peer(0); }, "not a peer", "peer(self) is refused");
}

void test_mesh_sizes() {
    for (int workers = 1; workers <= 3; workers++) {
        Cluster c = make_cluster(workers, workers == 2 ? "shared secret" : "");
        bool ok = (int)c.nodes.size() == workers + 1;
        for (int k = 0; k <= workers; k++) {
            ok &= c.nodes[k] && c.nodes[k]->node() == k && c.nodes[k]->n_nodes() == workers + 1;
        }
        check(ok, "mesh of " + std::to_string(workers + 1) + " nodes");
        if (!ok) continue;
        test_all_reduce(c, 4096, Exchange::F32, 1);
        test_all_reduce(c, 5120, Exchange::Q80, 2);
        test_all_reduce(c, 1 << 20, Exchange::F32, 3);  // 4 MiB per peer: needs interleaved send/recv
        test_all_reduce(c, 1 << 20, Exchange::Q80, 4);
        test_broadcast_gather(c);
        test_stats_and_peer(c);
    }
}

// Collectives that spin before they sleep ($DLLAMA_NET_SPIN_US) move the same bytes; a bad value is
// ignored with a warning.
void test_spinning_collectives() {
    for (const char* spin : {"200", "not a number"}) {
        setenv("DLLAMA_NET_SPIN_US", spin, 1);
        Cluster c = make_cluster(2, "");
        unsetenv("DLLAMA_NET_SPIN_US");
        const bool ok = c.nodes.size() == 3 && c.nodes[0] && c.nodes[1] && c.nodes[2];
        check(ok, std::string("mesh of 3 nodes with DLLAMA_NET_SPIN_US=") + spin);
        if (!ok) continue;
        test_all_reduce(c, 4096, Exchange::F32, 5);
        test_all_reduce(c, 2080, Exchange::Q80, 6);
        test_broadcast_gather(c);
    }
}

// A host name (every address getaddrinfo gives is tried) and IPv6 loopback, where available.
void test_addresses() {
    Listener v4("127.0.0.1", 0);
    Lobby lobby4(v4, "");
    std::unique_ptr<Mesh> worker;
    std::thread t([&] { worker = Mesh::accept_worker(lobby4, 2000, 5000); });
    auto root = Mesh::connect_root({"localhost:" + std::to_string(v4.port())}, "", 2000);
    t.join();
    check(root && worker, "connect to localhost:port");

    std::unique_ptr<Listener> v6;
    try {
        v6 = std::make_unique<Listener>("::1", 0);
    } catch (const NetError& e) {
        std::printf("  skipped IPv6: %s\n", e.what());
        return;
    }
    Lobby lobby6(*v6, "");
    t = std::thread([&] { worker = Mesh::accept_worker(lobby6, 2000, 5000); });
    root = Mesh::connect_root({"[::1]:" + std::to_string(v6->port())}, "", 2000);
    t.join();
    float x[32] = {1.0f};
    std::thread w([&] { worker->all_reduce_sum(x, 32, Exchange::F32); });
    float y[32] = {2.0f};
    root->all_reduce_sum(y, 32, Exchange::F32);
    w.join();
    check(y[0] == 3.0f && x[0] == 3.0f, "mesh over IPv6 [::1]");
}

// ---- failures ----

void test_worker_survives_bad_connections() {
    Listener listener("127.0.0.1", 0);
    const std::string address = "127.0.0.1:" + std::to_string(listener.port());
    Lobby lobby(listener, "pw");
    std::unique_ptr<Mesh> worker;
    std::thread t([&] { worker = Mesh::accept_worker(lobby, 300, 20000); });

    Socket garbage = Socket::connect("127.0.0.1", listener.port(), 1000);
    garbage.send_all("GET / HTTP/1.1\r\n\r\n", 18);
    Socket silent = Socket::connect("127.0.0.1", listener.port(), 1000);  // sends 3 bytes, then nothing
    silent.send_all("DLP", 3);
    Socket old = Socket::connect("127.0.0.1", listener.port(), 1000);
    check_throws<ProtocolError>([&] { client_handshake(old, Role::Root, "pw", 1); }, "protocol version 1",
                                "worker refuses version 1");
    check_throws<AuthError>([&] { Mesh::connect_root({address}, "wrong", 2000); },
                            "node 1 (" + address + "): authentication failed: wrong secret",
                            "root with a wrong secret");
    check_throws<AuthError>([&] { Mesh::connect_root({address}, "", 2000); }, "requires a secret",
                            "root without a secret");

    std::unique_ptr<Mesh> root;
    try {
        root = Mesh::connect_root({address}, "pw", 2000);
    } catch (const std::exception& e) {
        std::printf("  %s\n", e.what());
    }
    t.join();
    check(root && worker && worker->node() == 1,
          "the worker survives garbage, a silent peer and bad roots, then serves a good root");
}

void test_setup_failures() {
    int free_port;
    {
        Listener l("127.0.0.1", 0);
        free_port = l.port();
    }
    const std::string dead = "127.0.0.1:" + std::to_string(free_port);
    check_throws<NetError>([&] { Mesh::connect_root({dead}, "", 1000); }, "node 1 (" + dead + "): connection refused",
                           "root names an unreachable worker");

    // Worker 1 is fine, worker 2 is not there: the root names node 2, worker 1 goes back to waiting.
    Listener l1("127.0.0.1", 0);
    Lobby lobby1(l1, "");
    std::unique_ptr<Mesh> w1;
    std::thread t([&] { w1 = Mesh::accept_worker(lobby1, 1000, 1500); });
    const std::string a1 = "127.0.0.1:" + std::to_string(l1.port());
    check_throws<NetError>([&] { Mesh::connect_root({a1, dead}, "", 1000); },
                           "node 2 (" + dead + "): connection refused",
                           "root names the failed worker among several");
    t.join();
    check(w1 == nullptr, "the good worker gives up that session and keeps waiting");

    // A worker that cannot reach another worker reports it; the root raises with its reason. Node 2
    // here answers the root but never accepts node 1's connection.
    Listener l2("127.0.0.1", 0);
    std::thread fake([&] {
        try {
            Socket s = l2.accept(2000);
            server_handshake(s, Role::Root, "");
            char sink[256];
            for (;;) {
                if (s.recv_some(sink, sizeof(sink)) == 0) s.wait(POLLIN, 5000, "idling");
            }
        } catch (const NetError&) {
            // the root hung up
        }
    });
    t = std::thread([&] { w1 = Mesh::accept_worker(lobby1, 300, 1500); });
    const std::string a2 = "127.0.0.1:" + std::to_string(l2.port());
    check_throws<NetError>([&] { Mesh::connect_root({a1, a2}, "", 300); },
                           "node 1 (" + a1 + "): could not join the mesh: node 2 (" + a2 + "): timed out after 300 ms",
                           "a worker's failure reaches the root");
    t.join();
    fake.join();

    check_throws<std::invalid_argument>([&] { Mesh::connect_root({"localhost"}, "", 1000); }, "expected host:port",
                                        "malformed address");
    check_throws<std::invalid_argument>([&] { Mesh::connect_root({a1, a1}, "", 1000); }, "listed twice",
                                        "repeated address");
    check_throws<std::invalid_argument>([&] { parse_host_port("[::1]:99999"); }, "port 1-65535", "port out of range");
    const auto [host6, port6] = parse_host_port("[::1]:9998");
    check(host6 == "::1" && port6 == 9998 && format_address(host6, port6) == "[::1]:9998", "IPv6 addresses");
}

void test_dead_peer_mid_collective() {
    const int timeout_ms = 500;
    Cluster c = make_cluster(2, "", timeout_ms);
    std::vector<float> data(4096, 1.0f);

    // Node 2 closes its connections instead of taking part.
    auto start = std::chrono::steady_clock::now();
    auto errors = on_all_nodes(c, [&](Mesh& m) {
        std::vector<float> mine = data;
        if (m.node() == 2) return m.close();
        m.all_reduce_sum(mine.data(), mine.size(), Exchange::F32);
    });
    double took = seconds_since(start);
    check_contains(errors[0], "node 2 (127.0.0.1:", "root names a node that closed");
    check(took < 2.0, "a closed node is detected at once (" + std::to_string(took) + " s)");
    check(contains(errors[1], "node 2"), "worker 1 names it too: " + errors[1]);

    // A node that stays connected but never answers: the root times out naming it.
    c = make_cluster(2, "", timeout_ms);
    errors = on_all_nodes(c, [&](Mesh& m) {
        std::vector<float> mine = data;
        if (m.node() == 2) return std::this_thread::sleep_for(std::chrono::milliseconds(1500));
        const auto call = std::chrono::steady_clock::now();
        try {
            m.all_reduce_sum(mine.data(), mine.size(), Exchange::Q80);
        } catch (...) {
            if (m.node() == 0) took = seconds_since(call);
            throw;
        }
    });
    check(contains(errors[0], "node 2 (127.0.0.1:") && contains(errors[0], "timed out after 500 ms"),
          "root names a silent node: " + errors[0]);
    check(took >= 0.45 && took < 1.0, "a silent node is detected after the timeout (" + std::to_string(took) + " s)");

    // The root goes away: the worker's next collective raises, naming node 0.
    c = make_cluster(1, "", timeout_ms);
    c.nodes[0].reset();
    std::vector<float> mine = data;
    check_throws<NetError>([&] { c.nodes[1]->all_reduce_sum(mine.data(), mine.size(), Exchange::F32); },
                           "node 0 (127.0.0.1:",
                           "a worker whose root disappeared");
}

}  // namespace

int main() {
    const std::pair<const char*, void (*)()> tests[] = {
        {"wire", test_wire},
        {"auth", test_auth},
        {"handshake", test_handshake},
        {"mesh sizes", test_mesh_sizes},
        {"spinning collectives", test_spinning_collectives},
        {"addresses", test_addresses},
        {"worker survives bad connections", test_worker_survives_bad_connections},
        {"setup failures", test_setup_failures},
        {"dead peer mid-collective", test_dead_peer_mid_collective},
    };
    for (const auto& [name, test] : tests) {
        std::printf("== %s\n", name);
        std::fflush(stdout);
        try {
            test();
        } catch (const std::exception& e) {
            check(false, std::string(name) + " raised: " + e.what());
        }
    }
    std::printf("%d passed, %d failed\n", g_passed, g_failed);
    return g_failed == 0 ? 0 : 1;
}
