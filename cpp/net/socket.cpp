#include "socket.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "wire.h"

namespace dllama::net {

namespace {

#ifdef MSG_NOSIGNAL
constexpr int kSendFlags = MSG_NOSIGNAL;  // Linux: no SIGPIPE from send() to a closed peer
#else
constexpr int kSendFlags = 0;  // macOS: SO_NOSIGPIPE is set on the socket instead
#endif

int64_t now_ms() {
    using namespace std::chrono;
    return duration_cast<milliseconds>(steady_clock::now().time_since_epoch()).count();
}

std::string describe_errno(int err) {
    switch (err) {
        case ECONNREFUSED: return "connection refused";
        case ECONNRESET: return "connection reset by peer";
        case EPIPE: return "peer closed the connection";
        case ETIMEDOUT: return "connection timed out";
        case EHOSTUNREACH: return "host unreachable";
        case ENETUNREACH: return "network unreachable";
        default: return std::strerror(err);
    }
}

// The numeric "host:port" of a socket address.
std::string format_sockaddr(const sockaddr* addr, socklen_t len) {
    char host[NI_MAXHOST], port[NI_MAXSERV];
    if (getnameinfo(addr, len, host, sizeof(host), port, sizeof(port), NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
        return "unknown peer";
    }
    return format_address(host, std::atoi(port));
}

// Non-blocking, close-on-exec, TCP_NODELAY and (where it exists) SO_NOSIGPIPE.
void configure(int fd) {
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    const int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
#ifdef SO_NOSIGPIPE
    setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, sizeof(one));
#endif
}

struct AddrInfo {
    addrinfo* list = nullptr;
    ~AddrInfo() {
        if (list) freeaddrinfo(list);
    }
};

// Resolves host:port; `passive` for binding. Throws NetError starting with `label`.
void resolve(const std::string& host, int port, bool passive, const std::string& label, AddrInfo& out) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = passive ? AI_PASSIVE : 0;
    const std::string service = std::to_string(port);
    const int rc = getaddrinfo(host.c_str(), service.c_str(), &hints, &out.list);
    if (rc != 0) throw NetError(label + ": cannot resolve host: " + gai_strerror(rc));
}

// poll() one fd for `events`, retrying on EINTR; false on timeout.
bool poll_fd(int fd, short events, int timeout_ms) {
    const int64_t deadline = now_ms() + timeout_ms;
    for (;;) {
        pollfd p{fd, events, 0};
        const int wait = timeout_ms < 0 ? -1 : (int)std::max<int64_t>(0, deadline - now_ms());
        const int rc = ::poll(&p, 1, wait);
        if (rc > 0) return true;
        if (rc == 0) return false;
        if (errno != EINTR) throw NetError(std::string("poll failed: ") + std::strerror(errno));
    }
}

// One connect attempt to one resolved address, within timeout_ms.
Socket connect_one(const addrinfo* ai, const std::string& label, int timeout_ms) {
    const int fd = ::socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
    if (fd < 0) throw NetError(label + ": cannot create socket: " + std::strerror(errno));
    Socket s(fd, label);
    if (::connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) return s;
    if (errno != EINPROGRESS) s.fail(describe_errno(errno));
    if (!poll_fd(fd, POLLOUT, timeout_ms)) s.fail("timed out after " + std::to_string(timeout_ms) + " ms connecting");
    int err = 0;
    socklen_t len = sizeof(err);
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) s.fail(describe_errno(err));
    return s;
}

}  // namespace

