// The exceptions of the network layer. Every error a session can hit derives from NetError, so a
// worker's loop can catch NetError alone to drop a failed session and wait for the next root.
#pragma once
#include <stdexcept>
#include <string>

namespace dllama::net {

// A socket failed: refused, timed out, reset, or closed by the peer. The message names the peer.
class NetError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// The peer sent something that does not follow the protocol (wrong magic, version, truncated or
// oversized message).
class ProtocolError : public NetError {
public:
    using NetError::NetError;
};

// The handshake's shared-secret check failed on either side.
class AuthError : public ProtocolError {
public:
    using ProtocolError::ProtocolError;
};

}  // namespace dllama::net
