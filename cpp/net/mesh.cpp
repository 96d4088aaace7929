#include "mesh.h"

#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "../quants.h"
#include "auth.h"
#include "handshake.h"
#include "wire.h"

namespace dllama::net {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "collectives send floats and Q80 blocks in memory layout");
static_assert(sizeof(BlockQ80) == 34, "a Q80 block is 34 bytes on the wire");

namespace {

constexpr uint32_t kMaxFrameBytes = 1u << 20;
constexpr uint32_t kMaxHostBytes = 255;
constexpr int kMaxNodes = 64;
constexpr int kMinHeartbeatMs = 10, kMaxHeartbeatMs = 3600 * 1000;
// A worker gives up on a root silent for two heartbeat intervals plus the root's I/O timeout (a
// heartbeat round may wait that long on a slow worker before it reaches the next one).
int idle_limit_ms(int heartbeat_ms, int timeout_ms) { return 2 * heartbeat_ms + timeout_ms; }
enum Message : uint8_t { kJoin = 1, kBuild = 2, kPeerHello = 3, kPeerWelcome = 4, kReady = 5, kFailed = 6, kStart = 7 };
enum Between : uint8_t { kStep = 1, kPing = 2, kPong = 3 };  // between steps
enum Probe : uint8_t { kInfo = 1, kEcho = 2 };
constexpr int kProbeDeadlineMs = 30000;
constexpr uint32_t kMaxEchoBytes = 16u << 20;
const uint8_t kStepByte = kStep, kPingByte = kPing, kPongByte = kPong;

using SessionId = std::array<uint8_t, 16>;

struct Address {
    std::string host;
    int port;
};

// What JOIN tells a worker.
struct Session {
    int node = 0, n_nodes = 0;
    int idle_limit_ms = 0;
    SessionId id{};
    std::vector<Address> workers;  // node k at index k-1
    const Address& address(int node) const { return workers[node - 1]; }
};

int64_t now_ms() {
    using namespace std::chrono;
    return duration_cast<milliseconds>(steady_clock::now().time_since_epoch()).count();
}

double now_seconds() {
    using namespace std::chrono;
    return duration<double>(steady_clock::now().time_since_epoch()).count();
}

// Setup waits are multiples of the timeout, so it must be finite.
void check_timeout(int timeout_ms) {
    if (timeout_ms <= 0) {
        throw std::invalid_argument("the mesh timeout must be positive, got " + std::to_string(timeout_ms));
    }
}

// How long a collective keeps retrying its sockets before it sleeps in poll(): $DLLAMA_NET_SPIN_US
// microseconds (0..10000, default 0). A node that sleeps pays the wake-up (tens of microseconds on
// a VM) on every exchange; one that spins burns its core meanwhile, which only pays where each node
// has a core to itself (docs/distributed.md, "Measurements"). A bad value is reported and ignored.
double spin_seconds_from_env() {
    const char* text = std::getenv("DLLAMA_NET_SPIN_US");
    if (!text || !*text) return 0;
    char* end = nullptr;
    const long us = std::strtol(text, &end, 10);
    if (*end != '\0' || us < 0 || us > 10000) {
        std::fprintf(stderr, "dllama-py: ignoring DLLAMA_NET_SPIN_US=%s (expected 0..10000 microseconds)\n", text);
        return 0;
    }
    return (double)us * 1e-6;
}

std::string node_label(int node, const std::string& address) {
    return "node " + std::to_string(node) + " (" + address + ")";
}

void log(const std::string& message) { std::fprintf(stderr, "dllama_py worker: %s\n", message.c_str()); }

void send_message(Socket& s, const Writer& w) { s.send_frame(w.data()); }

void send_simple(Socket& s, Message type) {
    Writer w;
    w.u8(type);
    send_message(s, w);
}

// Runs parse(reader) over a payload from s, prefixing decoding errors with s's label.
template <class Parse>
auto parse_from(const Socket& s, const std::vector<uint8_t>& payload, Parse parse) {
    try {
        Reader r(payload);
        return parse(r);
    } catch (const ProtocolError& e) {
        throw ProtocolError(s.label() + ": " + e.what());
    }
}

// Receives the next frame, which must be of `type`; a FAILED frame raises the sender's reason.
// Returns the payload after the type byte.
std::vector<uint8_t> expect(Socket& s, Message type) {
    std::vector<uint8_t> payload = s.recv_frame(kMaxFrameBytes);
    if (payload.empty()) throw ProtocolError(s.label() + ": empty message");
    const uint8_t got = payload[0];
    payload.erase(payload.begin());
    if (got == kFailed && type != kFailed) {
        const auto reason = [](Reader& r) { return r.string("failure reason"); };
        throw NetError(s.label() + ": " + parse_from(s, payload, reason));
    }
    if (got != type) {
        throw ProtocolError(s.label() + ": expected message type " + std::to_string(type) + ", got " +
                            std::to_string(got));
    }
    return payload;
}

// The same bytes as dllama::quantize_q80 (amax / 127 scale, multiply by the reciprocal, round half
// to even), written so that the compiler vectorizes it: about 1 us instead of 35 us for 5120 values
// with -O3 -march=native, which matters on the all_reduce path.
void quantize_q80_fast(const float* x, size_t n, BlockQ80* out) {
    for (size_t b = 0; b < n / kBlockSize; b++) {
        const float* g = x + b * kBlockSize;
        uint32_t amax_bits = 0;  // |x| as integers: same order as the floats, and vectorizes
        for (int j = 0; j < kBlockSize; j++) {
            uint32_t bits;
            std::memcpy(&bits, g + j, 4);
            amax_bits = std::max(amax_bits, bits & 0x7fffffffu);
        }
        float amax;
        std::memcpy(&amax, &amax_bits, 4);
        const float d = amax / 127.0f;
        const float inv = d != 0.0f ? 1.0f / d : 0.0f;
        int8_t q[kBlockSize];
        for (int j = 0; j < kBlockSize; j++) q[j] = (int8_t)std::nearbyint(g[j] * inv);
        out[b].d = f32_to_f16(d);
        std::memcpy(out[b].qs, q, sizeof(q));
    }
}

// ---- root side ----

void send_join(Socket& s, int node, const std::vector<Address>& workers, const SessionId& id, int idle_limit_ms) {
    Writer w;
    w.u8(kJoin);
    w.u32((uint32_t)node);
    w.u32((uint32_t)workers.size() + 1);
    w.u32((uint32_t)idle_limit_ms);
    w.bytes(id.data(), id.size());
    for (const Address& a : workers) {
        w.string(a.host);
        w.u32((uint32_t)a.port);
    }
    send_message(s, w);
}

// ---- worker side ----

Session parse_join(const Socket& root, const std::vector<uint8_t>& payload) {
    return parse_from(root, payload, [&](Reader& r) {
        Session s;
        s.node = (int)r.u32("node index");
        s.n_nodes = (int)r.u32("node count");
        const uint32_t idle_limit = r.u32("idle limit");
        r.bytes(s.id.data(), s.id.size(), "session id");
        if (s.n_nodes < 2 || s.n_nodes > kMaxNodes || s.node < 1 || s.node >= s.n_nodes) {
            throw ProtocolError("bad JOIN: node " + std::to_string(s.node) + " of " + std::to_string(s.n_nodes));
        }
        if (idle_limit < (uint32_t)kMinHeartbeatMs || idle_limit > (uint32_t)(3 * kMaxHeartbeatMs)) {
            throw ProtocolError("bad JOIN: idle limit of " + std::to_string(idle_limit) + " ms");
        }
        s.idle_limit_ms = (int)idle_limit;
        for (int k = 1; k < s.n_nodes; k++) {
            Address a;
            a.host = r.name("worker host", kMaxHostBytes);
            a.port = (int)r.u32("worker port");
            if (a.port < 1 || a.port > 65535) throw ProtocolError("bad JOIN: port " + std::to_string(a.port));
            s.workers.push_back(a);
        }
        return s;
    });
}

// Connects to every worker above this one.
void connect_up(const Session& session, const std::string& secret, int timeout_ms, std::vector<Socket>& peers) {
    for (int k = session.node + 1; k < session.n_nodes; k++) {
        const Address& a = session.address(k);
        Socket s = Socket::connect(a.host, a.port, timeout_ms, node_label(k, format_address(a.host, a.port)));
        client_handshake(s, Role::Peer, secret);
        Writer hello;
        hello.u8(kPeerHello);
        hello.bytes(session.id.data(), session.id.size());
        hello.u32((uint32_t)session.node);
        send_message(s, hello);
        expect(s, kPeerWelcome);
        peers[k] = std::move(s);
    }
}

// The lower worker a PEER_HELLO comes from.
int peer_hello_node(const Socket& s, const std::vector<uint8_t>& payload, const Session& session,
                    const std::vector<Socket>& peers) {
    return parse_from(s, payload, [&](Reader& r) {
        SessionId id;
        r.bytes(id.data(), id.size(), "session id");
        const int from = (int)r.u32("node index");
        if (id != session.id) throw ProtocolError("connection from another session");
        if (from < 1 || from >= session.node || peers[from].is_open()) {
            throw ProtocolError("unexpected connection from node " + std::to_string(from));
        }
        return from;
    });
}

// Accepts one connection from every worker below this one, refusing strangers.
void accept_down(Lobby& lobby, const Session& session, int timeout_ms, int wait_ms, std::vector<Socket>& peers) {
    const int64_t deadline = now_ms() + wait_ms;
    for (;;) {
        std::string missing;
        for (int k = 1; k < session.node; k++) {
            if (!peers[k].is_open()) missing += (missing.empty() ? "" : ", ") + std::to_string(k);
        }
        if (missing.empty()) return;
        auto arrival = lobby.next(Role::Peer, timeout_ms, (int)std::max<int64_t>(0, deadline - now_ms()));
        if (!arrival) {
            throw NetError("timed out after " + std::to_string(wait_ms) + " ms waiting for node(s) " + missing +
                           " to connect");
        }
        Socket& s = arrival->socket;
        try {
            const int from = peer_hello_node(s, arrival->payload, session, peers);
            const Address& a = session.address(from);
            s.set_label(node_label(from, format_address(a.host, a.port)));
            send_simple(s, kPeerWelcome);
            peers[from] = std::move(s);
        } catch (const NetError& e) {
            log(std::string("refused a connection while joining the mesh: ") + e.what());
        }
    }
}

// Everything after the root's handshake: JOIN, BUILD, the peer connections, READY, START.
// Returns the connections indexed by node.
std::vector<Socket> join_session(Lobby& lobby, Socket root, const std::vector<uint8_t>& join, const std::string& secret,
                                 int timeout_ms, Session& session) {
    root.set_label(node_label(0, root.label()));
    session = parse_join(root, join);
    const int setup_wait = 2 * session.n_nodes * timeout_ms;
    root.set_timeout(setup_wait);
    expect(root, kBuild);
    std::vector<Socket> peers(session.n_nodes);
    try {
        connect_up(session, secret, timeout_ms, peers);
        accept_down(lobby, session, timeout_ms, setup_wait, peers);
    } catch (const NetError& e) {
        Writer failed;
        failed.u8(kFailed);
        failed.string(std::string("could not join the mesh: ") + e.what());
        try {
            send_message(root, failed);
        } catch (const NetError&) {
            // The root is gone too; the original error says more.
        }
        throw;
    }
    send_simple(root, kReady);
    root.set_timeout(2 * setup_wait);
    expect(root, kStart);
    root.set_timeout(timeout_ms);
    peers[0] = std::move(root);
    return peers;
}

}  // namespace

