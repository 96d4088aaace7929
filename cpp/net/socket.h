// TCP sockets for the mesh: RAII file descriptors, IPv4/IPv6 and host names through getaddrinfo,
// TCP_NODELAY everywhere, no SIGPIPE, and a per-socket I/O timeout so that a dead peer raises a
// NetError instead of hanging. Error messages start with the socket's label (by default the peer's
// "host:port"; the mesh relabels its sockets "node 2 (host:port)").
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "errors.h"

namespace dllama::net {

constexpr int kDefaultTimeoutMs = 5000;

// "host:port", or "[host]:port" when host is an IPv6 literal.
std::string format_address(const std::string& host, int port);

// Splits "host:port" or "[ipv6]:port"; throws std::invalid_argument on a malformed address.
std::pair<std::string, int> parse_host_port(const std::string& address);

// Sockets are always non-blocking underneath; send_all/recv_all wait with poll().
class Socket {
public:
    Socket() = default;
    Socket(int fd, std::string label);  // takes ownership of a connected fd
    ~Socket();
    Socket(Socket&& other) noexcept;
    Socket& operator=(Socket&& other) noexcept;
    Socket(const Socket&) = delete;
    Socket& operator=(const Socket&) = delete;

    // Connects within timeout_ms, which also becomes the I/O timeout. `label` names the peer in error
    // messages (default "host:port").
    static Socket connect(const std::string& host, int port, int timeout_ms, const std::string& label = "");

    // Block until all n bytes moved. The timeout counts from the last byte that moved, so a long
    // transfer never times out while the peer keeps up. Timeout < 0 waits forever. A deadline, when
    // set, bounds the whole exchange however the bytes trickle in.
    void send_all(const void* data, size_t n);
    void recv_all(void* data, size_t n);

    // Non-blocking: move what the kernel takes now; 0 means "would block". recv_some throws when the
    // peer has closed the connection.
    size_t send_some(const void* data, size_t n);
    size_t recv_some(void* data, size_t n);

    // A frame is a u32 little-endian length followed by that many bytes. recv_frame refuses a frame
    // longer than max_bytes with a ProtocolError.
    void send_frame(const std::vector<uint8_t>& payload);
    std::vector<uint8_t> recv_frame(uint32_t max_bytes);

    // Waits until poll() reports `events` (POLLIN/POLLOUT); throws NetError on timeout.
    void wait(short events, int timeout_ms, const char* doing) const;

    [[noreturn]] void fail(const std::string& cause) const;  // throws NetError("label: cause")

    void set_timeout(int timeout_ms) { timeout_ms_ = timeout_ms; }
    // Every later send/recv must finish within ms_from_now milliseconds (< 0: no deadline).
    void set_deadline(int ms_from_now);
    int timeout_ms() const { return timeout_ms_; }
    const std::string& label() const { return label_; }
    void set_label(std::string label) { label_ = std::move(label); }
    uint64_t bytes_sent() const { return bytes_sent_; }
    uint64_t bytes_received() const { return bytes_received_; }
    int fd() const { return fd_; }
    bool is_open() const { return fd_ >= 0; }
    void close();

private:
    void wait_io(short events, const char* doing) const;  // for send_all/recv_all: timeout and deadline

    int fd_ = -1;
    std::string label_;
    int timeout_ms_ = kDefaultTimeoutMs;
    int64_t deadline_ = -1;  // steady-clock ms, or -1
    int deadline_ms_ = 0;    // as given, for error messages
    uint64_t bytes_sent_ = 0, bytes_received_ = 0;
};

class Listener {
public:
    // Binds host:port (host "" or "0.0.0.0" = every IPv4 interface, "::" = every interface) with
    // SO_REUSEADDR. Port 0 picks a free port; port() reports the one bound.
    Listener(const std::string& host, int port);
    ~Listener();
    Listener(const Listener&) = delete;
    Listener& operator=(const Listener&) = delete;

    // True when a connection is waiting within timeout_ms (< 0: wait forever).
    bool wait(int timeout_ms);
    // Accepts the next connection (waiting at most timeout_ms) with the given I/O timeout.
    Socket accept(int timeout_ms);

    int port() const { return port_; }
    const std::string& host() const { return host_; }

private:
    int fd_ = -1;
    std::string host_;
    int port_ = 0;
};

}  // namespace dllama::net
