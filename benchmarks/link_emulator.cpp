// A TCP relay that behaves like a network link: every byte is delayed by a one-way latency and the bytes of
// each direction of each connection leave at most at a given rate. The benchmark builds it with g++ (no
// project code; POSIX and the C++17 library only) because this machine's kernel has no sch_netem, and a
// Python relay's timers are far coarser than the 0.1 ms we need to emulate.
//
//     link_emulator LATENCY_US RATE_MBIT LISTEN_HOST TARGET_HOST:PORT [TARGET_HOST:PORT ...]
//
// It listens on one free port of LISTEN_HOST per target and prints one line, "relay HOST:PORT HOST:PORT ...",
// in the order of the targets. RATE_MBIT 0 means no rate limit. It runs until it is killed.
//
// The link model, per direction of each connection: what read() returns is cut into packets of at most
// kPacket bytes, each stamped on arrival. A packet starts to serialise when it has arrived and the
// previous packet has left (a FIFO link), takes bytes / rate, and is written out `latency` after its last
// bit left. So a message of S bytes arriving at t is delivered complete at t + S / rate + latency when the
// link is idle, like on a switched Ethernet link (one packet of store-and-forward included). The writer
// sleeps until shortly before a packet is due and busy-polls the rest, so its timing error is the
// scheduler's wake-up jitter within kSpin, not a timer tick; the benchmark measures what remains. (With a
// 20 us spin, sleeps overshot by ~50 us on this loaded 2-core VM: the spin has to cover wake-up latency.)

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

using Clock = std::chrono::steady_clock;
using Nanos = std::chrono::nanoseconds;