struct Mesh::Transfer {
    const uint8_t* send = nullptr;
    size_t send_left = 0;
    uint8_t* recv = nullptr;
    size_t recv_left = 0;
};

// ---- setup ----

Mesh::Mesh(int node, std::vector<Socket> peers, int timeout_ms, int heartbeat_ms, int idle_limit_ms)
    : node_(node), peers_(std::move(peers)), heartbeat_ms_(heartbeat_ms), idle_limit_ms_(idle_limit_ms),
      spin_seconds_(spin_seconds_from_env()), idle_since_ms_(now_ms()) {
    set_timeout(timeout_ms);
    reset_stats();
}

Mesh::~Mesh() { stop_heartbeats(); }

std::unique_ptr<Mesh> Mesh::connect_root(const std::vector<std::string>& workers, const std::string& secret,
                                         int timeout_ms, int heartbeat_ms) {
    const int n = (int)workers.size() + 1;
    check_timeout(timeout_ms);
    if (heartbeat_ms < kMinHeartbeatMs || heartbeat_ms > kMaxHeartbeatMs) {
        throw std::invalid_argument("the heartbeat interval must be " + std::to_string(kMinHeartbeatMs) + ".." +
                                    std::to_string(kMaxHeartbeatMs) + " ms, got " + std::to_string(heartbeat_ms));
    }
    if (n > kMaxNodes) {
        throw std::invalid_argument("at most " + std::to_string(kMaxNodes - 1) + " workers are supported");
    }
    std::vector<Address> addresses;
    for (const std::string& w : workers) {
        if (std::count(workers.begin(), workers.end(), w) > 1) {
            throw std::invalid_argument("worker " + w + " is listed twice");
        }
        const auto [host, port] = parse_host_port(w);
        addresses.push_back({host, port});
    }
    SessionId id;
    random_bytes(id.data(), id.size());

    std::vector<Socket> peers(n);
    for (int k = 1; k < n; k++) {
        const Address& a = addresses[k - 1];
        peers[k] = Socket::connect(a.host, a.port, timeout_ms, node_label(k, workers[k - 1]));
        client_handshake(peers[k], Role::Root, secret);
        send_join(peers[k], k, addresses, id, idle_limit_ms(heartbeat_ms, timeout_ms));
    }
    for (int k = 1; k < n; k++) send_simple(peers[k], kBuild);
    for (int k = 1; k < n; k++) {
        peers[k].set_timeout(2 * n * timeout_ms);
        expect(peers[k], kReady);
    }
    for (int k = 1; k < n; k++) send_simple(peers[k], kStart);
    return std::unique_ptr<Mesh>(new Mesh(0, std::move(peers), timeout_ms, heartbeat_ms, 0));
}

