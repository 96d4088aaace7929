#include "handshake.h"

#include <cstdio>
#include <cstring>

#include "auth.h"
#include "wire.h"

namespace dllama::net {

namespace {

enum Status : uint8_t { kGoOn = 0, kBadVersion = 1, kRoleRefused = 2 };
enum Verdict : uint8_t { kAccepted = 0, kWrongSecret = 1, kClientLacksSecret = 2, kServerLacksSecret = 3 };

constexpr size_t kHelloBytes = 16, kWelcomeBytes = 45, kProofBytes = 65, kVerdictBytes = 33;

const char* role_name(uint32_t role) {
    switch (role) {
        case (uint32_t)Role::Root: return "root";
        case (uint32_t)Role::Peer: return "peer";
        case (uint32_t)Role::Probe: return "probe";
    }
    return "root, peer or probe";
}

// "not a dllama_py peer (got bytes 47 45 54 20 ...)"
std::string not_a_peer(const uint8_t* got, size_t n) {
    std::string hex;
    for (size_t i = 0; i < n; i++) {
        char b[4];
        std::snprintf(b, sizeof(b), i ? " %02x" : "%02x", got[i]);
        hex += b;
    }
    return "not a dllama_py peer (got bytes " + hex + ")";
}

std::string version_error(uint32_t client_version, uint32_t server_version) {
    return "protocol version " + std::to_string(client_version) + " is not supported by this worker (speaks " +
           std::to_string(server_version) + ")";
}

// HMAC-SHA256(secret, challenge || nonce || label)
Digest proof(const std::string& secret, const uint8_t* challenge, const uint8_t* nonce, const char* label) {
    uint8_t msg[64 + 8];
    const size_t label_len = std::strlen(label);
    std::memcpy(msg, challenge, 32);
    std::memcpy(msg + 32, nonce, 32);
    std::memcpy(msg + 64, label, label_len);
    return hmac_sha256(secret, msg, 64 + label_len);
}

[[noreturn]] void protocol_fail(const Socket& s, const std::string& cause) {
    throw ProtocolError(s.label() + ": " + cause);
}
[[noreturn]] void auth_fail(const Socket& s, const std::string& cause) {
    throw AuthError(s.label() + ": authentication failed: " + cause);
}

void send(Socket& s, const Writer& w) { s.send_all(w.data().data(), w.data().size()); }

// Reads the 8-byte magic and rejects anything else, showing what arrived.
void expect_magic(Socket& s) {
    uint8_t got[8];
    s.recv_all(got, sizeof(got));
    if (std::memcmp(got, kMagic, sizeof(got)) != 0) protocol_fail(s, not_a_peer(got, sizeof(got)));
}

// Server: the VERDICT on a PROOF; kAccepted or the reason for refusing.
Verdict judge(const std::string& secret, bool client_has_secret, const uint8_t* challenge, const uint8_t* nonce,
              const uint8_t* mac, uint32_t role) {
    if (secret.empty()) return client_has_secret ? kServerLacksSecret : kAccepted;
    if (!client_has_secret) return kClientLacksSecret;
    const Digest expected = proof(secret, challenge, nonce, role_name(role));
    return constant_time_equal(expected.data(), mac, 32) ? kAccepted : kWrongSecret;
}

}  // namespace

void client_handshake(Socket& s, Role role, const std::string& secret, uint32_t version) {
    Writer hello;
    hello.bytes(kMagic, sizeof(kMagic));
    hello.u32(version);
    hello.u32((uint32_t)role);
    send(s, hello);

    expect_magic(s);
    uint8_t welcome_rest[kWelcomeBytes - 8];
    s.recv_all(welcome_rest, sizeof(welcome_rest));
    Reader welcome(welcome_rest, sizeof(welcome_rest));
    const uint32_t server_version = welcome.u32("server version");
    const uint8_t status = welcome.u8("status");
    uint8_t challenge[32];
    welcome.bytes(challenge, sizeof(challenge), "challenge");
    if (status == kBadVersion || server_version != version) protocol_fail(s, version_error(version, server_version));
    if (status == kRoleRefused) {
        protocol_fail(s, std::string("the worker does not accept a ") + role_name((uint32_t)role) + " connection now");
    }
    if (status != kGoOn) protocol_fail(s, "unknown handshake status " + std::to_string(status));

    uint8_t nonce[32];
    random_bytes(nonce, sizeof(nonce));
    Digest mac{};
    if (!secret.empty()) mac = proof(secret, challenge, nonce, role_name((uint32_t)role));
    Writer proof_msg;
    proof_msg.u8(secret.empty() ? 0 : 1);
    proof_msg.bytes(nonce, sizeof(nonce));
    proof_msg.bytes(mac.data(), mac.size());
    send(s, proof_msg);

    uint8_t verdict_bytes[kVerdictBytes];
    s.recv_all(verdict_bytes, sizeof(verdict_bytes));
    Reader verdict(verdict_bytes, sizeof(verdict_bytes));
    const uint8_t result = verdict.u8("verdict");
    uint8_t server_mac[32];
    verdict.bytes(server_mac, sizeof(server_mac), "server MAC");
    if (result == kWrongSecret) auth_fail(s, "wrong secret");
    if (result == kClientLacksSecret) auth_fail(s, "the worker requires a secret and none was given");
    if (result == kServerLacksSecret) auth_fail(s, "the worker has no secret configured, but this side has one");
    if (result != kAccepted) protocol_fail(s, "unknown handshake verdict " + std::to_string(result));
    if (!secret.empty()) {
        const Digest expected = proof(secret, challenge, nonce, "worker");
        if (!constant_time_equal(expected.data(), server_mac, 32)) auth_fail(s, "the worker does not know the secret");
    }
}

Role server_handshake(Socket& s, Role expected, const std::string& secret) {
    expect_magic(s);
    uint8_t hello_rest[kHelloBytes - 8];
    s.recv_all(hello_rest, sizeof(hello_rest));
    Reader hello(hello_rest, sizeof(hello_rest));
    const uint32_t version = hello.u32("version");
    const uint32_t role = hello.u32("role");

    const bool role_ok = expected == Role::Any ? role >= (uint32_t)Role::Root && role <= (uint32_t)Role::Probe
                                               : role == (uint32_t)expected;
    const Status status = version != kProtocolVersion ? kBadVersion : role_ok ? kGoOn : kRoleRefused;
    uint8_t challenge[32];
    random_bytes(challenge, sizeof(challenge));
    Writer welcome;
    welcome.bytes(kMagic, sizeof(kMagic));
    welcome.u32(kProtocolVersion);
    welcome.u8(status);
    welcome.bytes(challenge, sizeof(challenge));
    send(s, welcome);
    if (status == kBadVersion) protocol_fail(s, version_error(version, kProtocolVersion));
    if (status == kRoleRefused) {
        protocol_fail(s, std::string("expected a ") + role_name((uint32_t)expected) + " connection, got role " +
                             std::to_string(role));
    }

    uint8_t proof_bytes[kProofBytes];
    s.recv_all(proof_bytes, sizeof(proof_bytes));
    Reader proof_msg(proof_bytes, sizeof(proof_bytes));
    const bool client_has_secret = proof_msg.u8("secret flag") != 0;
    uint8_t nonce[32], mac[32];
    proof_msg.bytes(nonce, sizeof(nonce), "nonce");
    proof_msg.bytes(mac, sizeof(mac), "client MAC");

    const Verdict result = judge(secret, client_has_secret, challenge, nonce, mac, role);
    Digest server_mac{};
    if (result == kAccepted && !secret.empty()) server_mac = proof(secret, challenge, nonce, "worker");
    Writer verdict;
    verdict.u8(result);
    verdict.bytes(server_mac.data(), server_mac.size());
    send(s, verdict);
    const std::string client = role_name(role);
    if (result == kWrongSecret) auth_fail(s, "wrong secret");
    if (result == kClientLacksSecret) auth_fail(s, "the " + client + " gave no secret but this worker requires one");
    if (result == kServerLacksSecret) auth_fail(s, "the " + client + " has a secret but this worker has none");
    return (Role)role;
}

}  // namespace dllama::net
