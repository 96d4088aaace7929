// The connections of one tensor-parallel inference session among N nodes: node 0 is the root,
// nodes 1..N-1 are workers, and every pair of nodes has its own TCP connection (a full mesh, as in
// distributed-llama), so that every node can exchange partial results with every other directly.
//
// Setting up a session
// --------------------
// Every connection starts with the handshake of handshake.h (the root's connections with role 1 =
// root, worker-to-worker connections with role 2 = peer). After it, messages are frames: a u32
// little-endian payload length (at most 1 MiB), then the payload, whose first byte is its type.
// Strings are a u32 length and the bytes, integers little-endian.
//
// 1. The root connects to every worker in --workers order (worker k is node k+1), handshakes, and
//    sends it
//      JOIN   u8 1, u32 node index i, u32 n_nodes N (2..64), u32 idle limit in ms (10..10,800,000:
//             see "During the session"), 16 bytes session id (random, the same for all), then for each worker
//             node 1..N-1 in order: string host (<= 255 bytes), u32 port
//    (the hosts exactly as the root was given them: they must be reachable from the workers).
//    A worker handshakes every connection in its own thread, with one deadline (its I/O timeout)
//    for the handshake and the first frame together, and at most kMaxPending at once (a newer
//    connection pushes out the oldest), so idle or trickling connections never keep a root waiting.
// 2. Once every worker has JOINed, the root sends each
//      BUILD  u8 2
//    (not earlier: a worker still waiting for its root would refuse another worker's connection).
// 3. Worker i connects to every worker j > i (handshake as a peer, on j's listening port, which is
//    the port the root reached j on) and sends
//      PEER_HELLO    u8 3, 16 bytes session id, u32 node index i
//    and j answers
//      PEER_WELCOME  u8 4
//    Worker i also accepts one connection from every worker 1 <= j < i on its listener, refusing
//    (and logging) connections with a wrong handshake, session id or node index.
//    Connecting upwards first cannot deadlock: the highest node only accepts.
// 4. Each worker tells the root how it went:
//      READY   u8 5                      the worker is connected to every other node
//      FAILED  u8 6, string reason       the worker gives up (the root raises with the reason)
// 5. When every worker is READY, the root sends each
//      START   u8 7
//    and the session begins. A failure before START closes every connection; workers go back to
//    waiting for a root.
//
// Steps that wait for other nodes' work (BUILD, READY, peers' connections) allow 2 * N * timeout,
// and a worker waits 4 * N * timeout for START: longer than the steps they wait for can take, so
// that the node that actually failed is the one that reports it.
//
// During the session
// ------------------
// Between steps the session may stay idle for hours. The root opens every step with one byte,
//      STEP  u8 1
// and, when no step has run for a heartbeat interval, sends each worker
//      PING  u8 2        answered by   PONG  u8 3
// A worker that hears neither STEP nor PING for the idle limit JOIN gave it (two heartbeat intervals
// plus the root's I/O timeout: 25 s by default), or a root that gets no PONG within its I/O timeout,
// ends the session naming the silent node; the root then closes every
// connection, so every worker goes back to waiting for a root. Timeouts apply only while a step is
// in flight.
//
// Probes
// ------
// A connection that handshakes as a probe (role 3) asks about a waiting worker without starting a
// session (`dllama-py cluster check`), in frames, within 30 s:
//      INFO?  u8 1                -> INFO  u8 1, u32 cores, u64 RAM bytes, u64 available RAM bytes,
//                                          u64 read bandwidth bytes/s, string identity of its --model ("")
//      ECHO   u8 2, any bytes     -> the same frame back (at most 16 MiB: round trip time, throughput)
//
// Within a step there is no framing: every node calls the same collectives in the same order, and
// each one moves a known number of raw bytes. Floats are IEEE-754 binary32 little-endian; a Q80
// block is 34 bytes: f16 scale d (little-endian) then 32 int8 values, element = value * d. Both
// equal the in-memory layout on the little-endian hosts we build for (checked at compile time).
// The root also uses peer(i) directly, before the first step, to stream configuration and weights.
#pragma once
#include <condition_variable>
#include <functional>
#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "handshake.h"
#include "socket.h"