std::unique_ptr<Mesh> Mesh::accept_worker(Lobby& lobby, int timeout_ms, int wait_ms) {
    check_timeout(timeout_ms);
    const int64_t deadline = now_ms() + wait_ms;
    for (;;) {
        const int left = wait_ms < 0 ? -1 : (int)std::max<int64_t>(0, deadline - now_ms());
        std::optional<Lobby::Arrival> root = lobby.next(Role::Root, timeout_ms, left);
        if (!root) return nullptr;
        try {
            Session session;
            std::vector<Socket> peers =
                join_session(lobby, std::move(root->socket), root->payload, lobby.secret(), timeout_ms, session);
            lobby.clear();
            return std::unique_ptr<Mesh>(new Mesh(session.node, std::move(peers), timeout_ms, 0, session.idle_limit_ms));
        } catch (const NetError& e) {
            log(std::string("session refused or failed before it started: ") + e.what());
        }
    }
}

// ---- the lobby ----

struct Lobby::Guest {
    Socket socket;
    std::thread thread;
    // Under the lobby's mutex:
    bool done = false, arrived = false, dropped = false;
    Role role = Role::Any;
    std::vector<uint8_t> payload;
};

Lobby::Lobby(Listener& listener, std::string secret, std::function<WorkerInfo()> describe)
    : listener_(listener), secret_(std::move(secret)), describe_(std::move(describe)) {}

