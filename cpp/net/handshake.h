// The handshake that opens every connection of a session: it checks that both ends speak the same
// protocol version and, when a secret is configured, that both know it (mutual HMAC-SHA256
// challenge-response; the secret never crosses the wire). It authenticates the peers only: the
// traffic that follows is neither encrypted nor signed, so run sessions on a trusted network.
//
// All integers are little-endian. The messages have fixed sizes, so a garbage sender can make the
// server read at most 16 + 65 bytes before it is refused; every read has the socket's timeout.
//
// 1. HELLO, client -> server, 16 bytes
//      0   8  magic "DLPYNET\0" = 44 4c 50 59 4e 45 54 00
//      8   4  u32 protocol version (kProtocolVersion = 5)
//     12   4  u32 role: 1 = root (opens a session), 2 = peer (a worker joining another worker),
//             3 = probe (asks about the worker without starting a session; mesh.h)
//    The server checks the magic first and drops the connection without answering if it is wrong.
// 2. WELCOME, server -> client, 45 bytes
//      0   8  magic "DLPYNET\0"
//      8   4  u32 the server's protocol version
//     12   1  u8 status: 0 = go on, 1 = version not supported, 2 = role not accepted now (e.g. a
//             root arriving while the worker is joining a mesh)
//     13  32  challenge: 32 bytes from /dev/urandom
//    On a non-zero status both sides close the connection.
// 3. PROOF, client -> server, 65 bytes
//      0   1  u8 1 if the client has a secret, else 0
//      1  32  client nonce: 32 bytes from /dev/urandom
//     33  32  HMAC-SHA256(secret, challenge || nonce || label), label = "root", "peer" or "probe"
//             (ASCII, no terminator); 32 zero bytes without a secret
// 4. VERDICT, server -> client, 33 bytes
//      0   1  u8 result: 0 = accepted, 1 = wrong secret, 2 = the server has a secret and the client
//             none, 3 = the client has a secret and the server none
//      1  32  HMAC-SHA256(secret, challenge || nonce || "worker") when accepted with a secret,
//             else 32 zero bytes
//    The client checks that MAC, so a root never talks to a worker that does not know the secret;
//    the client's nonce keeps a recorded VERDICT from being replayed. On a non-zero result, or a
//    bad server MAC, both sides close.
//
// A secret on only one side is an error on both sides: a root with a secret insists that its
// workers prove they know it.
#pragma once
#include <cstdint>
#include <string>

#include "socket.h"

namespace dllama::net {

// 2: batched steps (rows with slots), max_sequences in SETUP; 3: MTP steps, n_mtp_layers; 4: heartbeats
// between steps (STEP/PING/PONG, the idle limit in JOIN), PROGRESS while loading, probes (role 3);
// 5: the --split weights in SETUP
constexpr uint32_t kProtocolVersion = 5;
constexpr char kMagic[8] = {'D', 'L', 'P', 'Y', 'N', 'E', 'T', '\0'};

// Any is never sent: server_handshake accepts every role with it.
enum class Role : uint32_t { Any = 0, Root = 1, Peer = 2, Probe = 3 };

// The connecting side. Throws ProtocolError (wrong magic or version, role refused), AuthError or
// NetError, all prefixed with the socket's label. `version` is only changed by tests.
void client_handshake(Socket& s, Role role, const std::string& secret, uint32_t version = kProtocolVersion);

// The accepting side; `expected` is the role it accepts now (Any: all). Returns the client's
// role. Throws like client_handshake and has told the client why before it throws.
Role server_handshake(Socket& s, Role expected, const std::string& secret);

}  // namespace dllama::net