namespace {

constexpr size_t kPacket = 1448;  // a TCP segment's payload on a 1500-byte MTU Ethernet link
constexpr Nanos kSpin{80'000};    // busy-poll the last 80 us before a packet is due

struct Link {
    Nanos latency;
    double ns_per_byte;  // 0: unlimited
};

struct Packet {
    Clock::time_point due;
    std::shared_ptr<const std::string> chunk;  // what one read() returned; null marks the end of the stream
    size_t offset, size;
};

// One direction of one connection: a reader thread queues packets, a writer thread delivers them on time.
class Direction {
public:
    Direction(int from, int to, Link link) : from_(from), to_(to), link_(link) {}

    void read_loop() {
        std::vector<char> buf(1 << 16);
        Clock::time_point link_free = Clock::now();
        for (;;) {
            ssize_t n = ::read(from_, buf.data(), buf.size());
            if (n < 0 && errno == EINTR) continue;
            Clock::time_point arrived = Clock::now();
            std::lock_guard<std::mutex> lock(mu_);
            if (n <= 0) {
                queue_.push_back(Packet{arrived, nullptr, 0, 0});
                ready_.notify_one();
                return;
            }
            auto chunk = std::make_shared<const std::string>(buf.data(), n);
            for (size_t at = 0; at < static_cast<size_t>(n); at += kPacket) {
                size_t size = std::min<size_t>(kPacket, n - at);
                Clock::time_point start = std::max(arrived, link_free);
                link_free = start + Nanos(static_cast<long long>(size * link_.ns_per_byte));
                queue_.push_back(Packet{link_free + link_.latency, chunk, at, size});
            }
            ready_.notify_one();
        }
    }

    void write_loop() {
        std::vector<Packet> batch;
        for (;;) {
            bool end = false;
            {
                std::unique_lock<std::mutex> lock(mu_);
                ready_.wait(lock, [&] { return !queue_.empty(); });
                Clock::time_point due = queue_.front().due;
                // A packet pushed meanwhile is due later (FIFO): only the front's time matters.
                while (due - Clock::now() > kSpin) ready_.wait_until(lock, due - kSpin);
                lock.unlock();
                while (Clock::now() < due) {
                }
                lock.lock();
                // Everything already due goes out in one write.
                Clock::time_point now = Clock::now();
                while (!queue_.empty() && queue_.front().due <= now) {
                    if (!queue_.front().chunk) end = true;
                    else batch.push_back(std::move(queue_.front()));
                    queue_.pop_front();
                    if (end) break;
                }
            }
            if (!write_all(batch) || end) break;
            batch.clear();
        }
        ::shutdown(to_, SHUT_WR);
        ::shutdown(from_, SHUT_RD);
    }

private:
    bool write_all(const std::vector<Packet>& batch) {
        std::vector<iovec> iov;
        for (const Packet& p : batch) {
            char* at = const_cast<char*>(p.chunk->data()) + p.offset;
            if (!iov.empty() && static_cast<char*>(iov.back().iov_base) + iov.back().iov_len == at) {
                iov.back().iov_len += p.size;  // the next packet of the same chunk
            } else {
                iov.push_back({at, p.size});
            }
        }
        size_t first = 0;
        while (first < iov.size()) {
            ssize_t n = ::writev(to_, iov.data() + first, static_cast<int>(std::min<size_t>(iov.size() - first, 1024)));
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) return false;
            for (size_t left = n; left > 0;) {
                if (left >= iov[first].iov_len) {
                    left -= iov[first].iov_len;
                    ++first;
                } else {
                    iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + left;
                    iov[first].iov_len -= left;
                    left = 0;
                }
            }
        }
        return true;
    }

    int from_, to_;
    Link link_;
    std::mutex mu_;
    std::condition_variable ready_;
    std::deque<Packet> queue_;
};

void no_delay(int fd) {
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

int connect_to(const std::string& host, const std::string& port) {
    addrinfo hints{}, *res = nullptr;
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    if (::getaddrinfo(host.c_str(), port.c_str(), &hints, &res) != 0) return -1;
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd >= 0 && ::connect(fd, res->ai_addr, res->ai_addrlen) != 0) {
        ::close(fd);
        fd = -1;
    }
    ::freeaddrinfo(res);
    return fd;
}

void serve(int listener, std::string host, std::string port, Link link) {
    for (;;) {
        int client = ::accept(listener, nullptr, nullptr);
        if (client < 0) continue;
        int upstream = connect_to(host, port);
        if (upstream < 0) {
            ::close(client);
            continue;
        }
        no_delay(client);
        no_delay(upstream);
        // Both directions, and the two sockets, live until the process ends (a benchmark run).
        for (auto [from, to] : {std::pair{client, upstream}, std::pair{upstream, client}}) {
            auto d = std::make_shared<Direction>(from, to, link);
            std::thread([d] { d->read_loop(); }).detach();
            std::thread([d] { d->write_loop(); }).detach();
        }
    }
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 5) {
        std::fprintf(stderr, "usage: %s LATENCY_US RATE_MBIT LISTEN_HOST TARGET:PORT [TARGET:PORT ...]\n", argv[0]);
        return 2;
    }
    double latency_us = std::atof(argv[1]), rate_mbit = std::atof(argv[2]);
    if (!(latency_us >= 0 && latency_us <= 1e6) || !(rate_mbit >= 0)) {
        std::fprintf(stderr, "latency must be 0..1e6 us and the rate >= 0 Mbit/s\n");
        return 2;
    }
    ::prctl(PR_SET_TIMERSLACK, 1000UL);  // sleeps end within ~1 us, not the default 50 us, of their time
    Link link{Nanos(static_cast<long long>(latency_us * 1000)), rate_mbit > 0 ? 8000.0 / rate_mbit : 0.0};
    std::string line = "relay";
    std::vector<std::thread> servers;
    for (int i = 4; i < argc; ++i) {
        std::string target = argv[i];
        size_t colon = target.rfind(':');
        if (colon == std::string::npos) {
            std::fprintf(stderr, "target %s: expected HOST:PORT\n", argv[i]);
            return 2;
        }
        int listener = ::socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_port = 0;
        if (::inet_pton(AF_INET, argv[3], &addr.sin_addr) != 1 ||
            ::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(listener, 64) != 0) {
            std::fprintf(stderr, "cannot listen on %s: %s\n", argv[3], std::strerror(errno));
            return 1;
        }
        socklen_t len = sizeof addr;
        ::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len);
        line += " " + std::string(argv[3]) + ":" + std::to_string(ntohs(addr.sin_port));
        servers.emplace_back(serve, listener, target.substr(0, colon), target.substr(colon + 1), link);
    }
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
    for (std::thread& t : servers) t.join();
}