namespace {

// A worker's side of a probe: answers INFO? and ECHO until the prober hangs up.
void answer_probe(Socket& s, const std::function<WorkerInfo()>& describe) {
    s.set_deadline(kProbeDeadlineMs);
    for (;;) {
        std::vector<uint8_t> msg;
        try {
            msg = s.recv_frame(kMaxEchoBytes + 1);
        } catch (const NetError& e) {
            if (std::string(e.what()).find("peer closed") != std::string::npos) return;  // done
            throw;
        }
        if (msg.empty()) throw ProtocolError(s.label() + ": empty probe");
        if (msg[0] == kEcho) {
            s.send_frame(msg);
        } else if (msg[0] == kInfo) {
            const WorkerInfo info = describe ? describe() : WorkerInfo{};
            Writer w;
            w.u8(kInfo);
            w.u32(info.cores);
            w.u64(info.ram_bytes);
            w.u64(info.available_ram_bytes);
            w.u64(info.read_bandwidth);
            w.string(info.model_identity);
            s.send_frame(w.data());
        } else {
            throw ProtocolError(s.label() + ": unknown probe " + std::to_string(msg[0]));
        }
    }
}

}  // namespace

ProbeResult probe_worker(const std::string& address, const std::string& secret, int timeout_ms, size_t echo_bytes) {
    const auto [host, port] = parse_host_port(address);
    Socket s = Socket::connect(host, port, timeout_ms, address);
    client_handshake(s, Role::Probe, secret);
    ProbeResult result;
    Writer ask;
    ask.u8(kInfo);
    s.send_frame(ask.data());
    const std::vector<uint8_t> info = s.recv_frame(kMaxFrameBytes);
    parse_from(s, info, [&](Reader& r) {
        if (r.u8("probe answer") != kInfo) throw ProtocolError("expected INFO");
        result.info.cores = r.u32("cores");
        result.info.ram_bytes = r.u64("RAM");
        result.info.available_ram_bytes = r.u64("available RAM");
        result.info.read_bandwidth = r.u64("read bandwidth");
        result.info.model_identity = r.name("model identity", 256);
        return 0;
    });
    const auto echo = [&](size_t n) {
        std::vector<uint8_t> msg(1 + n, 0);
        msg[0] = kEcho;
        const double start = now_seconds();
        s.send_frame(msg);
        if (s.recv_frame(kMaxEchoBytes + 1) != msg) throw ProtocolError(s.label() + ": echo came back changed");
        return now_seconds() - start;
    };
    std::vector<double> trips;
    for (int i = 0; i < 5; i++) trips.push_back(echo(0));
    std::sort(trips.begin(), trips.end());
    result.round_trip_ms = trips[2] * 1000;
    const size_t n = std::min<size_t>(echo_bytes, kMaxEchoBytes);
    if (n > 0) result.bytes_per_second = 2.0 * n / std::max(echo(n), 1e-9);
    return result;
}