namespace dllama::net {

constexpr int kDefaultHeartbeatMs = 10000;

// What a worker tells a probe about itself.
struct WorkerInfo {
    uint32_t cores = 0;
    uint64_t ram_bytes = 0, available_ram_bytes = 0;
    uint64_t read_bandwidth = 0;  // bytes/s
    std::string model_identity;   // of its local model copy, "" without one
};

struct ProbeResult {
    WorkerInfo info;
    double round_trip_ms = 0;      // median of small echoes
    double bytes_per_second = 0;   // both ways, over one echo of echo_bytes
};

// Probes the worker at "host:port". Throws NetError/ProtocolError/AuthError like connect_root does
// (unreachable, other protocol version, wrong secret), naming the address.
ProbeResult probe_worker(const std::string& address, const std::string& secret, int timeout_ms, size_t echo_bytes);

// Where the connections a worker accepts wait for their handshake (see JOIN above): each in its own
// thread, with one deadline for the handshake and its first frame (JOIN from a root, PEER_HELLO from
// a peer), at most kMaxPending at once. Roots and peers are both accepted at any time, so that a
// fast peer's connection is not lost while this worker is still being JOINed.
class Lobby {
public:
    static constexpr int kMaxPending = 16;
    // `describe` answers probes (called in the probe's thread; without it they get zeros).
    Lobby(Listener& listener, std::string secret, std::function<WorkerInfo()> describe = {});
    ~Lobby();  // drops the connections still waiting
    Lobby(const Lobby&) = delete;
    Lobby& operator=(const Lobby&) = delete;

    const std::string& secret() const { return secret_; }

    struct Arrival {
        Socket socket;
        std::vector<uint8_t> payload;  // the first frame after the handshake, without its type byte
    };
    // The next connection that completed its handshake as `role` and sent its first frame, within
    // wait_ms (< 0: forever); nullopt on timeout. deadline_ms bounds each connection's handshake and
    // first frame. While peers are wanted, roots that arrive are told that the worker is busy.
    std::optional<Arrival> next(Role role, int deadline_ms, int wait_ms);
    void clear();  // drops every waiting connection (roots are told that the worker is busy)

private:
    struct Guest;
    void drop(Guest& g);       // ends g's handshake, or turns g away if it arrived (under mutex_)
    void reap();               // joins the threads of guests that were dropped or failed
    void admit(Socket socket, int deadline_ms);  // starts a handshake (under mutex_)

    Listener& listener_;
    std::string secret_;
    std::function<WorkerInfo()> describe_;
    std::mutex mutex_;
    std::list<std::unique_ptr<Guest>> guests_;  // oldest first
};

// How all_reduce_sum moves partials: raw f32, or quantized to Q80 (about 3.8x fewer bytes).
enum class Exchange { F32, Q80 };

class Mesh {
public:
    struct Stats {
        uint64_t bytes_sent = 0, bytes_received = 0;  // over all of this node's sockets, peer() traffic included
        double seconds_in_sync = 0;                   // time spent inside collectives
        uint64_t syncs = 0;                           // collectives called
    };

    // The root: connects to the workers ("host:port" or "[ipv6]:port"), handshakes and builds the
    // mesh. Throws NetError/ProtocolError/AuthError naming the node that failed and why, or
    // std::invalid_argument for a malformed or repeated address. timeout_ms (> 0) is the I/O timeout
    // of every step and of the collectives later; heartbeat_ms the interval of idle-time heartbeats.
    static std::unique_ptr<Mesh> connect_root(const std::vector<std::string>& workers, const std::string& secret,
                                              int timeout_ms = kDefaultTimeoutMs,
                                              int heartbeat_ms = kDefaultHeartbeatMs);

    // A worker: waits in `lobby` for a root and joins its mesh. Connections that fail the
    // handshake, and sessions that fail before they start, are logged to stderr and the worker
    // keeps waiting. wait_ms < 0 waits forever; otherwise nullptr when no session started within
    // wait_ms (so that a caller can check for Ctrl-C and call again).
    static std::unique_ptr<Mesh> accept_worker(Lobby& lobby, int timeout_ms = kDefaultTimeoutMs, int wait_ms = -1);