std::string format_address(const std::string& host, int port) {
    const bool ipv6 = host.find(':') != std::string::npos;
    return (ipv6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

std::pair<std::string, int> parse_host_port(const std::string& address) {
    std::string host, port;
    if (!address.empty() && address[0] == '[') {
        const size_t close = address.find(']');
        if (close == std::string::npos || address.compare(close + 1, 1, ":") != 0) {
            throw std::invalid_argument("bad address '" + address + "' (expected [ipv6]:port)");
        }
        host = address.substr(1, close - 1);
        port = address.substr(close + 2);
    } else {
        const size_t colon = address.rfind(':');
        if (colon == std::string::npos || address.find(':') != colon) {
            throw std::invalid_argument("bad address '" + address + "' (expected host:port)");
        }
        host = address.substr(0, colon);
        port = address.substr(colon + 1);
    }
    const bool digits = !port.empty() && port.size() <= 5 && port.find_first_not_of("0123456789") == std::string::npos;
    if (host.empty() || !digits || std::stoi(port) < 1 || std::stoi(port) > 65535) {
        throw std::invalid_argument("bad address '" + address + "' (expected host:port with a port 1-65535)");
    }
    return {host, std::stoi(port)};
}

// ---- Socket ----

Socket::Socket(int fd, std::string label) : fd_(fd), label_(std::move(label)) { configure(fd_); }

Socket::~Socket() { close(); }

Socket::Socket(Socket&& other) noexcept { *this = std::move(other); }

Socket& Socket::operator=(Socket&& other) noexcept {
    if (this != &other) {
        close();
        fd_ = std::exchange(other.fd_, -1);
        label_ = std::move(other.label_);
        timeout_ms_ = other.timeout_ms_;
        deadline_ = other.deadline_;
        deadline_ms_ = other.deadline_ms_;
        bytes_sent_ = other.bytes_sent_;
        bytes_received_ = other.bytes_received_;
    }
    return *this;
}

void Socket::close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
}

void Socket::fail(const std::string& cause) const { throw NetError(label_ + ": " + cause); }

Socket Socket::connect(const std::string& host, int port, int timeout_ms, const std::string& label_or_empty) {
    const std::string label = label_or_empty.empty() ? format_address(host, port) : label_or_empty;
    AddrInfo addrs;
    resolve(host, port, false, label, addrs);
    std::string last_error = label + ": no address to connect to";
    for (const addrinfo* ai = addrs.list; ai; ai = ai->ai_next) {
        try {
            Socket s = connect_one(ai, label, timeout_ms);
            s.set_timeout(timeout_ms);
            return s;
        } catch (const NetError& e) {
            last_error = e.what();
        }
    }
    throw NetError(last_error);
}

void Socket::wait(short events, int timeout_ms, const char* doing) const {
    if (fd_ < 0) fail("socket is closed");
    if (!poll_fd(fd_, events, timeout_ms)) fail("timed out after " + std::to_string(timeout_ms) + " ms " + doing);
}

size_t Socket::send_some(const void* data, size_t n) {
    if (fd_ < 0) fail("socket is closed");
    for (;;) {
        const ssize_t k = ::send(fd_, data, n, kSendFlags);
        if (k >= 0) {
            bytes_sent_ += (uint64_t)k;
            return (size_t)k;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
        if (errno != EINTR) fail(describe_errno(errno));
    }
}

size_t Socket::recv_some(void* data, size_t n) {
    if (fd_ < 0) fail("socket is closed");
    for (;;) {
        const ssize_t k = ::recv(fd_, data, n, 0);
        if (k > 0) {
            bytes_received_ += (uint64_t)k;
            return (size_t)k;
        }
        if (k == 0) fail("peer closed the connection");
        if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
        if (errno != EINTR) fail(describe_errno(errno));
    }
}

void Socket::set_deadline(int ms_from_now) {
    deadline_ = ms_from_now < 0 ? -1 : now_ms() + ms_from_now;
    deadline_ms_ = ms_from_now;
}

void Socket::wait_io(short events, const char* doing) const {
    if (deadline_ < 0) return wait(events, timeout_ms_, doing);
    const int64_t left = std::max<int64_t>(0, deadline_ - now_ms());
    if (timeout_ms_ >= 0 && timeout_ms_ < left) return wait(events, timeout_ms_, doing);
    if (fd_ < 0) fail("socket is closed");
    if (!poll_fd(fd_, events, (int)left))
        fail("did not finish within " + std::to_string(deadline_ms_) + " ms (" + doing + ")");
}

void Socket::send_all(const void* data, size_t n) {
    const uint8_t* p = static_cast<const uint8_t*>(data);
    while (n > 0) {
        const size_t k = send_some(p, n);
        if (k == 0) wait_io(POLLOUT, "waiting to send");
        p += k, n -= k;
    }
}

void Socket::recv_all(void* data, size_t n) {
    uint8_t* p = static_cast<uint8_t*>(data);
    while (n > 0) {
        const size_t k = recv_some(p, n);
        if (k == 0) wait_io(POLLIN, "waiting for data");
        p += k, n -= k;
    }
}

void Socket::send_frame(const std::vector<uint8_t>& payload) {
    Writer w;
    w.u32((uint32_t)payload.size());
    w.bytes(payload.data(), payload.size());
    send_all(w.data().data(), w.data().size());
}

std::vector<uint8_t> Socket::recv_frame(uint32_t max_bytes) {
    uint8_t header[4];
    recv_all(header, sizeof(header));
    const uint32_t n = Reader(header, sizeof(header)).u32("frame length");
    if (n > max_bytes) {
        throw ProtocolError(label_ + ": message of " + std::to_string(n) + " bytes exceeds the limit of " +
                            std::to_string(max_bytes));
    }
    std::vector<uint8_t> payload(n);
    recv_all(payload.data(), n);
    return payload;
}

// ---- Listener ----

Listener::Listener(const std::string& host, int port) : host_(host.empty() ? "0.0.0.0" : host) {
    AddrInfo addrs;
    resolve(host_, port, true, "cannot listen on " + format_address(host_, port), addrs);
    std::string last_error = "no address";
    for (const addrinfo* ai = addrs.list; ai && fd_ < 0; ai = ai->ai_next) {
        const int fd = ::socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
        if (fd < 0) continue;
        const int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (::bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && ::listen(fd, 16) == 0) {
            fd_ = fd;
        } else {
            last_error = describe_errno(errno);
            ::close(fd);
        }
    }
    if (fd_ < 0) throw NetError("cannot listen on " + format_address(host_, port) + ": " + last_error);
    fcntl(fd_, F_SETFL, fcntl(fd_, F_GETFL) | O_NONBLOCK);
    fcntl(fd_, F_SETFD, FD_CLOEXEC);
    sockaddr_storage addr{};
    socklen_t len = sizeof(addr);
    getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = addr.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port)
                                       : ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
}

Listener::~Listener() {
    if (fd_ >= 0) ::close(fd_);
}

bool Listener::wait(int timeout_ms) { return poll_fd(fd_, POLLIN, timeout_ms); }

Socket Listener::accept(int timeout_ms) {
    const int64_t deadline = now_ms() + timeout_ms;
    for (;;) {
        const int left = timeout_ms < 0 ? -1 : (int)std::max<int64_t>(0, deadline - now_ms());
        if (!wait(left)) {
            throw NetError(format_address(host_, port_) + ": no connection within " + std::to_string(timeout_ms) +
                           " ms");
        }
        sockaddr_storage addr{};
        socklen_t len = sizeof(addr);
        const int fd = ::accept(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
        if (fd >= 0) {
            Socket s(fd, format_sockaddr(reinterpret_cast<sockaddr*>(&addr), len));
            s.set_timeout(timeout_ms);
            return s;
        }
        // The connection may have gone away between poll() and accept(); wait for the next one.
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED) {
            throw NetError(format_address(host_, port_) + ": accept failed: " + describe_errno(errno));
        }
    }
}

}  // namespace dllama::net