Lobby::~Lobby() { clear(); }

void Lobby::drop(Guest& g) {
    if (g.dropped) return;
    g.dropped = true;
    if (g.arrived && g.role == Role::Root) {
        Writer busy;
        busy.u8(kFailed);
        busy.string("this worker is busy with another root's session");
        try {
            g.socket.set_timeout(0);
            send_message(g.socket, busy);  // a few bytes into an empty send buffer
        } catch (const NetError&) {
        }
    }
    ::shutdown(g.socket.fd(), SHUT_RDWR);  // wakes its thread, which then fails and ends
}

void Lobby::clear() {
    std::list<std::unique_ptr<Guest>> all;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        all.swap(guests_);
        for (auto& g : all) drop(*g);
    }
    for (auto& g : all) g->thread.join();
}

void Lobby::reap() {
    std::list<std::unique_ptr<Guest>> finished;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        for (auto it = guests_.begin(); it != guests_.end();) {
            if ((*it)->done && (!(*it)->arrived || (*it)->dropped)) {
                finished.push_back(std::move(*it));
                it = guests_.erase(it);
            } else {
                ++it;
            }
        }
    }
    for (auto& g : finished) g->thread.join();
}

void Lobby::admit(Socket socket, int deadline_ms) {
    if ((int)guests_.size() >= kMaxPending) {
        for (auto& old : guests_) {
            if (old->dropped) continue;
            log("dropped " + old->socket.label() + ": " + std::to_string(kMaxPending) +
                " connections were waiting for their handshake");
            drop(*old);
            break;
        }
    }
    auto g = std::make_unique<Guest>();
    g->socket = std::move(socket);
    g->socket.set_timeout(deadline_ms);
    Guest* guest = g.get();
    guest->thread = std::thread([this, guest, deadline_ms] {
        Role role = Role::Any;
        std::vector<uint8_t> payload;
        std::string error;
        try {
            guest->socket.set_deadline(deadline_ms);
            role = server_handshake(guest->socket, Role::Any, secret_);
            if (role == Role::Probe) {
                answer_probe(guest->socket, describe_);
                role = Role::Any;  // done with: never an arrival
            } else {
                payload = expect(guest->socket, role == Role::Root ? kJoin : kPeerHello);
                guest->socket.set_deadline(-1);
            }
        } catch (const std::exception& e) {
            error = e.what();
        }
        std::lock_guard<std::mutex> lock(mutex_);
        if (!error.empty() && !guest->dropped) log("refused a connection: " + error);
        guest->role = role;
        guest->payload = std::move(payload);
        guest->arrived = error.empty() && role != Role::Any;
        guest->done = true;
    });
    guests_.push_back(std::move(g));
}