    ~Mesh();  // stops the heartbeats and closes every connection
    Mesh(const Mesh&) = delete;
    Mesh& operator=(const Mesh&) = delete;

    int node() const { return node_; }
    int n_nodes() const { return (int)peers_.size(); }
    Socket& peer(int node);  // the connection to another node

    // Steps. The root brackets each step's collectives with begin_step/end_step; on a worker,
    // begin_step waits for the root's next step however long the session stays idle, answering
    // heartbeats, and throws NetError when the root falls silent (the idle limit) or leaves.
    // On the root begin_step throws the reason when the session was lost (a failed collective, a
    // worker that missed a heartbeat).
    void begin_step();
    void end_step();
    // The root: from now on, pings the workers whenever no step ran for a heartbeat interval.
    void start_heartbeats();
    // The root, before start_heartbeats: one PING to `node` and its PONG (throws NetError). Only one
    // thread per node may call it.
    void heartbeat(int node);

    // Collectives. Every node calls them in the same order with the same sizes. A dead or silent
    // peer raises NetError within the timeout, naming the node.
    //
    // Sums data[0..n) over all nodes, in place. Every node receives every other node's partial and
    // adds the N partials in node order 0..N-1, so the result is bit-identical on every node. With
    // Q80 (n a multiple of 32), each node also uses the dequantized version of its own partial.
    void all_reduce_sum(float* data, size_t n, Exchange type);
    // Copies the root's data[0..bytes) to every node.
    void broadcast(void* data, size_t bytes);
    // The root receives every node's bytes in node order into `all` (its own included); on workers
    // `all` is unused. The first form has equal sizes, the second one size per node.
    void gather_to_root(const void* mine, size_t bytes, void* all);
    void gather_to_root(const void* mine, size_t my_bytes, void* all, const std::vector<size_t>& bytes_per_node);

    void set_timeout(int timeout_ms);
    int timeout_ms() const { return timeout_ms_; }

    Stats stats() const;  // not from within a step
    void reset_stats();

    void close();  // closes every connection; later collectives raise NetError

private:
    struct Transfer;  // what to send to and receive from one peer in a collective

    Mesh(int node, std::vector<Socket> peers, int timeout_ms, int heartbeat_ms, int idle_limit_ms);
    void run(std::vector<Transfer>& transfers);  // moves all transfers at once; on the root a failure ends the session
    void move_all(std::vector<Transfer>& transfers);
    void wait_for_step();                               // a worker's begin_step
    void ping_workers();                                // one heartbeat round; throws NetError
    void lose(const std::string& why);                  // the root: the session is over, close it
    void stop_heartbeats();
    void sum_partials(float* data, size_t n, Exchange type);  // decodes the partials in send/recv_buf_
    void count_sync(double start_seconds);

    int node_;
    std::vector<Socket> peers_;  // indexed by node; peers_[node_] stays closed
    int timeout_ms_;
    int heartbeat_ms_;   // the root's: how often idle workers are pinged
    int idle_limit_ms_;  // a worker's: how long a silent root is waited for
    double spin_seconds_;  // how long a collective retries its sockets before it sleeps ($DLLAMA_NET_SPIN_US)
    // The root's heartbeats: a thread that pings idle workers; `step_mutex_` is held from begin_step
    // to end_step and by each heartbeat round, so that the two never interleave on a socket.
    mutable std::mutex step_mutex_;  // also guards the byte counts that stats() reads
    std::condition_variable wake_;
    std::thread heartbeats_;
    bool stopping_ = false;
    int64_t idle_since_ms_ = 0;
    std::string lost_;  // why the session is over, once it is
    Stats stats_;
    uint64_t sent_base_ = 0, received_base_ = 0;
    std::vector<uint8_t> send_buf_, recv_buf_;  // scratch for all_reduce_sum
    std::vector<float> part_, sum_;
};

}  // namespace dllama::net