std::optional<Lobby::Arrival> Lobby::next(Role role, int deadline_ms, int wait_ms) {
    const int64_t deadline = now_ms() + wait_ms;
    for (;;) {
        reap();
        bool pending = false;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            for (auto it = guests_.begin(); it != guests_.end(); ++it) {
                Guest& g = **it;
                if (!g.arrived || g.dropped) {
                    pending |= !g.done;
                    continue;
                }
                if (g.role != role) {
                    if (role == Role::Peer) drop(g);  // a root while this worker joins a session
                    continue;
                }
                g.thread.join();  // it has finished: `done` is set last, under the mutex
                Arrival a{std::move(g.socket), std::move(g.payload)};
                guests_.erase(it);
                return a;
            }
        }
        const int64_t left = wait_ms < 0 ? -1 : std::max<int64_t>(0, deadline - now_ms());
        if (left == 0) return std::nullopt;
        // While handshakes run, look at them every 20 ms; otherwise sleep until a connection comes.
        const int slice = pending ? (int)(left < 0 ? 20 : std::min<int64_t>(left, 20)) : (int)left;
        if (listener_.wait(slice)) {
            try {
                Socket s = listener_.accept(0);
                std::lock_guard<std::mutex> lock(mutex_);
                admit(std::move(s), deadline_ms);
            } catch (const NetError&) {
                // the connection went away before accept()
            }
        }
    }
}

// ---- accessors ----

Socket& Mesh::peer(int node) {
    if (node < 0 || node >= n_nodes() || node == node_) {
        throw std::out_of_range("node " + std::to_string(node) + " is not a peer of node " + std::to_string(node_));
    }
    return peers_[node];
}

void Mesh::begin_step() {
    if (node_ != 0) return wait_for_step();
    step_mutex_.lock();
    try {
        if (!lost_.empty()) throw NetError("the session with the workers is over: " + lost_);
        for (int p = 1; p < n_nodes(); p++) peers_[p].send_all(&kStepByte, 1);
    } catch (const NetError& e) {
        lose(e.what());
        step_mutex_.unlock();
        throw;
    }
}

void Mesh::end_step() {
    if (node_ != 0) return;
    idle_since_ms_ = now_ms();
    step_mutex_.unlock();
}

void Mesh::wait_for_step() {
    Socket& root = peers_[0];
    const std::string waiting = "waiting for the next step or heartbeat (the root is gone or hung)";
    for (;;) {
        root.wait(POLLIN, idle_limit_ms_, waiting.c_str());
        uint8_t b = 0;
        root.recv_all(&b, 1);
        if (b == kStep) return;
        if (b != kPing) throw ProtocolError(root.label() + ": expected a step or a heartbeat, got byte " + std::to_string(b));
        root.send_all(&kPongByte, 1);
    }
}

void Mesh::lose(const std::string& why) {
    if (node_ != 0 || !lost_.empty()) return;
    lost_ = why;
    for (Socket& s : peers_) s.close();  // every worker sees the session end and waits for a root again
}

void Mesh::ping_workers() {
    std::vector<uint8_t> pongs(n_nodes(), 0);
    std::vector<Transfer> transfers(n_nodes());
    for (int p = 1; p < n_nodes(); p++) transfers[p] = {&kPingByte, 1, &pongs[p], 1};
    run(transfers);
    for (int p = 1; p < n_nodes(); p++)
        if (pongs[p] != kPong) peers_[p].fail("answered a heartbeat with byte " + std::to_string(pongs[p]));
}

void Mesh::heartbeat(int node) {
    Socket& s = peer(node);
    s.send_all(&kPingByte, 1);
    uint8_t pong = 0;
    s.recv_all(&pong, 1);
    if (pong != kPong) s.fail("answered a heartbeat with byte " + std::to_string(pong));
}

void Mesh::start_heartbeats() {
    if (node_ != 0 || heartbeats_.joinable()) return;
    heartbeats_ = std::thread([this] {
        std::unique_lock<std::mutex> lock(step_mutex_);
        while (!stopping_ && lost_.empty()) {
            const int64_t due = idle_since_ms_ + heartbeat_ms_, now = now_ms();
            if (now < due) {
                wake_.wait_for(lock, std::chrono::milliseconds(due - now));
                continue;
            }
            try {
                ping_workers();
                idle_since_ms_ = now_ms();
            } catch (const NetError& e) {
                std::fprintf(stderr, "dllama_py: lost the workers while idle: %s\n", e.what());
                lose(std::string("a heartbeat failed: ") + e.what());
            }
        }
    });
}

void Mesh::stop_heartbeats() {
    if (!heartbeats_.joinable()) return;
    {
        std::lock_guard<std::mutex> lock(step_mutex_);
        stopping_ = true;
    }
    wake_.notify_all();
    heartbeats_.join();
}

void Mesh::set_timeout(int timeout_ms) {
    timeout_ms_ = timeout_ms;
    for (Socket& s : peers_) s.set_timeout(timeout_ms);
}

Mesh::Stats Mesh::stats() const {
    std::lock_guard<std::mutex> lock(step_mutex_);
    Stats s = stats_;
    for (const Socket& p : peers_) {
        s.bytes_sent += p.bytes_sent();
        s.bytes_received += p.bytes_received();
    }
    s.bytes_sent -= sent_base_;
    s.bytes_received -= received_base_;
    return s;
}

void Mesh::reset_stats() {
    const Stats now = stats();
    std::lock_guard<std::mutex> lock(step_mutex_);
    stats_ = Stats{};
    sent_base_ += now.bytes_sent;
    received_base_ += now.bytes_received;
}

void Mesh::close() {
    stop_heartbeats();
    for (Socket& s : peers_) s.close();
}

// ---- collectives ----

void Mesh::run(std::vector<Transfer>& transfers) {
    try {
        move_all(transfers);
    } catch (const NetError& e) {
        lose(e.what());
        throw;
    }
}

// Moves every transfer at once: sends and receives whatever the sockets take without blocking,
// and poll()s all pending sockets when none moved for spin_seconds_. Sending and receiving together
// means no node waits for a peer that is itself blocked on a full send buffer. The timeout counts
// from the last byte that moved.
void Mesh::move_all(std::vector<Transfer>& transfers) {
    int64_t last_progress = now_ms();
    double spin_start = spin_seconds_ > 0 ? now_seconds() : 0;
    std::vector<pollfd> fds;
    for (;;) {
        bool pending = false, progressed = false;
        fds.clear();
        for (int p = 0; p < n_nodes(); p++) {
            Transfer& t = transfers[p];
            if (t.send_left > 0) {
                const size_t k = peers_[p].send_some(t.send, t.send_left);
                t.send += k, t.send_left -= k, progressed |= k > 0;
            }
            if (t.recv_left > 0) {
                const size_t k = peers_[p].recv_some(t.recv, t.recv_left);
                t.recv += k, t.recv_left -= k, progressed |= k > 0;
            }
            if (t.send_left > 0 || t.recv_left > 0) {
                pending = true;
                fds.push_back({peers_[p].fd(), (short)((t.send_left ? POLLOUT : 0) | (t.recv_left ? POLLIN : 0)), 0});
            }
        }
        if (!pending) return;
        if (progressed) {
            last_progress = now_ms();
            if (spin_seconds_ > 0) spin_start = now_seconds();
            continue;
        }
        if (spin_seconds_ > 0 && now_seconds() - spin_start < spin_seconds_) {
            std::this_thread::yield();  // a node that shares its core lets the others run
            continue;
        }
        const int64_t left = timeout_ms_ < 0 ? -1 : std::max<int64_t>(0, timeout_ms_ - (now_ms() - last_progress));
        const int rc = ::poll(fds.data(), fds.size(), (int)left);
        if (rc < 0 && errno != EINTR) throw NetError(std::string("poll failed: ") + std::strerror(errno));
        if (rc == 0) {
            // Blame the first node we are still waiting to hear from (else the first we cannot send to).
            for (const bool receiving : {true, false}) {
                for (int p = 0; p < n_nodes(); p++) {
                    if (receiving ? transfers[p].recv_left > 0 : transfers[p].send_left > 0) {
                        peers_[p].fail("timed out after " + std::to_string(timeout_ms_) + " ms " +
                                       (receiving ? "waiting for data" : "waiting to send"));
                    }
                }
            }
        }
    }
}

void Mesh::count_sync(double start_seconds) {
    stats_.seconds_in_sync += now_seconds() - start_seconds;
    stats_.syncs++;
}

void Mesh::all_reduce_sum(float* data, size_t n, Exchange type) {
    const double start = now_seconds();
    if (type == Exchange::Q80 && n % kBlockSize != 0) {
        throw std::invalid_argument("Q80 all_reduce needs a multiple of 32 values, got " + std::to_string(n));
    }
    const size_t part_bytes = type == Exchange::F32 ? n * sizeof(float) : n / kBlockSize * sizeof(BlockQ80);
    send_buf_.resize(part_bytes);
    if (type == Exchange::F32) {
        std::memcpy(send_buf_.data(), data, part_bytes);
    } else {
        quantize_q80_fast(data, n, reinterpret_cast<BlockQ80*>(send_buf_.data()));
    }
    recv_buf_.resize(part_bytes * n_nodes());
    std::vector<Transfer> transfers(n_nodes());
    for (int p = 0; p < n_nodes(); p++) {
        if (p == node_) continue;
        transfers[p] = {send_buf_.data(), part_bytes, recv_buf_.data() + p * part_bytes, part_bytes};
    }
    run(transfers);
    sum_partials(data, n, type);
    count_sync(start);
}

// data = partial(0) + partial(1) + ... + partial(N-1), added in this order on every node. Node p's
// partial is in recv_buf_'s slot p, this node's own in send_buf_, both in wire form.
void Mesh::sum_partials(float* data, size_t n, Exchange type) {
    const size_t part_bytes = send_buf_.size();
    part_.resize(n);
    sum_.resize(n);
    for (int p = 0; p < n_nodes(); p++) {
        const uint8_t* bytes = p == node_ ? send_buf_.data() : recv_buf_.data() + p * part_bytes;
        float* out = p == 0 ? sum_.data() : part_.data();
        dequantize(type == Exchange::F32 ? FloatType::F32 : FloatType::Q80, bytes, n, out);
        if (p > 0) {
            for (size_t i = 0; i < n; i++) sum_[i] += part_[i];
        }
    }
    std::memcpy(data, sum_.data(), n * sizeof(float));
}

void Mesh::broadcast(void* data, size_t bytes) {
    const double start = now_seconds();
    std::vector<Transfer> transfers(n_nodes());
    for (int p = 0; p < n_nodes(); p++) {
        if (p == node_) continue;
        if (node_ == 0) transfers[p] = {static_cast<const uint8_t*>(data), bytes, nullptr, 0};
        if (p == 0) transfers[p] = {nullptr, 0, static_cast<uint8_t*>(data), bytes};
    }
    run(transfers);
    count_sync(start);
}

void Mesh::gather_to_root(const void* mine, size_t bytes, void* all) {
    gather_to_root(mine, bytes, all, std::vector<size_t>(n_nodes(), bytes));
}

void Mesh::gather_to_root(const void* mine, size_t my_bytes, void* all, const std::vector<size_t>& bytes_per_node) {
    const double start = now_seconds();
    if ((int)bytes_per_node.size() != n_nodes() || bytes_per_node[node_] != my_bytes) {
        throw std::invalid_argument("gather_to_root: bytes_per_node must list every node, this one with my_bytes");
    }
    std::vector<Transfer> transfers(n_nodes());
    if (node_ == 0) {
        uint8_t* out = static_cast<uint8_t*>(all);
        std::memcpy(out, mine, my_bytes);
        out += my_bytes;
        for (int p = 1; p < n_nodes(); p++) {
            transfers[p] = {nullptr, 0, out, bytes_per_node[p]};
            out += bytes_per_node[p];
        }
    } else {
        transfers[0] = {static_cast<const uint8_t*>(mine), my_bytes, nullptr, 0};
    }
    run(transfers);
    count_sync(start);
}

}  // namespace dllama::net
